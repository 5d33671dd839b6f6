"""Spout: the policy runs on every OS against a fake SpoutGL-like backend; the real SpoutGL
round trip needs Windows and is skipped elsewhere with the reason."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

import numpy as np
import pytest

from bridge.errors import ConfigError, FrameTimeout, RuntimeMissingError, SourceNotFoundError, TransportError
from bridge.frame import Frame, PixelFormat
from bridge.io import spout
from bridge.io.spout import GL_FORMATS, SpoutSink, SpoutSource, Step, classify, send_format


@dataclass
class Status:
    received: bool
    updated: bool
    frame_new: bool
    width: int
    height: int


class FakeSender:
    """What a Spout sender looks like to a receiver: present or not, a size, a frame counter."""

    def __init__(self) -> None:
        self.present, self.width, self.height, self.frame = False, 0, 0, 0


class FakeReceiver:
    """Mimics SpoutGL receiveImage: a size change is reported (updated) without copying."""

    def __init__(self, sender: FakeSender) -> None:
        self.sender, self.size, self.seen, self.closed = sender, (0, 0), 0, False
        self.formats: list[int] = []

    def receive(self, buffer: np.ndarray | None, gl_format: int, flip: bool) -> Status:
        self.formats.append(gl_format)
        s = self.sender
        if not s.present:
            return Status(False, False, False, 0, 0)
        if self.size != (s.width, s.height):
            self.size = (s.width, s.height)
            return Status(True, True, False, s.width, s.height)
        if buffer is None:
            return Status(True, False, False, s.width, s.height)
        new = s.frame > self.seen
        if new:
            self.seen = s.frame
            buffer[...] = s.frame % 256
        return Status(True, False, new, s.width, s.height)

    def close(self) -> None:
        self.closed = True


def _source(sender: FakeSender, **kwargs: object) -> tuple[SpoutSource, list[FakeReceiver]]:
    made: list[FakeReceiver] = []

    def factory(name: str) -> FakeReceiver:
        made.append(FakeReceiver(sender))
        return made[-1]

    kwargs.setdefault("timeout", 5.0)
    src = SpoutSource("TD out", backend_factory=factory, sender_lister=lambda: ["TD out", "Resolume"],
                      poll_interval=0.001, **kwargs)  # type: ignore[arg-type]
    return src, made


@pytest.mark.parametrize("status, buffer_shape, expected", [
    (Status(False, False, False, 0, 0), None, Step.NO_SENDER),
    (Status(True, False, True, 0, 0), None, Step.NO_SENDER),
    (Status(True, True, False, 64, 32), (32, 64, 4), Step.RESIZED),
    (Status(True, False, True, 64, 32), None, Step.RESIZED),
    (Status(True, False, True, 64, 32), (64, 32, 4), Step.RESIZED),  # transposed is not equal
    (Status(True, False, False, 64, 32), (32, 64, 4), Step.NO_NEW_FRAME),
    (Status(True, False, True, 64, 32), (32, 64, 4), Step.FRAME),
])
def test_classify(status: Status, buffer_shape: tuple[int, ...] | None, expected: Step) -> None:
    buffer = None if buffer_shape is None else np.zeros(buffer_shape, np.uint8)
    assert classify(status, buffer) is expected


def test_source_follows_resizes_and_waits_for_new_frames() -> None:
    sender = FakeSender()
    src, made = _source(sender)
    with src:
        with pytest.raises(FrameTimeout, match="no sender yet"):
            src.receive(0.01)
        sender.present, sender.width, sender.height, sender.frame = True, 64, 32, 1
        first = src.receive(0.5)
        assert first.pixels.shape == (32, 64, 4) and (first.pixels == 1).all() and first.seq == 1
        with pytest.raises(FrameTimeout, match="no new frame"):
            src.receive(0.01)  # connected, sender idle
        sender.frame = 2
        assert (src.receive(0.5).pixels == 2).all()
        sender.width, sender.height, sender.frame = 128, 48, 3
        resized = src.receive(0.5)
        assert resized.pixels.shape == (48, 128, 4) and (resized.pixels == 3).all()
        assert src.resizes == 2
        assert not np.shares_memory(first.pixels, resized.pixels)
    assert made[0].closed and set(made[0].formats) == {GL_FORMATS[PixelFormat.BGRA]}


def test_sender_that_never_appears_lists_found_senders() -> None:
    src, _ = _source(FakeSender(), timeout=0.05)
    with src, pytest.raises(SourceNotFoundError, match=r"found: \['TD out', 'Resolume'\]"):
        for _ in range(100):
            try:
                src.receive(0.02)
            except FrameTimeout:
                continue


def test_sender_that_goes_away_gives_timeouts_then_frames_again() -> None:
    sender = FakeSender()
    src, _ = _source(sender, timeout=0.01)
    sender.present, sender.width, sender.height, sender.frame = True, 16, 16, 1
    with src:
        src.receive(0.5)
        sender.present = False
        for _ in range(3):  # long after the open timeout: still a timeout, not "not found"
            with pytest.raises(FrameTimeout):
                src.receive(0.02)
        sender.present, sender.frame = True, 2
        assert (src.receive(0.5).pixels == 2).all()


def test_source_must_stay_on_its_thread() -> None:
    sender = FakeSender()
    sender.present, sender.width, sender.height, sender.frame = True, 8, 8, 1
    src, _ = _source(sender)
    src.receive(0.5)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            src.receive(0.1)
        except BaseException as exc:  # noqa: BLE001 - collected for the assert
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], TransportError) and "thread" in str(errors[0])


class FakeSenderBackend:
    def __init__(self, ok: bool = True) -> None:
        self.ok, self.sent = ok, []

    def send(self, pixels: np.ndarray, gl_format: int, flip: bool) -> bool:
        self.sent.append((pixels.shape, gl_format, flip))
        return self.ok

    def close(self) -> None:
        pass


def test_sink_formats_and_uyvy_conversion() -> None:
    backend = FakeSenderBackend()
    sink = SpoutSink("out", flip=True, backend_factory=lambda name: backend)
    bgra = Frame(np.zeros((4, 6, 4), np.uint8), PixelFormat.BGRA)
    rgb = Frame(np.zeros((4, 6, 3), np.uint8), PixelFormat.RGB)
    uyvy = Frame(np.full((4, 6, 2), 128, np.uint8), PixelFormat.UYVY)
    with sink:
        for frame in (bgra, rgb, uyvy):
            sink.send(frame)
    assert backend.sent == [((4, 6, 4), 0x80E1, True), ((4, 6, 3), 0x1907, True), ((4, 6, 4), 0x80E1, True)]
    assert sink.frames_sent == 3
    pixels, fmt = send_format(uyvy)
    assert pixels.shape == (4, 6, 4) and fmt == GL_FORMATS[PixelFormat.BGRA]


def test_sink_failed_send_raises() -> None:
    sink = SpoutSink("out", backend_factory=lambda name: FakeSenderBackend(ok=False))
    with pytest.raises(TransportError, match="failed to send"):
        sink.send(Frame(np.zeros((2, 2, 4), np.uint8), PixelFormat.BGRA))


@pytest.mark.parametrize("kwargs, field", [
    ({"pixel_format": "UYVY"}, "source.pixel_format"), ({"timeout": 0}, "source.timeout"),
    ({"poll_interval": -1}, "source.poll_interval"),
])
def test_source_bad_options(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SpoutSource("x", **kwargs)
    assert info.value.fields == [field]


@pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows reason")
def test_unavailable_off_windows_says_why() -> None:
    status = spout.availability()
    assert not status.available and "Windows-only" in status.reason
    with pytest.raises(RuntimeMissingError, match="Windows-only"):
        spout.list_senders()
    with pytest.raises(RuntimeMissingError, match="Windows-only"):
        SpoutSink("x").send(Frame(np.zeros((2, 2, 4), np.uint8), PixelFormat.BGRA))


@pytest.mark.windows
@pytest.mark.skipif(sys.platform != "win32", reason="Spout needs Windows (SpoutGL, OpenGL/DirectX interop)")
def test_real_spout_round_trip() -> None:
    if not spout.availability().available:
        pytest.skip(f"Spout unavailable: {spout.availability().reason}")
    from bridge.io.test_pattern import decode_counter, render_rgb, to_pixel_format

    name = "sdbridge-test-spout"
    results: list[int] = []
    with SpoutSink(name) as sink, SpoutSource(name, timeout=10) as src:
        for i in range(10):
            sink.send(Frame(to_pixel_format(render_rgb(256, 128, i), PixelFormat.BGRA), PixelFormat.BGRA))
            try:
                frame = src.receive(2.0)
            except FrameTimeout:
                continue
            results.append(decode_counter(frame.pixels[..., [2, 1, 0]]))
        assert name in spout.list_senders()
    assert results and all(b > a for a, b in zip(results, results[1:]))
