"""Null sink: discards frames and counts them (a black hole for benchmarks and tests)."""

from __future__ import annotations

from bridge.frame import Frame, now_ns
from bridge.io.base import Availability, FrameSink


def availability() -> Availability:
    return Availability.yes()


class NullSink(FrameSink):
    """Counts frames and bytes; keeps the last frame and its send time for inspection."""

    kind = "null"

    def __init__(self, name: str = "null", keep_last: bool = True) -> None:
        self.name = name
        self.keep_last = keep_last
        self.frames = 0
        self.bytes = 0
        self.last_frame: Frame | None = None
        self.last_sent_ns: int | None = None

    def send(self, frame: Frame) -> None:
        self.frames += 1
        self.bytes += frame.nbytes
        self.last_sent_ns = now_ns()
        if self.keep_last:
            self.last_frame = frame
