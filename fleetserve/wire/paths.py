"""The HTTP paths replicas serve and routers and clients call (all relative to a server root)."""
from __future__ import annotations

CHAT_COMPLETIONS = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODELS = "/v1/models"
HEALTH = "/health"
METRICS = "/metrics"
KV_EVENTS = "/v1/kv_events"  # docs/kv_events.md
KV_EVENTS_STREAM = "/v1/kv_events/stream"

# The generation endpoints by the short names requests, benchmarks and metrics use.
GENERATION_PATHS = {"chat": CHAT_COMPLETIONS, "completions": COMPLETIONS}
