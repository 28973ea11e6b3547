"""What a capacity plan tells the router: length buckets, and per bucket which hardware pool takes what share.

`fleetserve plan` writes it (inside its JSON, under "routing"); the `bucket` policy carries it, live and in
the simulator. A request's bucket comes from its prompt length and its output length (`max_tokens`, the
router's only estimate of the output): bucket (i, j) holds prompts in (input_edges[i-1], input_edges[i]]
and outputs in (output_edges[j-1], output_edges[j]]; lengths beyond the last edge count in the last
bucket. Pools are named by hardware (a replica's `pool`, e.g. "a100-80gb").
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Buckets:
    input_edges: tuple[int, ...]  # ascending upper bounds of prompt lengths, in tokens
    output_edges: tuple[int, ...]  # ascending upper bounds of output lengths, in tokens

    def __post_init__(self) -> None:
        for name in ("input_edges", "output_edges"):
            edges = getattr(self, name)
            if not edges or any(edge < 1 for edge in edges) or list(edges) != sorted(set(edges)):
                raise ValueError(f"{name} must be strictly ascending whole numbers >= 1, got {list(edges)}")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.input_edges), len(self.output_edges)

    def index(self, prompt_tokens: int, output_tokens: int) -> tuple[int, int]:
        rows, columns = self.shape
        return (min(bisect.bisect_left(self.input_edges, prompt_tokens), rows - 1),
                min(bisect.bisect_left(self.output_edges, output_tokens), columns - 1))

    def label(self, bucket: tuple[int, int]) -> str:
        """"in (512, 2048], out (0, 128]": how a report names a bucket."""
        i, j = bucket
        low_in = self.input_edges[i - 1] if i else 0
        low_out = self.output_edges[j - 1] if j else 0
        return f"in ({low_in}, {self.input_edges[i]}], out ({low_out}, {self.output_edges[j]}]"


@dataclass(frozen=True)
class RoutingPlan:
    buckets: Buckets
    # bucket -> {pool: share of the bucket's requests}; the shares of a bucket sum to 1
    weights: dict[tuple[int, int], dict[str, float]]

    def __post_init__(self) -> None:
        rows, columns = self.buckets.shape
        for bucket, shares in self.weights.items():
            if not (0 <= bucket[0] < rows and 0 <= bucket[1] < columns):
                raise ValueError(f"routing plan: bucket {bucket} is outside the {rows}x{columns} buckets")
            if not shares or any(not share >= 0 for share in shares.values()):
                raise ValueError(f"routing plan: bucket {bucket} needs non-negative shares, got {shares}")
            if not math.isclose(sum(shares.values()), 1.0, abs_tol=1e-6):
                raise ValueError(f"routing plan: the shares of bucket {bucket} sum to {sum(shares.values())}, "
                                 f"not 1")

    @property
    def pools(self) -> list[str]:
        return sorted({pool for shares in self.weights.values() for pool in shares})

    def check_pool(self, pool: str | None) -> None:
        """A replica labelled with a pool the plan does not name would never get its share: refuse the label
        (a replica with no pool only takes requests whose pools have no healthy replica)."""
        if pool is not None and pool not in self.pools:
            raise ValueError(f"pool {pool!r} is not one of the routing plan's pools ({', '.join(self.pools)}); "
                             f"label the replica with one of them, as in {self.pools[0]}=http://host:port")

    def to_jsonable(self) -> dict[str, Any]:
        return {"input_edges": list(self.buckets.input_edges), "output_edges": list(self.buckets.output_edges),
                "weights": [{"bucket": list(bucket), "label": self.buckets.label(bucket), "shares": shares}
                            for bucket, shares in sorted(self.weights.items())]}

    @classmethod
    def from_jsonable(cls, data: dict[str, Any]) -> RoutingPlan:
        try:
            buckets = Buckets(tuple(int(e) for e in data["input_edges"]), tuple(int(e) for e in data["output_edges"]))
            weights = {(int(entry["bucket"][0]), int(entry["bucket"][1])):
                       {str(pool): float(share) for pool, share in entry["shares"].items()}
                       for entry in data["weights"]}
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ValueError(f"not a routing plan (want input_edges, output_edges and weights of "
                             f"{{bucket, shares}}): {error}") from None
        return cls(buckets, weights)
