"""The OpenAI-compatible HTTP server over one engine replica (`fleetserve serve`).

protocol.py (schemas), errors.py (error handlers; the error shape itself is fleetserve.wire.errors),
metrics.py (Prometheus), state.py (engine and options), chat.py and completions.py (the two generation
endpoints), generation.py (fan-out, merge, disconnects), kv_events.py (the KV-cache event feed),
server.py (app factory and runner).
"""
