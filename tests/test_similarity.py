"""Stochastic similarity filter: rate, max_skip, changing input, seeding."""

from __future__ import annotations

import math

import pytest
import torch

from bridge.errors import ConfigError
from bridge.pipeline.similarity import SimilarityFilter, skip_probability


def test_skip_probability_formula() -> None:
    assert skip_probability(0.5, 0.98) == 0.0
    assert skip_probability(0.99, 0.98) == pytest.approx(0.5)
    assert skip_probability(1.0, 0.98) == pytest.approx(1.0)
    assert skip_probability(1.0000001, 0.9) == 1.0


def test_static_input_skips_exactly_max_skip_in_a_row() -> None:
    ssf = SimilarityFilter(threshold=0.9, max_skip=3, seed=0)
    frame = torch.rand(1, 3, 8, 8)
    decisions = [ssf.should_skip(frame) for _ in range(13)]
    # cos = 1 → p_skip = 1: process, then max_skip skips, then forced processing, …
    assert decisions == [False, True, True, True] * 3 + [False]


def _orthogonal_walk(count: int, cos: float) -> list[torch.Tensor]:
    """x_k = α·e₀ + β·e_k: any two have cosine α²/(α²+β²) = cos."""
    alpha, beta = math.sqrt(cos), math.sqrt(1 - cos)
    frames = []
    for k in range(count):
        x = torch.zeros(count + 1)
        x[0], x[k + 1] = alpha, beta
        frames.append(x)
    return frames


@pytest.mark.parametrize("cos,threshold,rate", [(0.99, 0.98, 0.5), (0.985, 0.98, 0.25)])
def test_static_like_input_is_skipped_at_expected_rate(cos: float, threshold: float,
                                                       rate: float) -> None:
    ssf = SimilarityFilter(threshold=threshold, max_skip=1000, seed=7)
    frames = _orthogonal_walk(3000, cos)
    ssf.should_skip(frames[0])
    skips = [ssf.should_skip(x) for x in frames[1:]]
    assert ssf.last_similarity == pytest.approx(cos, abs=1e-5)
    observed = sum(skips) / len(skips)
    assert abs(observed - rate) < 4 * math.sqrt(rate * (1 - rate) / len(skips))


def test_max_skip_never_exceeded_with_random_decisions() -> None:
    ssf = SimilarityFilter(threshold=0.5, max_skip=2, seed=3)
    run = longest = 0
    for x in _orthogonal_walk(500, 0.9):
        if ssf.should_skip(x):
            run += 1
            longest = max(longest, run)
        else:
            run = 0
    assert longest == 2


def test_changing_input_never_skipped() -> None:
    ssf = SimilarityFilter(threshold=0.98, max_skip=10, seed=0)
    g = torch.Generator().manual_seed(0)
    assert not any(ssf.should_skip(torch.rand(2, 3, 16, 16, generator=g)) for _ in range(50))


def test_seeded_decisions_are_reproducible() -> None:
    frames = _orthogonal_walk(200, 0.99)
    runs = []
    for _ in range(2):
        ssf = SimilarityFilter(threshold=0.98, max_skip=5, seed=11)
        runs.append([ssf.should_skip(x) for x in frames])
    assert runs[0] == runs[1] and any(runs[0]) and not all(runs[0])


def test_reset_forces_processing_and_configure_validates() -> None:
    ssf = SimilarityFilter(threshold=0.5, max_skip=5)
    frame = torch.ones(4)
    assert not ssf.should_skip(frame) and ssf.should_skip(frame)
    ssf.reset()
    assert not ssf.should_skip(frame)
    ssf.configure(max_skip=0)
    assert not ssf.should_skip(frame)
    with pytest.raises(ConfigError) as info:
        ssf.configure(threshold=1.0)
    assert info.value.fields == ["similarity_threshold"] and ssf.threshold == 0.5
    with pytest.raises(ConfigError):
        SimilarityFilter(max_skip=-1)
