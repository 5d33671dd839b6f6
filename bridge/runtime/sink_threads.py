"""The daemon's output side: one thread and one bounded queue per sink (DESIGN.md §1).

A slow sink (PNG files, a video encoder, a stalled NDI receiver) must not hold up the others,
so the inference thread's output is fanned out into a small queue per sink (depth 1-2, newest
wins, drops counted per sink as ``dropped_sink.<index>``) and each sink sends from its own
thread. Each thread survives its transport going away: it closes the sink, reports the error
once in the live state, and reopens it with exponential backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from bridge.config import TransportConfig
from bridge.errors import SdbridgeError
from bridge.frame import Frame, now_ns
from bridge.io.base import FrameSink
from bridge.runtime.slots import BoundedQueue
from bridge.runtime.state import LiveState
from bridge.runtime.stats import Stats
from bridge.runtime.workers import Backoff, SinkFactory, clear_error, default_sink_factory

log = logging.getLogger(__name__)

GET_TIMEOUT_S = 0.1  # how often an idle sink thread looks at its queue's closed flag


class _Batch:
    """One inference output shared by every sink queue. The first sink thread done with a
    frame records it as sent (``frames_out``, end-to-end latency), so ``fps_out`` counts frames
    that left the daemon, not frames times sinks."""

    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames
        self._counted = [False] * len(frames)
        self._lock = threading.Lock()

    def claim(self, index: int) -> bool:
        with self._lock:
            first = not self._counted[index]
            self._counted[index] = True
            return first


class SinkThread:
    """One sink, its queue and its thread: queue -> send, reopen with backoff on failure."""

    def __init__(self, index: int, config: TransportConfig, depth: int, stats: Stats,
                 state: LiveState, factory: SinkFactory, control: Any) -> None:
        self.index, self.config = index, config
        self.queue: BoundedQueue[_Batch] = BoundedQueue(depth)
        self._stats, self._state, self._factory, self._control = stats, state, factory, control
        self.sink: FrameSink | None = None
        self._retry_at = 0.0
        self._backoff = Backoff(0.2, 5.0)
        self._last_report = ""
        self._lock = threading.Lock()  # a close never runs inside a send
        self._thread: threading.Thread | None = None
        self._closed = False  # set at stop: a late frame must not reopen the sink
        self.sent = 0

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Open now (at start): an error propagates so ``serve`` fails with it."""
        self.sink = self._open_sink()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"sdbridge-sink-{self.index}",
                                        daemon=True)
        self._thread.start()

    def put(self, batch: _Batch) -> None:
        if self.queue.put(batch):
            self._stats.count(f"dropped_sink.{self.index}", len(batch.frames))

    def close_queue(self) -> None:
        """No more input: the thread sends what is queued, then exits."""
        self.queue.close()

    def join_and_close(self, deadline: float) -> None:
        """Wait for the drain until ``deadline`` (monotonic), then close the sink. A thread
        stuck in a send keeps its sink: closing it under the send could crash the process."""
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                log.error("sink %d (%s) thread did not stop in time", self.index, self.config.kind)
        if not self._lock.acquire(timeout=max(0.01, deadline - time.monotonic())):
            log.error("sink %d (%s) is stuck in send: not closed", self.index, self.config.kind)
            return
        try:
            self._closed = True
            self._close()
        finally:
            self._lock.release()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            batch = self.queue.get(GET_TIMEOUT_S)
            if batch is None:
                if self.queue.closed:
                    return
                continue
            for position, frame in enumerate(batch.frames):
                self._send(frame)
                if batch.claim(position):
                    self._stats.frame_out(frame.timestamp_ns, now_ns())
                    self.sent += 1

    def _send(self, frame: Frame) -> None:
        start = now_ns()
        with self._lock:
            if self._closed:
                return
            if self.sink is None and time.monotonic() >= self._retry_at:
                self._reopen()
            if self.sink is None:
                return
            try:
                self.sink.send(frame)
            except Exception as exc:  # a dead sink must not stop this thread
                self._fail(exc, "sink failed")
                return
        self._stats.stage("send", now_ns() - start)

    # ------------------------------------------------------------------ open / fail / close
    def _open_sink(self) -> FrameSink:
        sink = self._factory(self.config)
        sink.open()
        attach = getattr(sink, "attach_control", None)
        if attach is not None and self._control is not None:
            attach(self._control)  # sinks that take commands (the HTTP preview form)
        return sink

    def _reopen(self) -> None:
        try:
            sink = self._open_sink()
        except Exception as exc:
            self._fail(exc, "cannot open sink")
            return
        self.sink = sink
        self._backoff.reset()
        self._last_report = ""
        clear_error(self._state, f"sink.{self.index}")
        log.info("sink %d (%s) opened", self.index, self.config.kind)

    def _fail(self, exc: BaseException, what: str) -> None:
        self._stats.count("sink_errors")
        message = f"{what}: {exc}"
        if message != self._last_report:  # the same failure on every retry is reported once
            self._last_report = message
            if isinstance(exc, SdbridgeError):
                log.warning("%s %d (%s): %s", what, self.index, self.config.kind, exc)
            else:
                log.exception("%s %d (%s)", what, self.index, self.config.kind)
            self._state.set_error(exc, where=f"sink.{self.index}")
        self._close()
        self._retry_at = time.monotonic() + self._backoff.next()

    def _close(self) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            try:
                sink.close()
            except Exception:
                log.exception("closing sink %d (%s) failed", self.index, self.config.kind)


class SinkWorker:
    """Fan-out from the inference thread to one ``SinkThread`` per sink."""

    def __init__(self, configs: tuple[TransportConfig, ...], stats: Stats, state: LiveState, *,
                 depth: int = 2, factory: SinkFactory = default_sink_factory,
                 control: Any = None) -> None:
        self._stats, self._state, self._factory = stats, state, factory
        self._depth = depth
        self._control = control  # handed to sinks that take commands (the HTTP preview form)
        self._lock = threading.Lock()  # guards the list against a preset load mid-put
        self._threads = self._make(configs)
        self._started = False

    def _make(self, configs: tuple[TransportConfig, ...]) -> list[SinkThread]:
        return [SinkThread(i, c, self._depth, self._stats, self._state, self._factory,
                           self._control) for i, c in enumerate(configs)]

    def open_all(self) -> None:
        """Open every sink now so a misconfigured sink fails ``serve`` at start, not later."""
        for thread in self._threads:
            thread.open()

    def start(self) -> None:
        with self._lock:
            self._started = True
            for thread in self._threads:
                thread.start()

    def put(self, frames: list[Frame]) -> None:
        """Hand one inference output to every sink; never blocks (full queues drop the oldest)."""
        batch = _Batch(frames)
        with self._lock:
            for thread in self._threads:
                thread.put(batch)

    def stop(self, timeout: float = 2.0) -> None:
        """Drain what is queued, then close every sink (shared memory is unlinked here)."""
        with self._lock:
            threads, self._started = list(self._threads), False
        self._shut(threads, timeout)

    def reconfigure(self, configs: tuple[TransportConfig, ...], timeout: float = 1.0) -> None:
        """Switch sinks (preset load): the old ones are closed, the new ones open on the next
        frame (a failure there is reported and retried like any sink failure)."""
        with self._lock:
            old, self._threads = self._threads, self._make(configs)
            if self._started:
                for thread in self._threads:
                    thread.start()
        self._shut(old, timeout)

    @staticmethod
    def _shut(threads: list[SinkThread], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.close_queue()  # every thread drains at once, not one after the other
        for thread in threads:
            thread.join_and_close(deadline)

    @property
    def sinks(self) -> list[FrameSink | None]:
        return [thread.sink for thread in self._threads]

    @property
    def sent(self) -> int:
        """Frames that left through the sinks (each counted once, by the first sink)."""
        return sum(thread.sent for thread in self._threads)
