"""Stochastic similarity filter (SSF): skip the networks on near-static input.

cos = cosine similarity of the input to the last *processed* input;
p_skip = max(0, (cos − η)/(1 − η)); skip when u < p_skip with u ~ U[0, 1) from a seeded RNG,
and never more than ``max_skip`` skips in a row. The decision needs one scalar on the host per
frame (only while the filter is enabled); a skip costs nothing else and never sleeps.
"""

from __future__ import annotations

import random

import torch

from bridge.errors import ConfigError, Problem


def skip_probability(cos: float, threshold: float) -> float:
    """max(0, (cos − η)/(1 − η)), clamped to [0, 1]."""
    return min(1.0, max(0.0, (cos - threshold) / (1.0 - threshold)))


def _check(threshold: float, max_skip: int) -> None:
    problems = []
    if not 0.0 <= threshold < 1.0:
        problems.append(Problem("similarity_threshold", threshold, "must be in [0, 1)",
                                "use e.g. 0.98"))
    if not isinstance(max_skip, int) or isinstance(max_skip, bool) or max_skip < 0:
        problems.append(Problem("similarity_max_skip", max_skip, "must be an integer >= 0",
                                "use e.g. 10"))
    if problems:
        raise ConfigError(problems)


class SimilarityFilter:
    """Decides per input whether to reuse the previous output. Holds one reference input."""

    def __init__(self, threshold: float = 0.98, max_skip: int = 10, seed: int = 0) -> None:
        _check(threshold, max_skip)
        self.threshold = float(threshold)
        self.max_skip = int(max_skip)
        self._rng = random.Random(seed)
        self._reference: torch.Tensor | None = None
        self.consecutive_skips = 0
        self.last_similarity: float | None = None

    def configure(self, threshold: float | None = None, max_skip: int | None = None) -> None:
        """Live change of the settings (validated together, applied together)."""
        new_t = self.threshold if threshold is None else float(threshold)
        new_m = self.max_skip if max_skip is None else max_skip
        _check(new_t, new_m)
        self.threshold, self.max_skip = new_t, int(new_m)

    def reset(self) -> None:
        """Forget the reference: the next input is always processed."""
        self._reference = None
        self.consecutive_skips = 0

    def similarity(self, x: torch.Tensor) -> float | None:
        if self._reference is None or self._reference.shape != x.shape:
            return None
        a = x.reshape(-1).float()
        b = self._reference.reshape(-1).float()
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0, eps=1e-8))

    def should_skip(self, x: torch.Tensor) -> bool:
        """True: reuse the previous output. False: process ``x`` (it becomes the reference)."""
        cos = self.similarity(x)
        self.last_similarity = cos
        if cos is not None and self.consecutive_skips < self.max_skip:
            u = self._rng.random()
            if u < skip_probability(cos, self.threshold):
                self.consecutive_skips += 1
                return True
        self.consecutive_skips = 0
        self._store(x)
        return False

    def _store(self, x: torch.Tensor) -> None:
        if self._reference is None or self._reference.shape != x.shape \
                or self._reference.device != x.device:
            self._reference = x.detach().clone()
        else:
            self._reference.copy_(x)
