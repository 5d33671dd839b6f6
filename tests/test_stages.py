"""Pre/post-processing: formats, fit modes, shapes, metadata carried to the output frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bridge.errors import ConfigError
from bridge.frame import Frame, PixelFormat
from bridge.frame_convert import convert
from bridge.runtime.stages import PostProcessor, PreProcessor, fit_geometry


def _frame(rgb: np.ndarray, fmt: PixelFormat = PixelFormat.RGB, seq: int = 3) -> Frame:
    return Frame(np.ascontiguousarray(convert(rgb, PixelFormat.RGB, fmt)), fmt, seq=seq,
                 timestamp_ns=123, source="t")


def _wide_image() -> np.ndarray:
    """32×16: left quarter red, middle half green, right quarter blue."""
    rgb = np.zeros((16, 32, 3), np.uint8)
    rgb[:, :8, 0] = 255
    rgb[:, 8:24, 1] = 255
    rgb[:, 24:, 2] = 255
    return rgb


def test_fit_geometry_pure():
    assert fit_geometry(1920, 1080, 512, 512, "crop").crop == (420, 0, 1080, 1080)
    assert fit_geometry(1080, 1920, 512, 512, "crop").crop == (0, 420, 1080, 1080)
    box = fit_geometry(1920, 1080, 512, 512, "letterbox")
    assert box.size == (512, 288) and box.offset == (0, 112)
    assert fit_geometry(640, 480, 512, 512, "stretch").size == (512, 512)
    with pytest.raises(ConfigError, match="fit"):
        fit_geometry(1, 1, 1, 1, "zoom")


@pytest.mark.parametrize("fmt", [PixelFormat.BGRA, PixelFormat.RGBA, PixelFormat.RGB,
                                 PixelFormat.BGR, PixelFormat.BGRX])
def test_crop_keeps_centre_in_every_format(fmt):
    pre = PreProcessor(16, 16, "crop")
    out = pre([_frame(_wide_image(), fmt)])
    assert out.shape == (1, 3, 16, 16) and out.dtype == torch.float32
    assert torch.allclose(out[0, 1], torch.ones(16, 16))  # centre is all green
    assert out[0, 0].max() == 0 and out[0, 2].max() == 0


def test_letterbox_bars_are_black_and_stretch_keeps_everything():
    box = PreProcessor(16, 16, "letterbox")([_frame(_wide_image())])
    assert box[0, :, :4].abs().sum() == 0 and box[0, :, 12:].abs().sum() == 0
    assert box[0, 0, 8, 0] > 0.9 and box[0, 2, 8, 15] > 0.9  # red left, blue right survive
    stretch = PreProcessor(16, 16, "stretch")([_frame(_wide_image())])
    assert stretch[0, 0, :, 0].min() > 0.9 and stretch[0, 2, :, 15].min() > 0.9


def test_uyvy_input_and_mixed_sizes_batch():
    grey = np.full((16, 32, 3), 128, np.uint8)
    frames = [_frame(grey, PixelFormat.UYVY), _frame(np.full((8, 8, 3), 128, np.uint8))]
    out = PreProcessor(16, 16, "crop")(frames)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, torch.full_like(out, 128 / 255), atol=2 / 255)


def test_post_processing_format_and_metadata_round_trip():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    frames = [_frame(rgb[i], PixelFormat.BGRA, seq=10 + i) for i in range(2)]
    tensor = PreProcessor(8, 8)(frames)
    out = PostProcessor(PixelFormat.BGRA)(tensor, frames)
    assert [f.seq for f in out] == [10, 11] and all(f.timestamp_ns == 123 for f in out)
    assert out[0].pixel_format is PixelFormat.BGRA
    np.testing.assert_array_equal(out[1].pixels, frames[1].pixels)  # exact at same size
    rgb_out = PostProcessor("RGB")(torch.full((1, 3, 4, 4), 2.0), frames[:1])
    assert rgb_out[0].pixels.max() == 255  # clamped, not wrapped


def test_post_processing_rejects_wrong_batch():
    with pytest.raises(ConfigError):
        PostProcessor()(torch.zeros(2, 3, 4, 4), [])
    with pytest.raises(ConfigError, match="output_format"):
        PostProcessor("YUV420")
