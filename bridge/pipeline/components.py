"""What a loaded model hands to the pipeline. Loading lives in models.py; this is the contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Family = Literal["sd", "sdxl"]
StepKind = Literal["lcm", "turbo"]  # lcm: LCM boundary scalings; turbo: plain x0 = (x - b·eps)/a


@dataclass
class Components:
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL or AutoencoderTiny
    text_encoder: Any  # transformers CLIPTextModel (SDXL: CLIPTextModel)
    tokenizer: Any  # transformers CLIPTokenizer
    scheduler: Any  # diffusers LCMScheduler (its config gives the 1000-step betas)
    family: Family = "sd"
    step_kind: StepKind = "lcm"
    text_encoder_2: Any = None  # SDXL only: CLIPTextModelWithProjection
    tokenizer_2: Any = None
    model_id: str = ""
    identity: dict[str, Any] = field(default_factory=dict)  # weights hash, LoRA ids… (engine cache)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)
