"""The CPU decode-attention kernel: a small C file compiled once per machine with the system compiler and
called through ctypes (which releases the GIL). Without a compiler the torch implementation is used."""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("paged_attention_cpu.c")
_library: ctypes.CDLL | None = None
_failed = False


def _build(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run([compiler, "-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared",
                        str(SOURCE), "-o", str(built), "-lm"], check=True, capture_output=True)
        os.replace(built, target)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def load(cache_dir: Path) -> ctypes.CDLL | None:
    global _library, _failed
    if _library is not None or _failed or os.environ.get("FLEETSERVE_NO_C_KERNELS"):
        return _library
    # -march=native code must not travel to another CPU through a shared cache folder.
    cpu_flags = next((line for line in _cpuinfo().splitlines() if line.startswith("flags")), "")
    digest = hashlib.sha256(SOURCE.read_bytes() + cpu_flags.encode()).hexdigest()[:16]
    target = cache_dir / "kernels" / f"paged_attention_cpu-{digest}.so"
    try:
        if not target.exists():
            _build(target)
        library = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.CalledProcessError):
        _failed = True
        return None
    library.paged_decode_attention.restype = None
    library.paged_decode_attention.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 5 + [
        ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_int]
    library.set_threads.argtypes = [ctypes.c_int]
    library.set_threads(torch.get_num_threads())
    _library = library
    return library


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
