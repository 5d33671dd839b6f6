"""The one type that crosses threads: ``Frame``.

A frame owns C-contiguous ``uint8`` pixels shaped H×W×C, where C follows the pixel format
(UYVY packs two pixels in four bytes, so it is H×W×2). Width and height are derived from
the array so they can never disagree with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from bridge.errors import FrameFormatError


class PixelFormat(str, Enum):
    BGRA = "BGRA"
    RGBA = "RGBA"
    BGRX = "BGRX"
    RGBX = "RGBX"
    RGB = "RGB"
    BGR = "BGR"
    UYVY = "UYVY"

    @property
    def channels(self) -> int:
        return _CHANNELS[self]


_CHANNELS = {
    PixelFormat.BGRA: 4,
    PixelFormat.RGBA: 4,
    PixelFormat.BGRX: 4,
    PixelFormat.RGBX: 4,
    PixelFormat.RGB: 3,
    PixelFormat.BGR: 3,
    PixelFormat.UYVY: 2,
}


def now_ns() -> int:
    """Monotonic clock used for every frame timestamp (latency = sink time - receive time)."""
    return time.monotonic_ns()


@dataclass(frozen=True)
class Frame:
    pixels: np.ndarray
    pixel_format: PixelFormat
    seq: int = 0
    timestamp_ns: int = field(default_factory=now_ns)
    source: str = ""

    def __post_init__(self) -> None:
        fmt = PixelFormat(self.pixel_format)
        object.__setattr__(self, "pixel_format", fmt)
        px = self.pixels
        if not isinstance(px, np.ndarray) or px.dtype != np.uint8 or px.ndim != 3:
            shape = getattr(px, "shape", None)
            dtype = getattr(px, "dtype", type(px).__name__)
            raise FrameFormatError(
                f"frame pixels must be a uint8 H×W×C numpy array, got {dtype} shape {shape}",
                fix="convert with np.ascontiguousarray(img, dtype=np.uint8)",
            )
        if px.shape[2] != fmt.channels:
            raise FrameFormatError(
                f"pixel_format={fmt.value} needs {fmt.channels} channels, got {px.shape[2]}",
                fix="pass the pixel_format that matches the array",
            )
        if fmt is PixelFormat.UYVY and px.shape[1] % 2:
            raise FrameFormatError(
                f"UYVY frames need an even width, got {px.shape[1]}", fix="crop or pad to even width"
            )
        if not px.flags.c_contiguous:
            raise FrameFormatError(
                "frame pixels must be C-contiguous", fix="wrap with np.ascontiguousarray(...)"
            )

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)
