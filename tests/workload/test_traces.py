"""Trace readers on slices of the real traces, prompt synthesis, and errors for bad input."""
from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path

import pytest

from fleetserve.workload import (
    RequestSpec,
    TraceError,
    Workload,
    read_azure,
    read_burstgpt,
    read_mooncake,
    read_trace,
    synthesize_prompts,
)

DATA = Path(__file__).resolve().parents[1] / "data"
AZURE = DATA / "azure_llm_2023_conv_head300.csv"
MOONCAKE = DATA / "mooncake_synthetic_head200.jsonl"
BURSTGPT_ORIGINAL = DATA / "burstgpt_original_sample.csv"
BURSTGPT_V1_1 = DATA / "burstgpt_v1_1_sample.csv"


class WordTokenizer:
    """One id per whitespace-separated word, ids handed out on first sight."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.words: list[str] = []

    def encode(self, text: str) -> list[int]:
        for word in text.split():
            if word not in self.ids:
                self.ids[word] = len(self.words)
                self.words.append(word)
        return [self.ids[word] for word in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)


def mooncake_rows() -> list[dict]:
    return [json.loads(line) for line in MOONCAKE.read_text().splitlines()]


def test_azure_slice_counts_lengths_and_spacing() -> None:
    workload = read_azure(AZURE)
    lines = AZURE.read_text().splitlines()[1:]
    assert len(workload) == len(lines) == 300
    clock_times = [line.split(",")[0].split(" ")[1].split(":") for line in lines]  # one day in this slice
    stamps = [3600 * int(hours) + 60 * int(minutes) + Decimal(seconds) for hours, minutes, seconds in clock_times]
    arrivals = [spec.arrival_s for spec in workload]
    assert arrivals[0] == 0.0
    assert all(earlier <= later for earlier, later in zip(arrivals, arrivals[1:]))
    assert arrivals == pytest.approx([float(stamp - stamps[0]) for stamp in stamps], abs=1e-6)
    first = workload.requests[0]
    assert (first.prompt_tokens, first.output_tokens) == (374, 44)
    assert workload.name == "azure_llm_2023_conv_head300" and workload.source == str(AZURE)


def test_mooncake_slice_keeps_timing_and_hash_ids() -> None:
    workload = read_mooncake(MOONCAKE)
    rows = mooncake_rows()
    assert len(workload) == len(rows) == 200
    assert [spec.arrival_s for spec in workload] == [row["timestamp"] / 1000 for row in rows]
    assert [spec.prefix_ids for spec in workload] == [row["hash_ids"] for row in rows]
    assert [spec.prompt_tokens for spec in workload] == [row["input_length"] for row in rows]
    assert all(spec.prefix_block_tokens == 512 for spec in workload)


def test_burstgpt_original_layout_skips_failed_rows() -> None:
    workload = read_burstgpt(BURSTGPT_ORIGINAL)
    assert [spec.arrival_s for spec in workload] == [0, 113, 113, 165, 206, 285]
    assert [spec.output_tokens for spec in workload] == [18, 276, 192, 67, 410, 35]
    assert all(spec.session_id is None for spec in workload)
    assert any("skipped 1 rows" in note for note in workload.transforms)
    assert len(read_burstgpt(BURSTGPT_ORIGINAL, model="GPT-4")) == 2


def test_burstgpt_v1_1_layout_reads_sessions_by_name() -> None:
    workload = read_burstgpt(BURSTGPT_V1_1)
    assert [spec.prompt_tokens for spec in workload] == [312, 740, 420, 1012, 530]
    assert [(spec.session_id, spec.turn) for spec in workload] == [
        ("s-17", 0), ("s-42", 0), ("s-17", 1), ("s-42", 1), ("s-17", 2)]
    assert [spec.arrival_s for spec in workload] == [0.0, 2.5, 9.0, 14.25, 20.0]


@pytest.mark.parametrize(("path", "prefix"), [(AZURE, "azure-"), (MOONCAKE, "mooncake-"),
                                              (BURSTGPT_ORIGINAL, "burstgpt-"), (BURSTGPT_V1_1, "burstgpt-")])
def test_read_trace_detects_the_format(path: Path, prefix: str) -> None:
    assert read_trace(path).requests[0].request_id.startswith(prefix)


def test_read_trace_with_explicit_kind(tmp_path: Path) -> None:
    renamed = tmp_path / "trace.txt"
    renamed.write_text(MOONCAKE.read_text())
    assert len(read_trace(renamed, kind="mooncake")) == 200
    with pytest.raises(TraceError, match="unknown trace kind 'splitwise'"):
        read_trace(renamed, kind="splitwise")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    for reader in (read_trace, read_azure, read_mooncake, read_burstgpt):
        with pytest.raises(TraceError, match="not found: .*nope.csv"):
            reader(missing)
    assert issubclass(TraceError, ValueError)


def test_unknown_columns_are_listed_with_the_expected_ones(tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("time,prompt,answer\n1,2,3\n")
    with pytest.raises(TraceError, match=r"\['time', 'prompt', 'answer'\].*TIMESTAMP.*Request tokens"):
        read_trace(path)
    with pytest.raises(TraceError, match=r"azure layout; missing \['TIMESTAMP', 'ContextTokens'"):
        read_azure(BURSTGPT_V1_1)


@pytest.mark.parametrize(("name", "text"), [
    ("header_only.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"),
    ("blank.csv", ""),
    ("blank.jsonl", "\n"),
])
def test_empty_trace_is_an_error(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TraceError, match="empty|no requests"):
        read_trace(path)


def test_bad_values_name_the_line_and_value(tmp_path: Path) -> None:
    azure = tmp_path / "azure.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,12,x7\n")
    with pytest.raises(TraceError, match=r"azure.csv:2: column 'GeneratedTokens' has 'x7'"):
        read_azure(azure)
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,12,7\n")
    with pytest.raises(TraceError, match="TIMESTAMP 'yesterday'"):
        read_azure(azure)
    mooncake = tmp_path / "mooncake.jsonl"
    mooncake.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n{"timestamp": 3,\n')
    with pytest.raises(TraceError, match="mooncake.jsonl:2: not a JSON object"):
        read_mooncake(mooncake)


def shared_prefix_length(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_synthesized_mooncake_prompts_share_their_hash_id_prefixes() -> None:
    workload = read_mooncake(MOONCAKE)
    # request pairs in the slice that share their first 67, 12 (identical prompts) and 5 hash ids
    pairs = [(1, 121), (124, 180), (74, 90)]
    subset = Workload([workload.requests[i] for pair in pairs for i in pair], "pairs", workload.source)
    tokenizer = WordTokenizer()
    synthesized = {spec.request_id: spec for spec in synthesize_prompts(subset, tokenizer)}
    for first, second in pairs:
        a, b = synthesized[f"mooncake-{first}"], synthesized[f"mooncake-{second}"]
        k = shared_prefix_length(a.prefix_ids, b.prefix_ids)
        shared_tokens = min(k * 512, a.prompt_tokens, b.prompt_tokens)
        assert a.prompt_token_ids[:shared_tokens] == b.prompt_token_ids[:shared_tokens]
        for spec in (a, b):
            assert len(spec.prompt_token_ids) == spec.prompt_tokens
            assert tokenizer.encode(spec.prompt) == spec.prompt_token_ids
        if a.prompt_tokens != b.prompt_tokens or a.prefix_ids != b.prefix_ids:
            assert a.prompt_token_ids != b.prompt_token_ids
        shared_text = tokenizer.decode(a.prompt_token_ids[:shared_tokens])
        assert a.prompt.startswith(shared_text) and b.prompt.startswith(shared_text)


def test_synthesis_is_deterministic_per_seed() -> None:
    workload = read_mooncake(MOONCAKE).head(3).cap_lengths(max_prompt=700)
    tokenizer = WordTokenizer()
    once = synthesize_prompts(workload, tokenizer, seed=1)
    again = synthesize_prompts(workload, tokenizer, seed=1)
    other = synthesize_prompts(workload, tokenizer, seed=2)
    assert [s.prompt for s in once] == [s.prompt for s in again]
    assert [s.prompt for s in once] != [s.prompt for s in other]


class SpecialFlagTokenizer(WordTokenizer):
    """The signature of fleetserve's own tokenizer wrapper: a BOS unless add_special_tokens=False."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:  # type: ignore[override]
        return ([999_999] if add_special_tokens else []) + super().encode(text)


def test_tokenizer_with_special_token_flag_gets_exact_counts() -> None:
    workload = Workload([RequestSpec("r", 0.0, prompt_tokens=37, output_tokens=1)], "one", "test")
    spec = synthesize_prompts(workload, SpecialFlagTokenizer()).requests[0]
    assert len(spec.prompt_token_ids) == 37 and 999_999 not in spec.prompt_token_ids


class CharTokenizer:
    """No English word is a single token here, so synthesis falls back to the ids of plain text."""

    def encode(self, text: str) -> list[int]:
        return [ord(char) for char in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


class LossyCharTokenizer(CharTokenizer):
    def decode(self, ids: list[int]) -> str:
        return " ".join(super().decode(ids).split())


def test_tokenizer_without_word_tokens_falls_back_to_exact_ids() -> None:
    workload = Workload([RequestSpec("r", 0.0, prompt_tokens=300, output_tokens=1)], "one", "test")
    spec = synthesize_prompts(workload, CharTokenizer()).requests[0]
    assert len(spec.prompt_token_ids) == 300 and CharTokenizer().encode(spec.prompt) == spec.prompt_token_ids
    with pytest.warns(UserWarning, match="1 of 1 synthesized prompts do not re-encode"):
        lossy = synthesize_prompts(workload, LossyCharTokenizer()).requests[0]
    assert len(lossy.prompt_token_ids) == 300


def test_huggingface_bpe_tokenizer_gets_exact_counts_and_shared_prefixes() -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from fleetserve.workload.traces import _WORDS
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=2000, show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([" ".join(_WORDS)] * 3, trainer=trainer)
    specs = [RequestSpec("a", 0.0, 300, 1, prefix_ids=[7, 8], prefix_block_tokens=128),
             RequestSpec("b", 1.0, 200, 1, prefix_ids=[7, 9], prefix_block_tokens=128)]
    a, b = synthesize_prompts(Workload(specs, "bpe", "test"), tokenizer).requests
    assert len(a.prompt_token_ids) == 300 and len(b.prompt_token_ids) == 200
    assert tokenizer.encode(a.prompt).ids == a.prompt_token_ids
    assert a.prompt_token_ids[:128] == b.prompt_token_ids[:128]
    assert a.prompt_token_ids[128:200] != b.prompt_token_ids[128:200]


def test_scaling_helpers_keep_the_shared_fraction_and_record_themselves() -> None:
    workload = read_mooncake(MOONCAKE)
    scaled = workload.scaled(4.0).scale_lengths(0.25, output_factor=1.0)
    spec, original = scaled.requests[3], workload.requests[3]
    assert spec.arrival_s == pytest.approx(original.arrival_s / 4)
    assert spec.prefix_block_tokens == 128
    assert spec.prompt_tokens == round(original.prompt_tokens * 0.25)
    assert len(spec.prefix_ids) == math.ceil(spec.prompt_tokens / 128)
    assert spec.output_tokens == original.output_tokens
    assert scaled.transforms == ["time compressed x4", "lengths scaled prompt x0.25 output x1"]

    capped = workload.cap_lengths(max_prompt=1000, max_output=5)
    assert max(s.prompt_tokens for s in capped) == 1000 and max(s.output_tokens for s in capped) == 5
    assert all(len(s.prefix_ids) <= 2 for s in capped)

    window = workload.window(10.0, start_s=20.0)
    assert all(0 <= s.arrival_s < 10.0 for s in window)
    assert len(window) == sum(1 for s in workload if 20.0 <= s.arrival_s < 30.0)
    assert len(workload.head(5)) == 5


def test_workload_json_round_trip() -> None:
    workload = read_burstgpt(BURSTGPT_V1_1).head(2)
    data = json.loads(json.dumps(workload.to_jsonable()))
    assert Workload.from_jsonable(data) == workload
    with pytest.raises(ValueError, match="unknown request spec fields \\['colour'\\]"):
        RequestSpec.from_jsonable({**data["requests"][0], "colour": "red"})


def test_request_spec_rejects_impossible_lengths() -> None:
    with pytest.raises(ValueError, match="prompt_tokens must be >= 1, got 0"):
        RequestSpec("r", 0.0, prompt_tokens=0, output_tokens=3)
