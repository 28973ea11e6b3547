"""A workload cut into length buckets: edges chosen from the data (or given), and each bucket's requests.

Edges are the lengths at fixed quantiles of the workload's own prompt and output lengths, so every bucket
holds a known part of the traffic whatever the trace's scale; the longest request closes the last bucket.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fleetserve.fleet.routing_plan import Buckets
from fleetserve.workload.spec import RequestSpec, Workload

INPUT_QUANTILES = (0.5, 0.8, 0.95)
OUTPUT_QUANTILES = (0.5, 0.9)


def edges_from_lengths(lengths: Sequence[int], quantiles: Sequence[float]) -> tuple[int, ...]:
    """Ascending upper bounds: the lengths at these quantiles, and the longest."""
    values = np.asarray(lengths)
    cuts = {int(math.ceil(float(np.quantile(values, q)))) for q in quantiles}
    return tuple(sorted({max(1, cut) for cut in cuts} | {int(values.max())}))


def workload_buckets(workload: Workload, input_edges: Sequence[int] | None = None,
                     output_edges: Sequence[int] | None = None) -> Buckets:
    if not len(workload):
        raise ValueError("the workload has no requests to plan for")
    inputs = input_edges or edges_from_lengths([spec.prompt_tokens for spec in workload], INPUT_QUANTILES)
    outputs = output_edges or edges_from_lengths([spec.output_tokens for spec in workload], OUTPUT_QUANTILES)
    return Buckets(tuple(inputs), tuple(outputs))


def bucket_members(workload: Workload, buckets: Buckets) -> dict[tuple[int, int], list[RequestSpec]]:
    """Each non-empty bucket's requests, in workload order."""
    members: dict[tuple[int, int], list[RequestSpec]] = {}
    for spec in workload:
        members.setdefault(buckets.index(spec.prompt_tokens, spec.output_tokens), []).append(spec)
    return dict(sorted(members.items()))


def bucket_shares(members: dict[tuple[int, int], list[RequestSpec]], buckets: Buckets) -> list[list[float]]:
    """The fraction of all requests in each bucket, as a rows x columns matrix."""
    total = sum(len(specs) for specs in members.values())
    rows, columns = buckets.shape
    return [[len(members.get((i, j), ())) / total for j in range(columns)] for i in range(rows)]
