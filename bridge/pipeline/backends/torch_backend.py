"""PyTorch backend: the shared torch modules from base.py, eager or torch.compile'd.

Every call runs under ``torch.inference_mode`` (no autograd bookkeeping). The modules wrap the
components' own networks (switched to eval mode): nothing is copied or moved, so building a
backend cannot leave the components half-changed.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from bridge.pipeline.backends.base import Backend, UNetModule, VaeDecoderModule, VaeEncoderModule
from bridge.pipeline.components import Components

log = logging.getLogger(__name__)


def _maybe_compile(module: torch.nn.Module, compile: bool) -> Callable[..., torch.Tensor]:
    if not compile:
        return module
    # Dynamic shapes off: the stream batch calls every network with one fixed shape.
    return torch.compile(module, dynamic=False)  # type: ignore[return-value]


def torch_backend(components: Components, compile: bool = False) -> Backend:
    """Backend running the components' UNet and VAE through PyTorch."""
    unet_module = _maybe_compile(UNetModule(components.unet).eval(), compile)
    encoder = _maybe_compile(VaeEncoderModule(components.vae).eval(), compile)
    decoder = _maybe_compile(VaeDecoderModule(components.vae).eval(), compile)

    def unet(sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
             added_cond: dict[str, Any] | None = None) -> torch.Tensor:
        with torch.inference_mode():
            if added_cond is None:
                return unet_module(sample, timestep, encoder_hidden_states)
            return unet_module(sample, timestep, encoder_hidden_states,
                               added_cond["text_embeds"], added_cond["time_ids"])

    def encode(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return encoder(images)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return decoder(latents)

    name = "torch-compile" if compile else "torch"
    log.debug("built %s backend on %s/%s", name, components.device, components.dtype)
    return Backend(name=name, unet=unet, encode=encode, decode=decode)
