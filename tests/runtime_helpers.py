"""Helpers shared by the in-process daemon tests (imported by test modules, not a test)."""

from __future__ import annotations

import queue
import time
from typing import Any, Callable

import numpy as np

from bridge.errors import FrameTimeout
from bridge.frame import Frame, PixelFormat
from bridge.io.base import FrameSink, FrameSource


def wait_until(predicate: Callable[[], Any], what: str = "condition", timeout: float = 20.0) -> Any:
    """Poll until ``predicate()`` is truthy and return it; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


class QueueSource(FrameSource):
    """Frames pushed by the test, one per receive."""

    kind = "queue"

    def __init__(self) -> None:
        self.frames: queue.Queue[Frame] = queue.Queue()

    def receive(self, timeout: float) -> Frame:
        try:
            return self.frames.get(timeout=timeout)
        except queue.Empty:
            raise FrameTimeout("no frame pushed", fix="push one") from None

    def push(self, seq: int, value: int = 100, size: int = 64) -> None:
        pixels = np.full((size, size, 3), value, np.uint8)
        self.frames.put(Frame(pixels, PixelFormat.RGB, seq=seq))


class CaptureSink(FrameSink):
    """Keeps every frame it is sent; records whether it was closed."""

    kind = "capture"

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.closed = False

    def send(self, frame: Frame) -> None:
        self.frames.append(frame)

    def close(self) -> None:
        self.closed = True

    def seqs(self) -> list[int]:
        """Sequence numbers of the real (non-fallback) frames received."""
        return [f.seq for f in self.frames if f.source != "fallback"]

    def by_seq(self, seq: int) -> Frame | None:
        """The newest frame received with this sequence number."""
        return next((f for f in reversed(self.frames) if f.seq == seq), None)
