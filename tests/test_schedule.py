"""Schedule maths against diffusers' LCMScheduler and direct float64 formulas."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import LCMScheduler

from bridge.errors import ConfigError
from bridge.pipeline.schedule import (alphas_cumprod_from_config, boundary_scalings,
                                      build_coefficients, coefficients_for, lcm_timesteps,
                                      predict_x0)


@pytest.fixture(scope="module")
def scheduler() -> LCMScheduler:
    return LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        num_train_timesteps=1000, original_inference_steps=50)


def test_alphas_cumprod_match_diffusers(scheduler: LCMScheduler) -> None:
    ours = alphas_cumprod_from_config(scheduler.config)
    assert ours.dtype == torch.float64 and ours.shape == (1000,)
    torch.testing.assert_close(ours.float(), scheduler.alphas_cumprod.float(), rtol=1e-6,
                               atol=1e-7)
    # Direct: scaled_linear betas are a linspace of square roots, squared.
    betas = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * i / 999) ** 2
             for i in range(1000)]
    assert ours[0].item() == pytest.approx(1 - betas[0], rel=1e-12)
    assert ours[999].item() == pytest.approx(math.prod(1 - b for b in betas), rel=1e-9)


def test_lcm_grid_is_999_minus_20k(scheduler: LCMScheduler) -> None:
    grid = lcm_timesteps(1000)
    assert grid == [999 - 20 * k for k in range(50)]
    scheduler.set_timesteps(50)
    assert [int(t) for t in scheduler.timesteps] == grid


@pytest.mark.parametrize("t", [19, 259, 639, 999])
def test_boundary_scalings_match_diffusers(scheduler: LCMScheduler, t: int) -> None:
    c_skip, c_out = boundary_scalings(t)
    ref_skip, ref_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
    assert c_skip == pytest.approx(ref_skip, rel=1e-12)
    assert c_out == pytest.approx(ref_out, rel=1e-12)
    assert c_skip == pytest.approx(0.25 / ((10 * t) ** 2 + 0.25))


def test_coefficients_per_step_float64(scheduler: LCMScheduler) -> None:
    coeffs = coefficients_for(scheduler.config, [5, 32, 45], 1, dtype=torch.float64)
    # diffusers keeps ᾱ in float32; the reference here is the float64 product of (1 − β).
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    for i, k in enumerate([5, 32, 45]):
        t = 999 - 20 * k
        a, b = math.sqrt(abar[t]), math.sqrt(1 - abar[t])
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
        assert coeffs.timesteps[i].item() == t
        assert coeffs.a[i].item() == pytest.approx(a, rel=1e-12)
        assert coeffs.b[i].item() == pytest.approx(b, rel=1e-12)
        assert coeffs.p[i].item() == pytest.approx(c_out / a + c_skip, rel=1e-12)
        assert coeffs.q[i].item() == pytest.approx(c_out * b / a, rel=1e-12)
        assert coeffs.bp[i].item() == pytest.approx(b * (c_out / a + c_skip), rel=1e-12)
    assert coeffs.a_next[:, 0, 0, 0].tolist() == pytest.approx(
        coeffs.a[1:, 0, 0, 0].tolist() + [1.0])
    assert coeffs.b_next[-1].item() == 1.0


def test_step_matches_lcm_scheduler_denoised(scheduler: LCMScheduler) -> None:
    """x̂₀ = p·x − q·ε equals diffusers' LCM 'denoised' for the same timestep."""
    scheduler.set_timesteps(50)
    coeffs = coefficients_for(scheduler.config, [20], 1)
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    t = 999 - 20 * 20
    scheduler._step_index = 20  # step() looks the timestep up from its own index
    ref = scheduler.step(eps, t, x, return_dict=True).denoised
    torch.testing.assert_close(predict_x0(x, eps, coeffs), ref, rtol=1e-5, atol=1e-5)


def test_turbo_step_is_plain_x0(scheduler: LCMScheduler) -> None:
    coeffs = coefficients_for(scheduler.config, [0], 1, step_kind="turbo", dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    x, eps = torch.randn(1, 4, 8, 8, generator=g).double(), torch.randn(1, 4, 8, 8).double()
    abar = alphas_cumprod_from_config(scheduler.config)[999]
    expected = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    torch.testing.assert_close(predict_x0(x, eps, coeffs), expected)


def test_grouping_by_frames_is_blockwise(scheduler: LCMScheduler) -> None:
    """F = 2: rows [s0, s0, s1, s1, s2, s2], never tiled [s0, s1, s2, s0, …]."""
    one = coefficients_for(scheduler.config, [10, 30, 45], 1)
    two = coefficients_for(scheduler.config, [10, 30, 45], 2)
    assert two.rows == 6 and two.timesteps.tolist() == [799, 799, 399, 399, 99, 99]
    for name in ("a", "b", "c_skip", "c_out", "p", "q", "a_next", "b_next", "bp", "ratio_next"):
        expected = getattr(one, name).repeat_interleave(2, dim=0)
        torch.testing.assert_close(getattr(two, name), expected, msg=name)
        for i in range(3):
            assert torch.equal(two.block(name, i), getattr(one, name)[i:i + 1].expand(2, 1, 1, 1))


@pytest.mark.parametrize("bad", [[30, 10], [10, 10], [50], [-1, 3], []])
def test_bad_t_index_list(bad: list[int]) -> None:
    alphas = alphas_cumprod_from_config({})
    with pytest.raises(ConfigError) as info:
        build_coefficients(alphas, bad, 1)
    assert info.value.fields == ["t_index_list"] and repr(bad) in str(info.value)


def test_dtype_and_device_follow_request() -> None:
    coeffs = build_coefficients(alphas_cumprod_from_config({}), [32, 45], 2,
                                dtype=torch.bfloat16)
    assert coeffs.a.dtype == torch.bfloat16 and coeffs.a.shape == (4, 1, 1, 1)
    assert coeffs.timesteps.dtype == torch.float32
