"""Readers for public LLM serving traces, and prompt synthesis so a length-only trace can be replayed.

Formats:
- Azure LLM inference trace (2023/2024): CSV `TIMESTAMP,ContextTokens,GeneratedTokens`, timestamps like
  `2023-11-16 18:15:46.6805900` (seven fractional digits).
- Mooncake (FAST'25): JSONL with `timestamp` (ms), `input_length`, `output_length`, `hash_ids`
  (one id per 512-token block; shared leading ids mean a shared prompt prefix).
- BurstGPT: CSV read by column name, so both the original layout
  (`Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`) and v1.1 (which inserts
  `Session ID,Elapsed time`) work. `Timestamp` is in seconds. Rows with 0 response tokens are failed
  requests in the source log and are skipped (so are rows with 0 request tokens, which cannot be
  replayed); the number skipped is recorded in the workload's `transforms`.

Arrival times are seconds from the earliest request of the trace.

Any of them may carry a request's service class and priority: CSV columns (or JSONL keys) `service_class`
("online" or "offline") and `priority` (a whole number, lower runs first); an empty cell means the default.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from fleetserve.engine.sampling_params import SERVICE_CLASSES
from fleetserve.workload.spec import RequestSpec, Workload

MOONCAKE_BLOCK_TOKENS = 512
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
TRACE_KINDS = ("azure", "mooncake", "burstgpt")


class TraceError(ValueError):
    """A trace file that is missing, empty, or not in a format we can read."""


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise TraceError(f"trace file not found: {path}")


def _csv_rows(path: Path, layout: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) for each data row, after checking the header has the required columns."""
    _check_exists(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        if reader.fieldnames is None:
            raise TraceError(f"{path}: trace is empty (no header and no requests)")
        found = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in required if name not in found]
        if missing:
            raise TraceError(f"{path}: columns {found} do not match the {layout} layout; "
                             f"missing {missing}, expected at least {list(required)}")
        reader.fieldnames = found
        for row in reader:
            if any(value and value.strip() for value in row.values() if isinstance(value, str)):
                yield reader.line_num, row


def _whole_number(path: Path, line: int, column: str, text: str | None) -> int:
    try:
        value = float(text or "")
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise TraceError(f"{path}:{line}: column {column!r} has {text!r}, not a non-negative whole number")
    return int(value)


def _seconds(path: Path, line: int, column: str, text: str | None) -> float:
    try:
        value = float(text or "")
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise TraceError(f"{path}:{line}: column {column!r} has {text!r}, not a number of seconds")
    return value


def _service_fields(path: Path, line: int, source: dict[str, Any]) -> dict[str, Any]:
    """The optional `service_class` and `priority` of one trace row, as RequestSpec keyword arguments."""
    fields: dict[str, Any] = {}
    service_class, priority = source.get("service_class"), source.get("priority")
    if isinstance(service_class, str):
        service_class = service_class.strip().lower()
    if service_class not in (None, ""):
        if service_class not in SERVICE_CLASSES:
            raise TraceError(f"{path}:{line}: service_class {source.get('service_class')!r} is not one of "
                             f"{list(SERVICE_CLASSES)}")
        fields["service_class"] = service_class
    if isinstance(priority, str):
        priority = priority.strip()
        try:
            priority = int(priority) if priority else None
        except ValueError:
            raise TraceError(f"{path}:{line}: priority {source.get('priority')!r} is not a whole number "
                             f"(lower runs first)") from None
    if priority is not None:
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TraceError(f"{path}:{line}: priority {priority!r} is not a whole number (lower runs first)")
        fields["priority"] = priority
    return fields


def _azure_timestamp(path: Path, line: int, text: str) -> tuple[int, float]:
    """Whole epoch seconds and the fraction apart, because a float of epoch seconds cannot hold 7 digits."""
    whole, _, fraction = text.strip().partition(".")
    try:
        moment = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        fraction_s = int(fraction) / 10 ** len(fraction) if fraction else 0.0
    except ValueError:
        raise TraceError(f"{path}:{line}: TIMESTAMP {text!r} is not like '2023-11-16 18:15:46.6805900'") from None
    return int(moment.timestamp()), fraction_s


def _workload(path: Path, requests: list[RequestSpec], transforms: list[str] | None = None) -> Workload:
    if not requests:
        raise TraceError(f"{path}: trace has no requests")
    return Workload(requests, name=path.stem, source=str(path), transforms=transforms or [])


def read_azure(path: str | Path) -> Workload:
    path = Path(path)
    stamps: list[tuple[int, float]] = []
    lengths: list[tuple[int, int]] = []
    services: list[dict[str, Any]] = []
    for line, row in _csv_rows(path, "azure", AZURE_COLUMNS):
        stamps.append(_azure_timestamp(path, line, row["TIMESTAMP"]))
        lengths.append((_whole_number(path, line, "ContextTokens", row["ContextTokens"]),
                        _whole_number(path, line, "GeneratedTokens", row["GeneratedTokens"])))
        services.append(_service_fields(path, line, row))
    if not stamps:
        raise TraceError(f"{path}: trace has no requests")
    first_whole, first_fraction = min(stamps)
    requests = [RequestSpec(f"azure-{index}", (whole - first_whole) + (fraction - first_fraction),
                            max(prompt, 1), max(output, 1), **service)
                for index, ((whole, fraction), (prompt, output), service)
                in enumerate(zip(stamps, lengths, services))]
    return _workload(path, requests)


def read_mooncake(path: str | Path, block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> Workload:
    path = Path(path)
    _check_exists(path)
    records: list[tuple[int, dict[str, Any]]] = []
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise TraceError(f"{path}:{line}: not a JSON object ({error.msg}): {text[:80]!r}") from None
            if not isinstance(record, dict) or any(key not in record for key in MOONCAKE_KEYS):
                found = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise TraceError(f"{path}:{line}: keys {found} do not match the mooncake layout; "
                                 f"expected {list(MOONCAKE_KEYS)} and optionally 'hash_ids'")
            records.append((line, record))
    if not records:
        raise TraceError(f"{path}: trace has no requests")
    first_ms = min(_seconds(path, line, "timestamp", str(record["timestamp"])) for line, record in records)
    requests = []
    for index, (line, record) in enumerate(records):
        hash_ids = record.get("hash_ids") or []
        if not isinstance(hash_ids, list) or not all(isinstance(h, int) for h in hash_ids):
            raise TraceError(f"{path}:{line}: hash_ids must be a list of integers, got {hash_ids!r}")
        arrival_ms = _seconds(path, line, "timestamp", str(record["timestamp"]))
        requests.append(RequestSpec(
            f"mooncake-{index}", (arrival_ms - first_ms) / 1000.0,
            max(_whole_number(path, line, "input_length", str(record["input_length"])), 1),
            max(_whole_number(path, line, "output_length", str(record["output_length"])), 1),
            prefix_ids=list(hash_ids), prefix_block_tokens=block_tokens if hash_ids else 0,
            **_service_fields(path, line, record)))
    return _workload(path, requests)


def read_burstgpt(path: str | Path, model: str | None = None) -> Workload:
    """Read BurstGPT (either layout); `model` keeps only rows of that model (e.g. "ChatGPT", "GPT-4")."""
    path = Path(path)
    rows: list[tuple[float, int, int, str | None, dict[str, Any]]] = []
    skipped = 0
    for line, row in _csv_rows(path, "burstgpt", BURSTGPT_COLUMNS):
        if model is not None and (row.get("Model") or "").strip() != model:
            continue
        prompt = _whole_number(path, line, "Request tokens", row["Request tokens"])
        output = _whole_number(path, line, "Response tokens", row["Response tokens"])
        if prompt == 0 or output == 0:
            skipped += 1
            continue
        session = (row.get("Session ID") or "").strip() or None
        rows.append((_seconds(path, line, "Timestamp", row["Timestamp"]), prompt, output, session,
                     _service_fields(path, line, row)))
    if not rows:
        raise TraceError(f"{path}: trace has no requests" + (f" for model {model!r}" if model else "")
                         + (f" ({skipped} rows with 0 tokens skipped)" if skipped else ""))
    first_s = min(arrival for arrival, *_ in rows)
    turns_so_far: dict[str, int] = {}
    requests = []
    for index, (arrival, prompt, output, session, service) in enumerate(rows):
        turn = turns_so_far.get(session, 0) if session is not None else 0
        if session is not None:
            turns_so_far[session] = turn + 1
        requests.append(RequestSpec(f"burstgpt-{index}", arrival - first_s, prompt, output,
                                    session_id=session, turn=turn, **service))
    transforms = []
    if model is not None:
        transforms.append(f"only model {model!r}")
    if skipped:
        transforms.append(f"skipped {skipped} rows with 0 request or response tokens (failed in the source)")
    return _workload(path, requests, transforms)


def _detect_kind(path: Path) -> str:
    _check_exists(path)
    with path.open(encoding="utf-8-sig") as handle:
        first_line = next((text for text in handle if text.strip()), "")
    if not first_line:
        raise TraceError(f"{path}: trace has no requests")
    if first_line.lstrip().startswith("{"):
        return "mooncake"
    columns = [name.strip() for name in next(csv.reader([first_line]))]
    if all(name in columns for name in AZURE_COLUMNS):
        return "azure"
    if all(name in columns for name in BURSTGPT_COLUMNS):
        return "burstgpt"
    raise TraceError(f"{path}: columns {columns} match no known trace layout; expected azure "
                     f"{list(AZURE_COLUMNS)}, burstgpt {list(BURSTGPT_COLUMNS)}, "
                     f"or mooncake JSONL with keys {list(MOONCAKE_KEYS)}")


def read_trace(path: str | Path, kind: str | None = None) -> Workload:
    """Read any supported trace; `kind` ("azure", "mooncake", "burstgpt") skips format detection."""
    path = Path(path)
    readers: dict[str, Callable[[Path], Workload]] = {
        "azure": read_azure, "mooncake": read_mooncake, "burstgpt": read_burstgpt}
    if kind is not None and kind not in readers:
        raise TraceError(f"unknown trace kind {kind!r}; known kinds are {list(TRACE_KINDS)}")
    return readers[kind or _detect_kind(path)](path)


# --- prompt synthesis -------------------------------------------------------------------------------

class TextTokenizer(Protocol):
    def encode(self, text: str) -> Any: ...
    def decode(self, ids: list[int]) -> str: ...


# Common English words: with most tokenizers each is one token, so joined by spaces they re-encode
# to exactly the same ids.
_WORDS = """the of and to in is was for on that with as by at from his her they this are be had
which not have one were all their there been has when who will more would if out so what up about
into them can only other time new some could these two may first then do any like my now over such
our man me even most made after also did many before must through back years where much your way
well down should because each just those people how too little state good very make world still own
see men work long get here between both life being under never day same another know while last
might us great old year off come since against go came right used take three states himself few house
use during without again place around however home small found thought went say part once general high
upon school every does got left number course war until always away something fact though water less
public put think almost hand enough far took head yet government system better set told nothing night
end why called done find going look asked later knew point next city give group toward young let room
side social given present several order national possible rather second face per among form important
often things early became white case large big need four within felt along children saw best church
ever least power development light""".split()

_MIN_WORD_POOL = 16


class _Codec:
    """Encode/decode for both `tokenizers.Tokenizer` (returns an Encoding) and our own wrapper."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._tokenizer = tokenizer
        self._takes_special_flag = True

    def encode(self, text: str) -> list[int]:
        if self._takes_special_flag:
            try:
                result = self._tokenizer.encode(text, add_special_tokens=False)  # type: ignore[call-arg]
            except TypeError:
                self._takes_special_flag = False
        if not self._takes_special_flag:
            result = self._tokenizer.encode(text)
        return list(getattr(result, "ids", result))

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids)

    def round_trips(self, ids: list[int]) -> bool:
        return self.encode(self.decode(ids)) == ids


def _plain_word_pool(codec: _Codec) -> tuple[list[int], bool]:
    """Token ids that each stand for one whole word and survive decode/encode in any order.

    Returns the pool and whether it round-trips; when too few single-token words exist, falls back to the
    ids of the word list as a whole (token ids are then the truth and the text only approximates them).
    """
    pool: list[int] = []
    for word in _WORDS:
        for text in (" " + word, word):
            ids = codec.encode(text)
            if len(ids) == 1 and codec.decode(ids).strip() == word and ids[0] not in pool:
                pool.append(ids[0])
                break
    if len(pool) >= 2:
        anchor = pool[0]
        pool = [token for token in pool if codec.round_trips([anchor, token, token, anchor])]
    shuffled = random.Random(0).sample(pool, len(pool))
    if len(pool) >= _MIN_WORD_POOL and codec.round_trips(shuffled + shuffled[::-1]):
        return pool, True
    fallback = sorted(set(codec.encode(" ".join(_WORDS))))
    if not fallback:
        raise ValueError("tokenizer encodes a plain English sentence to no tokens; cannot synthesize prompts")
    return fallback, False


def _prompt_token_ids(spec: RequestSpec, pool: list[int], seed: int,
                      block_cache: dict[int, list[int]]) -> list[int]:
    ids: list[int] = []
    block = spec.prefix_block_tokens
    for prefix_id in spec.prefix_ids:
        if len(ids) >= spec.prompt_tokens:
            break
        if prefix_id not in block_cache:
            block_cache[prefix_id] = random.Random(f"prefix:{seed}:{prefix_id}").choices(pool, k=block)
        ids.extend(block_cache[prefix_id])
    del ids[spec.prompt_tokens:]
    remaining = spec.prompt_tokens - len(ids)
    if remaining:
        ids.extend(random.Random(f"unique:{seed}:{spec.request_id}").choices(pool, k=remaining))
    return ids


def synthesize_prompts(workload: Workload, tokenizer: TextTokenizer, seed: int = 0,
                       verify: bool = True) -> Workload:
    """Fill `prompt` and `prompt_token_ids` so each prompt is exactly `prompt_tokens` tokens long.

    Each prefix block's tokens depend only on (seed, block id), so requests that share leading prefix ids
    share identical leading tokens and text. With `verify`, every prompt is checked to re-encode to its
    own ids; when one does not (an unusual tokenizer), `prompt_token_ids` stay the truth and a warning
    says how many prompts are affected, so a client should send token ids rather than text.
    """
    codec = _Codec(tokenizer)
    pool, pool_round_trips = _plain_word_pool(codec)
    block_sizes = {spec.prefix_block_tokens for spec in workload if spec.prefix_ids}
    if len(block_sizes) > 1:
        raise ValueError(f"workload mixes prefix block sizes {sorted(block_sizes)}; a prefix id would stand "
                         f"for different token counts")
    block_cache: dict[int, list[int]] = {}
    requests: list[RequestSpec] = []
    mismatched = 0
    for spec in workload:
        ids = _prompt_token_ids(spec, pool, seed, block_cache)
        prompt = codec.decode(ids)
        if verify and codec.encode(prompt) != ids:
            mismatched += 1
        requests.append(dataclasses.replace(spec, prompt=prompt, prompt_token_ids=ids))
    if mismatched or (not verify and not pool_round_trips):
        count = mismatched if verify else "an unknown number"
        warnings.warn(f"{count} of {len(requests)} synthesized prompts do not re-encode to their own token "
                      f"ids under this tokenizer; send prompt_token_ids rather than text", stacklevel=2)
    return Workload(requests, workload.name, workload.source,
                    [*workload.transforms, f"prompts synthesized (seed {seed})"])
