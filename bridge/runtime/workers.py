"""The daemon's source thread (it reads the source into the latest-frame slot) and the pieces
the sink threads share with it (``bridge/runtime/sink_threads.py``). Every I/O thread survives
its transport going away: it closes it, reports the error in the live state, and reopens it with
exponential backoff, so unplugging a cable or restarting the host app never needs a restart."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from bridge.config import TransportConfig
from bridge.errors import FrameTimeout, SdbridgeError
from bridge.frame import Frame, now_ns
from bridge.io.base import FrameSink, FrameSource, create_sink, create_source
from bridge.runtime.slots import LatestSlot
from bridge.runtime.state import LiveState
from bridge.runtime.stats import Stats

log = logging.getLogger(__name__)

SourceFactory = Callable[[TransportConfig], FrameSource]
SinkFactory = Callable[[TransportConfig], FrameSink]


def default_source_factory(config: TransportConfig) -> FrameSource:
    return create_source(config.kind, **config.options)


def default_sink_factory(config: TransportConfig) -> FrameSink:
    return create_sink(config.kind, **config.options)


class Backoff:
    """Exponential retry delay: first, 2·first, ... capped at ``cap``; ``reset`` on success."""

    def __init__(self, first: float = 0.1, cap: float = 2.0) -> None:
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.cap, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.first


def clear_error(state: LiveState, where: str) -> None:
    """Clear the state's last error only if this component reported it."""
    error = state.snapshot()["last_error"]
    if error is not None and str(error.get("where", "")).startswith(where):
        state.set_error(None)


class SourceWorker:
    """Source thread: receive -> stamp stats -> LatestSlot (newest wins, drops counted)."""

    def __init__(self, config: TransportConfig, slot: LatestSlot[Frame], stats: Stats,
                 state: LiveState, *, factory: SourceFactory = default_source_factory,
                 receive_timeout: float = 0.25, stale_after: float = 2.0,
                 backoff: Backoff | None = None) -> None:
        self.config = config
        self._slot, self._stats, self._state, self._factory = slot, stats, state, factory
        self._receive_timeout, self._stale_after = receive_timeout, stale_after
        self._backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._reconfigure = threading.Event()
        self._source: FrameSource | None = None
        self._thread: threading.Thread | None = None
        self.last_frame_ns: int | None = None
        self.connected = False
        self._failed = False  # an error was reported; cleared by the next good frame
        self._opened_ns = 0
        self._last_report = ""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sdbridge-source", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("source thread did not stop within %.1f s", timeout)
        self._close()

    def reconfigure(self, config: TransportConfig) -> None:
        """Switch to another source (preset load); takes effect on the next receive."""
        self.config = config
        self._reconfigure.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._reconfigure.is_set():
                self._reconfigure.clear()
                self._close()
            if self._source is None and not self._open():
                self._stop.wait(self._backoff.next())
                continue
            self._receive_one()

    def _open(self) -> bool:
        try:
            source = self._factory(self.config)
            source.open()
        except Exception as exc:  # any open failure: report, back off, retry
            self._report(exc, "cannot open source")
            return False
        self._source = source
        self._opened_ns = now_ns()  # silence counts from the (re)connection
        log.info("source %s opened", self.config.kind)
        return True

    def _receive_one(self) -> None:
        assert self._source is not None
        try:
            frame = self._source.receive(self._receive_timeout)
        except FrameTimeout:
            now = now_ns()
            self.connected = self.last_frame_ns is not None and \
                (now - self.last_frame_ns) / 1e9 < self._stale_after
            idle = (now - max(self.last_frame_ns or 0, self._opened_ns)) / 1e9
            if idle >= self._stale_after * 2:  # long silence: the producer may have restarted
                log.info("source %s silent for %.1f s: reopening", self.config.kind, idle)
                self._stats.count("source_reconnects")
                self._close()
            return
        except Exception as exc:  # transport gone or broken: reopen with backoff
            self._report(exc, "source failed")
            self._close()
            self._stop.wait(self._backoff.next())
            return
        if self._failed:
            self._failed, self._last_report = False, ""
            clear_error(self._state, "source")
        self.connected = True
        self._backoff.reset()
        self.last_frame_ns = now_ns()
        self._stats.frame_in()
        if self._slot.put(frame):
            self._stats.count("dropped_source")

    def _report(self, exc: BaseException, what: str) -> None:
        self.connected = False
        self._stats.count("source_errors")
        message = f"{what}: {exc}"
        if self._failed and message == self._last_report:
            log.debug("%s %s (again): %s", what, self.config.kind, exc)
            return  # the same failure on every retry: one warning, one state change
        self._failed, self._last_report = True, message
        if isinstance(exc, SdbridgeError):
            log.warning("%s %s: %s", what, self.config.kind, exc)
        else:
            log.exception("%s %s", what, self.config.kind)
        self._state.set_error(exc, where="source")

    def _close(self) -> None:
        source, self._source = self._source, None
        self.connected = False
        if source is not None:
            try:
                source.close()
            except Exception:  # closing a dead transport must not kill the thread
                log.exception("closing source %s failed", self.config.kind)
