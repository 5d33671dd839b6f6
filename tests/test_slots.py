"""LatestSlot / BoundedQueue: newest wins, oldest dropped, drops counted, blocking get wakes."""

from __future__ import annotations

import threading

import pytest

from bridge.errors import ConfigError
from bridge.runtime.slots import BoundedQueue, LatestSlot


def test_latest_slot_newest_wins_and_counts_drops():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.get(0) == 3
    assert slot.dropped == 2 and slot.put_count == 3
    assert slot.get(0) is None  # empty: immediate None with zero timeout


def test_bounded_queue_drops_oldest():
    queue: BoundedQueue[str] = BoundedQueue(2)
    for item in "abc":
        queue.put(item)
    assert len(queue) == 2 and queue.dropped == 1
    assert [queue.get(0), queue.get(0), queue.get(0)] == ["b", "c", None]


@pytest.mark.parametrize("depth", [0, 3, 1.5, True])
def test_bounded_queue_depth_is_checked(depth):
    with pytest.raises(ConfigError, match="maxsize"):
        BoundedQueue(depth)


def test_blocking_get_receives_item_from_other_thread():
    slot: LatestSlot[int] = LatestSlot()
    got: list[int | None] = []
    reader = threading.Thread(target=lambda: got.append(slot.get(10.0)))
    reader.start()
    slot.put(42)
    reader.join(10)
    assert got == [42]


def test_close_wakes_blocked_reader_and_keeps_leftovers():
    queue: BoundedQueue[int] = BoundedQueue(2)
    got: list[int | None] = []
    reader = threading.Thread(target=lambda: got.append(queue.get(30.0)))
    reader.start()
    queue.close()
    reader.join(10)
    assert not reader.is_alive() and got == [None] and queue.closed
    queue.put(7)  # items put after close are still readable until drained
    assert queue.get(0) == 7 and queue.get(5.0) is None
    assert queue.clear() == 0
