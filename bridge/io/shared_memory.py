"""Shared-memory transport (kind ``shm``): FrameSource / FrameSink over bridge/io/shm_protocol.py.

The protocol module is standalone (stdlib + numpy) so host apps can copy it; this adapter adds
Frames, optional pixel-format conversion and the mapping of its errors onto bridge.errors.
The stream specification is docs/shared-memory.md.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from bridge.errors import ConfigError, FrameFormatError, FrameTimeout, Problem, ProtocolError, TransportError
from bridge.frame import Frame, PixelFormat, now_ns
from bridge.frame_convert import convert
from bridge.io import shm_protocol as proto
from bridge.io.base import Availability, FrameSink, FrameSource

log = logging.getLogger(__name__)


def availability() -> Availability:
    """Creates and removes a tiny segment: fails where /dev/shm (or the OS equivalent) is unusable."""
    name = f"sdb_probe_{secrets.token_hex(4)}"
    try:
        writer = proto.ShmWriter(name, 2, 2, "BGRA")
    except (OSError, proto.ShmError) as exc:
        return Availability(False, f"cannot create a shared-memory segment here: {exc}")
    writer.close()
    return Availability.yes()


@contextmanager
def _mapped_errors() -> Iterator[None]:
    """shm_protocol cannot import bridge: translate its exceptions at the boundary."""
    try:
        yield
    except proto.ShmTimeout as exc:
        raise FrameTimeout(exc.message, fix=exc.fix) from exc
    except proto.ShmProtocolError as exc:
        raise ProtocolError(exc.message, fix=exc.fix) from exc
    except proto.ShmFormatError as exc:
        raise FrameFormatError(exc.message, fix=exc.fix) from exc
    except proto.ShmError as exc:
        raise TransportError(exc.message, fix=exc.fix) from exc
    except OSError as exc:
        raise TransportError(f"shared memory failed: {exc}",
                             fix="check free space in /dev/shm and the stream name") from exc


def _check_name(name: str) -> str:
    try:
        return proto.check_name(name)
    except proto.ShmFormatError as exc:
        raise ConfigError(Problem("name", name, exc.message, exc.fix)) from None


def _check_format(field: str, value: PixelFormat | str | None) -> PixelFormat | None:
    if value is None:
        return None
    try:
        return PixelFormat(value)
    except ValueError:
        raise ConfigError(Problem(field, value, "not a pixel format",
                                  f"use one of: {', '.join(f.value for f in PixelFormat)}")) from None


class SharedMemorySource(FrameSource):
    """Receives the newest frame from a shared-memory stream written by a host app.

    ``pixel_format`` converts every frame to that format (None: keep the writer's). The frame's
    ``timestamp_ns`` is the receive time; the writer's own timestamp is in ``last_info``.
    """

    kind = "shm"

    def __init__(self, name: str, pixel_format: PixelFormat | str | None = None,
                 poll_max_s: float = 0.0005, reattach_s: float = 0.25) -> None:
        self.name = _check_name(name)
        self.pixel_format = _check_format("pixel_format", pixel_format)
        self._poll_max_s, self._reattach_s = poll_max_s, reattach_s
        self._reader: proto.ShmReader | None = None
        self._buffer: np.ndarray | None = None
        self.last_info: proto.FrameInfo | None = None

    @property
    def frames_skipped(self) -> int:
        return self._reader.frames_skipped if self._reader else 0

    def open(self) -> None:
        if self._reader is None:
            self._reader = proto.ShmReader(self.name, self._poll_max_s, self._reattach_s)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def receive(self, timeout: float) -> Frame:
        self.open()
        assert self._reader is not None
        with _mapped_errors():
            pixels, info = self._reader.read_latest(timeout)
        received = now_ns()
        self.last_info = info
        fmt = PixelFormat(info.pixel_format)
        if self.pixel_format is not None and self.pixel_format is not fmt:
            pixels, fmt = convert(pixels, fmt, self.pixel_format), self.pixel_format
        return Frame(pixels, fmt, seq=info.seq, timestamp_ns=received, source=f"shm:{self.name}")


class SharedMemorySink(FrameSink):
    """Publishes frames to a shared-memory stream (this process creates and owns the segment).

    With ``width``/``height`` the segment exists from ``open()`` (readers can attach early);
    otherwise the first frame sizes it. A frame of another size or format starts a new header
    generation. ``pixel_format`` converts frames before writing (None: write as they come).
    The frame's ``timestamp_ns`` and ``seq`` are written into the slot.
    """

    kind = "shm"

    def __init__(self, name: str, pixel_format: PixelFormat | str | None = None,
                 width: int | None = None, height: int | None = None, slots: int = 3,
                 capacity_bytes: int = 0) -> None:
        self.name = _check_name(name)
        self.pixel_format = _check_format("pixel_format", pixel_format)
        if (width is None) != (height is None):
            raise ConfigError(Problem("width/height", (width, height), "give both or neither",
                                      "set both to pre-create the stream, or leave both unset"))
        self._size = (width, height)
        self._slots, self._capacity = slots, capacity_bytes
        self._writer: proto.ShmWriter | None = None
        self.frames_sent = 0

    @property
    def generation(self) -> int:
        return self._writer.generation if self._writer else 0

    def open(self) -> None:
        width, height = self._size
        if self._writer is None and width is not None and height is not None:
            self._create(width, height, (self.pixel_format or PixelFormat.BGRA).value)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def send(self, frame: Frame) -> None:
        fmt = self.pixel_format or frame.pixel_format
        pixels = convert(frame.pixels, frame.pixel_format, fmt)
        height, width = pixels.shape[:2]
        with _mapped_errors():
            if self._writer is None:
                self._create(width, height, fmt.value)
            assert self._writer is not None
            if self._writer.layout.pixel_format != fmt.value:
                self._writer.resize(width, height, fmt.value)
            self._writer.write(pixels, timestamp_ns=frame.timestamp_ns, seq=frame.seq)
        self.frames_sent += 1

    def _create(self, width: int, height: int, fmt: str) -> None:
        with _mapped_errors():
            self._writer = proto.ShmWriter(self.name, width, height, fmt, self._slots, self._capacity)
        log.info("shared-memory stream %r: %dx%d %s", self.name, width, height, fmt)
