"""Hand-over points between the daemon's threads. Real time means drop, not lag, so neither
can grow: ``LatestSlot`` holds one item (newest wins) and ``BoundedQueue`` one or two (oldest
dropped). Both count what they drop so the stats can show it, and both can be closed to wake
a blocked reader at shutdown."""

from __future__ import annotations

import collections
import threading
import time
from typing import Generic, TypeVar

from bridge.errors import ConfigError, Problem

T = TypeVar("T")


class BoundedQueue(Generic[T]):
    """FIFO of at most ``maxsize`` items; putting into a full queue drops the oldest item."""

    def __init__(self, maxsize: int = 2) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or not 1 <= maxsize <= 2:
            raise ConfigError(Problem("maxsize", maxsize, "queue depth must be 1 or 2",
                                      "a deeper queue only adds latency"))
        self.maxsize = maxsize
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.put_count = 0
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Add ``item``; returns True when an older item had to be dropped to make room."""
        with self._cond:
            dropped = len(self._items) >= self.maxsize
            if dropped:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.put_count += 1
            self._cond.notify()
            return dropped

    def get(self, timeout: float) -> T | None:
        """Oldest item, waiting up to ``timeout`` s; None on timeout or once closed and empty."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not self._items:
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._items.popleft()

    def clear(self) -> int:
        with self._cond:
            count = len(self._items)
            self._items.clear()
            return count

    def close(self) -> None:
        """Wake every waiting reader; later gets return what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class LatestSlot(BoundedQueue[T]):
    """Size-1 slot: a new item replaces one nobody took yet (counted in ``dropped``)."""

    def __init__(self) -> None:
        super().__init__(1)
