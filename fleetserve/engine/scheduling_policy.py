"""Who goes first: the scheduling policy (FCFS or priority) and the online/offline service classes.

Under `priority`, waiting requests are admitted in order of (priority, arrival), lower first as in vLLM, and
the running request with the largest (priority, arrival) is preempted first. So that low-priority work never
starves, a waiting request gains one priority level per `priority_aging_s` seconds it has waited: ordering
by `priority - waited / aging` at any one moment is ordering by `priority + arrival / aging`, a key that
does not change while the request waits, so the queue needs no clock.

Offline requests (batch jobs, evaluations) fill what online ones leave: they are admitted only when no
online request waits, may use at most `offline_token_share` of a step's token budget minus the online
tokens of that step while any online request is running or waiting (all of it otherwise; the default
share, 1, gives them whatever the online requests leave of the budget, and a lower one keeps the steps
that online requests decode in shorter, at the cost of offline throughput), must leave
`online_kv_reserve` of the KV blocks free for arriving online requests, and are preempted first. Both caps
follow the online load: the busier the online work, the less is left.
"""
from __future__ import annotations

from dataclasses import dataclass

from fleetserve.engine.request import Request

SCHEDULING_POLICIES = ("fcfs", "priority")


@dataclass(frozen=True)
class SchedulingPolicy:
    policy: str = "fcfs"
    priority_aging_s: float = 30.0  # seconds of waiting worth one priority level; 0 turns aging off
    offline_token_share: float = 1.0  # of max_num_batched_tokens, for offline work while online work is present
    online_kv_reserve: float = 0.1  # of the KV blocks, kept free of offline work

    def __post_init__(self) -> None:
        if self.policy not in SCHEDULING_POLICIES:
            raise ValueError(f"scheduling policy must be one of {', '.join(SCHEDULING_POLICIES)}, "
                             f"got {self.policy!r}")
        if not self.priority_aging_s >= 0:
            raise ValueError(f"priority_aging_s must be >= 0 (0 turns aging off), got {self.priority_aging_s}")
        if not 0 <= self.offline_token_share <= 1:
            raise ValueError(f"offline_token_share must be between 0 and 1, got {self.offline_token_share}")
        if not 0 <= self.online_kv_reserve < 1:
            raise ValueError(f"online_kv_reserve must be in [0, 1), got {self.online_kv_reserve}")

    @property
    def by_priority(self) -> bool:
        return self.policy == "priority"

    def waiting_key(self, request: Request) -> tuple[float, float]:
        """Admission order within a service class, smallest first."""
        if not self.by_priority:
            return (0.0, request.arrival_time)
        if self.priority_aging_s > 0:
            return (request.priority + request.arrival_time / self.priority_aging_s, request.arrival_time)
        return (float(request.priority), request.arrival_time)

    def outranks(self, candidate: Request, victim: Request) -> bool:
        """Whether a waiting `candidate` may preempt a running `victim` to be admitted: online work preempts
        offline work; under the priority policy a strictly lower priority preempts a higher one that would
        queue behind it."""
        if candidate.offline != victim.offline:
            return victim.offline
        # The victim goes back to the queue: if aging puts it ahead of the candidate, it would be admitted
        # again in the candidate's place, and preempting it would only cost its recompute.
        return (self.by_priority and candidate.priority < victim.priority
                and self.waiting_key(candidate) < self.waiting_key(victim))

    def offline_token_room(self, budget: int, online_tokens: int, online_present: bool) -> int:
        """Tokens offline requests may use in a step whose online requests use `online_tokens`."""
        if not online_present:
            return budget
        return max(0, int(self.offline_token_share * budget) - online_tokens)

    def offline_kv_reserve(self, num_blocks: int) -> int:
        return int(self.online_kv_reserve * num_blocks)
