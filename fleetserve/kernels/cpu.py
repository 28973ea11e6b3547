"""The CPU kernels: small C files compiled once per machine with the system compiler and called through
ctypes (which releases the GIL). Without a compiler the engine runs its torch paths instead."""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

KERNELS = Path(__file__).parent
ATTENTION_SOURCE = KERNELS / "paged_attention_cpu.c"
QUANTIZED_SOURCE = KERNELS / "quantized_matmul_cpu.c"
DECODE_LAYERS_SOURCE = KERNELS / "decode_layers_cpu.c"  # includes the two above
# -ffp-contract=off: dequantizing must round d*q and +m separately, exactly as the gguf package does.
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared"]
_loaded: dict[Path, ctypes.CDLL | None] = {}

_P, _I = ctypes.c_void_p, ctypes.c_int
_SIGNATURES: dict[Path, dict[str, tuple[Any, list[Any]]]] = {
    ATTENTION_SOURCE: {
        "paged_decode_attention": (None, [_P] * 5 + [_I] * 5 + [ctypes.c_int64, _I, ctypes.c_float, _I]),
    },
    QUANTIZED_SOURCE: {
        "dequantize_rows": (_I, [_I, _P, _I, _P, _I, _P]),
        "quantized_matmul": (_I, [_I, _P, _I, _I, _P, _I, _P, _P]),
        "fused_max_rows": (_I, []),
    },
    DECODE_LAYERS_SOURCE: {
        "decode_layers": (_I, [_P, _P, _P, _P, _I, _P, _P, _P, _I, _P]),
    },
}


def _build(source: Path, target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run([compiler, *_FLAGS, str(source), "-o", str(built), "-lm"], check=True, capture_output=True)
        os.replace(built, target)


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line for line in text.splitlines() if line.startswith("flags")), "")


def _load_source(source: Path, cache_dir: Path) -> ctypes.CDLL | None:
    if source in _loaded:
        return _loaded[source]
    if os.environ.get("FLEETSERVE_NO_C_KERNELS"):
        return None
    # -march=native code must not travel to another CPU through a shared cache folder.
    sources = b"".join(path.read_bytes() for path in sorted(KERNELS.glob("*.c")))  # a source may include another
    digest = hashlib.sha256(sources + " ".join(_FLAGS).encode() + _cpu_flags().encode()).hexdigest()[:16]
    target = cache_dir / "kernels" / f"{source.stem}-{digest}.so"
    try:
        if not target.exists():
            _build(source, target)
        library = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.CalledProcessError):
        _loaded[source] = None
        return None
    for name, (restype, argtypes) in _SIGNATURES[source].items():
        function = getattr(library, name)
        function.restype, function.argtypes = restype, argtypes
    library.set_threads.argtypes = [_I]
    library.set_threads(torch.get_num_threads())
    _loaded[source] = library
    return library


def set_threads(count: int) -> None:
    """Thread count for torch and for every loaded C kernel library (each has its own OpenMP setting)."""
    torch.set_num_threads(count)
    for library in _loaded.values():
        if library is not None:
            library.set_threads(count)


def load(cache_dir: Path) -> ctypes.CDLL | None:
    """The decode-attention kernel, or None where it cannot be built."""
    return _load_source(ATTENTION_SOURCE, cache_dir)


def load_quantized(cache_dir: Path) -> ctypes.CDLL | None:
    """The GGUF-block matmul kernels, or None where they cannot be built."""
    return _load_source(QUANTIZED_SOURCE, cache_dir)


def load_decode_layers(cache_dir: Path) -> ctypes.CDLL | None:
    """The whole-layer decode step, or None where it cannot be built."""
    return _load_source(DECODE_LAYERS_SOURCE, cache_dir)


def paged_decode_attention(library: ctypes.CDLL, q: torch.Tensor, kv_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """q: [batch, heads, head_dim] fp32 contiguous -> [batch, heads, head_dim]."""
    batch, heads, head_dim = q.shape
    _, kv_heads, num_blocks, block_size, _ = kv_cache.shape
    out = torch.empty_like(q)
    library.paged_decode_attention(q.data_ptr(), kv_cache.data_ptr(), block_tables.data_ptr(), seq_lens.data_ptr(),
                                   out.data_ptr(), batch, heads, kv_heads, head_dim, block_size, num_blocks,
                                   block_tables.shape[1], scale, int(kv_cache.dtype == torch.bfloat16))
    return out
