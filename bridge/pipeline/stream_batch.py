"""StreamBatch: the StreamDiffusion denoising loop, one UNet call per group of F frames.

Rows (B = n·F): block i = the F frames now at step i (timestep τᵢ, newest frames in block 0).
Per call: new frames enter block 0 as a₀z + b₀N₀ (txt2img: N₀); one UNet call on all rows (plus
negative rows for full / initialize guidance); x̂₀ = p·x − q·ε for every row; the last block's x̂₀
is decoded; blocks 0…n−2 are re-noised to the next step (aᵢ₊₁x̂₀ + bᵢ₊₁Nᵢ₊₁) and move one
block down. So a frame leaves the pipeline n−1 calls after it entered. txt2img enters the fixed
seed noise N₀ itself at τ₀, so a static prompt and seed give a stable image and a change of
prompt or seed shows n calls later.

Warm-up: on the first ``process`` call the empty buffer is primed by running the first input
through n−1 extra UNet calls (no extra VAE work), so every output, even the first, is a fully
denoised frame; ``ready`` is True from then on. Output k is input k−(n−1) (inputs before the
first count as the first).

Everything per frame works in preallocated tensors; per-step coefficients, conditioning rows
and noise products are recomputed only when a live change touches them. Nothing synchronises
with the device except the similarity filter's one scalar, and only while it is enabled.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch

from bridge.errors import ConfigError, FrameFormatError, Problem, RebuildRequired
from bridge.params import PARAMS_BY_NAME, needs_rebuild, validate_changes
from bridge.pipeline.backends.base import Backend
from bridge.pipeline.components import Components
from bridge.pipeline.guidance import (RCFG_TYPES, combine, seed_stock_from_negative,
                                      stock_update, unet_rows)
from bridge.pipeline.prompts import (Embedding, NoiseCache, PromptEncoder, sdxl_time_ids,
                                     stack_rows, weighted_items)
from bridge.pipeline.schedule import (StepCoefficients, alphas_cumprod_from_config,
                                      build_coefficients, predict_x0,
                                      timestep_scaling_from_config)
from bridge.pipeline.similarity import SimilarityFilter

log = logging.getLogger(__name__)

_CONDITIONING = ("prompt", "negative_prompt")
_SCHEDULE = ("t_index_list", "seed")


def validate_params(components: Components, params: Mapping[str, Any]) -> dict[str, Any]:
    """A complete, valid parameter dict (all problems reported at once) or ConfigError."""
    if not isinstance(params, Mapping):
        raise ConfigError(Problem("params", type(params).__name__, "must be a dict",
                                  "start from bridge.params.default_params()"))
    missing = [Problem(name, None, "missing", "start from bridge.params.default_params()")
               for name in PARAMS_BY_NAME if name not in params]
    if missing:
        raise ConfigError(missing)
    clean = validate_changes(params)
    problems = []
    factor = components.vae_scale_factor
    for name in ("width", "height"):
        if clean[name] % factor:
            fixed = max(factor, round(clean[name] / factor) * factor)
            problems.append(Problem(name, clean[name],
                                    f"must be a multiple of the VAE scale factor {factor}",
                                    f"use {fixed}"))
    if components.family not in ("sd", "sdxl"):
        problems.append(Problem("family", components.family, "unknown model family",
                                "use an sd or sdxl model"))
    if components.step_kind not in ("lcm", "turbo"):
        problems.append(Problem("step_kind", components.step_kind, "unknown step kind",
                                "use lcm or turbo"))
    if problems:
        raise ConfigError(problems)
    return clean


def first_seed(seed: Any) -> int:
    return int(weighted_items(seed)[0][0])


class PipelineCore:
    """What StreamBatch and SequentialDenoiser share: params, prompts, noise, schedule, update."""

    def __init__(self, components: Components, params: Mapping[str, Any],
                 backend: Backend | None = None) -> None:
        clean = validate_params(components, params)
        self.components = components
        self.params: dict[str, Any] = clean
        self.device, self.dtype = components.device, components.dtype
        # Some setups keep the VAE in float32 next to a half-precision UNet.
        self.vae_dtype: torch.dtype = next(components.vae.parameters()).dtype
        self.frames: int = clean["frame_buffer_size"]
        self.steps: int = len(clean["t_index_list"])
        self.rows = self.steps * self.frames
        self.cfg_type: str = clean["cfg_type"]
        self.mode: str = clean["mode"]
        self.width, self.height = clean["width"], clean["height"]
        scale = components.vae_scale_factor
        self.latent_shape = (components.latent_channels, self.height // scale, self.width // scale)
        self._alphas = alphas_cumprod_from_config(components.scheduler.config)
        self._timestep_scaling = timestep_scaling_from_config(components.scheduler.config)
        if backend is None:
            from bridge.pipeline.backends.torch_backend import torch_backend
            backend = torch_backend(components)
        self.backend = backend
        self.prompts = PromptEncoder(components, self.device, self.dtype)
        self.noise_cache = NoiseCache((self.rows, *self.latent_shape), self.device, self.dtype)
        self._time_ids = (sdxl_time_ids(self.height, self.width, self.device, self.dtype)
                          if components.family == "sdxl" else None)
        self.ssf = SimilarityFilter(clean["similarity_threshold"], clean["similarity_max_skip"],
                                    seed=first_seed(clean["seed"]))
        # Filled by _commit below (declared here so every attribute exists after __init__).
        self.cond: Embedding
        self.negative: Embedding | None = None
        self.coeffs: StepCoefficients
        self.noise: torch.Tensor
        self._allocate()
        with torch.inference_mode():
            self._commit(self._prepare(clean, set(clean)))

    # -- hooks for subclasses -------------------------------------------------------------------
    def _allocate(self) -> None:
        """Persistent per-frame buffers (shapes are fixed for the object's lifetime)."""

    def _derive(self, state: dict[str, Any]) -> dict[str, Any]:
        """Tensors derived from cond/negative/coeffs/noise (computed before anything commits)."""
        return {}

    def _changed(self, names: set[str]) -> None:
        """Called after a live change was committed."""

    # -- live updates -----------------------------------------------------------------------------
    @property
    def uses_negative(self) -> bool:
        return self.cfg_type in ("full", "initialize")

    def _prepare(self, params: Mapping[str, Any], changed: set[str]) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name, None)
                                 for name in ("cond", "negative", "coeffs", "noise")}
        if changed & set(_CONDITIONING):
            negative = params["negative_prompt"]
            extra = [negative] if self.uses_negative else []
            state["cond"], table = self.prompts.blend(params["prompt"], extra=extra)
            state["negative"] = table[negative] if self.uses_negative else None
        if "t_index_list" in changed:
            state["coeffs"] = build_coefficients(
                self._alphas, params["t_index_list"], self.frames,
                step_kind=self.components.step_kind, timestep_scaling=self._timestep_scaling,
                device=self.device, dtype=self.dtype)
        if "seed" in changed:
            state["noise"] = self.noise_cache.blend(params["seed"])
        if changed & set(_CONDITIONING + _SCHEDULE):
            state.update(self._derive(state))
        return state

    def _commit(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply live changes all-or-nothing; RebuildRequired names fields that cannot be live."""
        clean = validate_changes(changes)
        rebuild = needs_rebuild(self.params, clean)
        if rebuild:
            raise RebuildRequired([Problem(name, clean[name], "cannot be changed live",
                                           "rebuild the pipeline with the new value")
                                   for name in rebuild])
        changed = {k for k, v in clean.items() if v != self.params[k]}
        if not changed:
            return
        new = {**self.params, **clean}
        with torch.inference_mode():
            state = self._prepare(new, changed)
        self.ssf.configure(new["similarity_threshold"], new["similarity_max_skip"])
        self._commit(state)
        self.params = new
        self._changed(changed)
        log.debug("live update: %s", ", ".join(sorted(changed)))

    def conditioning(self, layout: list[tuple[str, int]], state: Mapping[str, Any]
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """Rows of encoder_hidden_states (+ SDXL added cond) for e.g. [("cond", B), ("neg", F)]."""
        parts = [(state["cond"] if kind == "cond" else state["negative"], k) for kind, k in layout]
        return stack_rows(parts, self._time_ids)

    def _check_images(self, images: torch.Tensor | None) -> None:
        if self.mode != "img2img":
            return
        expected = (self.frames, 3, self.height, self.width)
        if not isinstance(images, torch.Tensor) or tuple(images.shape) != expected \
                or not images.is_floating_point():
            got = (f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor)
                   else type(images).__name__)
            raise FrameFormatError(
                f"images={got}: img2img expects a float tensor of shape {expected} in [0, 1]",
                fix="resize and convert frames to frame_buffer_size×3×height×width RGB floats "
                    "(or use mode txt2img)")


class StreamBatch(PipelineCore):
    """The stream-batch pipeline. ``process`` takes F×3×H×W RGB in [0, 1] (None for txt2img)
    and returns F×3×H×W in [0, 1] on the components' device in the VAE's dtype (treat it as
    read-only: a similarity-filter skip returns the same tensor again)."""

    def __init__(self, components: Components, params: Mapping[str, Any],
                 backend: Backend | None = None) -> None:
        self.ready = False
        self.frames_processed = 0
        self.frames_skipped = 0
        self.unet_calls = 0
        self.last_skipped = False
        self._last_output: torch.Tensor | None = None
        self._force_process = 0
        super().__init__(components, params, backend)
        self.unet_batch = unet_rows(self.cfg_type, self.steps, self.frames)

    @property
    def latency_frames(self) -> int:
        """Calls between a frame entering and its output leaving (n − 1)."""
        return self.steps - 1

    def counters(self) -> dict[str, Any]:
        return {"frames_processed": self.frames_processed, "frames_skipped": self.frames_skipped,
                "unet_calls": self.unet_calls, "ready": self.ready,
                "last_skipped": self.last_skipped}

    def _allocate(self) -> None:
        with torch.inference_mode():
            batch = unet_rows(self.cfg_type, self.steps, self.frames)
            make = lambda rows: torch.zeros((rows, *self.latent_shape), device=self.device,  # noqa
                                            dtype=self.dtype)
            self._unet_in = make(batch)  # [X ; extra guidance rows]; X = rows 0..B−1
            self._x0 = make(self.rows)
            self._stock = make(self.rows) if self.cfg_type in RCFG_TYPES else None
            self._stock_next = make(max(self.rows - self.frames, 1))
            self._images = torch.zeros((self.frames, 3, self.height, self.width),
                                       device=self.device, dtype=self.vae_dtype)

    def _derive(self, state: dict[str, Any]) -> dict[str, Any]:
        c: StepCoefficients = state["coeffs"]
        noise: torch.Tensor = state["noise"]
        f, b_rows = self.frames, self.rows
        layout = [("cond", b_rows)]
        timesteps = c.timesteps
        if self.cfg_type == "full":
            layout.append(("neg", b_rows))
            timesteps = torch.cat([c.timesteps, c.timesteps])
        elif self.cfg_type == "initialize":
            layout.append(("neg", f))
            timesteps = torch.cat([c.timesteps, c.timesteps[:f]])
        hidden, added = self.conditioning(layout, state)
        return {
            "_hidden": hidden, "_added": added, "_timesteps": timesteps.contiguous(),
            "_a0": c.a[:f], "_b0n0": c.b[:f] * noise[:f],  # new rows: a₀z + b₀N₀
            "_a_rest": c.a[f:], "_bn_rest": c.b[f:] * noise[f:],  # re-noise to the next step
            # Noise one block ahead (block i holds Nᵢ₊₁; last block wraps to N₀), for RCFG.
            "_noise_next": torch.cat([noise[f:], noise[:f]]),
        }

    def _changed(self, names: set[str]) -> None:
        if names - {"similarity_threshold", "similarity_max_skip", "similarity_filter"}:
            # Output will change: let it through the filter until every block has seen it.
            self._force_process = self.steps
        if "similarity_filter" in names:
            self.ssf.reset()

    # -- the hot path ---------------------------------------------------------------------------
    def process(self, images: torch.Tensor | None = None) -> torch.Tensor:
        self._check_images(images)
        with torch.inference_mode():
            if self._skip(images):
                self.frames_skipped += self.frames
                self.last_skipped = True
                return self._last_output  # type: ignore[return-value]
            self.last_skipped = False
            latents = None
            if self.mode == "img2img":
                assert images is not None
                self._images.copy_(images).mul_(2.0).sub_(1.0)
                latents = self.backend.encode(self._images)
            if not self.ready:
                for _ in range(self.steps - 1):
                    self._step(latents)
                self.ready = True
            x0_last = self._step(latents)
            if self.vae_dtype != self.dtype:
                x0_last = x0_last.to(self.vae_dtype)
            out = self.backend.decode(x0_last).mul_(0.5).add_(0.5).clamp_(0.0, 1.0)
        self.frames_processed += self.frames
        self._last_output = out
        return out

    def _skip(self, images: torch.Tensor | None) -> bool:
        if not self.params["similarity_filter"] or images is None or self.mode != "img2img":
            return False
        if self._last_output is None or self._force_process > 0:
            self._force_process = max(0, self._force_process - 1)
            self.ssf.reset()
            self.ssf.should_skip(images)  # records the reference; never skips after a reset
            return False
        return self.ssf.should_skip(images)

    def _step(self, latents: torch.Tensor | None) -> torch.Tensor:
        f, rows, c = self.frames, self.rows, self.coeffs
        x = self._unet_in[:rows]
        if latents is not None:
            torch.addcmul(self._b0n0, self._a0, latents, out=x[:f])
        else:
            x[:f].copy_(self.noise[:f])
        if self.cfg_type == "full":
            self._unet_in[rows:].copy_(x)
        elif self.cfg_type == "initialize":
            self._unet_in[rows:].copy_(x[:f])
        model_out = self.backend.unet(self._unet_in, self._timesteps, self._hidden, self._added)
        self.unet_calls += 1
        stock = self._stock
        if stock is not None:
            if self.cfg_type == "initialize":
                seed_stock_from_negative(model_out, stock, rows, f)
            else:
                stock[:f].copy_(self.noise[:f])  # self: new frames start from the added noise
        eps = combine(self.cfg_type, model_out, stock, self.params["guidance_scale"],
                      self.params["delta"], rows, f)
        x0 = predict_x0(x, eps, c, out=self._x0)
        if self.steps > 1:
            if stock is not None:
                # Each frame's virtual noise, re-targeted to its next step, moves down a block.
                updated = stock_update(stock[:rows - f], eps[:rows - f], c, self._noise_next,
                                       out=self._stock_next)
                stock[f:].copy_(updated)
            torch.addcmul(self._bn_rest, self._a_rest, x0[:rows - f], out=x[f:])
        return x0[rows - f:]
