"""Benchmarking: a load generator, one definition of every latency metric, and reports.

Import submodules directly (`fleetserve.bench.metrics`); this package imports nothing so that the
simulator can use the metrics without pulling in the HTTP client.
"""
