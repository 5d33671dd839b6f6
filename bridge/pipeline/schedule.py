"""The 50-step LCM schedule and every per-row coefficient the stream batch needs (pure maths).

Row layout (B = n·F): block i holds the F frames currently at step i, i.e. rows i·F … i·F+F−1
sit at timestep τᵢ = T[t_index_list[i]] with T[k] = 999 − 20k (for 1000 training steps). Every
per-step value is repeated F times *per block* (``repeat_interleave``), never tiled, so a block
of F frames always shares one timestep — the reference code mixes these up for F > 1.

Step (x at τ with predicted noise ε):
    lcm:   x̂₀ = c_out·(x − b·ε)/a + c_skip·x      c_skip = σ²/((sτ)²+σ²), c_out = sτ/√((sτ)²+σ²)
    turbo: x̂₀ = (x − b·ε)/a
Both are affine in x and ε, so we keep only x̂₀ = p·x − q·ε with
    p = c_out/a + c_skip,   q = c_out·b/a         (turbo: c_out = 1, c_skip = 0)
which is two fused ops per frame instead of five.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from bridge.errors import ConfigError, ModelError, Problem

NUM_STEPS = 50  # the LCM "original_inference_steps" grid t_index_list indexes into
SIGMA_DATA = 0.5  # LCM boundary-condition σ
DEFAULT_TIMESTEP_SCALING = 10.0  # LCM boundary-condition s


def _cfg(config: Any, name: str, default: Any) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def alphas_cumprod_from_config(config: Any) -> torch.Tensor:
    """ᾱ(t) for t = 0..N−1 in float64, from the scheduler config's beta schedule."""
    n_train = int(_cfg(config, "num_train_timesteps", 1000))
    start = float(_cfg(config, "beta_start", 0.00085))
    end = float(_cfg(config, "beta_end", 0.012))
    kind = _cfg(config, "beta_schedule", "scaled_linear")
    trained = _cfg(config, "trained_betas", None)
    if trained is not None:
        betas = torch.tensor(list(trained), dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(math.sqrt(start), math.sqrt(end), n_train, dtype=torch.float64) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, n_train, dtype=torch.float64)
    else:
        raise ModelError(f"scheduler beta_schedule={kind!r} is not supported",
                         fix="use a model whose scheduler uses scaled_linear or linear betas")
    return torch.cumprod(1.0 - betas, dim=0)


def timestep_scaling_from_config(config: Any) -> float:
    """LCM boundary-condition s (diffusers' ``timestep_scaling``; 10 when absent)."""
    return float(_cfg(config, "timestep_scaling", DEFAULT_TIMESTEP_SCALING))


def lcm_timesteps(num_train_timesteps: int = 1000, steps: int = NUM_STEPS) -> list[int]:
    """T[k] for k = 0..steps−1: the LCM grid, descending (T[k] = 999 − 20k for 1000/50)."""
    stride = num_train_timesteps // steps
    return [(steps - k) * stride - 1 for k in range(steps)]


def check_t_index_list(t_index_list: Sequence[int]) -> list[int]:
    """Ascending indices into the 50-step grid; raises ConfigError naming the value otherwise."""
    values = list(t_index_list)
    problem = None
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        problem = "must be a non-empty list of integers"
    elif any(v < 0 or v >= NUM_STEPS for v in values):
        problem = f"every index must be in 0..{NUM_STEPS - 1}"
    elif any(b <= a for a, b in zip(values, values[1:])):
        problem = "must be strictly ascending"
    if problem:
        raise ConfigError(Problem("t_index_list", t_index_list, problem,
                                  f"use ascending integers in 0..{NUM_STEPS - 1}, e.g. [32, 45]"))
    return values


def boundary_scalings(timestep: float, timestep_scaling: float = DEFAULT_TIMESTEP_SCALING,
                      sigma_data: float = SIGMA_DATA) -> tuple[float, float]:
    """LCM (c_skip, c_out) at a discrete timestep."""
    st = timestep * timestep_scaling
    denom = st * st + sigma_data * sigma_data
    return sigma_data * sigma_data / denom, st / math.sqrt(denom)


def per_step_values(alphas_cumprod: torch.Tensor, t_index_list: Sequence[int],
                    step_kind: str = "lcm",
                    timestep_scaling: float = DEFAULT_TIMESTEP_SCALING) -> dict[str, list[float]]:
    """One value per step (length n), in float64 Python floats: τ, a, b, c_skip, c_out."""
    indices = check_t_index_list(t_index_list)
    if step_kind not in ("lcm", "turbo"):
        raise ConfigError(Problem("step_kind", step_kind, "unknown step kind", "use lcm or turbo"))
    grid = lcm_timesteps(int(alphas_cumprod.shape[0]))
    out: dict[str, list[float]] = {k: [] for k in ("t", "a", "b", "c_skip", "c_out")}
    for k in indices:
        t = grid[k]
        abar = float(alphas_cumprod[t])
        c_skip, c_out = boundary_scalings(t, timestep_scaling) if step_kind == "lcm" else (0.0, 1.0)
        for key, value in zip(out, (t, math.sqrt(abar), math.sqrt(1.0 - abar), c_skip, c_out)):
            out[key].append(float(value))
    return out


@dataclass(frozen=True)
class StepCoefficients:
    """Per-row coefficients for B = n·F rows, shaped (B, 1, 1, 1) on the compute device/dtype.

    ``a_next``/``b_next`` belong to the step a row moves to next; the last block has none and
    gets a = b = 1 (used only by the stock-noise update, see guidance.py).
    """

    t_index_list: tuple[int, ...]
    frames: int
    step_kind: str
    timesteps: torch.Tensor  # (B,) float32: what the UNet sees
    a: torch.Tensor
    b: torch.Tensor
    c_skip: torch.Tensor
    c_out: torch.Tensor
    p: torch.Tensor  # x̂₀ = p·x − q·ε
    q: torch.Tensor
    a_next: torch.Tensor
    b_next: torch.Tensor
    bp: torch.Tensor  # b·p        (RCFG: Δ = bp·S − q·ε)
    ratio_next: torch.Tensor  # a_next / b_next

    @property
    def steps(self) -> int:
        return len(self.t_index_list)

    @property
    def rows(self) -> int:
        return self.steps * self.frames

    def block(self, name: str, i: int) -> torch.Tensor:
        """Rows of step i (F rows) of coefficient ``name``."""
        value: torch.Tensor = getattr(self, name)
        return value[i * self.frames:(i + 1) * self.frames]


def grouped(values: Sequence[float], frames: int, device: torch.device | str,
            dtype: torch.dtype) -> torch.Tensor:
    """Per-step values → (n·F, 1, 1, 1), each value repeated F times in its own block."""
    per_step = torch.tensor(list(values), dtype=torch.float64)
    rows = per_step.repeat_interleave(frames)
    return rows.view(-1, 1, 1, 1).to(device=device, dtype=dtype)


def build_coefficients(alphas_cumprod: torch.Tensor, t_index_list: Sequence[int], frames: int,
                       *, step_kind: str = "lcm",
                       timestep_scaling: float = DEFAULT_TIMESTEP_SCALING,
                       device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> StepCoefficients:
    """All per-row tensors for one schedule; derived products are formed in float64 first."""
    if not isinstance(frames, int) or frames < 1:
        raise ConfigError(Problem("frame_buffer_size", frames, "must be an integer >= 1"))
    v = per_step_values(alphas_cumprod, t_index_list, step_kind, timestep_scaling)
    p = [co / a + cs for a, cs, co in zip(v["a"], v["c_skip"], v["c_out"])]
    q = [co * b / a for a, b, co in zip(v["a"], v["b"], v["c_out"])]
    a_next = v["a"][1:] + [1.0]
    b_next = v["b"][1:] + [1.0]
    timesteps = torch.tensor(v["t"], dtype=torch.float32).repeat_interleave(frames).to(device)
    g = lambda values: grouped(values, frames, device, dtype)  # noqa: E731
    return StepCoefficients(
        t_index_list=tuple(int(i) for i in t_index_list), frames=frames, step_kind=step_kind,
        timesteps=timesteps, a=g(v["a"]), b=g(v["b"]), c_skip=g(v["c_skip"]),
        c_out=g(v["c_out"]), p=g(p), q=g(q), a_next=g(a_next), b_next=g(b_next),
        bp=g([b * pi for b, pi in zip(v["b"], p)]),
        ratio_next=g([an / bn for an, bn in zip(a_next, b_next)]))


def coefficients_for(scheduler_config: Any, t_index_list: Sequence[int], frames: int, *,
                     step_kind: str = "lcm", device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> StepCoefficients:
    """Convenience: betas and the LCM boundary scaling s straight from a scheduler config."""
    return build_coefficients(alphas_cumprod_from_config(scheduler_config), t_index_list, frames,
                              step_kind=step_kind,
                              timestep_scaling=timestep_scaling_from_config(scheduler_config),
                              device=device, dtype=dtype)


def predict_x0(x: torch.Tensor, eps: torch.Tensor, coeffs: StepCoefficients,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """x̂₀ = p·x − q·ε for all B rows (writes into ``out`` when given: no allocation)."""
    out = torch.mul(x, coeffs.p, out=out) if out is not None else x * coeffs.p
    return out.addcmul_(coeffs.q, eps, value=-1.0)
