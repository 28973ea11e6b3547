"""The autoscaler's flags (`serve --replicas N --autoscale target|slo ...`): one group, whose defaults are
AutoscalerConfig's (fleetserve.fleet.autoscaler)."""
from __future__ import annotations

import argparse

from fleetserve.fleet.autoscale_slo import SLOPredictor
from fleetserve.fleet.autoscaler import POLICIES, Autoscaler, AutoscalerConfig

# Each flag and the AutoscalerConfig field it sets, so the config's own errors can name the flag.
_FIELDS = {"--min-replicas": "min_replicas", "--max-replicas": "max_replicas", "--autoscale-interval": "interval_s",
           "--target-ongoing-requests": "target_ongoing_requests", "--upscale-delay": "upscale_delay_s",
           "--downscale-delay": "downscale_delay_s", "--scale-cooldown": "cooldown_s"}

SLO_FLAGS = ("--autoscale-slo", "--autoscale-perf")


def add_autoscale_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = AutoscalerConfig()
    group = parser.add_argument_group("autoscaling (with --replicas N: N is the starting count)")
    group.add_argument("--autoscale", choices=POLICIES, default=None,
                       help="grow and shrink the fleet with its load: target (requests in flight per replica, as Ray "
                            "Serve does) or slo (the fewest replicas that hold --autoscale-slo); scaling in drains")
    group.add_argument("--min-replicas", type=int, default=defaults.min_replicas)
    group.add_argument("--max-replicas", type=int, default=defaults.max_replicas,
                       help="the KV-cache budget and the threads are split between this many replicas")
    group.add_argument("--autoscale-interval", type=float, default=defaults.interval_s, metavar="SECONDS",
                       help="how often the autoscaler looks at the fleet")
    group.add_argument("--target-ongoing-requests", type=float, default=defaults.target_ongoing_requests,
                       help="target: requests in flight per replica")
    group.add_argument("--upscale-delay", type=float, default=defaults.upscale_delay_s, metavar="SECONDS",
                       help="a higher replica count must be wanted this long before replicas start")
    group.add_argument("--downscale-delay", type=float, default=defaults.downscale_delay_s, metavar="SECONDS",
                       help="a lower one this long before replicas drain")
    group.add_argument("--scale-cooldown", type=float, default=defaults.cooldown_s, metavar="SECONDS",
                       help="at least this long between two scaling actions")
    group.add_argument("--autoscale-slo", default=None, metavar="ttft=MS,tpot=MS",
                       help="slo: the TTFT and TPOT targets to hold")
    group.add_argument("--autoscale-perf", default=None, metavar="PROFILE.json",
                       help="slo: the replicas' performance model, a `fleetserve profile` of their model on their "
                            "hardware")


def given_autoscale_flags(args: argparse.Namespace) -> list[str]:
    """The autoscaling flags set to other than their defaults."""
    defaults = AutoscalerConfig()
    given = [flag for flag, name in _FIELDS.items() if getattr(args, _dest(flag)) != getattr(defaults, name)]
    return given + [flag for flag in SLO_FLAGS if getattr(args, _dest(flag)) is not None]


def autoscaler_config(args: argparse.Namespace) -> AutoscalerConfig | None:
    """The autoscaler's config from the flags; None without --autoscale (where no autoscaling flag may be given)."""
    if args.autoscale is None:
        given = given_autoscale_flags(args)
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --autoscale {'|'.join(POLICIES)}")
        return None
    if args.autoscale != "slo":
        given = [flag for flag in SLO_FLAGS if getattr(args, _dest(flag)) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --autoscale slo")
    ttft_ms = tpot_ms = None
    if args.autoscale_slo is not None:
        from fleetserve.bench.metrics import parse_slo
        try:
            slo = parse_slo(args.autoscale_slo)
        except ValueError as exc:
            raise ValueError(f"--autoscale-slo: {exc}") from None
        if slo.e2e_ms is not None:
            raise ValueError("--autoscale-slo takes ttft and tpot targets only, e.g. ttft=2000,tpot=100")
        ttft_ms, tpot_ms = slo.ttft_ms, slo.tpot_ms
    try:
        return AutoscalerConfig(args.autoscale, ttft_slo_ms=ttft_ms, tpot_slo_ms=tpot_ms,
                                **{name: getattr(args, _dest(flag)) for flag, name in _FIELDS.items()})
    except ValueError as exc:
        message = str(exc).replace("ttft_slo_ms, tpot_slo_ms", "--autoscale-slo ttft=MS,tpot=MS")
        for flag, name in _FIELDS.items():
            message = message.replace(name, flag)
        raise ValueError(message) from None


def make_autoscaler(args: argparse.Namespace) -> Autoscaler | None:
    """The autoscaler the flags ask for (None without --autoscale); the slo policy's predictor comes from the
    --autoscale-perf profile and the replicas' token budget and sequence slots."""
    config = autoscaler_config(args)
    if config is None:
        return None
    if config.policy != "slo":
        return Autoscaler(config)
    if args.autoscale_perf is None:
        raise ValueError("--autoscale slo needs --autoscale-perf PROFILE.json, the replicas' performance model "
                         "(`fleetserve profile` of their model on their hardware)")
    from fleetserve.perf.profiled import ProfiledModel
    from fleetserve.sim.perf_setup import check_profile_model, load_model_config
    profile = ProfiledModel.load(args.autoscale_perf)
    check_profile_model(profile, load_model_config(args.model, None)[0])
    return Autoscaler(config, SLOPredictor(profile, args.max_num_batched_tokens, args.max_num_seqs))


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")
