"""Continuing a generation on another replica (request migration, fleetserve.fleet.stream_migration): the
request fields the router and replicas exchange for it, and the response header by which a replica says it
continued the generation rather than started it over (an engine that ignores unknown fields would start over,
and its text would repeat what the client already has)."""
from __future__ import annotations

RETURN_TOKEN_IDS = "return_token_ids"  # vLLM's: every choice (and chunk) carries the token ids it adds
RESUME_TOKEN_IDS = "resume_token_ids"  # fleetserve's: the output so far of the generation to continue
RESUMED_HEADER = "x-fleetserve-resumed-tokens"  # on a resumed answer: how many output tokens it continued from
