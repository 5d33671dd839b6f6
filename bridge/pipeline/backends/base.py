"""The one interface the pipeline sees for UNet and VAE, whatever runs them.

The torch modules below are also what the ONNX exporter traces, so every backend computes the
same function: ``encode`` maps images in [-1, 1] (B×3×H×W) to *scaled* latents, ``decode``
maps scaled latents back to images in [-1, 1] (not clamped), ``unet`` predicts noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


class UNetFn(Protocol):
    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor,
                 encoder_hidden_states: torch.Tensor,
                 added_cond: dict[str, torch.Tensor] | None = None) -> torch.Tensor: ...


class ImageFn(Protocol):
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Backend:
    name: str
    unet: UNetFn
    encode: ImageFn
    decode: ImageFn


class UNetModule(nn.Module):
    """UNet returning only the noise prediction; SDXL conditioning passed as plain tensors."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor, text_embeds: torch.Tensor | None = None,
                time_ids: torch.Tensor | None = None) -> torch.Tensor:
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         added_cond_kwargs=added, return_dict=False)[0]


def _scaling(vae: nn.Module) -> tuple[float, float]:
    cfg = vae.config
    shift = getattr(cfg, "shift_factor", None) or 0.0
    return float(cfg.scaling_factor), float(shift)


class VaeEncoderModule(nn.Module):
    """Deterministic encode (distribution mode for AutoencoderKL) with scaling applied."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scale, self.shift = _scaling(vae)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.vae.encode(images, return_dict=False)[0]
        # AutoencoderTiny returns a tensor (which also has a .mode() method: the statistical
        # mode along a dim), AutoencoderKL a distribution: test the type, not the attribute.
        latents = out if isinstance(out, torch.Tensor) else out.mode()
        return (latents - self.shift) * self.scale


class VaeDecoderModule(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scale, self.shift = _scaling(vae)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scale + self.shift, return_dict=False)[0]
