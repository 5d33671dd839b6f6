"""Daemon telemetry over a sliding window: fps in/out, drops, similarity-filter skip rate and
latency percentiles end to end (receive -> sent) and per stage (pre, pipeline, post, send).

All times come from an injected clock (``bridge.frame.now_ns`` by default, the same monotonic
clock frames are stamped with), so tests drive it by hand. Thread-safe: the source, inference
and sink threads record; the control thread reads ``snapshot()``.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable

import numpy as np

from bridge.errors import ConfigError, Problem
from bridge.frame import now_ns

STAGES = ("pre", "pipeline", "post", "send", "end_to_end")
Clock = Callable[[], int]


class _Window:
    """(time_ns, value) samples no older than the window."""

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self.samples: collections.deque[tuple[int, float]] = collections.deque()

    def add(self, t_ns: int, value: float) -> None:
        self.samples.append((t_ns, value))

    def trim(self, now: int) -> None:
        limit = now - self.window_ns
        while self.samples and self.samples[0][0] < limit:
            self.samples.popleft()

    def values(self) -> np.ndarray:
        return np.fromiter((v for _, v in self.samples), dtype=np.float64, count=len(self.samples))


class Stats:
    def __init__(self, window_s: float = 5.0, clock: Clock = now_ns) -> None:
        if not window_s > 0:
            raise ConfigError(Problem("window_s", window_s, "must be > 0", "use e.g. 5"))
        self._clock = clock
        self._window_ns = int(window_s * 1e9)
        self._lock = threading.Lock()
        self._started = clock()
        self._in = _Window(self._window_ns)
        self._out = _Window(self._window_ns)
        self._skips = _Window(self._window_ns)
        self._latency = {name: _Window(self._window_ns) for name in STAGES}
        self._counters: collections.Counter[str] = collections.Counter()

    # -------------------------------------------------------------- recording
    def frame_in(self) -> None:
        with self._lock:
            self._in.add(self._clock(), 1.0)
            self._counters["frames_in"] += 1

    def frame_out(self, received_ns: int, sent_ns: int | None = None) -> None:
        """A frame left through the sinks; ``received_ns`` is its source timestamp."""
        sent = self._clock() if sent_ns is None else sent_ns
        with self._lock:
            self._out.add(sent, 1.0)
            self._latency["end_to_end"].add(sent, (sent - received_ns) / 1e6)
            self._counters["frames_out"] += 1

    def stage(self, name: str, duration_ns: int) -> None:
        if name not in self._latency:
            raise ConfigError(Problem("stage", name, "unknown stage", f"use one of: {', '.join(STAGES)}"))
        with self._lock:
            self._latency[name].add(self._clock(), duration_ns / 1e6)

    def processed(self, frames: int, skipped: int) -> None:
        """``frames`` went through the pipeline, of which ``skipped`` were similarity-filter skips."""
        now = self._clock()
        with self._lock:
            for i in range(frames):
                self._skips.add(now, 1.0 if i < skipped else 0.0)
            self._counters["ssf_skipped"] += skipped

    def count(self, name: str, amount: int = 1) -> None:
        """Totals since start: drops per place, fallback frames, errors, reconnects..."""
        with self._lock:
            self._counters[name] += amount

    # ---------------------------------------------------------------- reading
    def snapshot(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            for window in (self._in, self._out, self._skips, *self._latency.values()):
                window.trim(now)
            span_s = max(1e-9, min(self._window_ns, now - self._started) / 1e9)
            skips = self._skips.values()
            result: dict[str, Any] = {
                "uptime_s": round((now - self._started) / 1e9, 3),
                "window_s": self._window_ns / 1e9,
                "fps_in": round(len(self._in.samples) / span_s, 3),
                "fps_out": round(len(self._out.samples) / span_s, 3),
                "ssf_skip_rate": round(float(skips.mean()), 4) if skips.size else 0.0,
                "latency_ms": {name: _percentiles(w.values()) for name, w in self._latency.items()},
                "counters": dict(self._counters),
            }
        result["frames_dropped"] = sum(v for k, v in result["counters"].items()
                                       if k.startswith("dropped_"))
        if extra:
            result.update(extra)
        return result


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    if not values.size:
        return {"p50": None, "p95": None, "count": 0}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "count": int(values.size)}


def gpu_memory() -> dict[str, float] | None:
    """CUDA memory in MiB when torch is loaded and a GPU is in use; None otherwise."""
    import sys

    torch = sys.modules.get("torch")  # never import torch just to report stats
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return {"allocated_mib": round(torch.cuda.memory_allocated() / 2**20, 1),
            "reserved_mib": round(torch.cuda.memory_reserved() / 2**20, 1),
            "max_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
