"""`sdbridge bench daemon` runs end to end (tiny sizes; the figures themselves are in
docs/performance.md, speed is never asserted)."""

from __future__ import annotations

import json

import pytest

from bridge.cli import main

pytestmark = pytest.mark.slow


def test_bench_daemon_json(capsys):
    code = main(["bench", "daemon", "--json", "--sizes", "64x64", "--frames", "10",
                 "--warmup", "5"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    added = result["added_latency_ms"]["64x64"]
    assert added["received"] + added["dropped"] == 10 and added["received"] > 0
    assert 0 < added["p50"] <= added["p95"]
    assert result["direct_shm_ms"]["64x64"]["received"] > 0
    assert set(result["daemon_stage_p50_ms"]["64x64"]) == {"pre", "pipeline", "post", "send",
                                                          "end_to_end"}


def test_bench_daemon_rejects_bad_size(capsys):
    assert main(["bench", "daemon", "--sizes", "64by64"]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
