"""`sdbridge ctl` as a real subprocess against a real control server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import zmq.auth

from bridge.commands.ctl import events_endpoint_for, format_stats, parse_assignments
from bridge.control.server import ControlServer
from bridge.control.target import StateTarget
from bridge.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def ctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", "ctl", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ControlServer, StateTarget]]:
    target = StateTarget()
    with ControlServer(target, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*") as server:
        yield server, target


def test_parse_assignments_json_first_else_string() -> None:
    assert parse_assignments(['prompt=a red fox', 'guidance_scale=1.4', 'seed=[[1, 0.5], [2, 0.5]]',
                              'similarity_filter=true', 'prompt2="true"', 'x=']) == {
        "prompt": "a red fox", "guidance_scale": 1.4, "seed": [[1, 0.5], [2, 0.5]],
        "similarity_filter": True, "prompt2": "true", "x": ""}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["novalue"])


def test_events_endpoint_default_is_next_port() -> None:
    assert events_endpoint_for("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5556"
    with pytest.raises(ConfigError, match="--events"):
        events_endpoint_for("ipc:///tmp/sdbridge")


def test_format_stats_flattens_nested_numbers() -> None:
    line = format_stats({"fps_out": 29.97, "latency_ms": {"e2e": {"p50": 41.25}}, "time": 1.0,
                         "control": {"requests": 3}})
    assert "fps_out=30.0" in line and "latency_ms.e2e.p50=41.2" in line
    assert "control" not in line and "time=" not in line


def test_ping_state_stats_schema(served: tuple[ControlServer, StateTarget]) -> None:
    server, _ = served
    endpoint = ["--endpoint", server.command_endpoint]
    human = ctl(*endpoint, "ping")
    assert human.returncode == 0 and human.stdout.startswith("pong"), human.stderr
    for position in ([*endpoint, "--json", "ping"], [*endpoint, "ping", "--json"]):
        out = ctl(*position)
        assert out.returncode == 0 and json.loads(out.stdout)["result"]["pong"] is True
    state = json.loads(ctl(*endpoint, "state", "--json").stdout)["result"]
    assert {"version", "params", "paused", "pending_rebuild"} <= set(state)
    assert "uptime_s" in json.loads(ctl(*endpoint, "stats", "--json").stdout)["result"]
    schema = ctl(*endpoint, "schema")
    assert "guidance_scale" in schema.stdout and "rebuild" in schema.stdout


def test_set_pause_resume_and_load_preset(served: tuple[ControlServer, StateTarget],
                                          tmp_path: Path) -> None:
    server, target = served
    endpoint = ["--endpoint", server.command_endpoint]
    out = ctl(*endpoint, "set", "prompt=a red fox", "guidance_scale=1.4", "seed=[[1, 0.5], [7, 0.5]]")
    assert out.returncode == 0, out.stderr
    params = target.get_state()["params"]
    assert params["prompt"] == "a red fox" and params["guidance_scale"] == 1.4
    assert params["seed"] == [[1, 0.5], [7, 0.5]]
    assert ctl(*endpoint, "pause").returncode == 0 and target.get_state()["paused"] is True
    assert ctl(*endpoint, "resume", "--json").returncode == 0 and target.get_state()["paused"] is False
    preset = tmp_path / "p.yaml"
    preset.write_text("params: {prompt: from a preset, delta: 0.7}\n")
    out = ctl(*endpoint, "load-preset", str(preset), "--json")
    assert json.loads(out.stdout)["result"]["applied"] == {"prompt": "from a preset", "delta": 0.7}


def test_errors_exit_2_with_a_coded_message(served: tuple[ControlServer, StateTarget]) -> None:
    server, target = served
    version = target.get_state()["version"]
    out = ctl("--endpoint", server.command_endpoint, "--json", "set", "guidance_scale=99", "prompt=x")
    assert out.returncode == 2
    error = json.loads(out.stdout)["error"]
    assert error["code"] == "invalid_config" and "guidance_scale" in error["message"]
    assert target.get_state()["version"] == version
    human = ctl("--endpoint", server.command_endpoint, "set", "nonsense=1")
    assert human.returncode == 2 and "unknown parameter" in human.stderr and "fix:" in human.stderr
    nobody = ctl("--endpoint", "tcp://127.0.0.1:1", "--timeout", "0.5", "ping", "--json")
    assert nobody.returncode == 2 and json.loads(nobody.stdout)["error"]["code"] == "timeout"


def test_watch_prints_live_events(served: tuple[ControlServer, StateTarget]) -> None:
    server, _ = served
    out = ctl("--endpoint", server.command_endpoint, "--events", server.event_endpoint,
              "watch", "--json", "--count", "2", "--topics", "stats")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["topic"] for e in events] == ["stats", "stats"] and "uptime_s" in events[0]["data"]
    human = ctl("--events", server.event_endpoint, "watch", "--count", "1", "--topics", "stats")
    assert human.returncode == 0 and "stats uptime_s=" in human.stdout


def test_keygen_and_curve_from_the_cli(tmp_path: Path) -> None:
    out = ctl("keygen", "server", "--dir", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    files = json.loads(out.stdout)["result"]
    assert Path(files["public"]).name == "server.key" and Path(files["secret"]).is_file()
    assert Path(files["secret"]).stat().st_mode & 0o077 == 0  # secret key not group/world readable
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    client_pub, client_secret = zmq.auth.create_certificates(tmp_path, "client")
    Path(client_pub).rename(authorized / "client.key")
    with ControlServer(StateTarget(), "tcp://127.0.0.1:*", "tcp://127.0.0.1:*",
                       curve_secret_key_file=files["secret"],
                       curve_authorized_keys_dir=authorized) as server:
        out = ctl("--endpoint", server.command_endpoint, "--server-key", files["public"],
                  "--client-key", client_secret, "ping", "--json")
        assert out.returncode == 0 and json.loads(out.stdout)["result"]["pong"] is True


def test_watch_with_count_fails_clearly_when_no_daemon() -> None:
    out = ctl("--events", "tcp://127.0.0.1:1", "--timeout", "0.5", "watch", "--count", "1", "--json")
    assert out.returncode == 2 and json.loads(out.stdout)["error"]["code"] == "timeout"
