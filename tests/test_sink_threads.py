"""One thread and one bounded queue per sink: a stalled sink drops its own frames (counted per
sink) while the others receive every frame; stop drains and closes, and never closes a sink
under a send that is still stuck."""

from __future__ import annotations

import threading
import time
import pytest

from bridge.config import DEFAULT_PRESET, validate_preset
from bridge.frame import Frame
from bridge.runtime.daemon import Daemon
from bridge.runtime.pipelines import identity_factory
from runtime_helpers import CaptureSink, QueueSource, wait_until

FRAMES = 30


class StalledSink(CaptureSink):
    """Like a receiver that stopped reading: ``send`` blocks until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def send(self, frame: Frame) -> None:
        self.entered.set()
        self.gate.wait(30)
        super().send(frame)


class SleepySink(CaptureSink):
    """A slow encoder: every send takes 0.2 s."""

    def send(self, frame: Frame) -> None:
        time.sleep(0.2)
        super().send(frame)


def _daemon(fast: CaptureSink, slow: CaptureSink, depth: int = 2) -> tuple[Daemon, QueueSource]:
    source = QueueSource()
    preset = validate_preset(dict(DEFAULT_PRESET, control={"enabled": False}, output_format="RGB",
                                  width=64, height=64, fallback_output="passthrough",
                                  sink=[{"kind": "null", "name": "fast"},
                                        {"kind": "null", "name": "slow"}]))
    sinks = {"fast": fast, "slow": slow}
    daemon = Daemon(preset, pipeline_factory=identity_factory, output_depth=depth,
                    source_factory=lambda c: source,
                    sink_factory=lambda c: sinks[c.options["name"]])
    assert daemon.start()
    assert daemon.sinks.sinks == [fast, slow]
    return daemon, source


def _feed(source: QueueSource, fast: CaptureSink) -> None:
    """One frame at a time, each waited for on the fast sink (the input slot keeps only the
    newest frame, so pushing faster would drop at the input, not at the sinks)."""
    for seq in range(1, FRAMES + 1):
        source.push(seq, value=seq % 256)
        wait_until(lambda: seq in fast.seqs(), what=f"frame {seq} on the fast sink")


def test_stalled_sink_drops_its_own_frames_while_the_other_gets_every_frame():
    fast, slow = CaptureSink(), StalledSink()
    daemon, source = _daemon(fast, slow)
    try:
        _feed(source, fast)
        assert slow.entered.is_set() and slow.frames == []  # stuck in its first send
        counters = daemon.get_stats()["counters"]
        assert counters.get("dropped_sink.0", 0) == 0
        # frame 1 is in the stuck send and the queue holds the 2 newest: the rest were dropped
        assert counters["dropped_sink.1"] >= FRAMES - 3
    finally:
        slow.gate.set()
        daemon.stop()
    assert fast.seqs() == list(range(1, FRAMES + 1))
    counters = daemon.get_stats()["counters"]
    emitted = len(fast.frames)  # every output (fallback frames too), none dropped by the fast sink
    assert len(slow.frames) + counters["dropped_sink.1"] == emitted  # sent or counted, never lost
    assert slow.seqs()[0] == 1 and slow.frames[-1] is fast.frames[-1]  # stop drained the newest
    assert counters["frames_out"] == emitted  # each frame counted once, not once per sink
    assert fast.closed and slow.closed


def test_slow_sink_next_to_a_fast_one_with_depth_one():
    fast, slow = CaptureSink(), SleepySink()
    daemon, source = _daemon(fast, slow, depth=1)
    try:
        _feed(source, fast)
        dropped = daemon.get_stats()["counters"].get("dropped_sink.1", 0)
    finally:
        daemon.stop()
    assert fast.seqs() == list(range(1, FRAMES + 1))
    counters = daemon.get_stats()["counters"]
    assert counters.get("dropped_sink.0", 0) == 0
    assert len(slow.frames) + counters["dropped_sink.1"] == len(fast.frames)
    # 30 frames fed one by one take at least 30 x 5 ms of polling; 0.2 s sends cannot keep up
    # with all of them through a queue of one unless the machine paused for seconds
    assert dropped > 0 and len(slow.frames) < len(fast.frames)


def test_stop_closes_every_other_sink_when_one_is_stuck_in_send():
    fast, slow = CaptureSink(), StalledSink()
    daemon, source = _daemon(fast, slow)
    try:
        source.push(1, value=1 % 256)
        wait_until(lambda: fast.seqs() == [1] and slow.entered.is_set(), what="frame 1 out")
        daemon.stop(timeout=1.0)
        assert fast.closed  # e.g. shared memory unlinked even though the other sink hangs
        assert not slow.closed  # never closed under its own send (could crash the process)
        assert daemon.get_state()["status"] == "stopped"
    finally:
        slow.gate.set()


def test_a_sink_that_cannot_open_fails_start_with_its_error():
    from bridge.errors import TransportError

    class Unopenable(CaptureSink):
        def open(self) -> None:
            raise TransportError("port 8080 is in use", fix="pick another port")

    preset = validate_preset(dict(DEFAULT_PRESET, control={"enabled": False},
                                  sink=[{"kind": "null"}]))
    daemon = Daemon(preset, pipeline_factory=identity_factory,
                    source_factory=lambda c: QueueSource(), sink_factory=lambda c: Unopenable())
    try:
        with pytest.raises(TransportError, match="port 8080 is in use"):
            daemon.start()
    finally:
        daemon.stop()


def test_each_sink_sends_from_its_own_thread():
    seen: dict[str, set[int]] = {"fast": set(), "slow": set()}

    class ThreadRecording(CaptureSink):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def send(self, frame: Frame) -> None:
            seen[self.name].add(threading.get_ident())
            super().send(frame)

    fast, slow = ThreadRecording("fast"), ThreadRecording("slow")
    daemon, source = _daemon(fast, slow)
    try:
        source.push(1, value=1 % 256)
        wait_until(lambda: fast.seqs() == [1] and slow.seqs() == [1], what="frame 1 on both sinks")
    finally:
        daemon.stop()
    assert len(seen["fast"]) == len(seen["slow"]) == 1 and seen["fast"] != seen["slow"]
    alive = {t.ident for t in threading.enumerate()}
    assert not (seen["fast"] | seen["slow"]) & alive  # stop ended both threads
