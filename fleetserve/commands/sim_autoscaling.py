"""`fleetserve sim --autoscale target|slo`: the fleet grows and shrinks as the live fleet's autoscaler decides,
each new replica serving after a cold start (fleetserve.sim.autoscaling). Defaults are those of
AutoscalerConfig and ColdStart."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from fleetserve.commands.argument_types import positive
from fleetserve.fleet.autoscaler import POLICIES, AutoscalerConfig
from fleetserve.perf.cold_start import ColdStart

if TYPE_CHECKING:
    from fleetserve.bench.metrics import SLO
    from fleetserve.model.config import ModelConfig
    from fleetserve.sim.config import Autoscaling

_DEFAULTS = AutoscalerConfig()
_COLD_START = ColdStart()
# flag -> AutoscalerConfig field
_CONFIG_FLAGS = {"min_replicas": "min_replicas", "max_replicas": "max_replicas", "autoscale_interval": "interval_s",
                 "target_ongoing_requests": "target_ongoing_requests", "upscale_delay": "upscale_delay_s",
                 "downscale_delay": "downscale_delay_s", "scale_cooldown": "cooldown_s",
                 "slo_headroom": "slo_headroom", "rate_window": "rate_window_s"}
_COLD_START_FLAGS = ("cold_start", "load_bandwidth")


def add_autoscaling_arguments(p: argparse._ActionsContainer) -> None:
    p.add_argument("--autoscale", choices=POLICIES, default=None,
                   help="scale the fleet (one hardware; its --fleet count is where it starts): 'target' (requests in "
                        "flight per replica, as Ray Serve) or 'slo' (the fewest replicas whose predicted TTFT and "
                        "TPOT hold --slo)")
    p.add_argument("--min-replicas", type=positive(int), default=None, help=f"default {_DEFAULTS.min_replicas}")
    p.add_argument("--max-replicas", type=positive(int), default=None, help=f"default {_DEFAULTS.max_replicas}")
    p.add_argument("--autoscale-interval", type=positive(float), default=None,
                   help=f"simulated seconds between decisions (default {_DEFAULTS.interval_s:g})")
    p.add_argument("--target-ongoing-requests", type=positive(float), default=None,
                   help=f"target: requests in flight per replica (default {_DEFAULTS.target_ongoing_requests:g})")
    p.add_argument("--upscale-delay", type=float, default=None,
                   help=f"seconds a higher count must be wanted before replicas start "
                        f"(default {_DEFAULTS.upscale_delay_s:g})")
    p.add_argument("--downscale-delay", type=float, default=None,
                   help=f"seconds a lower count must be wanted before replicas drain "
                        f"(default {_DEFAULTS.downscale_delay_s:g})")
    p.add_argument("--scale-cooldown", type=float, default=None,
                   help=f"least seconds between two scaling actions (default {_DEFAULTS.cooldown_s:g})")
    p.add_argument("--slo-headroom", type=float, default=None,
                   help=f"slo: predicted mean TTFT and TPOT must stay under this share of --slo "
                        f"(default {_DEFAULTS.slo_headroom:g})")
    p.add_argument("--rate-window", type=positive(float), default=None,
                   help=f"slo: seconds over which the arrival rate is measured (default {_DEFAULTS.rate_window_s:g})")
    p.add_argument("--cold-start", type=float, default=None,
                   help=f"fixed seconds of a replica's start besides loading its weights "
                        f"(default {_COLD_START.fixed_s:g})")
    p.add_argument("--load-bandwidth", type=positive(float), default=None,
                   help=f"GB/s at which weights are read from storage; the hardware's host link also bounds it "
                        f"(default {_COLD_START.storage_read_bytes_s / 1e9:g})")


def autoscaling_of(args: argparse.Namespace, slo: SLO | None, model_config: ModelConfig) -> Autoscaling | None:
    """The autoscaling from the flags; None without --autoscale (which refuses the other flags)."""
    from fleetserve.perf.cold_start import model_weight_bytes
    from fleetserve.sim.config import Autoscaling
    flags = (*_CONFIG_FLAGS, *_COLD_START_FLAGS)
    if args.autoscale is None:
        given = [f"--{flag.replace('_', '-')}" for flag in flags if getattr(args, flag) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need --autoscale target|slo")
        return None
    if args.autoscale == "slo" and (slo is None or (slo.ttft_ms is None and slo.tpot_ms is None)):
        raise ValueError("--autoscale slo holds the --slo targets: give --slo ttft=MS,tpot=MS")
    given = {field: getattr(args, flag) for flag, field in _CONFIG_FLAGS.items() if getattr(args, flag) is not None}
    config = AutoscalerConfig(policy=args.autoscale, ttft_slo_ms=slo.ttft_ms if slo else None,
                              tpot_slo_ms=slo.tpot_ms if slo else None, **given)
    cold_start = ColdStart(**{name: value for name, value in (
        ("fixed_s", args.cold_start),
        ("storage_read_bytes_s", args.load_bandwidth * 1e9 if args.load_bandwidth is not None else None))
        if value is not None})
    return Autoscaling(config, model_weight_bytes(model_config), cold_start)


def autoscaling_config(autoscaling: Autoscaling | None) -> dict[str, Any]:
    """For the result's config; absent without autoscaling, so such runs compare equal."""
    if autoscaling is None:
        return {}
    import dataclasses
    return {"autoscaling": {**dataclasses.asdict(autoscaling.config), "model_bytes": autoscaling.model_bytes,
                            "cold_start": dataclasses.asdict(autoscaling.cold_start)}}


def print_autoscaling(console: Any, stats: dict[str, Any]) -> None:
    hours = stats["replica_hours"]
    console.print(f"autoscaling ({stats['config']['policy']}): {stats['gpu_hours']:.2f} GPU-hours "
                  f"(${stats['cost_usd']:,.2f}), mean {stats['mean_replicas']:.2f} replicas, peak "
                  f"{stats['peak_replicas']}; {stats['starts']} starts (cold start {stats['cold_start_s']:.1f} s), "
                  f"{stats['drains']} drains; replica-hours serving {hours['serving']:.2f}, starting "
                  f"{hours['starting']:.2f}, draining {hours['draining']:.2f}")
