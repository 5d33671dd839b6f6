"""Pixel-format conversions: round trips, known colours, BT.709 limited-range UYVY."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bridge.errors import FrameFormatError
from bridge.frame import Frame, PixelFormat
from bridge.frame_convert import convert, convert_frame

RGB_FAMILY = [f for f in PixelFormat if f is not PixelFormat.UYVY]
ALPHA = {PixelFormat.BGRA, PixelFormat.RGBA}

# (R, G, B) -> (Y, Cb, Cr), BT.709 limited range (ITU-R BT.709-6 table values).
KNOWN_YCBCR = {
    (255, 255, 255): (235, 128, 128),
    (0, 0, 0): (16, 128, 128),
    (255, 0, 0): (63, 102, 240),
    (0, 255, 0): (173, 42, 26),
    (0, 0, 255): (32, 240, 118),
}


def _random(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _rgb_of(pixels: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    return convert(pixels, fmt, PixelFormat.RGB)


def _solid(fmt: PixelFormat, rgb: tuple[int, int, int], alpha: int = 200) -> np.ndarray:
    values = {"R": rgb[0], "G": rgb[1], "B": rgb[2], "A": alpha, "X": 255}
    pixel = [values[c] for c in fmt.value]
    return np.tile(np.array(pixel, dtype=np.uint8), (4, 6, 1))


@pytest.mark.parametrize("src,dst", list(itertools.permutations(RGB_FAMILY, 2)))
def test_rgb_family_round_trip_keeps_colour(src: PixelFormat, dst: PixelFormat) -> None:
    pixels = _random((5, 7, src.channels))
    there = convert(pixels, src, dst)
    assert there.shape == (5, 7, dst.channels) and there.dtype == np.uint8 and there.flags.c_contiguous
    back = convert(there, dst, src)
    np.testing.assert_array_equal(_rgb_of(back, src), _rgb_of(pixels, src))
    if src in ALPHA and dst in ALPHA:
        np.testing.assert_array_equal(back, pixels)


@pytest.mark.parametrize("src", RGB_FAMILY)
@pytest.mark.parametrize("dst", RGB_FAMILY)
def test_known_colour_bytes(src: PixelFormat, dst: PixelFormat) -> None:
    out = convert(_solid(src, (10, 20, 30)), src, dst)
    expected_alpha = 200 if (src in ALPHA and dst in ALPHA) else 255
    values = {"R": 10, "G": 20, "B": 30, "A": expected_alpha, "X": 255}
    np.testing.assert_array_equal(out[0, 0], [values[c] for c in dst.value])


def test_bgra_to_rgba_is_a_byte_swap() -> None:
    px = np.array([[[1, 2, 3, 4]]], dtype=np.uint8)
    np.testing.assert_array_equal(convert(px, "BGRA", "RGBA"), [[[3, 2, 1, 4]]])
    np.testing.assert_array_equal(convert(px, "BGRA", "RGB"), [[[3, 2, 1]]])
    np.testing.assert_array_equal(convert(px, "BGRA", "BGRX"), [[[1, 2, 3, 255]]])


@pytest.mark.parametrize("rgb,ycbcr", list(KNOWN_YCBCR.items()))
def test_uyvy_known_colours_bt709_limited(rgb: tuple[int, int, int], ycbcr: tuple[int, int, int]) -> None:
    uyvy = convert(_solid(PixelFormat.RGB, rgb), PixelFormat.RGB, PixelFormat.UYVY)
    y, cb, cr = ycbcr
    assert np.all(np.abs(uyvy[..., 1].astype(int) - y) <= 1)
    assert np.all(np.abs(uyvy[:, 0::2, 0].astype(int) - cb) <= 1)
    assert np.all(np.abs(uyvy[:, 1::2, 0].astype(int) - cr) <= 1)
    back = convert(uyvy, PixelFormat.UYVY, PixelFormat.RGB)
    assert np.max(np.abs(back.astype(int) - np.array(rgb))) <= 2


@pytest.mark.parametrize("fmt", RGB_FAMILY)
def test_uyvy_round_trip_within_tolerance(fmt: PixelFormat) -> None:
    # Pairs of equal pixels: 4:2:2 keeps them exactly up to quantisation (limited range has fewer
    # codes than full range, so a few units of error are expected). Saturated colours clip.
    rng = np.random.default_rng(3)
    rgb = rng.integers(16, 240, size=(8, 5, 3), dtype=np.uint8).repeat(2, axis=1)
    src = convert(rgb, PixelFormat.RGB, fmt)
    back = convert(convert(src, fmt, PixelFormat.UYVY), PixelFormat.UYVY, PixelFormat.RGB)
    assert np.max(np.abs(back.astype(int) - rgb.astype(int))) <= 3


def test_uyvy_chroma_is_averaged_over_the_pixel_pair() -> None:
    row = np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)  # red then blue
    uyvy = convert(row, PixelFormat.RGB, PixelFormat.UYVY)
    # Mean of red and blue chroma: Cb (102+240)/2 = 171, Cr (240+118)/2 = 179.
    assert abs(int(uyvy[0, 0, 0]) - 171) <= 1 and abs(int(uyvy[0, 1, 0]) - 179) <= 1
    assert abs(int(uyvy[0, 0, 1]) - 63) <= 1 and abs(int(uyvy[0, 1, 1]) - 32) <= 1


def test_uyvy_to_bgra_is_opaque() -> None:
    uyvy = np.zeros((2, 4, 2), dtype=np.uint8)
    uyvy[..., 0], uyvy[..., 1] = 128, 235
    out = convert(uyvy, PixelFormat.UYVY, PixelFormat.BGRA)
    np.testing.assert_array_equal(out, np.full((2, 4, 4), 255, dtype=np.uint8))


def test_same_format_returns_input() -> None:
    px = _random((2, 2, 4))
    assert convert(px, "BGRA", "BGRA") is px


def test_convert_frame_keeps_metadata() -> None:
    frame = Frame(_random((4, 6, 4)), PixelFormat.BGRA, seq=7, timestamp_ns=123, source="cam")
    out = convert_frame(frame, "UYVY")
    assert out.pixel_format is PixelFormat.UYVY and out.pixels.shape == (4, 6, 2)
    assert (out.seq, out.timestamp_ns, out.source) == (7, 123, "cam")
    assert convert_frame(frame, PixelFormat.BGRA) is frame


@pytest.mark.parametrize("pixels,src,dst,needle", [
    (np.zeros((2, 2, 3), np.uint8), "BGRA", "RGB", "needs 4 channels"),
    (np.zeros((2, 2, 4), np.float32), "BGRA", "RGB", "uint8"),
    (np.zeros((2, 3, 3), np.uint8), "RGB", "UYVY", "even width"),
    (np.zeros((2, 2, 4), np.uint8), "BGRA", "YUV420", "not a pixel format"),
])
def test_bad_input_names_the_problem(pixels: np.ndarray, src: str, dst: str, needle: str) -> None:
    with pytest.raises(FrameFormatError, match=needle) as info:
        convert(pixels, src, dst)
    assert info.value.fix
