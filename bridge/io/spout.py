"""Spout source and sink (Windows, SpoutGL).

Everything that can be decided without Windows is a pure function here (pixel-format ↔ GL
format, receive-step classification, buffer (re)allocation) and is tested on every OS with a
fake backend; ``bridge.io._spout`` is the only code that touches SpoutGL.

OpenGL contexts belong to a thread, so the SpoutGL objects are created lazily by the first
``receive``/``send`` and must then be used from that same thread (the daemon's source/sink
thread); using them from another thread raises instead of corrupting GL state.
"""

from __future__ import annotations

import enum
import logging
import sys
import threading
import time
from typing import Any, Callable, Protocol

import numpy as np

from bridge.errors import ConfigError, FrameTimeout, Problem, RuntimeMissingError, SourceNotFoundError, TransportError
from bridge.frame import Frame, PixelFormat, now_ns
from bridge.io.base import Availability, FrameSink, FrameSource

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'sdbridge[spout]' (SpoutGL, Windows only)"
# GL enums as in the OpenGL spec (duplicated from _spout so the pure logic imports nowhere).
GL_FORMATS: dict[PixelFormat, int] = {
    PixelFormat.RGBA: 0x1908, PixelFormat.RGBX: 0x1908,
    PixelFormat.BGRA: 0x80E1, PixelFormat.BGRX: 0x80E1,
    PixelFormat.RGB: 0x1907, PixelFormat.BGR: 0x80E0,
}
RECEIVE_FORMATS = ("BGRA", "RGBA", "BGR", "RGB")


def availability() -> Availability:
    if sys.platform != "win32":
        return Availability(False, f"Spout is Windows-only (this is {sys.platform})")
    try:
        import bridge.io._spout  # noqa: F401
    except ImportError as exc:
        return Availability(False, f"cannot import SpoutGL: {exc}; {INSTALL_HINT}")
    return Availability.yes()


def list_senders() -> list[str]:
    """Spout senders running on this machine (raises RuntimeMissingError off Windows)."""
    status = availability()
    if not status.available:
        raise RuntimeMissingError(status.reason, fix=INSTALL_HINT)
    from bridge.io import _spout

    try:
        return _spout.sender_names()
    except AttributeError as exc:  # old SpoutGL builds lack getSenderList
        raise RuntimeMissingError(f"this SpoutGL cannot list senders: {exc}",
                                  fix="pip install -U SpoutGL") from exc


# ----------------------------------------------------------------------------- pure logic


class Step(enum.Enum):
    NO_SENDER = "no_sender"  # nothing to connect to (yet, or any more)
    RESIZED = "resized"  # (re)allocate the buffer for the sender's size, then receive again
    NO_NEW_FRAME = "no_new_frame"  # connected, but the sender has not produced a new frame
    FRAME = "frame"  # the buffer holds a new frame


class ReceiveResult(Protocol):
    received: bool
    updated: bool
    frame_new: bool
    width: int
    height: int


def classify(result: ReceiveResult, buffer: np.ndarray | None) -> Step:
    """What one receive call means for the caller, given the buffer it passed."""
    if not result.received or result.width <= 0 or result.height <= 0:
        return Step.NO_SENDER
    if result.updated or buffer is None or buffer.shape[:2] != (result.height, result.width):
        return Step.RESIZED
    if not result.frame_new:
        return Step.NO_NEW_FRAME
    return Step.FRAME


def allocate(width: int, height: int, fmt: PixelFormat) -> np.ndarray:
    """A receive buffer for a ``width``×``height`` sender in ``fmt`` (zeroed)."""
    if width <= 0 or height <= 0:
        raise TransportError(f"Spout sender reports size {width}x{height}", fix="restart the sender")
    return np.zeros((height, width, fmt.channels), dtype=np.uint8)


def send_format(frame: Frame) -> tuple[np.ndarray, int]:
    """Pixels and GL format to hand to sendImage (UYVY is converted to BGRA first)."""
    if frame.pixel_format is PixelFormat.UYVY:
        from bridge.frame_convert import convert

        return convert(frame.pixels, PixelFormat.UYVY, PixelFormat.BGRA), GL_FORMATS[PixelFormat.BGRA]
    return frame.pixels, GL_FORMATS[frame.pixel_format]


# ----------------------------------------------------------------------------- source / sink


class _ThreadBound:
    """Creates the backend on first use and insists on that thread afterwards."""

    def __init__(self, factory: Callable[[], Any], what: str) -> None:
        self._factory, self._what = factory, what
        self.backend: Any = None
        self._thread: int | None = None

    def get(self) -> Any:
        me = threading.get_ident()
        if self.backend is None:
            self.backend, self._thread = self._factory(), me
        elif self._thread != me:
            raise TransportError(f"Spout {self._what} used from a different thread than the one that "
                                 "created its OpenGL context",
                                 fix="call receive/send from one thread (the daemon's source/sink thread)")
        return self.backend

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend, self._thread = None, None


class SpoutSource(FrameSource):
    """Receives frames from the Spout sender ``name`` ("" = the active sender).

    Handles sender resizes (reallocates and keeps going) and "no new frame" (waits, polling
    every ``poll_interval`` s). No sender within ``timeout`` s of opening →
    SourceNotFoundError listing the senders that exist; a sender that disappears later →
    FrameTimeout until it is back.
    """

    kind = "spout"

    def __init__(self, name: str = "", timeout: float = 5.0, pixel_format: str = "BGRA",
                 flip: bool = False, poll_interval: float = 0.002,
                 *, backend_factory: Callable[[str], Any] | None = None,
                 sender_lister: Callable[[], list[str]] | None = None) -> None:
        if pixel_format not in RECEIVE_FORMATS:
            raise ConfigError(Problem("source.pixel_format", pixel_format, "not a Spout receive format",
                                      f"use one of: {', '.join(RECEIVE_FORMATS)}"))
        for field, value in (("source.timeout", timeout), ("source.poll_interval", poll_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(Problem(field, value, "must be a positive number of seconds",
                                          "e.g. timeout: 5"))
        self.name, self.timeout, self.flip, self.poll_interval = name, timeout, flip, poll_interval
        self.pixel_format = PixelFormat(pixel_format)
        self.resizes = 0
        self._factory = backend_factory or _default_receiver_factory
        self._lister = sender_lister or list_senders
        self._bound = _ThreadBound(lambda: self._factory(self.name), "receiver")
        self._buffer: np.ndarray | None = None
        self._opened_at: float | None = None
        self._ever_connected = False
        self._seq = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        if self._opened_at is None:
            self._opened_at = time.monotonic()

    def close(self) -> None:
        with self._lock:  # waits for a receive call in progress on the source thread
            self._bound.close()
            self._buffer, self._opened_at, self._ever_connected = None, None, False

    def receive(self, timeout: float) -> Frame:
        self.open()
        gl_format = GL_FORMATS[self.pixel_format]
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._opened_at is None:
                    raise TransportError(f"Spout source {self.name!r} was closed", fix="open it again")
                result = self._bound.get().receive(self._buffer, gl_format, self.flip)
                step = classify(result, self._buffer)
                if step is Step.FRAME:
                    self._ever_connected = True
                    self._seq += 1
                    return Frame(self._buffer.copy(), self.pixel_format, seq=self._seq,
                                 timestamp_ns=now_ns(), source=self.name)
                if step is Step.RESIZED:
                    self._ever_connected = True
                    self._buffer = allocate(result.width, result.height, self.pixel_format)
                    self.resizes += 1
                    continue  # receive again straight away into the new buffer
                if step is Step.NO_SENDER:
                    self._check_found()
            if time.monotonic() >= deadline:
                break
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))
        state = "no new frame from the sender" if self._ever_connected else "no sender yet"
        raise FrameTimeout(f"Spout source {self.name or '(active sender)'!r}: {state} within {timeout:.3f}s",
                           fix="check that the sender is running and updating")

    def _check_found(self) -> None:
        assert self._opened_at is not None
        if self._ever_connected or time.monotonic() - self._opened_at < self.timeout:
            return
        try:
            found: list[str] | str = self._lister()
        except RuntimeMissingError as exc:
            found = f"(cannot list: {exc.message})"
        raise SourceNotFoundError(
            f"no Spout sender {self.name or '(active)'!r} within {self.timeout:g}s; found: {found or 'none'}",
            fix="start the sender, or use one of the names found (exact, case-sensitive)")


class SpoutSink(FrameSink):
    """A Spout sender called ``name``; BGRA/RGBA/BGR/RGB go out as they are, UYVY as BGRA."""

    kind = "spout"

    def __init__(self, name: str = "sdbridge", flip: bool = False,
                 *, backend_factory: Callable[[str], Any] | None = None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(Problem("sink.name", name, "must be a non-empty Spout sender name",
                                      "e.g. name: sdbridge"))
        self.name, self.flip = name, flip
        self.frames_sent = 0
        factory = backend_factory or _default_sender_factory
        self._bound = _ThreadBound(lambda: factory(self.name), "sender")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._bound.close()

    def send(self, frame: Frame) -> None:
        pixels, gl_format = send_format(frame)
        with self._lock:
            ok = self._bound.get().send(pixels, gl_format, self.flip)
        if not ok:
            raise TransportError(f"Spout sender {self.name!r} failed to send a "
                                 f"{frame.width}x{frame.height} frame",
                                 fix="check the GPU driver supports OpenGL/DirectX interop; see the Spout log")
        self.frames_sent += 1


def _default_receiver_factory(name: str) -> Any:
    _require()
    from bridge.io import _spout

    return _spout.Receiver(name)


def _default_sender_factory(name: str) -> Any:
    _require()
    from bridge.io import _spout

    return _spout.Sender(name)


def _require() -> None:
    status = availability()
    if not status.available:
        raise RuntimeMissingError(status.reason, fix=INSTALL_HINT)
