"""How each simulated replica is set up: the engine's scheduler and KV-cache settings, plus simulator options.

Defaults come from the engine's own EngineConfig, so a simulated replica schedules exactly like a
`fleetserve serve` started without flags.
"""
from __future__ import annotations

from dataclasses import dataclass

from fleetserve.engine.config import EngineConfig
from fleetserve.engine.scheduler import SchedulerConfig
from fleetserve.engine.scheduling_policy import SchedulingPolicy
from fleetserve.engine.step_budget import check_max_step_ms
from fleetserve.fleet.autoscaler import AutoscalerConfig
from fleetserve.fleet.disaggregation import DisaggregationRule
from fleetserve.perf.cold_start import ColdStart
from fleetserve.perf.kv_link import KVLink
from fleetserve.sim.acceptance import AcceptanceModel
from fleetserve.speculative.config import SpeculativeConfig

_ENGINE_DEFAULTS = EngineConfig()
DEFAULT_MAX_QUEUE = _ENGINE_DEFAULTS.max_queue  # `fleetserve serve --max-queue`


@dataclass(frozen=True)
class ReplicaConfig:
    block_size: int = _ENGINE_DEFAULTS.block_size
    max_num_seqs: int = _ENGINE_DEFAULTS.max_num_seqs
    max_num_batched_tokens: int = _ENGINE_DEFAULTS.max_num_batched_tokens
    max_model_len: int | None = None  # None: the model's max_position_embeddings, as in the engine
    enable_prefix_caching: bool = _ENGINE_DEFAULTS.enable_prefix_caching
    max_queue: int = DEFAULT_MAX_QUEUE  # waiting requests beyond which a replica answers 429
    scheduling: SchedulingPolicy = _ENGINE_DEFAULTS.scheduling  # priorities and service classes
    max_step_ms: float | None = _ENGINE_DEFAULTS.max_step_ms  # predicted by the replica's performance model
    # Speculative decoding, as `serve --speculative-config`; its drafts are accepted as the acceptance model draws.
    speculative: SpeculativeConfig | None = None
    spec_acceptance: AcceptanceModel | None = None

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_max_step_ms(self.max_step_ms)
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.speculative is not None and self.spec_acceptance is None:
            raise ValueError("a simulated replica with speculative decoding needs an acceptance model: give "
                             "--spec-acceptance RATE or --spec-acceptance-trace PATH")
        if self.speculative is None and self.spec_acceptance is not None:
            raise ValueError("an acceptance model needs speculative decoding: give --speculative-config too")

    def scheduler_config(self, model_max_len: int) -> SchedulerConfig:
        max_len = min(self.max_model_len or model_max_len, model_max_len)
        return SchedulerConfig(self.max_num_seqs, self.max_num_batched_tokens, max_len, policy=self.scheduling,
                               max_step_ms=self.max_step_ms)


PREFIX_VIEWS = ("events", "perfect")


@dataclass(frozen=True)
class SimOptions:
    skip_decodes: bool = True  # advance stretches of pure decode steps at once (same results, faster)
    record_token_times: bool = True  # keep every token's time (ITL); off saves memory on huge runs
    # How the router learns which replica caches which prefix: "events" feeds the live router's PrefixIndex
    # from each replica's KV events; "perfect" reads the replicas' KV caches directly.
    prefix_view: str = "events"

    def __post_init__(self) -> None:
        if self.prefix_view not in PREFIX_VIEWS:
            raise ValueError(f"prefix_view must be one of {list(PREFIX_VIEWS)}, got {self.prefix_view!r}")


@dataclass(frozen=True)
class Disaggregation:
    """How a fleet with prefill replicas disaggregates: the prefill/decode decision the live router makes,
    and the link its KV transfers take (fleetserve.sim.kv_transfers)."""
    link: KVLink
    rule: DisaggregationRule = DisaggregationRule()


@dataclass(frozen=True)
class Autoscaling:
    """How a simulated fleet autoscales (fleetserve.sim.autoscaling): the live fleet's autoscaler settings, and
    the cold start of a replica of `model_bytes` of weights."""
    config: AutoscalerConfig
    model_bytes: int
    cold_start: ColdStart = ColdStart()

    def __post_init__(self) -> None:
        if self.model_bytes < 0:
            raise ValueError(f"model_bytes must not be negative, got {self.model_bytes}")
