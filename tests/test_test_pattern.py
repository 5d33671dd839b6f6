from __future__ import annotations

import numpy as np
import pytest

from bridge.errors import ConfigError, FrameTimeout
from bridge.frame import PixelFormat
from bridge.io import create_sink, create_source
from bridge.io.null import NullSink
from bridge.io.test_pattern import (
    TestPatternSource,
    decode_counter,
    render,
    render_rgb,
    schedule_next,
    to_pixel_format,
)


class FakeClock:
    """Injected clock: time only moves when the source sleeps or the test advances it."""

    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        self.now = start_ns
        self.sleeps: list[float] = []

    def __call__(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += round(seconds * 1e9)


def test_schedule_on_time_grid() -> None:
    assert schedule_next(0, -1, 0, 30.0) == (0, 0)
    index, due = schedule_next(0, 0, 0, 30.0)
    assert index == 1 and due == round(1e9 / 30)


def test_schedule_skips_missed_frames_when_consumer_is_late() -> None:
    # 10.5 periods late after frame 2: frames 3..9 are skipped, the next is 10.
    period = 1e9 / 25
    index, due = schedule_next(0, 2, round(10.5 * period), 25.0)
    assert index == 10 and due == round(10 * period)


def test_schedule_fps_zero_is_immediate() -> None:
    assert schedule_next(0, 41, 123, 0.0) == (42, 123)


def test_source_paces_with_injected_clock() -> None:
    clock = FakeClock()
    src = TestPatternSource(64, 48, fps=10.0, clock=clock, sleep=clock.sleep)
    with src:
        frames = [src.receive(timeout=1.0) for _ in range(3)]
    assert [f.seq for f in frames] == [0, 1, 2]
    assert clock.sleeps == pytest.approx([0.1, 0.1])
    assert frames[2].timestamp_ns - frames[0].timestamp_ns == 200_000_000


def test_source_fps_zero_never_sleeps() -> None:
    clock = FakeClock()
    src = TestPatternSource(32, 32, fps=0, clock=clock, sleep=clock.sleep)
    seqs = [src.receive(timeout=0.0).seq for _ in range(5)]
    assert seqs == [0, 1, 2, 3, 4] and clock.sleeps == []


def test_source_timeout_shorter_than_period_raises() -> None:
    clock = FakeClock()
    src = TestPatternSource(32, 32, fps=1.0, clock=clock, sleep=clock.sleep)
    src.receive(timeout=0.1)
    with pytest.raises(FrameTimeout, match="timeout"):
        src.receive(timeout=0.25)
    assert clock.sleeps == [0.25]
    assert src.receive(timeout=1.0).seq == 1


def test_frames_have_counter_format_and_motion() -> None:
    src = TestPatternSource(512, 512, fps=0, pixel_format="BGRA", name="pat")
    a, b = src.receive(0.0), src.receive(0.0)
    assert a.pixels.shape == (512, 512, 4) and a.pixel_format is PixelFormat.BGRA
    assert a.source == "pat" and (a.pixels[..., 3] == 255).all()
    rgb_a = a.pixels[..., [2, 1, 0]]
    assert decode_counter(rgb_a) == 0 and decode_counter(b.pixels[..., [2, 1, 0]]) == 1
    # Bars move: the rows below the counter differ between consecutive frames.
    assert not np.array_equal(a.pixels[100:300], b.pixels[100:300])


@pytest.mark.parametrize("size", [(64, 64), (512, 512), (1920, 1080), (17, 9)])
def test_counter_roundtrip_many_sizes(size: tuple[int, int]) -> None:
    width, height = size
    if width < 30:
        with pytest.raises(ValueError, match="clipped"):
            decode_counter(render_rgb(width, height, 5))
        return
    for value in (0, 7, 123456, 999999):
        assert decode_counter(render_rgb(width, height, value)) == value


def test_counter_survives_noise() -> None:
    rng = np.random.default_rng(0)
    rgb = render_rgb(512, 512, 48213).astype(np.int16)
    noisy = np.clip(rgb + rng.integers(-40, 41, rgb.shape), 0, 255).astype(np.uint8)
    assert decode_counter(noisy) == 48213


def test_pixel_formats_are_channel_permutations() -> None:
    rgb = render_rgb(40, 30, 3)
    assert np.array_equal(to_pixel_format(rgb, PixelFormat.RGB), rgb)
    assert np.array_equal(to_pixel_format(rgb, PixelFormat.BGR), rgb[..., ::-1])
    rgba = to_pixel_format(rgb, PixelFormat.RGBA)
    assert np.array_equal(rgba[..., :3], rgb) and (rgba[..., 3] == 255).all()


@pytest.mark.parametrize("fmt", ["BGRA", "RGBA", "BGRX", "RGBX", "RGB", "BGR"])
def test_direct_render_equals_rgb_rearranged(fmt: str) -> None:
    for index in (0, 5, 200):
        expected = to_pixel_format(render_rgb(96, 64, index), PixelFormat(fmt))
        assert np.array_equal(render(96, 64, index, PixelFormat(fmt)), expected)


def test_uyvy_pattern_decodes_after_conversion() -> None:
    from bridge.frame_convert import convert

    frame = TestPatternSource(128, 96, fps=0, pixel_format="UYVY").receive(0.0)
    assert frame.pixel_format is PixelFormat.UYVY and frame.pixels.shape == (96, 128, 2)
    assert decode_counter(convert(frame.pixels, PixelFormat.UYVY, PixelFormat.RGB)) == 0


@pytest.mark.parametrize("kwargs, field", [
    ({"width": 0}, "source.width"), ({"height": 512.5}, "source.height"),
    ({"fps": -1}, "source.fps"), ({"pixel_format": "UYVY", "width": 63}, "source.width"),
    ({"pixel_format": "nope"}, "source.pixel_format"),
])
def test_bad_options_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        TestPatternSource(**kwargs)
    assert info.value.fields == [field]


def test_registry_builds_pattern_and_null_sink() -> None:
    src = create_source("test_pattern", width=64, height=64, fps=0)
    sink = create_sink("null")
    assert isinstance(sink, NullSink)
    with src, sink:
        for _ in range(4):
            sink.send(src.receive(0.0))
    assert sink.frames == 4 and sink.bytes == 4 * 64 * 64 * 4
    assert sink.last_frame is not None and sink.last_frame.seq == 3


def test_null_sink_without_keep_last() -> None:
    sink = NullSink(keep_last=False)
    sink.send(TestPatternSource(16, 16, fps=0).receive(0.0))
    assert sink.frames == 1 and sink.last_frame is None and sink.last_sent_ns is not None
