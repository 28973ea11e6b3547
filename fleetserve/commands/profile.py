"""`fleetserve profile`: measure the engine's step time on this machine and save a fitted model that
`fleetserve sim --perf PATH` uses (fleetserve.perf.profiled)."""
from __future__ import annotations

import argparse

from fleetserve.commands.engine_arguments import add_engine_arguments, engine_options


def add_profile_arguments(p: argparse.ArgumentParser) -> None:
    add_engine_arguments(p)
    p.add_argument("--out", default="profile.json", help="where to write the profile JSON")
    p.add_argument("--hardware", default=None,
                   help="catalog name of this machine's hardware, which the profile stands for in fleet specs "
                        "(default: cpu on a CPU, else the catalog entry named in the GPU's name)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per grid point")
    p.add_argument("--seed", type=int, default=0, help="seed for the placed prompts")


def run(args: argparse.Namespace) -> int:
    import platform
    import time
    from datetime import datetime, timezone
    from pathlib import Path

    import torch

    from fleetserve.engine.config import EngineConfig
    from fleetserve.engine.engine import LLMEngine
    from fleetserve.perf.engine_profiler import EngineProfiler, default_grid
    from fleetserve.perf.hardware import get_hardware
    from fleetserve.perf.profiled import ProfiledModel

    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.max_step_ms is not None:
        raise ValueError(f"--max-step-ms {args.max_step_ms} cannot be profiled: the profile times the batch shapes "
                         f"of its grid, which a step-time bound would cut into other chunks; leave it out")
    if args.speculative_config is not None:
        raise ValueError("--speculative-config cannot be profiled: the profile times the batch shapes of its grid, "
                         "which drafts would change; leave it out (a verification step is priced as decode rows)")
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {args.out!r} is a folder; give a file path")
    started = time.perf_counter()
    engine = LLMEngine(EngineConfig(**engine_options(args)))
    hardware = get_hardware(args.hardware or _detect_hardware(engine.device)).name
    config = engine.config
    grid = default_grid(config.max_num_seqs, config.max_num_batched_tokens)
    print(f"profiling {engine.model_name} on {hardware} ({engine.device}, {engine.dtype}, KV "
          f"{engine.kv_cache_dtype}, {torch.get_num_threads()} threads): {len(grid)} batch shapes, "
          f"{args.steps} timed steps each", flush=True)
    profiler = EngineProfiler(engine, timed_steps=args.steps, seed=args.seed)
    samples = profiler.measure(grid, progress=True)
    measured_on = {
        "device": str(engine.device), "processor": _processor_name(engine.device) or platform.processor(),
        "threads": torch.get_num_threads(), "model": engine.model_name, "model_path": str(engine.model_path),
        "model_config": engine.model_config.to_dict(), "dtype": str(engine.dtype).removeprefix("torch."),
        "kv_cache_dtype": str(engine.kv_cache_dtype).removeprefix("torch."),
        "engine": {"block_size": config.block_size, "max_num_seqs": config.max_num_seqs,
                   "max_num_batched_tokens": config.max_num_batched_tokens, "max_model_len": engine.max_model_len,
                   "kv_cache_memory": config.kv_cache_memory, "kv_blocks": engine.kv_cache.num_blocks,
                   "prefix_caching": config.enable_prefix_caching},
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "skipped_grid_points": [f"{point}: {reason}" for point, reason in profiler.skipped],
    }
    capacity = engine.kv_cache.num_blocks * engine.kv_cache.block_size
    model = ProfiledModel.fit(samples, capacity, hardware, measured_on)
    model.save(out)
    errors = model.fit_errors()
    print(f"fitted {', '.join(f'{name}={value:.3g}' for name, value in model.coefficients.items())}")
    print(f"fit over {len(samples)} steps: mean relative error {errors['mean_relative_error']:.1%}, "
          f"max {errors['max_relative_error']:.1%}; took {time.perf_counter() - started:.0f} s")
    for point, reason in profiler.skipped:
        print(f"skipped {point}: {reason}")
    print(f"wrote {out}")
    return 0


def _detect_hardware(device) -> str:
    if device.type == "cpu":
        return "cpu"
    import torch

    from fleetserve.perf.hardware import CATALOG
    name = torch.cuda.get_device_name(device).lower()
    matches = [key for key in CATALOG if key != "cpu" and key in name.replace(" ", "")]
    if len(matches) != 1:
        raise ValueError(f"cannot tell which catalog hardware {name!r} is ({matches or 'none match'}); "
                         f"pass --hardware NAME")
    return matches[0]


def _processor_name(device) -> str | None:
    if device.type == "cuda":
        import torch
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None
