"""The router's one configuration."""
from __future__ import annotations

from dataclasses import dataclass, field

from fleetserve.api.batch_config import BatchOptions
from fleetserve.fleet.disaggregation import DisaggregationRule, check_role
from fleetserve.fleet.policies import PolicyOptions, make_policy
from fleetserve.wire.errors import DEFAULT_MAX_BODY_BYTES
from fleetserve.wire.urls import server_url


@dataclass
class RouterConfig:
    backends: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)  # one per backend, in order; empty: every backend is mixed
    policy: str = "least_loaded"
    host: str = "127.0.0.1"
    port: int = 8000
    # "default" (fleetserve's default model), a model folder or tokenizer.json, or None: estimate
    # tokens from text length (fine for engines without a KV-event feed, whose index is the router's own).
    tokenizer: str | None = "default"
    policy_options: PolicyOptions = field(default_factory=PolicyOptions)
    health_interval_s: float = 0.5
    health_timeout_s: float = 0.75
    eject_after_failures: int = 2
    metrics_interval_s: float = 1.0
    max_attempts: int = 3
    prefix_ttl_s: float = 120.0  # how long a routed prompt counts as cached on an engine without a feed
    pending_ttl_s: float = 15.0  # the same, on an engine with a feed, until its `stored` event arrives
    default_block_size: int = 16
    default_max_tokens: int = 256  # output estimate for a request that sets no max_tokens
    connect_timeout_s: float = 2.0
    upstream_timeout_s: float = 600.0
    retry_after_s: int = 1
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    log_level: str = "info"
    access_log: bool = True
    disaggregation: DisaggregationRule = field(default_factory=DisaggregationRule)
    prefill_timeout_s: float = 30.0  # a remote prefill slower than this is dropped, and prefilled locally instead
    batches: BatchOptions | None = None  # the Batch API in front of the fleet; None: no /v1/files, /v1/batches

    def __post_init__(self) -> None:
        make_policy(self.policy, self.policy_options)  # an unknown name, or bucket without a plan, is refused
        for name in ("health_interval_s", "health_timeout_s", "metrics_interval_s", "prefix_ttl_s",
                     "pending_ttl_s", "connect_timeout_s", "upstream_timeout_s", "prefill_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("eject_after_failures", "max_attempts", "default_block_size", "default_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.roles and len(self.roles) != len(self.backends):
            raise ValueError(f"roles names {len(self.roles)} role(s) for {len(self.backends)} backend(s); give one "
                             f"role per backend, in order (or none: every backend is mixed)")
        for role in self.roles:
            check_role(role)

    def backend_roles(self) -> list[tuple[str, str]]:
        """(backend, role) for each backend; mixed where no roles are given."""
        return list(zip(self.backends, self.roles or ["mixed"] * len(self.backends)))

    @property
    def url(self) -> str:
        return server_url(self.host, self.port)
