"""`fleetserve route`: one OpenAI-compatible endpoint in front of fleetserve replicas or any OpenAI-compatible
engine (vLLM, SGLang, llama.cpp server).

Also runnable on its own: python -m fleetserve.commands.route --backend http://127.0.0.1:8001 --port 8000
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fleetserve.commands.batch_arguments import add_batch_arguments, batch_options
from fleetserve.fleet.config import RouterConfig
from fleetserve.fleet.disaggregation import MODES, ROLES, DisaggregationRule, check_role
from fleetserve.fleet.offline_gate import OfflineGate
from fleetserve.fleet.policies import ALL_POLICY_NAMES, PolicyOptions
from fleetserve.fleet.routing_plan import RoutingPlan

LOG_LEVELS = ["critical", "error", "warning", "info", "debug"]


def add_policy_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The routing policy and its options, shared by `route`, `serve --replicas N` and `sim`."""
    parser.add_argument("--policy", choices=ALL_POLICY_NAMES, default=RouterConfig.policy,
                        help="routing policy (a request may pick another with the x-fleetserve-policy header)")
    parser.add_argument("--ttft-slo-ms", type=float, default=PolicyOptions.default_ttft_slo_ms,
                        help="prefix, two_choice: default TTFT SLO; a request whose estimated TTFT misses it goes "
                             "to the least loaded replica if that one meets it (a request may set "
                             "x-fleetserve-ttft-slo-ms)")
    parser.add_argument("--prefill-tokens-per-s", type=float, default=PolicyOptions.default_prefill_tokens_per_s,
                        help="prefix, two_choice: prefill speed assumed until one is measured (0: no SLO guard "
                             "until then)")
    epsilon = PolicyOptions.session_load_epsilon
    parser.add_argument("--session-load-factor", type=float, default=0.0 if epsilon is None else 1 + epsilon,
                        help="session: a replica whose queued work is over this many times the fleet's mean passes "
                             "the session on to the next replica of the ring (0: never)")
    parser.add_argument("--max-imbalance-tokens", type=int, default=PolicyOptions.max_imbalance_tokens,
                        help="prefix: turn on the imbalance guard: a request leaves its cheapest replica when that "
                             "one's queued work is this many tokens and --max-imbalance-ratio times above the least "
                             "loaded replica's (default: off)")
    parser.add_argument("--max-imbalance-ratio", type=float, default=PolicyOptions.max_imbalance_ratio,
                        help="prefix: the imbalance guard's ratio")
    parser.add_argument("--hot-key-factor", type=float, default=PolicyOptions.hot_key_factor,
                        help="two_choice: a prompt prefix carrying more than this many replicas' fair share of "
                             "recent requests is too hot to key on, and a longer prefix is used (0: always the "
                             "first block)")
    parser.add_argument("--online-busy-in-flight", type=int, default=OfflineGate.online_busy_in_flight,
                        help="offline work: a replica with this many online requests in flight takes no more "
                             "offline requests; when every replica is busy, offline requests wait at the router")
    parser.add_argument("--offline-max-in-flight", type=int, default=OfflineGate.offline_max_in_flight,
                        help="offline work: the most offline requests the router keeps on one replica")
    parser.add_argument("--plan", default=None, metavar="PLAN.json",
                        help="bucket: the capacity plan to route by, the JSON `fleetserve plan --json` writes (its "
                             "per-bucket shares of each hardware pool)")


def load_routing_plan(path: str) -> RoutingPlan:
    """The routing plan in a `fleetserve plan --json` file (under "routing"), or a bare routing-plan file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"cannot read the plan {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"the plan {path} is not JSON: {error}") from None
    if isinstance(data, dict) and isinstance(data.get("routing"), dict):
        data = data["routing"]
    if not isinstance(data, dict):
        raise ValueError(f"the plan {path} holds no routing plan (want a `fleetserve plan --json` file)")
    try:
        return RoutingPlan.from_jsonable(data)
    except ValueError as error:
        raise ValueError(f"the plan {path}: {error}; want a `fleetserve plan --json` file") from None


def policy_options(args: argparse.Namespace) -> PolicyOptions:
    """PolicyOptions from the flags of `add_policy_arguments`."""
    if args.ttft_slo_ms is not None and not args.ttft_slo_ms > 0:
        raise ValueError(f"--ttft-slo-ms must be positive, got {args.ttft_slo_ms}")
    if args.session_load_factor != 0 and not args.session_load_factor >= 1:
        raise ValueError(f"--session-load-factor must be >= 1 (or 0: no bound), got {args.session_load_factor}")
    session_load_epsilon = args.session_load_factor - 1 if args.session_load_factor else None
    routing_plan = load_routing_plan(args.plan) if args.plan is not None else None
    return PolicyOptions(max_imbalance_tokens=args.max_imbalance_tokens, max_imbalance_ratio=args.max_imbalance_ratio,
                         default_ttft_slo_ms=args.ttft_slo_ms, default_prefill_tokens_per_s=args.prefill_tokens_per_s,
                         hot_key_factor=args.hot_key_factor, session_load_epsilon=session_load_epsilon,
                         routing_plan=routing_plan,
                         offline_gate=OfflineGate(args.online_busy_in_flight, args.offline_max_in_flight))


def add_router_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The policy flags and the router's own, shared by `route` and `serve --replicas N`."""
    add_policy_arguments(parser)
    parser.add_argument("--prefix-ttl", type=float, default=RouterConfig.prefix_ttl_s, metavar="SECONDS",
                        help="how long a routed prompt counts as cached on an engine without a KV-event feed")
    parser.add_argument("--health-interval", type=float, default=RouterConfig.health_interval_s, metavar="SECONDS")
    parser.add_argument("--max-attempts", type=int, default=RouterConfig.max_attempts,
                        help="replicas tried for one request before it fails (only before its first byte)")
    add_disaggregation_arguments(parser)


def add_disaggregation_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Replica roles and the prefill/decode decision (fleetserve.fleet.disaggregation)."""
    parser.add_argument("--roles", default=None, metavar="ROLE,ROLE,...",
                        help=f"the replicas' roles, one per --backend (or per replica with --replicas N), in order: "
                             f"{', '.join(ROLES)} (default: all mixed). Prefill replicas only compute prompts and hand "
                             f"their KV to decode replicas")
    parser.add_argument("--disaggregation", choices=MODES, default=DisaggregationRule.mode,
                        help="when a decode replica's prompt is prefilled on a prefill replica: conditional (when "
                             "its uncached part exceeds --min-remote-prefill-tokens and the prefill pool is not backed "
                             "up), always, or never")
    parser.add_argument("--min-remote-prefill-tokens", type=int, default=DisaggregationRule.min_remote_prefill_tokens,
                        help="conditional: prompts with at most this many tokens uncached on the decode replica are "
                             "prefilled there")
    parser.add_argument("--max-prefill-queue", type=int, default=DisaggregationRule.max_prefill_queue,
                        help="conditional: prefill locally while the least busy prefill replica has this many "
                             "requests in flight")
    parser.add_argument("--prefill-timeout", type=float, default=RouterConfig.prefill_timeout_s, metavar="SECONDS",
                        help="a remote prefill with no answer by then is dropped and the prompt prefilled locally")


def parse_roles(text: str | None, count: int, counted_by: str) -> list[str]:
    """The --roles list, one role per backend (`counted_by` names the flag that counts them)."""
    if text is None:
        return []
    roles = [role.strip() for role in text.split(",")]
    for role in roles:
        try:
            check_role(role)
        except ValueError as exc:
            raise ValueError(f"--roles: {exc}") from None
    if len(roles) != count:
        raise ValueError(f"--roles names {len(roles)} role(s) ({text}) but {counted_by} gives {count} replica(s); "
                         f"give one role per replica, in order")
    return roles


def add_route_arguments(parser: argparse.ArgumentParser) -> None:
    add_batch_arguments(parser)
    parser.add_argument("--backend", action="append", default=[], metavar="[POOL=]URL",
                        help="an OpenAI-compatible server root, e.g. http://127.0.0.1:8001, or with its hardware "
                             "pool for --policy bucket, e.g. a100=http://10.0.0.5:8000 (repeat for more; more can be "
                             "added at run time with POST /admin/replicas)")
    parser.add_argument("--host", default=RouterConfig.host, help="address to bind (0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=RouterConfig.port)
    parser.add_argument("--tokenizer", default=RouterConfig.tokenizer,
                        help="tokenizer for prompt block hashes: 'default' (fleetserve's default model), a model "
                             "folder or tokenizer.json matching the backends' model, or 'none' (estimate)")
    parser.add_argument("--block-size", type=int, default=RouterConfig.default_block_size,
                        help="KV block size assumed for backends that do not publish theirs")
    add_router_arguments(parser)
    parser.add_argument("--log-level", default=RouterConfig.log_level, choices=LOG_LEVELS)
    parser.add_argument("--no-access-log", action="store_true", help="do not log one line per request")


def router_config(args: argparse.Namespace, backends: list[str], tokenizer: str | None,
                  counted_by: str = "--backend") -> RouterConfig:
    options = policy_options(args)
    rule = DisaggregationRule(args.disaggregation, args.min_remote_prefill_tokens, args.max_prefill_queue)
    return RouterConfig(backends=backends, roles=parse_roles(args.roles, len(backends), counted_by),
                        policy=args.policy, host=args.host, port=args.port, tokenizer=tokenizer,
                        policy_options=options, health_interval_s=args.health_interval,
                        max_attempts=args.max_attempts, prefix_ttl_s=args.prefix_ttl,
                        default_block_size=getattr(args, "block_size", RouterConfig.default_block_size),
                        log_level=args.log_level, access_log=not args.no_access_log,
                        disaggregation=rule, prefill_timeout_s=args.prefill_timeout, batches=batch_options(args))


def run(args: argparse.Namespace) -> int:
    from fleetserve.fleet.replicas import parse_backend
    from fleetserve.fleet.router import run_router
    if not args.backend:
        print("fleetserve route: warning: no --backend given; every request gets 503 until one is added with "
              "POST /admin/replicas", file=sys.stderr)
    config = router_config(args, args.backend, args.tokenizer)
    plan = config.policy_options.routing_plan
    if plan is not None:
        pools = [parse_backend(backend)[1] for backend in args.backend]
        for pool in pools:
            plan.check_pool(pool)
        missing = [pool for pool in plan.pools if pool not in pools]
        if missing:
            print(f"fleetserve route: warning: no --backend for the plan's pool(s) {', '.join(missing)}; their "
                  f"requests go to the other pools until such replicas are added with POST /admin/replicas",
                  file=sys.stderr)
    return run_router(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetserve route", description=(__doc__ or "").splitlines()[0])
    add_route_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as exc:
        print(f"fleetserve route: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
