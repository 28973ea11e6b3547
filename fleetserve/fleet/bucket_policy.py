"""The `bucket` policy: a capacity plan's routing, live and in the simulator."""
from __future__ import annotations

import bisect
import itertools
from typing import ClassVar

from fleetserve.fleet.policy_basics import healthy_or_raise, least_loaded_of, stable_hash
from fleetserve.fleet.routing_plan import RoutingPlan
from fleetserve.fleet.snapshot import FleetSnapshot, RouteRequest


class BucketPolicy:
    """A capacity plan's routing (`fleetserve plan`): each request goes to a hardware pool by its length
    bucket (prompt tokens, max_tokens) and the plan's shares for that bucket, then to the least loaded healthy
    replica of that pool (a replica's `pool`).

    The pool is drawn from a stable hash of the request id, so a request always draws the same pool and
    over many requests each pool gets its share. A drawn pool with no healthy replica passes the request to
    the bucket's other pools, largest share first, and then to the least loaded replica of the whole fleet,
    as does a bucket the plan gives no shares.
    """
    name: ClassVar[str] = "bucket"

    def __init__(self, plan: RoutingPlan) -> None:
        self.plan = plan
        # bucket -> (pools in a fixed order, their cumulative shares), so a draw is one bisect
        self._draws: dict[tuple[int, int], tuple[tuple[str, ...], tuple[float, ...]]] = {}
        for bucket, shares in plan.weights.items():
            pools = tuple(sorted(shares))
            self._draws[bucket] = pools, tuple(itertools.accumulate(shares[pool] for pool in pools))

    def pools_for(self, request: RouteRequest) -> list[str]:
        """The pools to try, in order: the drawn one, then the bucket's others by share; [] for a bucket
        without shares."""
        bucket = self.plan.buckets.index(request.prompt_tokens, request.max_tokens)
        shares = self.plan.weights.get(bucket)
        if not shares:
            return []
        pools, cumulative = self._draws[bucket]
        point = (stable_hash("bucket", request.request_id) >> 11) / 2**53 * cumulative[-1]  # in [0, total)
        drawn = pools[min(bisect.bisect_right(cumulative, point), len(pools) - 1)]
        others = sorted((pool for pool in pools if pool != drawn and shares[pool] > 0),
                        key=lambda pool: (-shares[pool], pool))
        return [drawn, *others]

    def choose(self, request: RouteRequest, snapshot: FleetSnapshot) -> str:
        healthy = healthy_or_raise(snapshot)
        for pool in self.pools_for(request):
            members = [r for r in healthy if r.pool == pool]
            if members:
                return least_loaded_of(request, members).replica_id
        return least_loaded_of(request, healthy).replica_id
