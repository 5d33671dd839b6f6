"""End to end with real processes: `sdbridge serve` on presets/cpu-demo.yaml (tiny model,
test pattern, shared-memory sink) in a child process; this test process is the client: it
sets a prompt over ZeroMQ, sees the `state` event with the new version, sees frames continue
in shared memory, then stops the daemon with SIGTERM."""

from __future__ import annotations

import secrets
import signal
import sys

import pytest

from bridge.control.client import ControlClient, EventSubscriber
from daemon_peer import ServeProcess, read_frames, segment_exists

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    name = f"sdbt-e2e-{secrets.token_hex(3)}"
    proc = ServeProcess(["-m", "bridge", "serve", "--preset", "presets/cpu-demo.yaml",
                         "--json-logs"],
                        overrides=[f"sink.0.name={name}", "source.fps=15"],
                        log_path=tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        proc.wait_ready()
        yield proc, name
    finally:
        if proc.proc.poll() is None:  # a failed test left it running
            proc.stop(signal.SIGTERM)


def test_prompt_change_reaches_state_event_and_frames_continue(served):
    proc, name = served
    before = read_frames(name, 2)
    last_seq = max(f.seq for f in before)
    assert all((f.width, f.height) == (64, 64) for f in before)
    with EventSubscriber(proc.events, ("state",)) as events, \
            ControlClient(proc.command, timeout=10.0) as client:
        # The PUB socket drops messages until the subscription has propagated: poke the state
        # until one event arrives, then make the change under test.
        client.resume()
        events.recv(10.0)
        result = client.set(prompt="a red fox in the snow")
        assert result["applied"] == {"prompt": "a red fox in the snow"}
        for _ in range(50):
            topic, state = events.recv(10.0)
            if state["version"] >= result["version"]:
                break
        assert topic == "state" and state["version"] >= result["version"]
        assert state["params"]["prompt"] == "a red fox in the snow"
        after = read_frames(name, 3, accept=lambda f: f.seq > last_seq)
        assert len({f.seq for f in after}) == 3
        stats = client.get_stats()
    assert stats["status"] == "running" and stats["counters"]["frames_out"] > 0
    assert stats["pipeline"]["model"] == "tiny"
    assert stats["latency_ms"]["pipeline"]["count"] > 0


def test_sigterm_exits_zero_quickly_and_unlinks_shared_memory(served):
    proc, name = served
    assert segment_exists(name) or not sys.platform.startswith("linux")
    code, elapsed = proc.stop(signal.SIGTERM, timeout=5.0)
    assert code == 0, proc.log()
    assert elapsed < 5.0
    if sys.platform.startswith("linux"):
        assert not segment_exists(name)
    import json

    lines = [json.loads(line) for line in proc.log_path.read_text().splitlines() if line.strip()]
    messages = [entry["message"] for entry in lines]  # --json-logs: every line is one object
    assert "received SIGTERM" in messages and "shutting down" in messages


def test_serve_check_and_every_problem_before_loading(capsys):
    from bridge.cli import main

    assert main(["serve", "--preset", "presets/cpu-demo.yaml", "--check"]) == 0
    assert "preset OK" in capsys.readouterr().out
    code = main(["serve", "--preset", "presets/cpu-demo.yaml", "--set", "guidance_scale=99",
                 "--set", "source.kind=nope", "--set", "model.dtpye=float32"])
    err = capsys.readouterr().err
    assert code == 2
    for text in ("guidance_scale=99", "source.kind='nope'", "did you mean 'dtype'", "3 problems"):
        assert text in err, (text, err)


def test_json_log_lines_are_json():
    import json
    import logging

    from bridge.commands.serve import JsonFormatter

    record = logging.LogRecord("sdbridge.serve", logging.INFO, __file__, 1, "serving %s", ("x",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "serving x" and entry["level"] == "INFO"


def test_preset_control_section_starts_zmq_and_osc_and_tolerates_missing_midi():
    """`serve`'s control wiring in-process: ZeroMQ + OSC from the preset drive the daemon; MIDI
    enabled without a usable port is reported and skipped, not fatal."""
    import time

    from pythonosc.udp_client import SimpleUDPClient

    from bridge.commands.serve import _start_control, _stop_quietly
    from bridge.config import DEFAULT_PRESET, preflight, validate_preset
    from bridge.runtime.daemon import Daemon
    from bridge.runtime.pipelines import identity_factory
    from daemon_peer import ROOT, free_port

    osc_port = free_port()
    preset = validate_preset(dict(
        DEFAULT_PRESET, sink={"kind": "null"},
        control={"command_endpoint": f"tcp://127.0.0.1:{free_port()}",
                 "event_endpoint": f"tcp://127.0.0.1:{free_port()}"},
        osc={"enabled": True, "listen_port": osc_port},
        midi={"enabled": True, "port": "no-such-controller-xyz",
              "mapping": str(ROOT / "presets" / "midi" / "generic-8-knob.yaml")}))
    preflight(preset)
    daemon = Daemon(preset, pipeline_factory=identity_factory)
    assert daemon.start()
    adapters = _start_control(preset, daemon)
    try:
        assert len(adapters) == 2  # ZeroMQ server + OSC; MIDI skipped with a warning
        with ControlClient(preset.control.command_endpoint, timeout=10.0) as client:
            assert client.set(guidance_scale=3.5)["applied"] == {"guidance_scale": 3.5}
        SimpleUDPClient("127.0.0.1", osc_port).send_message("/sdbridge/prompt", "sent over OSC")
        deadline = time.monotonic() + 10
        while daemon.get_state()["params"]["prompt"] != "sent over OSC" and time.monotonic() < deadline:
            time.sleep(0.05)
        params = daemon.get_state()["params"]
        assert params["prompt"] == "sent over OSC" and params["guidance_scale"] == 3.5
    finally:
        for adapter in adapters:
            _stop_quietly(adapter)
        daemon.stop()
