"""A simulated replica's engine settings as flags, shared by `sim` and `plan`; defaults as `fleetserve serve`."""
from __future__ import annotations

import argparse

from fleetserve.commands.bench_arguments import _positive
from fleetserve.commands.engine_arguments import speculative_config
from fleetserve.commands.scheduling_arguments import add_scheduling_arguments, scheduling_policy
from fleetserve.sim.acceptance import AcceptanceModel
from fleetserve.sim.config import ReplicaConfig
from fleetserve.speculative.config import SpeculativeConfig

_DEFAULTS = ReplicaConfig()


def add_replica_arguments(p: argparse.ArgumentParser) -> None:
    engine = p.add_argument_group("replica (the engine's scheduler settings; defaults as `fleetserve serve`)")
    engine.add_argument("--block-size", type=_positive(int), default=_DEFAULTS.block_size)
    engine.add_argument("--max-num-seqs", type=_positive(int), default=_DEFAULTS.max_num_seqs)
    engine.add_argument("--max-num-batched-tokens", type=_positive(int), default=_DEFAULTS.max_num_batched_tokens)
    engine.add_argument("--max-step-ms", type=_positive(float), default=_DEFAULTS.max_step_ms,
                        help="bound each step's predicted time (ms): decodes keep their pace and prompts go in "
                        "smaller chunks; the step cost is the replica's performance model (--perf) (default: no bound)")
    engine.add_argument("--max-model-len", type=_positive(int), default=None)
    engine.add_argument("--no-prefix-caching", action="store_true")
    engine.add_argument("--max-queue", type=_positive(int), default=_DEFAULTS.max_queue,
                        help="waiting requests before 429")
    add_scheduling_arguments(engine)
    spec = p.add_argument_group("speculative decoding (simulated: drafts accepted as an acceptance model draws)")
    spec.add_argument("--speculative-config", type=speculative_config, default=None,
                      help='as `fleetserve serve` takes it, e.g. \'{"method": "ngram", "num_speculative_tokens": 4}\'; '
                      "its draft length and adaptive setting count, the method's drafts are modelled (default: none)")
    acceptance = spec.add_mutually_exclusive_group()
    acceptance.add_argument("--spec-acceptance", type=float, default=None, metavar="RATE",
                            help="the probability, in (0, 1], that a draft is accepted given the drafts before it were")
    acceptance.add_argument("--spec-acceptance-trace", default=None, metavar="PATH",
                            help="per-request rates: a JSON list applied to requests in arrival order (cycling), or "
                            'an object from request id to rate ("*": the rate of the others); see docs/sim.md')
    spec.add_argument("--spec-draft-availability", type=float, default=None,
                      metavar="FRACTION", help="the fraction of decode steps at which the proposer finds a draft "
                      "(default: 1, every step)")


def replica_config(args: argparse.Namespace) -> ReplicaConfig:
    return ReplicaConfig(args.block_size, args.max_num_seqs, args.max_num_batched_tokens, args.max_model_len,
                         not args.no_prefix_caching, args.max_queue, scheduling_policy(args), args.max_step_ms,
                         SpeculativeConfig.parse(args.speculative_config), acceptance_model(args))


def acceptance_model(args: argparse.Namespace) -> AcceptanceModel | None:
    """The simulated acceptance from `--spec-acceptance` or `--spec-acceptance-trace`, seeded by `--seed`."""
    given = [flag for flag, value in (("--spec-acceptance", args.spec_acceptance),
                                      ("--spec-acceptance-trace", args.spec_acceptance_trace),
                                      ("--spec-draft-availability", args.spec_draft_availability))
             if value is not None]
    if args.speculative_config is None:
        if given:
            raise ValueError(f"{', '.join(given)} needs --speculative-config, e.g. "
                             '\'{"method": "ngram", "num_speculative_tokens": 4}\'')
        return None
    availability = args.spec_draft_availability
    if availability is None:
        availability = AcceptanceModel.draft_availability
    if args.spec_acceptance is not None:
        return AcceptanceModel(rate=args.spec_acceptance, draft_availability=availability, seed=args.seed)
    if args.spec_acceptance_trace is not None:
        return AcceptanceModel.load(args.spec_acceptance_trace, availability, args.seed)
    raise ValueError("--speculative-config in a simulation needs the drafts' acceptance: --spec-acceptance RATE "
                     "(e.g. 0.7) or --spec-acceptance-trace PATH")
