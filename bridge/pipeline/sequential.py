"""SequentialDenoiser: each frame's n steps one after another (the baseline the stream batch
must equal, and what the benchmark compares against).

Same constructor, parameters, caches and live updates as StreamBatch; frame f of a group uses the
same cached noise rows (Nᵢ[f]) and the same per-row coefficients the stream batch uses for it,
but everything is computed per frame and per step with the formulas written out directly, so
it checks the stream batch's row bookkeeping rather than sharing it. No latent buffer, so no
warm-up and no latency. The similarity filter is not applied here.
"""

from __future__ import annotations

from typing import Any

import torch

from bridge.pipeline.guidance import RCFG_TYPES, combine
from bridge.pipeline.stream_batch import PipelineCore


class SequentialDenoiser(PipelineCore):
    ready = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.frames_processed = 0
        self.unet_calls = 0
        super().__init__(*args, **kwargs)

    def _derive(self, state: dict[str, Any]) -> dict[str, Any]:
        single = self.conditioning([("cond", 1)], state)
        pair = self.conditioning([("cond", 1), ("neg", 1)], state) if self.uses_negative else None
        return {"_single": single, "_pair": pair}

    def process(self, images: torch.Tensor | None = None) -> torch.Tensor:
        self._check_images(images)
        with torch.inference_mode():
            outs = [self._frame(f, None if images is None or self.mode != "img2img"
                                else images[f:f + 1]) for f in range(self.frames)]
            out = torch.cat(outs).mul_(0.5).add_(0.5).clamp_(0.0, 1.0)
        self.frames_processed += self.frames
        return out

    def _frame(self, f: int, image: torch.Tensor | None) -> torch.Tensor:
        c, noise, n, frames = self.coeffs, self.noise, self.steps, self.frames
        gamma, delta = self.params["guidance_scale"], self.params["delta"]
        row = lambda name, i: getattr(c, name)[i * frames + f]  # noqa: E731  (step i, frame f)
        n_row = lambda i: noise[i * frames + f:i * frames + f + 1]  # noqa: E731
        if image is not None:
            z = self.backend.encode(image.to(self.device, self.vae_dtype) * 2.0 - 1.0)
            z = z.to(self.dtype)
            x = row("a", 0) * z + row("b", 0) * n_row(0)
        else:
            x = n_row(0).clone()
        stock = n_row(0).clone() if self.cfg_type in RCFG_TYPES else None
        x0 = x
        for i in range(n):
            t = c.timesteps[i * frames + f].reshape(1)
            two_rows = self.cfg_type == "full" or (self.cfg_type == "initialize" and i == 0)
            if two_rows:
                hidden, added = self._pair
                model_out = self.backend.unet(torch.cat([x, x]), t.repeat(2), hidden, added)
            else:
                hidden, added = self._single
                model_out = self.backend.unet(x, t, hidden, added)
            self.unet_calls += 1
            if self.cfg_type == "initialize" and i == 0:
                stock = model_out[1:2].clone()
            eps = combine(self.cfg_type, model_out, stock, gamma, delta, 1, 1)
            a, b, c_skip, c_out = row("a", i), row("b", i), row("c_skip", i), row("c_out", i)
            x0 = c_out * (x - b * eps) / a + c_skip * x
            if i == n - 1:
                break
            a1, b1 = row("a", i + 1), row("b", i + 1)
            if stock is not None:
                residual = c_out * (b * stock - b * eps) / a + c_skip * b * stock
                stock = n_row(i + 1) + (a1 / b1) * residual
            x = a1 * x0 + b1 * n_row(i + 1)
        return self.backend.decode(x0.to(self.vae_dtype))
