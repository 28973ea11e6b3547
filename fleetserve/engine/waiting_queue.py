"""The scheduler's waiting queue: online requests before offline ones, each class in the policy's order.

Under FCFS a class is a deque in arrival order and a preempted request goes back to its front; under the
priority policy a class is a list sorted by `SchedulingPolicy.waiting_key` (ties in insertion order), where
a preempted request goes back to the place its key gives it.
"""
from __future__ import annotations

from bisect import insort
from collections import deque
from collections.abc import Iterator
from itertools import count

from fleetserve.engine.request import Request
from fleetserve.engine.scheduling_policy import SchedulingPolicy


def remove_identical(requests: list[Request] | deque[Request], request: Request) -> bool:
    """Take out this very request; False if it is not there. By identity: Request is a dataclass, whose ==
    would compare every field of every other request."""
    for index, other in enumerate(requests):
        if other is request:
            del requests[index]
            return True
    return False


class _ArrivalLane:
    __slots__ = ("requests",)

    def __init__(self) -> None:
        self.requests: deque[Request] = deque()

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self.requests)

    def first(self) -> Request:
        return self.requests[0]

    def pop_first(self) -> Request:
        return self.requests.popleft()

    def add(self, request: Request) -> None:
        self.requests.append(request)

    def put_back(self, request: Request) -> None:
        self.requests.appendleft(request)

    def remove(self, request: Request) -> bool:
        return remove_identical(self.requests, request)


class _KeyedLane:
    __slots__ = ("entries", "policy", "sequence")

    def __init__(self, policy: SchedulingPolicy) -> None:
        self.policy = policy
        self.entries: list[tuple[tuple[float, float], int, Request]] = []
        self.sequence = count()

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Request]:
        return (entry[2] for entry in self.entries)

    def first(self) -> Request:
        return self.entries[0][2]

    def pop_first(self) -> Request:
        return self.entries.pop(0)[2]

    def add(self, request: Request) -> None:
        insort(self.entries, (self.policy.waiting_key(request), next(self.sequence), request))

    put_back = add

    def remove(self, request: Request) -> bool:
        for index, entry in enumerate(self.entries):
            if entry[2] is request:
                del self.entries[index]
                return True
        return False


class WaitingQueue:
    def __init__(self, policy: SchedulingPolicy | None = None) -> None:
        policy = policy or SchedulingPolicy()
        self.online: _ArrivalLane | _KeyedLane
        self.offline: _ArrivalLane | _KeyedLane
        if policy.by_priority:
            self.online, self.offline = _KeyedLane(policy), _KeyedLane(policy)
        else:
            self.online, self.offline = _ArrivalLane(), _ArrivalLane()

    def __len__(self) -> int:
        return len(self.online) + len(self.offline)

    def __bool__(self) -> bool:
        return bool(len(self.online) or len(self.offline))

    def __iter__(self) -> Iterator[Request]:
        yield from self.online
        yield from self.offline

    @property
    def num_online(self) -> int:
        return len(self.online)

    def first(self) -> Request:
        """The next request to admit; the queue must not be empty."""
        return self.online.first() if len(self.online) else self.offline.first()

    def pop_first(self) -> Request:
        return self.online.pop_first() if len(self.online) else self.offline.pop_first()

    def add(self, request: Request) -> None:
        (self.offline if request.offline else self.online).add(request)

    def put_back(self, request: Request) -> None:
        """A preempted request, back where it is admitted next within its class."""
        (self.offline if request.offline else self.online).put_back(request)

    def remove(self, request: Request) -> bool:
        """Take out this very request (by identity); False if it is not waiting."""
        return (self.offline if request.offline else self.online).remove(request)
