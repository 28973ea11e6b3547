"""The KV hand-off from a prefill replica to a decode replica: vLLM's `kv_transfer_params`, and the binary
payload the decode replica fetches.

The protocol is the one vLLM's disaggregation proxies drive (its NixlConnector's): a proxy sends the
prefill replica the client's request with `max_tokens=1` and `kv_transfer_params` =
`{"do_remote_decode": true, ...}`; the response carries `kv_transfer_params` naming where the KV waits
(`remote_host`, `remote_port`, `remote_request_id`, ...), and the proxy sends the client's request with those
params to the decode replica. fleetserve adds three fields, which proxies pass through untouched:
`first_token_id` (the token the prefill replica sampled, which the decode replica emits first),
`num_prompt_tokens` and `prompt_hash` (so a decode replica never imports KV computed for another prompt).

The decode replica fetches `GET /v1/kv_transfer/{remote_request_id}?start=N` (N: the prompt tokens it already
holds in its prefix cache). The answer, streamed in chunks, is
    b"FSKV" | header length (4 bytes, little-endian) | header (JSON) | body
where the body is the KV of prompt tokens [start, end) laid out (tokens, layers, 2, kv_heads, head_dim) in
the header's dtype, and the header carries the body's CRC-32, so a cut or corrupted transfer is detected.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from array import array
from dataclasses import asdict, dataclass
from typing import Any, Sequence

MAGIC = b"FSKV"
VERSION = 1
CHUNK_BYTES = 1 << 20
CONTENT_TYPE = "application/octet-stream"


class KVTransferError(ValueError):
    """A payload that cannot be used: cut short, corrupted, or for another model or prompt."""


def prompt_hash(token_ids: Sequence[int]) -> str:
    return hashlib.blake2b(array("I", token_ids).tobytes(), digest_size=16).hexdigest()


def kv_transfer_path(request_id: str) -> str:
    return f"/v1/kv_transfer/{request_id}"


@dataclass(frozen=True)
class KVShape:
    """What both sides must agree on for the bytes to mean the same KV."""
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str  # torch's name without the prefix: "bfloat16", "float32", ...


@dataclass(frozen=True)
class PayloadHeader:
    shape: KVShape
    start: int
    end: int
    prompt_hash: str
    crc32: int
    body_bytes: int

    def to_bytes(self) -> bytes:
        raw = asdict(self)
        raw["version"] = VERSION
        text = json.dumps(raw, separators=(",", ":")).encode()
        return MAGIC + struct.pack("<I", len(text)) + text

    @classmethod
    def parse(cls, data: bytes) -> tuple[PayloadHeader, int]:
        """The header at the start of `data` and where the body begins."""
        if len(data) < 8 or data[:4] != MAGIC:
            raise KVTransferError("the KV payload does not start with the FSKV header")
        (length,) = struct.unpack("<I", data[4:8])
        if len(data) < 8 + length:
            raise KVTransferError("the KV payload ends inside its header")
        try:
            raw: dict[str, Any] = json.loads(data[8:8 + length])
            if raw.pop("version") != VERSION:
                raise KVTransferError(f"KV payload version {raw.get('version')} is not {VERSION}")
            header = cls(shape=KVShape(**raw.pop("shape")), **raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise KVTransferError(f"the KV payload's header is malformed: {exc}") from None
        return header, 8 + length


def encode_payload(shape: KVShape, start: int, end: int, token_ids: Sequence[int],
                   body: memoryview | bytes) -> tuple[bytes, list[memoryview]]:
    """The payload's header and its body (flat bytes) in chunks of at most CHUNK_BYTES (views, not copies)."""
    body = memoryview(body)
    header = PayloadHeader(shape, start, end, prompt_hash(token_ids), zlib.crc32(body), len(body))
    return header.to_bytes(), [body[i:i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)]


def decode_payload(data: bytearray, expected: KVShape, token_ids: Sequence[int],
                   start: int) -> tuple[PayloadHeader, memoryview]:
    """Check a received payload against what the decode replica expects; returns the header and the body."""
    header, offset = PayloadHeader.parse(bytes(data[:64 * 1024]))
    body = memoryview(data)[offset:]
    if len(body) != header.body_bytes:
        raise KVTransferError(f"the KV payload was cut short: {len(body)} of {header.body_bytes} body bytes")
    if zlib.crc32(body) != header.crc32:
        raise KVTransferError("the KV payload is corrupted: its CRC-32 does not match")
    if header.shape != expected:
        raise KVTransferError(f"the KV payload is for another model shape ({header.shape}, here {expected})")
    if header.prompt_hash != prompt_hash(token_ids) or header.end != len(token_ids):
        raise KVTransferError("the KV payload was computed for another prompt")
    if header.start != start:
        raise KVTransferError(f"the KV payload starts at token {header.start}, {start} was asked for")
    return header, body
