"""Guidance modes and the RCFG stock-noise update against direct float64 formulas."""

from __future__ import annotations

import math

import pytest
import torch

from bridge.errors import ConfigError
from bridge.pipeline.guidance import (check_cfg_type, combine, seed_stock_from_negative,
                                      shift_stock, stock_update, unet_rows)
from bridge.pipeline.schedule import alphas_cumprod_from_config, build_coefficients, lcm_timesteps

GAMMA, DELTA = 1.7, 0.6
T_INDEX = [8, 27, 44]
N_STEPS, FRAMES = 3, 2
ROWS = N_STEPS * FRAMES
SHAPE = (4, 3, 3)


def rand(rows: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((rows, *SHAPE), generator=g, dtype=torch.float64).to(dtype)


def step_values(i: int) -> tuple[float, float, float, float]:
    """Direct float64 a, b, c_skip, c_out of step i from the betas (not via the module)."""
    betas = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * k / 999) ** 2
             for k in range(1000)]
    t = 999 - 20 * T_INDEX[i]
    abar = math.prod(1 - b for b in betas[:t + 1])
    st = 10.0 * t
    return math.sqrt(abar), math.sqrt(1 - abar), 0.25 / (st * st + 0.25), st / math.sqrt(st * st
                                                                                       + 0.25)


def test_unet_rows() -> None:
    assert [unet_rows(c, 4, 2) for c in ("none", "self", "initialize", "full")] == [8, 8, 10, 16]
    assert unet_rows("initialize", 1, 1) == 2 and unet_rows("full", 3, 1) == 6
    with pytest.raises(ConfigError) as info:
        unet_rows("classic", 2, 1)
    assert info.value.fields == ["cfg_type"] and "'classic'" in str(info.value)
    assert check_cfg_type("self") == "self"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_combine_full(dtype: torch.dtype) -> None:
    cond, uncond = rand(ROWS, 1), rand(ROWS, 2)
    out = torch.cat([cond, uncond]).to(dtype)
    eps = combine("full", out, None, GAMMA, DELTA, ROWS, FRAMES)
    expected = uncond + GAMMA * (cond - uncond)
    torch.testing.assert_close(eps.double(), expected, rtol=1e-5, atol=1e-5)
    assert eps.shape[0] == ROWS


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_combine_self_and_none(dtype: torch.dtype) -> None:
    cond, stock = rand(ROWS, 3), rand(ROWS, 4)
    eps = combine("self", cond.clone().to(dtype), stock.to(dtype), GAMMA, DELTA, ROWS, FRAMES)
    expected = DELTA * stock + GAMMA * (cond - DELTA * stock)
    torch.testing.assert_close(eps.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(combine("none", cond.clone(), None, GAMMA, DELTA, ROWS, FRAMES), cond)


def test_initialize_seeds_block0_from_negative_rows() -> None:
    cond, neg = rand(ROWS, 5), rand(FRAMES, 6)
    stock = rand(ROWS, 7)
    before = stock.clone()
    out = torch.cat([cond, neg])
    seed_stock_from_negative(out, stock, ROWS, FRAMES)
    assert torch.equal(stock[:FRAMES], neg) and torch.equal(stock[FRAMES:], before[FRAMES:])
    eps = combine("initialize", out, stock, GAMMA, DELTA, ROWS, FRAMES)
    expected = DELTA * stock + GAMMA * (cond - DELTA * stock)
    torch.testing.assert_close(eps, expected)
    # Block 0 therefore guides away from the negative prompt's own prediction.
    torch.testing.assert_close(eps[:FRAMES], DELTA * neg + GAMMA * (cond[:FRAMES] - DELTA * neg))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_stock_update_matches_direct_formula(dtype: torch.dtype, tol: float) -> None:
    coeffs = build_coefficients(alphas_cumprod_from_config({}), T_INDEX, FRAMES, dtype=dtype)
    stock, eps, noise = rand(ROWS, 8), rand(ROWS, 9), rand(ROWS, 10)
    noise_next = torch.cat([noise[FRAMES:], noise[:FRAMES]])
    got = stock_update(stock.to(dtype), eps.to(dtype), coeffs, noise_next.to(dtype))
    for i in range(N_STEPS):
        a, b, c_skip, c_out = step_values(i)
        if i + 1 < N_STEPS:
            a1, b1, _, _ = step_values(i + 1)
            nxt = i + 1
        else:  # last row: a = b = 1 and the noise wraps to N₀
            a1, b1, nxt = 1.0, 1.0, 0
        for f in range(FRAMES):
            r = i * FRAMES + f
            s, e = stock[r], eps[r]
            residual = c_out * (b * s - b * e) / a + c_skip * b * s
            expected = noise[nxt * FRAMES + f] + (a1 / b1) * residual
            torch.testing.assert_close(got[r].double(), expected, rtol=tol, atol=tol)


def test_stock_update_partial_rows_and_out_buffer() -> None:
    coeffs = build_coefficients(alphas_cumprod_from_config({}), T_INDEX, FRAMES)
    stock, eps, noise = rand(ROWS, 11, torch.float32), rand(ROWS, 12, torch.float32), \
        rand(ROWS, 13, torch.float32)
    noise_next = torch.cat([noise[FRAMES:], noise[:FRAMES]])
    full = stock_update(stock, eps, coeffs, noise_next)
    out = torch.empty((ROWS - FRAMES, *SHAPE))
    part = stock_update(stock[:-FRAMES], eps[:-FRAMES], coeffs, noise_next, out=out)
    assert part.data_ptr() == out.data_ptr()
    torch.testing.assert_close(part, full[:-FRAMES])


def test_shift_moves_each_frame_one_block_down() -> None:
    stock = rand(ROWS, 14)
    updated = rand(ROWS - FRAMES, 15)
    first = rand(FRAMES, 16)
    shift_stock(stock, updated, first, FRAMES)
    assert torch.equal(stock[:FRAMES], first)
    assert torch.equal(stock[FRAMES:], updated)


def test_timesteps_used_are_the_lcm_grid() -> None:
    grid = lcm_timesteps()
    coeffs = build_coefficients(alphas_cumprod_from_config({}), T_INDEX, FRAMES)
    assert coeffs.timesteps.tolist() == [grid[k] for k in T_INDEX for _ in range(FRAMES)]
