"""Classifier-free guidance modes and the RCFG stock-noise update (pure tensor maths).

UNet row layout per call (B = n·F latents, F = frames per block):
    none        [cond × B]                              ε = ε_c
    full        [cond × B ; negative × B]               ε = ε_u + γ(ε_c − ε_u)
    self        [cond × B]                              ε = δS + γ(ε_c − δS)
    initialize  [cond × B ; negative × F (block 0)]     S[block 0] ← ε_neg, then as self

RCFG "virtual residual noise" S (one row per latent row). After the step at τᵢ (x̂₀ = p·x − q·ε)
the noise S implies for the *next* timestep of the same frame is

    Δᵢ  = c_out,ᵢ·(bᵢSᵢ − bᵢεᵢ)/aᵢ + c_skip,ᵢ·bᵢSᵢ  = pᵢ·(bᵢSᵢ) − qᵢ·εᵢ
    S'ᵢ = Nᵢ₊₁ + (aᵢ₊₁/bᵢ₊₁)·Δᵢ                      (last block: a = b = 1, N wraps to N₀)

Derivation: the frame's next latent is x' = aᵢ₊₁x̂₀ + bᵢ₊₁Nᵢ₊₁. Its noise measured against the
clean estimate x̂₀ − Δᵢ (the step applied to x − bᵢSᵢ, i.e. with S taken as the true noise) is
(x' − aᵢ₊₁(x̂₀ − Δᵢ))/bᵢ₊₁ = Nᵢ₊₁ + (aᵢ₊₁/bᵢ₊₁)Δᵢ.

S then moves with its frame: block i's S' becomes block i+1's S. The new frames in block 0 start
from the paper's initial virtual noise: the noise actually added, N₀ (self), or the negative-
prompt prediction (initialize). The wrapped last-block value is therefore never used by the
stream batch; it is still computed as the formula defines so the maths stays testable as one
piece. (The reference implementation instead feeds a new frame the stock noise of the frame
leaving the pipeline, coupling unrelated frames and warm-up garbage; we do not.)
"""

from __future__ import annotations

import torch

from bridge.errors import ConfigError, Problem
from bridge.params import CFG_TYPES
from bridge.pipeline.schedule import StepCoefficients

RCFG_TYPES = ("self", "initialize")


def check_cfg_type(cfg_type: str) -> str:
    if cfg_type not in CFG_TYPES:
        raise ConfigError(Problem("cfg_type", cfg_type, "unknown guidance mode",
                                  f"use one of: {', '.join(CFG_TYPES)}"))
    return cfg_type


def unet_rows(cfg_type: str, n: int, frames: int) -> int:
    """UNet batch rows per call: none n·F, self n·F, initialize n·F+F, full 2n·F."""
    check_cfg_type(cfg_type)
    base = n * frames
    if cfg_type == "full":
        return 2 * base
    if cfg_type == "initialize":
        return base + frames
    return base


def combine(cfg_type: str, model_out: torch.Tensor, stock: torch.Tensor | None,
            guidance_scale: float, delta: float, rows: int, frames: int) -> torch.Tensor:
    """Guided noise ε (``rows`` = n·F rows) from the UNet output of ``unet_rows`` rows.

    Works in place on ``model_out`` (which the caller owns) and returns a view of it. For
    ``initialize`` the caller must first copy the negative rows ``model_out[rows:]`` into
    ``stock[:frames]`` (see ``seed_stock_from_negative``).
    """
    gamma = float(guidance_scale)
    cond = model_out[:rows]
    if cfg_type == "none":
        return cond
    if cfg_type == "full":
        uncond = model_out[rows:]
        # ε_u + γ(ε_c − ε_u), in place on the conditional half.
        return cond.sub_(uncond).mul_(gamma).add_(uncond)
    if cfg_type in RCFG_TYPES:
        if stock is None:
            raise ValueError("RCFG needs the stock noise tensor")
        # δS + γ(ε_c − δS) = γ·ε_c + (1 − γ)·δ·S
        return cond.mul_(gamma).add_(stock, alpha=(1.0 - gamma) * float(delta))
    check_cfg_type(cfg_type)
    raise AssertionError("unreachable")


def seed_stock_from_negative(model_out: torch.Tensor, stock: torch.Tensor, rows: int,
                             frames: int) -> None:
    """initialize: block 0's virtual noise is the negative-prompt prediction (extra F rows)."""
    stock[:frames].copy_(model_out[rows:rows + frames])


def stock_update(stock: torch.Tensor, eps: torch.Tensor, coeffs: StepCoefficients,
                 noise_next: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """S'ᵢ = Nᵢ₊₁ + (aᵢ₊₁/bᵢ₊₁)·(pᵢ·bᵢSᵢ − qᵢ·εᵢ) for the first ``stock.shape[0]`` rows.

    ``noise_next`` is the seed noise shifted up one block (block i holds Nᵢ₊₁, the last block
    N₀); pass row slices of everything to update fewer rows. Coefficient rows are taken from the
    top, matching the slices.
    """
    rows = stock.shape[0]
    bp, q, ratio = coeffs.bp[:rows], coeffs.q[:rows], coeffs.ratio_next[:rows]
    delta = torch.mul(stock, bp, out=out) if out is not None else stock * bp
    delta.addcmul_(q, eps, value=-1.0)
    return delta.mul_(ratio).add_(noise_next[:rows])


def shift_stock(stock: torch.Tensor, updated: torch.Tensor, first_block: torch.Tensor,
                frames: int) -> None:
    """S ← [first_block ; S'₀ … S'ₙ₋₂]: each S' follows its frame one block down."""
    rows = stock.shape[0]
    stock[frames:].copy_(updated[:rows - frames])
    stock[:frames].copy_(first_block)
