"""Test pattern source: moving colour bars with a burned-in frame counter.

Works without any host app, so the daemon, the benchmarks and the transport tests always have
a live-like input. The counter is drawn with a tiny 3×5 bitmap font in big blocks so it survives
lossy transports (NDI) and can be read back with ``decode_counter`` to check frame order.

Pacing is a pure function (``schedule_next``) of an injected clock: frame *n* is due at
``start + n / fps``. A consumer that falls behind skips frames, like a real camera would, instead
of receiving a burst of stale ones; ``fps=0`` means "as fast as asked" and never sleeps.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from bridge.errors import ConfigError, FrameTimeout, Problem
from bridge.frame import Frame, PixelFormat, now_ns
from bridge.io.base import Availability, FrameSource

COUNTER_DIGITS = 6
_FONT_W, _FONT_H = 3, 5
# 3×5 glyphs for 0-9, one string of 15 bits (row-major) per digit.
_GLYPHS = (
    "111101101101111", "010110010010111", "111001111100111", "111001111001111", "101101111001001",
    "111100111001111", "111100111101111", "111001001010010", "111101111101111", "111101111001111",
)
_FONT = np.array([[int(b) for b in g] for g in _GLYPHS], dtype=bool).reshape(10, _FONT_H, _FONT_W)

# Classic SMPTE-like bar colours in RGB: white, yellow, cyan, green, magenta, red, blue, black.
BAR_COLOURS_RGB = np.array(
    [[235, 235, 235], [235, 235, 16], [16, 235, 235], [16, 235, 16],
     [235, 16, 235], [235, 16, 16], [16, 16, 235], [16, 16, 16]], dtype=np.uint8)

_CHANNEL_ORDER = {  # indices into RGB, plus whether an alpha/padding byte follows
    PixelFormat.RGB: ((0, 1, 2), False), PixelFormat.BGR: ((2, 1, 0), False),
    PixelFormat.RGBA: ((0, 1, 2), True), PixelFormat.RGBX: ((0, 1, 2), True),
    PixelFormat.BGRA: ((2, 1, 0), True), PixelFormat.BGRX: ((2, 1, 0), True),
}


def availability() -> Availability:
    return Availability.yes()


def schedule_next(start_ns: int, last_index: int, now: int, fps: float) -> tuple[int, int]:
    """Index and due time (ns) of the next frame after ``last_index``.

    With ``fps > 0`` frames lie on a fixed grid from ``start_ns``; if the consumer is late by
    more than one period the missed grid points are skipped (live-source behaviour).
    With ``fps <= 0`` the next frame is due immediately.
    """
    if fps <= 0:
        return last_index + 1, now
    period = 1e9 / fps
    index = last_index + 1
    current = int((now - start_ns) // period)
    if current > index:
        index = current
    return index, start_ns + round(index * period)


def counter_geometry(width: int, height: int) -> tuple[int, int, int]:
    """(scale, x0, y0) of the counter: block size in pixels and top-left corner of the box."""
    scale = max(1, min(height // 48, width // (COUNTER_DIGITS * (_FONT_W + 1) * 3)))
    return scale, scale, scale


def render_counter(image: np.ndarray, value: int) -> None:
    """Burn ``value`` (mod 10**COUNTER_DIGITS, zero padded) into ``image`` in place, clipped.

    Works on any RGB-family byte order: only the first three channels are written (black box,
    white glyphs), so an alpha/padding byte keeps its value."""
    height, width = image.shape[:2]
    scale, x0, y0 = counter_geometry(width, height)
    text = f"{value % 10 ** COUNTER_DIGITS:0{COUNTER_DIGITS}d}"
    bitmap = np.zeros((_FONT_H + 2, COUNTER_DIGITS * (_FONT_W + 1) + 1), dtype=bool)
    for i, ch in enumerate(text):
        col = 1 + i * (_FONT_W + 1)
        bitmap[1:1 + _FONT_H, col:col + _FONT_W] = _FONT[int(ch)]
    big = np.repeat(np.repeat(bitmap, scale, axis=0), scale, axis=1)
    h = min(big.shape[0], height - y0)
    w = min(big.shape[1], width - x0)
    if h <= 0 or w <= 0:
        return
    box = image[y0:y0 + h, x0:x0 + w, :3]
    box[:] = 0
    box[big[:h, :w]] = 255


def decode_counter(rgb: np.ndarray) -> int:
    """Read the burned-in counter back from an RGB(-ordered or grey-equal) H×W×≥3 image.

    Samples the centre of every font block and thresholds at mid-grey, so mild lossy
    compression does not change the result. Raises ValueError when a glyph is unreadable.
    """
    height, width = rgb.shape[:2]
    scale, x0, y0 = counter_geometry(width, height)
    luma = rgb[..., :3].astype(np.uint16).sum(axis=2) // 3
    value = 0
    for i in range(COUNTER_DIGITS):
        cells = np.zeros((_FONT_H, _FONT_W), dtype=bool)
        for r in range(_FONT_H):
            for c in range(_FONT_W):
                y = y0 + (1 + r) * scale + scale // 2
                x = x0 + (1 + i * (_FONT_W + 1) + c) * scale + scale // 2
                if y >= height or x >= width:
                    raise ValueError("counter is clipped: image too small to decode")
                cells[r, c] = luma[y, x] > 127
        matches = np.flatnonzero((_FONT == cells).all(axis=(1, 2)))
        if matches.size != 1:
            raise ValueError(f"counter digit {i} is unreadable")
        value = value * 10 + int(matches[0])
    return value


def render(width: int, height: int, index: int, fmt: PixelFormat = PixelFormat.RGB) -> np.ndarray:
    """One test-pattern frame drawn directly in ``fmt`` (an RGB-family byte order): 8 bars
    scrolling right by width/128 px per frame, a luma ramp in the bottom quarter, the counter.

    Drawing in the target order (palette permuted, one broadcast row) keeps this about one
    memcpy per frame, so the pattern never limits a benchmark."""
    order, alpha = _CHANNEL_ORDER[fmt]
    palette = np.full((len(BAR_COLOURS_RGB), 4 if alpha else 3), 255, dtype=np.uint8)
    palette[:, :3] = BAR_COLOURS_RGB[:, list(order)]
    bar = (np.arange(width) * len(BAR_COLOURS_RGB)) // width
    shift = (index * max(1, width // 128)) % width
    image = np.empty((height, width, palette.shape[1]), dtype=np.uint8)
    image[:] = palette[np.roll(bar, shift)]
    # A horizontal luma ramp in the lower quarter shows gradients/banding through lossy paths.
    ramp = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)
    image[height - height // 4:, :, :3] = ramp[None, :, None]
    render_counter(image, index)
    return image


def render_rgb(width: int, height: int, index: int) -> np.ndarray:
    """``render`` in RGB order (the reference the tests compare received frames with)."""
    return render(width, height, index, PixelFormat.RGB)


def to_pixel_format(rgb: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """Arrange RGB pixels into one of the RGB-family byte orders (alpha/padding = 255)."""
    order, alpha = _CHANNEL_ORDER[fmt]
    height, width = rgb.shape[:2]
    out = np.empty((height, width, 4 if alpha else 3), dtype=np.uint8)
    for dst, src in enumerate(order):  # per-channel strided copies beat fancy indexing here
        out[..., dst] = rgb[..., src]
    if alpha:
        out[..., 3] = 255
    return out


class TestPatternSource(FrameSource):
    """Moving colour bars with a frame counter; ``seq`` equals the counter value."""

    __test__ = False  # not a pytest test class despite the name
    kind = "test_pattern"

    def __init__(
        self,
        width: int = 512,
        height: int = 512,
        fps: float = 30.0,
        pixel_format: str = "BGRA",
        name: str = "test_pattern",
        *,
        clock: Callable[[], int] = now_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.width, self.height, self.fps = _check_size("width", width), _check_size("height", height), fps
        self.pixel_format = _check_format(pixel_format, self.width)
        if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not fps >= 0 or fps > 1000:
            raise ConfigError(Problem("source.fps", fps, "must be a number in 0..1000",
                                      "use 30 for a live-like source, 0 for as fast as asked"))
        self.name = name
        self._clock, self._sleep = clock, sleep
        self._start_ns: int | None = None
        self._last_index = -1

    def open(self) -> None:
        if self._start_ns is None:
            self._start_ns = self._clock()

    def close(self) -> None:
        self._start_ns = None
        self._last_index = -1

    def receive(self, timeout: float) -> Frame:
        self.open()
        assert self._start_ns is not None
        index, due = schedule_next(self._start_ns, self._last_index, self._clock(), self.fps)
        wait_s = (due - self._clock()) / 1e9
        if wait_s > timeout:
            if timeout > 0:
                self._sleep(timeout)
            raise FrameTimeout(f"test pattern {self.name!r}: next frame due in {wait_s:.3f}s, "
                               f"after the {timeout:.3f}s timeout",
                               fix="use a timeout longer than 1/fps")
        if wait_s > 0:
            self._sleep(wait_s)
        self._last_index = index
        if self.pixel_format is PixelFormat.UYVY:
            from bridge.frame_convert import convert

            pixels = convert(render_rgb(self.width, self.height, index), PixelFormat.RGB, PixelFormat.UYVY)
        else:
            pixels = render(self.width, self.height, index, self.pixel_format)
        return Frame(pixels, self.pixel_format, seq=index, timestamp_ns=self._clock(), source=self.name)


def _check_size(field: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 8 <= value <= 8192:
        raise ConfigError(Problem(f"source.{field}", value, "must be an integer in 8..8192",
                                  "use e.g. 512"))
    return value


def _check_format(value: object, width: int) -> PixelFormat:
    try:
        fmt = PixelFormat(value)
    except ValueError:
        raise ConfigError(Problem("source.pixel_format", value, "unknown pixel format",
                                  f"use one of: {', '.join(f.value for f in PixelFormat)}")) from None
    if fmt is PixelFormat.UYVY and width % 2:
        raise ConfigError(Problem("source.width", width, "UYVY needs an even width", "use e.g. 512"))
    return fmt
