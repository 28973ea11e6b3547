"""What crosses HTTP between clients, the router and replicas: the OpenAI error shape, endpoint paths, the
KV block-hash chain, the chat-message form both sides hash and template, server URLs and the model probe.

It imports nothing of the engine, the API server or the router, so each of them can depend on it.
"""
