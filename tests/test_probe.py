from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.io import transport_kinds
from bridge.io.ndi import availability as ndi_availability

REPO = Path(__file__).resolve().parents[1]


def _probe_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["probe", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_probe_json_lists_every_transport_with_reason(capsys: pytest.CaptureFixture[str]) -> None:
    report = _probe_json(capsys, "--timeout", "0.2")
    assert set(report["transports"]) == set(transport_kinds())
    for kind, info in report["transports"].items():
        assert isinstance(info["available"], bool) and isinstance(info["reason"], str)
        assert info["available"] or info["reason"], f"{kind} unavailable without a reason"
    assert report["transports"]["test_pattern"] == {
        "available": True, "reason": "", "source": True, "sink": False,
        "description": "moving bars with a burned-in frame counter"}
    spout = report["transports"]["spout"]
    if sys.platform != "win32":
        assert not spout["available"] and "Windows-only" in spout["reason"]
        assert report["spout"]["senders"] == [] and "Windows-only" in report["spout"]["error"]
    assert report["ndi"]["timeout_s"] == 0.2 and report["ndi"]["extra_ips"] == "127.0.0.1"


def test_probe_readable_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--timeout", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Transports:\n") and "NDI sources (listened 0 s" in out and "Spout senders:" in out
    for kind in transport_kinds():
        assert f"\n  {kind} " in out


def test_probe_rejects_negative_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--json", "--timeout", "-1"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "invalid_config" and "--timeout" in error["message"]


@pytest.mark.ndi
@pytest.mark.skipif(not ndi_availability().available,
                    reason=f"NDI runtime unavailable: {ndi_availability().reason}")
def test_probe_finds_an_ndi_sender_in_another_process(capsys: pytest.CaptureFixture[str]) -> None:
    name = f"sdbridge-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    peer = subprocess.Popen([sys.executable, str(REPO / "tests" / "test_ndi.py"), "send", name, "20"],
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        found: list[str] = []
        deadline = time.monotonic() + 20
        while not any(n.endswith(f"({name})") for n in found) and time.monotonic() < deadline:
            report = _probe_json(capsys, "--timeout", "1")
            found = [s["name"] for s in report["ndi"]["sources"]]
    finally:
        peer.terminate()
        peer.wait(timeout=10)
    assert any(n.endswith(f"({name})") for n in found), found
    assert report["ndi"]["error"] is None
