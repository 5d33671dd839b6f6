"""NDI source and sink (ndi-python).

Discovery: a finder asks the hosts in ``extra_ips`` directly (default ``127.0.0.1``) besides
mDNS, so a sender on this machine is found even where multicast DNS is blocked (containers,
locked-down networks). A direct ``url`` ("ip:port") skips discovery altogether.
Asking a host directly has a catch: every NDI process on that host listens on port 5960
(SO_REUSEPORT) and the kernel gives a finder's connection to just *one* of them, so one finder
sees only that process's senders. ``scan`` therefore rotates short-lived finders and merges
what they saw.

Names: NDI calls a sender ``"MACHINE (name)"``. ``NDISource(name=...)`` accepts the full name,
the part in brackets, or a unique case-insensitive substring of the full name.

Reconnect: when no frame arrived for ``reconnect_after`` seconds and the receiver has no
connection, the source keeps scanning with fresh finders (a long-lived finder only notices a
restarted sender after several seconds, on its new port) and reconnects; meanwhile ``receive``
raises ``FrameTimeout`` saying the sender is gone.
"""

from __future__ import annotations

import logging
import threading
import time
from fractions import Fraction
from typing import Sequence

import numpy as np

from bridge.errors import (
    ConfigError,
    FrameFormatError,
    FrameTimeout,
    Problem,
    RuntimeMissingError,
    SourceNotFoundError,
    TransportError,
)
from bridge.frame import Frame, PixelFormat, now_ns
from bridge.io import _ndi
from bridge.io._ndi import SourceInfo
from bridge.io.base import Availability, FrameSink, FrameSource

log = logging.getLogger(__name__)

_POLL_S = 0.25  # capture slice, so reconnect checks run even inside a long receive timeout
_SCAN_WAIT_S = 0.1  # one finder's look: loopback/LAN answers arrive well within it
_RESCAN_S = 0.2  # while the sender is gone, look for it this often
_RECEIVE_FORMATS = {"BGRA", "BGRX", "RGBA", "RGBX"}
SINK_FORMATS = ("BGRA", "BGRX", "RGBA", "RGBX", "UYVY")


def availability() -> Availability:
    try:
        _ndi.lib()
    except RuntimeMissingError as exc:
        return Availability(False, exc.message)
    return Availability.yes()


def scan(extra_ips: str, wait_s: float = _SCAN_WAIT_S) -> list[SourceInfo]:
    """What one fresh finder sees within ``wait_s`` (returns as soon as it sees anything)."""
    finder = _ndi.Finder(extra_ips=extra_ips)
    try:
        deadline = time.monotonic() + wait_s
        sources = finder.sources()
        while not sources and (remaining := deadline - time.monotonic()) > 0:
            finder.wait(remaining)
            sources = finder.sources()
        return _unique(sources)
    finally:
        finder.close()


def discover(timeout: float = 2.0, extra_ips: str = "127.0.0.1") -> list[SourceInfo]:
    """Every NDI source seen by finders rotated for ``timeout`` seconds (at least one look)."""
    seen: dict[str, SourceInfo] = {}
    deadline = time.monotonic() + timeout
    while True:
        for source in scan(extra_ips, min(_SCAN_WAIT_S, max(0.0, deadline - time.monotonic()))):
            seen[source.name] = source  # a later look has the newer URL
        if time.monotonic() >= deadline:
            return sorted(seen.values(), key=lambda s: s.name)


def sender_part(full_name: str) -> str:
    """``"MACHINE (name)"`` -> ``"name"``; a name without brackets is returned unchanged."""
    if full_name.endswith(")") and " (" in full_name:
        return full_name[full_name.index(" (") + 2:-1]
    return full_name


def match_source(wanted: str, sources: Sequence[SourceInfo]) -> SourceInfo | None:
    """Pick the source for ``wanted``: full name, then bracket part, then unique substring.

    Raises ConfigError when ``wanted`` matches several sources and none exactly.
    """
    sources = _unique(sources)
    for source in sources:
        if source.name == wanted:
            return source
    candidates = [s for s in sources if sender_part(s.name) == wanted]
    if not candidates:
        candidates = [s for s in sources if wanted.lower() in s.name.lower()]
    if len(candidates) > 1:
        names = ", ".join(repr(s.name) for s in candidates)
        raise ConfigError(Problem("source.name", wanted, f"matches several NDI sources: {names}",
                                  "use the full name, e.g. 'MACHINE (name)'"))
    return candidates[0] if candidates else None


def frame_rate_fraction(fps: float) -> tuple[int, int]:
    """NDI frame-rate metadata as N/D; NTSC rates use the exact x000/1001 form."""
    for ntsc in (23.976, 29.97, 59.94, 119.88):
        if abs(fps - ntsc) < 0.005:
            return round(ntsc * 1.001) * 1000, 1001
    rate = Fraction(fps).limit_denominator(1001)
    return rate.numerator, rate.denominator


class NDISource(FrameSource):
    """Receives BGRX/BGRA frames from the NDI sender called ``name`` (see module docstring)."""

    kind = "ndi"

    def __init__(
        self,
        name: str,
        extra_ips: str = "127.0.0.1",
        url: str | None = None,
        timeout: float = 5.0,
        reconnect_after: float = 1.0,
        receiver_name: str = "sdbridge",
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(Problem("source.name", name, "must be a non-empty NDI source name",
                                      "run `sdbridge probe` to list the sources it sees"))
        _check_positive("source.timeout", timeout, "e.g. 5")
        _check_positive("source.reconnect_after", reconnect_after, "e.g. 1")
        self.name, self.extra_ips, self.url = name, extra_ips, url
        self.timeout, self.reconnect_after, self.receiver_name = timeout, reconnect_after, receiver_name
        self.connected_to: SourceInfo | None = None
        self.last_metadata = ""  # per-frame metadata the sender attached (NDISink adds seq/time)
        self.reconnects = 0
        self._receiver: _ndi.Receiver | None = None
        self._seq = 0
        self._last_frame_at = 0.0
        self._last_rescan = 0.0
        self._last_connect = 0.0
        self._lock = threading.RLock()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------
    # Every NDI call runs under ``_lock`` in slices of at most _POLL_S, so ``close`` from another
    # thread (daemon shutdown) waits for the current slice instead of destroying a receiver
    # that a capture is still using.

    def open(self) -> None:
        with self._lock:
            if self._receiver is not None:
                return
            self._closed = False
        try:
            target = SourceInfo(self.name, self.url) if self.url else self._find(self.timeout)
            with self._lock:
                self._check_open()
                self._receiver = _ndi.Receiver(self.receiver_name)
                self._connect(target)
                self._last_frame_at = time.monotonic()
        except BaseException:
            self._release()  # not closed: a later receive() may try to open again
            raise

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._release()

    def _release(self) -> None:
        with self._lock:
            if self._receiver is not None:
                self._receiver.close()
                self._receiver = None
            self.connected_to = None

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"NDI source {self.name!r} was closed", fix="open it again")

    # -- frames -----------------------------------------------------------------------------

    def receive(self, timeout: float) -> Frame:
        with self._lock:
            self._check_open()  # closed (maybe by another thread): no silent reopen
        self.open()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                self._check_open()
                assert self._receiver is not None
                self._maybe_reconnect()
                remaining = deadline - time.monotonic()
                got = self._receiver.capture_video(max(0.0, min(remaining, _POLL_S)))
                if isinstance(got, _ndi.VideoCapture):
                    return self._to_frame(got)
                if remaining <= _POLL_S:
                    gone = self._receiver.connections() == 0
                    break
        state = "the sender is gone, reconnecting" if gone else "connected but the sender sends nothing"
        raise FrameTimeout(f"no frame from NDI source {self._target_name()!r} within {timeout:.3f}s ({state})",
                           fix="check that the sender is running and sending video")

    def _to_frame(self, got: _ndi.VideoCapture) -> Frame:
        stamp = now_ns()
        self._last_frame_at = time.monotonic()
        if got.fourcc not in _RECEIVE_FORMATS:
            raise FrameFormatError(f"NDI delivered {got.fourcc} frames, expected BGRX/BGRA",
                                   fix="report this with your NDI runtime version")
        self.last_metadata = got.metadata
        self._seq += 1
        return Frame(got.pixels, PixelFormat(got.fourcc), seq=self._seq, timestamp_ns=stamp,
                     source=self._target_name())

    # -- discovery and reconnect -----------------------------------------------------------

    def _find(self, timeout: float) -> SourceInfo:
        seen: dict[str, SourceInfo] = {}
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                self._check_open()
                remaining = deadline - time.monotonic()
                for source in scan(self.extra_ips, min(_SCAN_WAIT_S, max(0.0, remaining))):
                    seen[source.name] = source
            found = match_source(self.name, list(seen.values()))
            if found is not None:
                return found
            if remaining <= 0:
                break
        raise SourceNotFoundError(
            f"no NDI source matching {self.name!r} within {timeout:g}s "
            f"(extra_ips={self.extra_ips!r}); found: {sorted(seen) if seen else 'none'}",
            fix="start the sender, use one of the names found (full 'MACHINE (name)' or a unique part), "
                "or add the sender's host to extra_ips",
        )

    def _connect(self, target: SourceInfo) -> None:
        assert self._receiver is not None
        log.info("NDI: connecting to %s at %s", target.name, target.url or "(discovery)")
        self._receiver.connect(target)
        self.connected_to = target
        self._last_connect = time.monotonic()

    def _maybe_reconnect(self) -> None:
        """While the sender is gone, look for it (a restarted sender has a new port)."""
        assert self._receiver is not None
        now = time.monotonic()
        if now - self._last_frame_at < self.reconnect_after or self._receiver.connections() > 0:
            return
        if now - self._last_rescan < _RESCAN_S:
            return
        self._last_rescan = now
        target = SourceInfo(self.name, self.url) if self.url else match_source(self.name, scan(self.extra_ips))
        if target is None:
            return
        if target != self.connected_to or now - self._last_connect >= self.reconnect_after:
            self.reconnects += 1
            self._connect(target)

    def _target_name(self) -> str:
        return self.connected_to.name if self.connected_to else self.name


class NDISink(FrameSink):
    """A named NDI sender. Sends BGRA (default) or UYVY (half the bytes; NDI compresses 4:2:2
    anyway); other frame formats are converted. With ``async_send`` NDI compresses in the
    background and the sink keeps the last frame's pixels alive until the next send."""

    kind = "ndi"

    def __init__(
        self,
        name: str = "sdbridge",
        frame_rate: float = 30,
        pixel_format: str = "BGRA",
        async_send: bool = True,
        groups: str | None = None,
        clock_video: bool = False,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(Problem("sink.name", name, "must be a non-empty NDI sender name",
                                      "e.g. name: sdbridge"))
        if isinstance(frame_rate, bool) or not isinstance(frame_rate, (int, float)) or not 0 < frame_rate <= 240:
            raise ConfigError(Problem("sink.frame_rate", frame_rate, "must be a number in (0, 240]",
                                      "use the rate you produce frames at, e.g. 30"))
        if pixel_format not in SINK_FORMATS:
            raise ConfigError(Problem("sink.pixel_format", pixel_format, "not an NDI send format",
                                      f"use one of: {', '.join(SINK_FORMATS)}"))
        self.name, self.frame_rate, self.pixel_format = name, frame_rate, PixelFormat(pixel_format)
        self.async_send, self.groups, self.clock_video = async_send, groups, clock_video
        self.frames_sent = 0
        self._rate = frame_rate_fraction(float(frame_rate))
        self._sender: _ndi.Sender | None = None
        self._in_flight: np.ndarray | None = None  # NDI may still read it (async send)
        self._lock = threading.Lock()  # close() from another thread waits for a send in progress

    def open(self) -> None:
        with self._lock:
            self._open_locked()

    def _open_locked(self) -> None:
        if self._sender is None:
            self._sender = _ndi.Sender(self.name, groups=self.groups, clock_video=self.clock_video)

    def close(self) -> None:
        with self._lock:
            if self._sender is not None:
                self._sender.close()  # waits for the async frame in flight
                self._sender = None
            self._in_flight = None

    def send(self, frame: Frame) -> None:
        pixels = frame.pixels
        if frame.pixel_format is not self.pixel_format:
            from bridge.frame_convert import convert

            pixels = convert(pixels, frame.pixel_format, self.pixel_format)
        with self._lock:
            self._open_locked()
            assert self._sender is not None
            metadata = f'<sdbridge seq="{frame.seq}" t_ns="{frame.timestamp_ns}" sent_ns="{now_ns()}"/>'
            self._sender.send_video(pixels, self.pixel_format.value, self._rate, metadata,
                                    use_async=self.async_send)
            self._in_flight = pixels  # the previous buffer is released by this call returning
            self.frames_sent += 1

    @property
    def source_name(self) -> str:
        """The full NDI name receivers see, e.g. ``"MACHINE (sdbridge)"``."""
        with self._lock:
            self._open_locked()
            assert self._sender is not None
            return self._sender.source_name()

    def connections(self) -> int:
        return self._sender.connections() if self._sender is not None else 0


def parse_metadata(metadata: str) -> dict[str, int]:
    """The integer attributes of an ``<sdbridge .../>`` metadata element (empty when absent)."""
    if not metadata.startswith("<sdbridge "):
        return {}
    out: dict[str, int] = {}
    for part in metadata[len("<sdbridge "):].rstrip("/> ").split():
        key, _, value = part.partition("=")
        try:
            out[key] = int(value.strip('"'))
        except ValueError:
            continue
    return out


def _unique(sources: Sequence[SourceInfo]) -> list[SourceInfo]:
    seen: dict[str, SourceInfo] = {}
    for source in sources:
        seen.setdefault(source.name, source)
    return list(seen.values())


def _check_positive(field: str, value: object, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(Problem(field, value, "must be a positive number of seconds", f"use {example}"))
