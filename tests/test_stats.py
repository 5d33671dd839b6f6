"""Stats over a sliding window with an injected clock."""

from __future__ import annotations

import pytest

from bridge.errors import ConfigError
from bridge.runtime.stats import Stats, gpu_memory


class FakeClock:
    def __init__(self) -> None:
        self.t = 0

    def __call__(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += int(seconds * 1e9)


def test_fps_latency_percentiles_and_window():
    clock = FakeClock()
    stats = Stats(window_s=2.0, clock=clock)
    for i in range(20):  # 10 fps for 2 s; each frame 30 ms end to end, except two slow ones
        clock.advance(0.1)
        stats.frame_in()
        stats.stage("pipeline", 20_000_000)
        stats.frame_out(received_ns=clock.t - (200_000_000 if i in (5, 15) else 30_000_000))
    snap = stats.snapshot()
    assert snap["fps_in"] == pytest.approx(10.0, rel=0.06)
    assert snap["fps_out"] == pytest.approx(10.0, rel=0.06)
    e2e = snap["latency_ms"]["end_to_end"]
    assert e2e["p50"] == pytest.approx(30.0) and e2e["p95"] > 30.0 and e2e["count"] >= 19
    assert snap["latency_ms"]["pipeline"]["p50"] == pytest.approx(20.0)
    assert snap["latency_ms"]["send"] == {"p50": None, "p95": None, "count": 0}
    clock.advance(5.0)  # nothing for longer than the window: rates fall to zero
    later = stats.snapshot()
    assert later["fps_in"] == 0.0 and later["latency_ms"]["end_to_end"]["count"] == 0
    assert later["counters"]["frames_in"] == 20  # totals are kept


def test_skip_rate_drops_and_extra():
    clock = FakeClock()
    stats = Stats(window_s=5.0, clock=clock)
    clock.advance(1.0)
    stats.processed(frames=4, skipped=1)
    stats.count("dropped_source", 3)
    stats.count("dropped_output")
    stats.count("pipeline_errors")
    snap = stats.snapshot({"status": "running"})
    assert snap["ssf_skip_rate"] == 0.25
    assert snap["frames_dropped"] == 4
    assert snap["counters"]["pipeline_errors"] == 1 and snap["status"] == "running"


def test_bad_inputs_raise():
    with pytest.raises(ConfigError):
        Stats(window_s=0)
    with pytest.raises(ConfigError, match="unknown stage"):
        Stats().stage("unet", 1)


def test_gpu_memory_none_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("machine has CUDA; the CPU-only answer is what this test checks")
    assert gpu_memory() is None
