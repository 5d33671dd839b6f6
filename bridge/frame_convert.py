"""Pixel-format conversions between every ``PixelFormat`` (vectorised numpy, no loops per pixel).

Conventions (the ones NDI, Spout and OBS use):

* ``BGRA``/``RGBA``/``BGRX``/``RGBX``/``RGB``/``BGR`` are 8-bit sRGB-encoded byte orders. The ``X``
  byte is padding: converting *to* an X format writes 255 there (so a consumer that reads it as
  alpha sees an opaque image); converting *from* an X format never treats it as alpha, the
  result's alpha is 255. Converting to a format without alpha drops alpha (no premultiplication).
* ``UYVY`` is 4:2:2 Y'CbCr, **BT.709 limited ("video") range**: Y' in 16..235, Cb/Cr in 16..240
  centred on 128, the NDI convention for HD. A frame is H×W×2: for each pixel pair
  ``(x, x+1)`` the bytes are ``U Y0 V Y1``, i.e. ``[..., 0]`` holds U on even columns and V on odd
  columns, ``[..., 1]`` holds the luma of that pixel. Encoding averages the chroma of the pair;
  decoding uses the pair's chroma for both pixels (nearest, no interpolation). Width must be even.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bridge.errors import FrameFormatError
from bridge.frame import Frame, PixelFormat

# Byte position of R, G, B and alpha/padding in each packed RGB-family format (None: absent).
_LAYOUT: dict[PixelFormat, tuple[int, int, int, int | None]] = {
    PixelFormat.BGRA: (2, 1, 0, 3),
    PixelFormat.RGBA: (0, 1, 2, 3),
    PixelFormat.BGRX: (2, 1, 0, 3),
    PixelFormat.RGBX: (0, 1, 2, 3),
    PixelFormat.RGB: (0, 1, 2, None),
    PixelFormat.BGR: (2, 1, 0, None),
}
_HAS_ALPHA = {PixelFormat.BGRA, PixelFormat.RGBA}

# BT.709 luma coefficients and limited-range scaling.
KR, KB = 0.2126, 0.0722
KG = 1.0 - KR - KB
_Y_SCALE, _C_SCALE = 219.0 / 255.0, 224.0 / 255.0


def convert(pixels: np.ndarray, src: PixelFormat | str, dst: PixelFormat | str) -> np.ndarray:
    """Convert an H×W×C uint8 array from ``src`` to ``dst``; returns a new C-contiguous array.

    When ``src == dst`` the input is returned as is (no copy).
    """
    src_fmt, dst_fmt = _parse(src, "src"), _parse(dst, "dst")
    _check_pixels(pixels, src_fmt)
    if src_fmt is dst_fmt:
        return pixels
    if src_fmt is PixelFormat.UYVY:
        rgb = _uyvy_to_rgb(pixels)
        return rgb if dst_fmt is PixelFormat.RGB else _reorder(rgb, PixelFormat.RGB, dst_fmt)
    if dst_fmt is PixelFormat.UYVY:
        if pixels.shape[1] % 2:
            raise FrameFormatError(
                f"UYVY needs an even width, got width={pixels.shape[1]}", fix="crop or pad to an even width"
            )
        return _rgb_to_uyvy(_channels_rgb(pixels, src_fmt))
    return _reorder(pixels, src_fmt, dst_fmt)


def convert_frame(frame: Frame, dst: PixelFormat | str) -> Frame:
    """The same frame (seq, timestamp, source kept) in another pixel format."""
    dst_fmt = _parse(dst, "dst")
    if frame.pixel_format is dst_fmt:
        return frame
    return dataclasses.replace(frame, pixels=convert(frame.pixels, frame.pixel_format, dst_fmt),
                               pixel_format=dst_fmt)


def _parse(fmt: PixelFormat | str, field: str) -> PixelFormat:
    try:
        return PixelFormat(fmt)
    except ValueError:
        names = ", ".join(f.value for f in PixelFormat)
        raise FrameFormatError(f"{field}={fmt!r} is not a pixel format", fix=f"use one of: {names}") from None


def _check_pixels(pixels: np.ndarray, fmt: PixelFormat) -> None:
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3:
        shape = getattr(pixels, "shape", None)
        raise FrameFormatError(
            f"pixels must be a uint8 H×W×C array, got {getattr(pixels, 'dtype', type(pixels).__name__)} "
            f"shape {shape}", fix="convert with np.ascontiguousarray(img, dtype=np.uint8)")
    if pixels.shape[2] != fmt.channels:
        raise FrameFormatError(
            f"pixel_format={fmt.value} needs {fmt.channels} channels, got {pixels.shape[2]}",
            fix="pass the pixel format that matches the array")
    if fmt is PixelFormat.UYVY and pixels.shape[1] % 2:
        raise FrameFormatError(f"UYVY needs an even width, got width={pixels.shape[1]}",
                               fix="crop or pad to an even width")


def _reorder(pixels: np.ndarray, src: PixelFormat, dst: PixelFormat) -> np.ndarray:
    """Byte shuffles between RGB-family formats: one strided copy per output channel."""
    s_r, s_g, s_b, s_a = _LAYOUT[src]
    d_r, d_g, d_b, d_a = _LAYOUT[dst]
    out = np.empty(pixels.shape[:2] + (dst.channels,), dtype=np.uint8)
    out[..., d_r] = pixels[..., s_r]
    out[..., d_g] = pixels[..., s_g]
    out[..., d_b] = pixels[..., s_b]
    if d_a is not None:
        if dst in _HAS_ALPHA and src in _HAS_ALPHA and s_a is not None:
            out[..., d_a] = pixels[..., s_a]
        else:
            out[..., d_a] = 255
    return out


def _channels_rgb(pixels: np.ndarray, src: PixelFormat) -> np.ndarray:
    """R, G, B planes as float32 H×W×3 (alpha ignored)."""
    s_r, s_g, s_b, _ = _LAYOUT[src]
    return pixels[..., [s_r, s_g, s_b]].astype(np.float32)


def _rgb_to_uyvy(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = KR * r + KG * g + KB * b  # 0..255, full scale
    y = 16.0 + _Y_SCALE * luma
    # Chroma of the pair = mean of the two pixels' chroma (a box filter before 2:1 subsampling).
    cb = (b - luma) / (2.0 * (1.0 - KB))
    cr = (r - luma) / (2.0 * (1.0 - KR))
    cb_pair = 0.5 * (cb[:, 0::2] + cb[:, 1::2])
    cr_pair = 0.5 * (cr[:, 0::2] + cr[:, 1::2])
    out = np.empty(rgb.shape[:2] + (2,), dtype=np.uint8)
    out[..., 1] = _to_u8(y)
    out[:, 0::2, 0] = _to_u8(128.0 + _C_SCALE * cb_pair)
    out[:, 1::2, 0] = _to_u8(128.0 + _C_SCALE * cr_pair)
    return out


def _uyvy_to_rgb(uyvy: np.ndarray) -> np.ndarray:
    y = (uyvy[..., 1].astype(np.float32) - 16.0) / _Y_SCALE
    cb = (uyvy[:, 0::2, 0].astype(np.float32) - 128.0) / _C_SCALE
    cr = (uyvy[:, 1::2, 0].astype(np.float32) - 128.0) / _C_SCALE
    cb = np.repeat(cb, 2, axis=1)
    cr = np.repeat(cr, 2, axis=1)
    r = y + 2.0 * (1.0 - KR) * cr
    b = y + 2.0 * (1.0 - KB) * cb
    g = (y - KR * r - KB * b) / KG
    out = np.empty(uyvy.shape[:2] + (3,), dtype=np.uint8)
    out[..., 0] = _to_u8(r)
    out[..., 1] = _to_u8(g)
    out[..., 2] = _to_u8(b)
    return out


def _to_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
