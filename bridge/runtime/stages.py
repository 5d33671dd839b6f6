"""Pre- and post-processing around the pipeline call (the paper's input/output queue).

``PreProcessor``: frames in any ``PixelFormat`` -> RGB -> fit (crop | letterbox | stretch) to the
processing size -> float tensor F×3×H×W in [0, 1] on the pipeline device. ``PostProcessor``:
tensor -> uint8 -> the sinks' pixel format, as ``Frame`` objects that keep the input's ``seq``
and receive ``timestamp_ns`` (so the sink can measure end-to-end latency). Both work on whole
batches with torch/numpy vector operations; neither touches the UNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bridge.errors import ConfigError, Problem
from bridge.frame import Frame, PixelFormat
from bridge.frame_convert import convert

FIT_MODES = ("crop", "letterbox", "stretch")


@dataclass(frozen=True)
class FitGeometry:
    """Crop box in the source, the size it is resized to, and where that lands in the output."""

    crop: tuple[int, int, int, int]  # x0, y0, width, height in source pixels
    size: tuple[int, int]  # resized width, height
    offset: tuple[int, int]  # x, y of the resized image inside the output (letterbox bars)


def fit_geometry(src_w: int, src_h: int, dst_w: int, dst_h: int, mode: str) -> FitGeometry:
    """Pure geometry of fitting a src_w×src_h image into dst_w×dst_h."""
    if mode == "stretch":
        return FitGeometry((0, 0, src_w, src_h), (dst_w, dst_h), (0, 0))
    if mode == "crop":  # keep the centre at the destination aspect ratio
        if src_w * dst_h > dst_w * src_h:  # source wider
            crop_w = max(1, round(src_h * dst_w / dst_h))
            return FitGeometry(((src_w - crop_w) // 2, 0, crop_w, src_h), (dst_w, dst_h), (0, 0))
        crop_h = max(1, round(src_w * dst_h / dst_w))
        return FitGeometry((0, (src_h - crop_h) // 2, src_w, crop_h), (dst_w, dst_h), (0, 0))
    if mode == "letterbox":
        scale = min(dst_w / src_w, dst_h / src_h)
        w, h = min(dst_w, max(1, round(src_w * scale))), min(dst_h, max(1, round(src_h * scale)))
        return FitGeometry((0, 0, src_w, src_h), (w, h), ((dst_w - w) // 2, (dst_h - h) // 2))
    raise ConfigError(Problem("fit", mode, "unknown fit mode", f"use one of: {', '.join(FIT_MODES)}"))


class PreProcessor:
    """Frames -> F×3×H×W float tensor in [0, 1] on ``device``."""

    def __init__(self, width: int, height: int, fit: str = "crop",
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        fit_geometry(width, height, width, height, fit)  # validates the mode early
        self.width, self.height, self.fit = width, height, fit
        self.device, self.dtype = torch.device(device), dtype

    def __call__(self, frames: Sequence[Frame]) -> torch.Tensor:
        if not frames:
            raise ConfigError(Problem("frames", 0, "need at least one frame", "pass a batch"))
        sizes = {(f.width, f.height) for f in frames}
        if len(sizes) == 1:
            return self._fit(frames, *sizes.pop())
        # Mixed sizes (a source changed resolution mid-batch): fit each, then stack.
        return torch.cat([self._fit([f], f.width, f.height) for f in frames])

    def _fit(self, frames: Sequence[Frame], src_w: int, src_h: int) -> torch.Tensor:
        geo = fit_geometry(src_w, src_h, self.width, self.height, self.fit)
        x0, y0, cw, ch = geo.crop
        if frames[0].pixel_format is PixelFormat.UYVY:
            x0, cw = x0 - x0 % 2, cw + cw % 2  # crop on whole U Y V Y pixel pairs
        # Crop the uint8 pixels first: only the part that is kept gets converted to float.
        batch = self._to_tensor([f.pixels[y0:y0 + ch, x0:x0 + cw] for f in frames],
                                [f.pixel_format for f in frames])
        w, h = geo.size
        if (cw, ch) != (w, h):
            # antialias only matters (and only costs) when shrinking
            batch = F.interpolate(batch, size=(h, w), mode="bilinear", align_corners=False,
                                  antialias=cw > w or ch > h).clamp_(0.0, 1.0)
        if (w, h) == (self.width, self.height):
            return batch.contiguous()
        out = torch.zeros((batch.shape[0], 3, self.height, self.width), dtype=batch.dtype,
                          device=batch.device)
        ox, oy = geo.offset
        out[:, :, oy:oy + h, ox:ox + w] = batch
        return out

    def _to_tensor(self, pixels: list[np.ndarray], formats: list[PixelFormat]) -> torch.Tensor:
        fmt = formats[0]
        if fmt is PixelFormat.UYVY or any(f is not fmt for f in formats):
            pixels = [convert(np.ascontiguousarray(px), f, PixelFormat.RGB)
                      for px, f in zip(pixels, formats)]
            order = [0, 1, 2]
        else:  # byte-order formats: pick R, G, B while converting, no separate reorder pass
            order = rgb_positions(fmt)
        if self.device.type == "cpu":
            # One strided read + float write per plane: the cheapest path on CPU.
            planes = np.empty((len(pixels), 3, *pixels[0].shape[:2]), dtype=np.float32)
            for i, px in enumerate(pixels):
                for plane, channel in enumerate(order):
                    np.multiply(px[..., channel], np.float32(1.0 / 255.0), out=planes[i, plane],
                                casting="unsafe")
            return torch.from_numpy(planes).to(self.dtype)
        batch = torch.from_numpy(np.stack(pixels))
        batch = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2)[:, order]
        # uint8 * float promotes to float in one pass (no separate cast + divide)
        return torch.mul(batch, 1.0 / 255.0).to(self.dtype)


class PostProcessor:
    """F×3×H×W tensor in [0, 1] -> one ``Frame`` per input frame in ``pixel_format``."""

    def __init__(self, pixel_format: PixelFormat | str = PixelFormat.BGRA) -> None:
        try:
            self.pixel_format = PixelFormat(pixel_format)
        except ValueError:
            raise ConfigError(Problem("output_format", pixel_format, "unknown pixel format",
                                      f"use one of: {', '.join(p.value for p in PixelFormat)}")) from None

    def __call__(self, images: torch.Tensor, inputs: Sequence[Frame]) -> list[Frame]:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != len(inputs):
            raise ConfigError(Problem("images", tuple(images.shape), f"expected {len(inputs)}×3×H×W",
                                      "the pipeline must return one image per input frame"))
        fmt = self.pixel_format
        if images.device.type == "cpu" and fmt is not PixelFormat.UYVY:
            arrays = self._cpu_interleave(images, fmt)
            return [Frame(arrays[i], fmt, seq=src.seq, timestamp_ns=src.timestamp_ns,
                          source=src.source) for i, src in enumerate(inputs)]
        # x*255 + 0.5 truncated = round half up, for values clamped into 0..255
        u8 = images.detach().mul(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)
        hwc = u8.permute(0, 2, 3, 1)
        if fmt is PixelFormat.UYVY:
            rgb = hwc.contiguous().cpu().numpy()
            arrays = [np.ascontiguousarray(convert(rgb[i], PixelFormat.RGB, fmt))
                      for i in range(len(inputs))]
        else:  # interleave on the device, then one download
            out = torch.empty((*hwc.shape[:3], fmt.channels), dtype=torch.uint8, device=hwc.device)
            out[..., rgb_positions(fmt)] = hwc
            if fmt.channels == 4:
                out[..., 3] = 255
            host = out.cpu().numpy()
            arrays = [host[i] for i in range(len(inputs))]
        return [Frame(arrays[i], fmt, seq=src.seq, timestamp_ns=src.timestamp_ns,
                      source=src.source) for i, src in enumerate(inputs)]


    @staticmethod
    def _cpu_interleave(images: torch.Tensor, fmt: PixelFormat) -> list[np.ndarray]:
        """numpy in place: scale, round, clamp, then cast while interleaving plane by plane."""
        values = images.detach().float().numpy()
        scaled = np.multiply(values, np.float32(255.0))
        np.add(scaled, np.float32(0.5), out=scaled)  # + 0.5 then truncation = rounding
        np.clip(scaled, 0.0, 255.0, out=scaled)
        frames, _, height, width = scaled.shape
        host = np.empty((frames, height, width, fmt.channels), dtype=np.uint8)
        for plane, position in enumerate(rgb_positions(fmt)):
            host[..., position] = scaled[:, plane]
        if fmt.channels == 4:
            host[..., 3] = 255
        return [host[i] for i in range(frames)]


def rgb_positions(fmt: PixelFormat) -> list[int]:
    """Byte positions of R, G and B in a byte-order format (BGRA -> [2, 1, 0])."""
    return [fmt.value.index(c) for c in "RGB"]


def black_like(batch: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(batch)
