import math

import pytest

from fleetserve.sim.events import WakeupQueue


def test_pops_in_time_order_and_ties_by_owner():
    queue = WakeupQueue(3)
    queue.set(2, 1.0)
    queue.set(0, 2.0)
    queue.set(1, 1.0)
    assert [queue.pop() for _ in range(3)] == [(1.0, 1), (1.0, 2), (2.0, 0)]
    with pytest.raises(IndexError):
        queue.pop()


def test_setting_again_replaces_and_none_cancels():
    queue = WakeupQueue(2)
    queue.set(0, 5.0)
    queue.set(0, 3.0)
    queue.set(1, 1.0)
    queue.set(1, None)
    assert queue.peek_time() == 3.0
    assert queue.due(0) == 3.0 and queue.due(1) is None
    assert queue.pop() == (3.0, 0)
    assert queue.peek_time() == math.inf and len(queue) == 0
