from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridge.errors import ConfigError, FrameFormatError, FrameTimeout
from bridge.frame import Frame, PixelFormat
from bridge.io import create_sink, create_source
from bridge.io.files import (
    ImageFolderSource,
    ImageSource,
    PngSequenceSink,
    VideoFileSink,
    VideoFileSource,
    natural_key,
)
from bridge.io.test_pattern import decode_counter, render_rgb, to_pixel_format


class FakeClock:
    def __init__(self) -> None:
        self.now, self.sleeps = 10**9, []

    def __call__(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += round(seconds * 1e9)


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(rgb, "RGB").save(path)
    return path


def test_natural_order() -> None:
    names = ["img10.png", "img2.png", "IMG1.png", "img2b.png"]
    assert sorted(names, key=natural_key) == ["IMG1.png", "img2.png", "img2b.png", "img10.png"]


def test_image_source_repeats_paced(tmp_path: Path) -> None:
    rgb = render_rgb(64, 48, 7)
    path = _write_png(tmp_path / "still.png", rgb)
    clock = FakeClock()
    with ImageSource(str(path), fps=20, pixel_format="BGRA", clock=clock, sleep=clock.sleep) as src:
        frames = [src.receive(1.0) for _ in range(3)]
    assert [f.seq for f in frames] == [0, 1, 2] and clock.sleeps == pytest.approx([0.05, 0.05])
    for frame in frames:
        assert frame.pixel_format is PixelFormat.BGRA and frame.source == "still.png"
        assert np.array_equal(frame.pixels[..., [2, 1, 0]], rgb) and (frame.pixels[..., 3] == 255).all()
    assert not np.shares_memory(frames[0].pixels, frames[1].pixels)


def test_image_source_keeps_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 77
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    frame = ImageSource(str(tmp_path / "a.png"), fps=0, pixel_format="RGBA").receive(0.0)
    assert np.array_equal(frame.pixels, rgba)


def test_folder_source_order_loop_and_end(tmp_path: Path) -> None:
    for i in (10, 2, 1):
        _write_png(tmp_path / f"f{i}.png", render_rgb(64, 32, i))
    (tmp_path / "notes.txt").write_text("ignored")
    looped = ImageFolderSource(str(tmp_path), fps=0, pixel_format="RGB")
    assert [decode_counter(looped.receive(0.0).pixels) for _ in range(5)] == [1, 2, 10, 1, 2]
    once = ImageFolderSource(str(tmp_path), fps=0, loop=False, pixel_format="RGB")
    assert [once.receive(0.0).seq for _ in range(3)] == [0, 1, 2]
    with pytest.raises(FrameTimeout, match="end"):
        once.receive(0.0)
    assert once.ended


def test_png_sink_then_folder_source_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = create_sink("png", path=str(out), prefix="shot_", digits=4)
    with sink:
        for i in range(3):
            sink.send(Frame(to_pixel_format(render_rgb(40, 30, i), PixelFormat.BGRA), PixelFormat.BGRA, seq=i))
        sink.send(Frame(render_rgb(40, 30, 3)[..., ::-1].copy(), PixelFormat.BGR, seq=3))
    assert sorted(p.name for p in out.iterdir()) == [f"shot_{i:04d}.png" for i in range(4)]
    with Image.open(out / "shot_0000.png") as img:
        assert img.mode == "RGBA"
    with Image.open(out / "shot_0003.png") as img:
        assert img.mode == "RGB" and np.array_equal(np.asarray(img), render_rgb(40, 30, 3))
    src = create_source("folder", path=str(out), fps=0, loop=False, pixel_format="RGB")
    assert [decode_counter(src.receive(0.0).pixels) for _ in range(4)] == [0, 1, 2, 3]


def test_video_sink_and_source_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    with VideoFileSink(str(path), fps=25) as sink:
        for i in range(12):
            sink.send(Frame(to_pixel_format(render_rgb(96, 64, i), PixelFormat.BGRA), PixelFormat.BGRA, seq=i))
    assert sink.frames_written == 12 and path.stat().st_size > 0
    clock = FakeClock()
    src = VideoFileSource(str(path), loop=False, pixel_format="RGB", clock=clock, sleep=clock.sleep)
    assert src.fps == pytest.approx(25.0)
    with src:
        frames = [src.receive(1.0) for _ in range(12)]
        with pytest.raises(FrameTimeout, match="end"):
            src.receive(0.1)
    assert [decode_counter(f.pixels) for f in frames] == list(range(12))
    # yuv420p smears chroma across the sharp bar edges; flat areas must come back nearly exact.
    error = np.abs(frames[5].pixels.astype(int) - render_rgb(96, 64, 5))
    assert np.median(error) <= 3, f"H.264 round trip too lossy: median error {np.median(error)}"


def test_video_source_loops_and_skips_when_consumer_is_late(tmp_path: Path) -> None:
    path = tmp_path / "loop.mkv"
    with VideoFileSink(str(path), fps=10, codec="ffv1", encoder_pixel_format="bgr0") as sink:
        for i in range(4):
            sink.send(Frame(render_rgb(32, 32, i), PixelFormat.RGB))
    src = VideoFileSource(str(path), fps=0, pixel_format="RGB")
    assert [decode_counter(src.receive(0.0).pixels) for _ in range(10)] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    src.close()
    clock = FakeClock()
    late = VideoFileSource(str(path), fps=10, pixel_format="RGB", clock=clock, sleep=clock.sleep)
    assert decode_counter(late.receive(1.0).pixels) == 0
    clock.now += 250_000_000  # consumer 2.5 frames late: frame 1 is dropped, 2 is current
    frame = late.receive(1.0)
    assert frame.seq == 2 and decode_counter(frame.pixels) == 2  # lossless codec: exact pixels
    assert np.array_equal(frame.pixels, render_rgb(32, 32, 2))
    late.close()


def test_video_sink_odd_size_padded_and_size_change_rejected(tmp_path: Path) -> None:
    sink = VideoFileSink(str(tmp_path / "odd.mp4"), fps=30)
    sink.send(Frame(render_rgb(33, 31, 0), PixelFormat.RGB))
    with pytest.raises(FrameFormatError, match="size constant"):
        sink.send(Frame(render_rgb(64, 64, 1), PixelFormat.RGB))
    sink.close()
    src = VideoFileSource(str(tmp_path / "odd.mp4"), fps=0, pixel_format="RGB")
    assert src.receive(0.0).pixels.shape == (32, 34, 3)
    src.close()


@pytest.mark.parametrize("factory, field", [
    (lambda p: ImageSource(str(p / "missing.png")), "source.path"),
    (lambda p: ImageFolderSource(str(p)), "source.path"),  # empty folder
    (lambda p: ImageFolderSource(str(p), fps=-2), "source.fps"),
    (lambda p: ImageFolderSource(str(p), pixel_format="CMYK"), "source.pixel_format"),
    (lambda p: VideoFileSink(str(p / "x.mp4"), codec="no-such-codec"), "sink.codec"),
    (lambda p: VideoFileSink(str(p / "x.mp4"), fps=0), "sink.fps"),
    (lambda p: PngSequenceSink(str(p), digits=0), "sink.digits"),
])
def test_bad_options_name_the_field(tmp_path: Path, factory, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        factory(tmp_path)
    assert info.value.fields == [field]


def test_unreadable_image_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(FrameFormatError, match="cannot read image"):
        ImageSource(str(bad)).open()


def test_video_kind_is_unavailable_without_pyav_and_says_why(monkeypatch) -> None:
    import builtins

    from bridge.io import is_available

    real_import = builtins.__import__

    def no_av(name: str, *args: object, **kwargs: object) -> object:
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    status = is_available("video")
    assert not status.available and "sdbridge[video]" in status.reason
    assert is_available("image").available  # images only need Pillow
