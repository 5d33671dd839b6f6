"""Robustness with real processes (issue 4 §4): a pipeline exception mid-stream, a source that
goes away and comes back, SIGINT/SIGTERM, and 10,000 hostile control messages — the daemon
keeps sending frames and keeps answering through all of it."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.control.client import ControlClient
from daemon_peer import PEER, ROOT, ServeProcess, read_frames, segment_exists
from bridge.io.shared_memory import SharedMemorySource

pytestmark = pytest.mark.slow
LINUX = sys.platform.startswith("linux")
CONTROL_PEER = Path(__file__).with_name("control_peer.py")


def _name(tag: str) -> str:
    return f"sdbt-{tag}-{secrets.token_hex(3)}"


def _producer(name: str, first_seq: int, fps: float = 30, size: int = 64) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(PEER), "produce", name, str(first_seq), str(fps),
                             str(size)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert json.loads(line)["ready"], line
    return proc


def _identity_serve(tmp_path: Path, source: list[str], out: str, extra: list[str] = ()) -> ServeProcess:
    proc = ServeProcess(["-m", "bridge", "serve", "--identity", "--preset",
                         "presets/cpu-demo.yaml"],
                        overrides=[*source, f"sink.0.name={out}", *extra],
                        log_path=tmp_path / "serve.log")
    proc.wait_ready()
    return proc


def fallback_writes(name: str, count: int, timeout: float = 30.0) -> list[tuple[int, int]]:
    """(seq, frame_index) of ``count`` consecutive new writes, once the source is silent
    (the same seq seen twice in a row = no new input)."""
    source = SharedMemorySource(name)
    writes: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(writes) < count + 1 and time.monotonic() < deadline:
            try:
                frame = source.receive(0.5)
            except Exception:  # noqa: BLE001 - no new write yet
                continue
            assert source.last_info is not None
            entry = (frame.seq, source.last_info.frame_index)
            writes = writes + [entry] if writes and writes[-1][0] == frame.seq else [entry]
    finally:
        source.close()
    assert len(writes) > count, f"no fallback stream on {name!r}: {writes}"
    return writes[1:]


def test_pipeline_exception_falls_back_and_rebuilds(tmp_path):
    out = _name("flaky")
    proc = ServeProcess([str(PEER), "flaky-serve", "presets/cpu-demo.yaml", "5"],
                        overrides=[f"sink.0.name={out}", "fallback_output=black",
                                   "source.fps=20"], log_path=tmp_path / "serve.log")
    try:
        proc.wait_ready()
        # The 5th frame raises inside the pipeline: the output gets a black frame instead...
        black = read_frames(out, 1, accept=lambda f: f.seq >= 0 and f.pixels[..., :3].max() == 0)
        failed_seq = black[0].seq
        # ...and after the rebuild the pipeline output (the test pattern itself) flows again.
        read_frames(out, 3, accept=lambda f: f.seq > failed_seq and f.pixels[..., :3].max() > 0)
        with ControlClient(proc.command, timeout=10.0) as client:
            state = client.get_state()
            stats = client.get_stats()
            assert client.ping()["pong"] is True
        assert state["last_error"]["where"] == "pipeline"
        assert "illegal memory access" in state["last_error"]["message"]
        assert state["status"] == "running"
        assert stats["counters"]["pipeline_errors"] == 1
        assert stats["counters"]["rebuilds"] >= 1 and stats["counters"]["fallback_frames"] >= 1
    finally:
        code, _ = proc.stop()
    assert code == 0, proc.log()


def test_source_gone_and_back_without_restart(tmp_path):
    name_in, out = _name("src"), _name("out")
    producer = _producer(name_in, first_seq=1)
    proc = _identity_serve(tmp_path, ["source={kind: shm, name: %s}" % name_in,
                                      "fallback_output=passthrough"], out)
    try:
        read_frames(out, 3, accept=lambda f: 1 <= f.seq < 10_000)
        producer.send_signal(signal.SIGTERM)  # the host app quits: its segment is unlinked
        assert producer.wait(10) == 0
        # The sink keeps sending while the source is gone: new writes (frame_index) that
        # repeat the last input frame's seq (passthrough of the last frame).
        writes = fallback_writes(out, 3)
        assert len({seq for seq, _ in writes}) == 1 and writes[0][0] < 10_000
        with ControlClient(proc.command, timeout=10.0) as client:
            deadline = time.monotonic() + 20
            while client.get_stats()["source_connected"] and time.monotonic() < deadline:
                time.sleep(0.2)  # "connected" means a frame within the last 2 s
            assert client.get_stats()["source_connected"] is False
        producer = _producer(name_in, first_seq=10_000)  # the host app is back
        read_frames(out, 3, accept=lambda f: f.seq >= 10_000)
        with ControlClient(proc.command, timeout=10.0) as client:
            stats = client.get_stats()
        assert stats["source_connected"] is True
        assert stats["counters"]["fallback_frames"] >= 3  # what the sink got during the outage
    finally:
        producer.send_signal(signal.SIGTERM)
        producer.wait(10)
        code, _ = proc.stop()
    assert code == 0, proc.log()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_exits_zero_within_5s_and_unlinks(tmp_path, sig):
    out = _name("sig")
    proc = _identity_serve(tmp_path, [], out)
    read_frames(out, 2)
    assert segment_exists(out) or not LINUX
    code, elapsed = proc.stop(sig, timeout=5.0)
    assert code == 0, proc.log()
    assert elapsed < 5.0
    if LINUX:
        assert not segment_exists(out), "the output segment must be unlinked at shutdown"


def test_control_fuzz_then_ping_and_frames_flow(tmp_path):
    out = _name("fuzz")
    proc = _identity_serve(tmp_path, [], out)
    try:
        fuzz = subprocess.run([sys.executable, str(CONTROL_PEER), "fuzz", proc.command, "10000",
                               "4321", "65536"], capture_output=True, text=True, timeout=300)
        assert fuzz.returncode == 0, fuzz.stderr
        report = json.loads(fuzz.stdout.splitlines()[-1])
        assert "error" not in report, report
        assert report["sent"] == report["replies"] == 10000 and report["pong"] is True
        with ControlClient(proc.command, timeout=10.0) as client:
            assert client.ping()["pong"] is True
            frames = read_frames(out, 3, timeout=60.0, accept=lambda f: f.seq >= 0)
            assert len({f.seq for f in frames}) == 3  # output never stopped
            # Valid values in the fuzz may have left it paused, or in txt2img (which the
            # identity pipeline cannot do: error + fallback frames). Put it back and check it
            # recovers without a restart.
            client.resume()
            client.set(mode="img2img", width=64, height=64, frame_buffer_size=1)
            deadline = time.monotonic() + 30
            while client.get_state()["status"] != "running" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert client.get_state()["status"] == "running", client.get_state()
        assert len(read_frames(out, 3, timeout=60.0, accept=lambda f: f.seq >= 0)) == 3
    finally:
        code, _ = proc.stop()
    assert code == 0, proc.log()


def _ndi_reason() -> str:
    from bridge.io import ndi

    status = ndi.availability()
    return "" if status.available else status.reason


@pytest.mark.ndi
def test_ndi_sink_serves_frames_then_sigterm_exits_cleanly(tmp_path):
    """test pattern -> daemon -> NDI -> this process; SIGTERM closes the NDI sender and exits 0."""
    reason = _ndi_reason()
    if reason:
        pytest.skip(f"NDI runtime unavailable: {reason}")
    from bridge.io.ndi import NDISource

    sender = f"sdbt-ndi-{secrets.token_hex(3)}"
    proc = ServeProcess(["-m", "bridge", "serve", "--identity", "--preset", "presets/cpu-demo.yaml"],
                        overrides=["sink={kind: ndi, name: %s}" % sender],
                        log_path=tmp_path / "serve.log")
    try:
        proc.wait_ready()
        receiver = NDISource(sender, timeout=20.0)
        try:
            frames = [receiver.receive(20.0) for _ in range(3)]  # FrameTimeout if none come
            assert all((f.width, f.height) == (64, 64) for f in frames)
        finally:
            receiver.close()
    finally:
        code, elapsed = proc.stop(signal.SIGTERM, timeout=5.0)
    assert code == 0, proc.log()
    assert elapsed < 5.0


@pytest.mark.parametrize("delay", [0.5, 2.5])
def test_signal_during_start_up_still_exits_zero(tmp_path, delay):
    """SIGTERM while torch imports or the model loads: exit 0 within 5 s, nothing left behind."""
    out = _name("early")
    proc = ServeProcess(["-m", "bridge", "serve", "--preset", "presets/cpu-demo.yaml"],
                        overrides=[f"sink.0.name={out}"], log_path=tmp_path / "serve.log")
    time.sleep(delay)
    code, elapsed = proc.stop(signal.SIGTERM, timeout=5.0)
    assert code == 0, proc.log()
    assert elapsed < 5.0
    if LINUX:
        assert not segment_exists(out)
