"""ZeroMQ control server with real sockets; peers run in separate processes (tests/control_peer.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq
import zmq.auth

from bridge.control.client import ControlClient, ControlTimeout, EventSubscriber, RemoteError
from bridge.control.security import endpoint_is_local
from bridge.control.server import DEFAULT_COMMAND_ENDPOINT, DEFAULT_EVENT_ENDPOINT, ControlServer
from bridge.control.target import StateTarget
from bridge.errors import ConfigError, ControlError
from bridge.params import validate_changes

PEER = Path(__file__).with_name("control_peer.py")
ANY_PORT = "tcp://127.0.0.1:*"


def peer(*args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(PEER), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture()
def served() -> Iterator[tuple[ControlServer, StateTarget]]:
    target = StateTarget()
    server = ControlServer(target, ANY_PORT, ANY_PORT).start()
    yield server, target
    server.stop()


def test_several_clients_at_once_from_separate_processes(served: tuple[ControlServer, StateTarget]) -> None:
    server, target = served
    procs = [peer("clients", server.command_endpoint, f"c{i}", 40) for i in range(3)]
    results = [finish(p)[0] for p in procs]
    assert [r["ok"] for r in results] == [41, 41, 41]
    all_versions = sorted(v for r in results for v in r["versions"])
    assert all_versions == list(range(1, 121))  # every set got its own version, none lost
    state = target.get_state()
    assert state["version"] == 120
    assert state["params"]["prompt"] in {"c0-39", "c1-39", "c2-39"}
    assert target.state.take_pending() == {"prompt": state["params"]["prompt"]}  # coalesced


def test_set_is_all_or_nothing(served: tuple[ControlServer, StateTarget]) -> None:
    server, target = served
    with ControlClient(server.command_endpoint) as client:
        client.set(prompt="before")
        before = client.get_state()
        with pytest.raises(RemoteError) as info:
            client.set(prompt="after", guidance_scale=99, delta="x")
        assert info.value.code == "invalid_config"
        assert "guidance_scale" in str(info.value) and "delta" in str(info.value)
        after = client.get_state()
    assert after == before
    assert target.state.take_pending() == {"prompt": "before"}


def test_rebuild_parameters_are_scheduled_and_reported(served: tuple[ControlServer, StateTarget]) -> None:
    server, target = served
    with ControlClient(server.command_endpoint) as client:
        result = client.set(width=640, t_index_list=[20, 30, 40], guidance_scale=2.0)
        assert sorted(result["pending_rebuild"]) == ["t_index_list", "width"]
        assert client.get_state()["pending_rebuild"] == result["pending_rebuild"]
        target.state.rebuild_done()
        assert client.get_state()["pending_rebuild"] == []


def test_state_events_reach_a_subscriber_in_another_process(
        served: tuple[ControlServer, StateTarget]) -> None:
    server, target = served
    sub = peer("subscribe", server.event_endpoint, "state", 4, 10)
    assert sub.stdout is not None
    assert json.loads(sub.stdout.readline()) == {"ready": True}
    with ControlClient(server.command_endpoint) as client:
        for i in range(3):
            client.set(prompt=f"p{i}")
    target.pause()  # a change not made over ZeroMQ is published too
    events = finish(sub)[-1]["events"]
    versions = [e["version"] for e in events]
    assert versions == sorted(set(versions)) and len(versions) == 4
    assert [e["params"]["prompt"] for e in events[:3]] == ["p0", "p1", "p2"]
    assert events[3]["paused"] is True
    assert versions[-1] == target.state.version


def test_stats_are_published_at_the_configured_rate(served: tuple[ControlServer, StateTarget]) -> None:
    server, _ = served
    assert server.stats_interval == 0.5  # 2 Hz
    with EventSubscriber(server.event_endpoint, ("stats",)) as sub:
        stamps = [sub.recv(5.0)[1]["time"] for _ in range(4)]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert min(gaps) >= 0.45  # never faster than 2 Hz (slower only under heavy load)
    with ControlClient(server.command_endpoint) as client:
        stats = client.get_stats()
    assert stats["state_version"] == 0 and "uptime_s" in stats


@pytest.mark.parametrize("interval", [0.1, 2.0])
def test_stats_interval_outside_1_to_2_hz_is_refused(interval: float) -> None:
    with pytest.raises(ConfigError, match="stats_interval"):
        ControlServer(StateTarget(), ANY_PORT, ANY_PORT, stats_interval=interval)


def test_oversized_message_is_refused_and_server_survives(served: tuple[ControlServer, StateTarget]) -> None:
    server, _ = served
    with ControlClient(server.command_endpoint) as client:
        big = json.dumps({"id": 1, "cmd": "set", "args": {"prompt": "x" * 70000}}).encode()
        reply = client.send_raw(big)
        assert reply["ok"] is False and reply["error"]["code"] == "too_large"
        # Beyond the hard cap libzmq drops the connection: no reply, nothing buffered.
        with pytest.raises(ControlTimeout):
            client.send_raw(b"x" * (2 << 20), timeout=1.0)
    with ControlClient(server.command_endpoint) as other:
        assert other.ping()["pong"] is True


def test_multipart_and_req_envelopes(served: tuple[ControlServer, StateTarget]) -> None:
    server, _ = served
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(server.command_endpoint)
    dealer.send_multipart([b"", b'{"id": 1, "cmd": "ping"}', b"extra"])
    assert dealer.poll(5000)
    assert json.loads(dealer.recv_multipart()[-1])["error"]["code"] == "bad_request"
    dealer.send_multipart([b'{"id": 2, "cmd": "ping"}'])  # no delimiter: also answered
    assert dealer.poll(5000)
    assert json.loads(dealer.recv_multipart()[-1]) == {
        "id": 2, "ok": True, "result": {"pong": True, "version": "0.1.0", "protocol": 1}}
    dealer.close(0)
    req = ctx.socket(zmq.REQ)
    req.connect(server.command_endpoint)
    req.send(b'{"id": "r", "cmd": "get_schema"}')
    assert req.poll(5000)
    reply = json.loads(req.recv())
    req.close(0)
    assert reply["id"] == "r" and reply["result"]["params"][0]["name"] == "prompt"


def test_target_failures_become_coded_replies_and_stats_errors() -> None:
    class Broken(StateTarget):
        def get_stats(self) -> dict[str, Any]:
            raise RuntimeError("stats backend exploded")

        def pause(self) -> dict[str, Any]:
            raise KeyError("boom")

    with ControlServer(Broken(), ANY_PORT, ANY_PORT) as server:
        with ControlClient(server.command_endpoint) as client:
            with pytest.raises(RemoteError) as info:
                client.pause()
            assert info.value.code == "internal_error" and "boom" in str(info.value)
            with EventSubscriber(server.event_endpoint, ("stats",)) as sub:
                assert "stats backend exploded" in sub.recv(5.0)[1]["error"]["message"]
            assert client.ping()["pong"] is True


def test_loopback_is_the_default_and_classification() -> None:
    assert DEFAULT_COMMAND_ENDPOINT == "tcp://127.0.0.1:5555"
    assert DEFAULT_EVENT_ENDPOINT == "tcp://127.0.0.1:5556"
    local = ["tcp://127.0.0.1:5555", "tcp://127.1.2.3:1", "tcp://localhost:5", "tcp://[::1]:5",
             "ipc:///tmp/x", "inproc://x"]
    remote = ["tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://192.168.1.2:5555", "tcp://eth0:5555",
              "tcp://example.com:5555", "tcp://[::]:5555", "udp://127.0.0.1:5"]
    assert all(endpoint_is_local(e) for e in local)
    assert not any(endpoint_is_local(e) for e in remote)
    with pytest.raises(ConfigError) as info:
        ControlServer(StateTarget(), "tcp://*:5555", ANY_PORT)
    assert info.value.fields == ["command_endpoint"]
    assert "allow_remote" in str(info.value)


def test_bad_endpoints_are_all_reported() -> None:
    with pytest.raises(ConfigError) as info:
        ControlServer(StateTarget(), "127.0.0.1:5555", "tcp//x")
    assert info.value.fields == ["command_endpoint", "event_endpoint"]
    assert "tcp://HOST:PORT" in str(info.value)


def test_remote_bind_without_keys_is_refused() -> None:
    with pytest.raises(ConfigError, match="without authentication") as info:
        ControlServer(StateTarget(), "tcp://0.0.0.0:*", "tcp://0.0.0.0:*", allow_remote=True)
    assert info.value.fields == ["command_endpoint", "event_endpoint"]
    with pytest.raises(ConfigError, match="token"):
        ControlServer(StateTarget(), "tcp://0.0.0.0:*", ANY_PORT, allow_remote=True, token="short")


def test_token_protects_commands() -> None:
    token = "s3cret-token-0123456789"
    with ControlServer(StateTarget(), "tcp://0.0.0.0:*", ANY_PORT, allow_remote=True,
                       token=token) as server:
        port = server.command_endpoint.rsplit(":", 1)[1]
        endpoint = f"tcp://127.0.0.1:{port}"
        with ControlClient(endpoint) as anonymous:
            with pytest.raises(RemoteError) as info:
                anonymous.ping()
            assert info.value.code == "unauthorized"
        with ControlClient(endpoint, token="wrong-token-0123456789") as wrong:
            with pytest.raises(RemoteError, match="unauthorized"):
                wrong.set(prompt="nope")
        with ControlClient(endpoint, token=token) as good:
            assert good.set(prompt="ok")["applied"] == {"prompt": "ok"}


def test_curve_authenticated_client_works_and_others_are_locked_out(tmp_path: Path) -> None:
    keys, authorized = tmp_path / "keys", tmp_path / "authorized"
    keys.mkdir()
    authorized.mkdir()
    server_pub, server_secret = zmq.auth.create_certificates(keys, "server")
    client_pub, client_secret = zmq.auth.create_certificates(keys, "client")
    _, intruder_secret = zmq.auth.create_certificates(keys, "intruder")
    Path(client_pub).rename(authorized / "client.key")
    target = StateTarget()
    with ControlServer(target, "tcp://0.0.0.0:*", "tcp://0.0.0.0:*", allow_remote=True,
                       curve_secret_key_file=server_secret,
                       curve_authorized_keys_dir=authorized) as server:
        cmd_port = server.command_endpoint.rsplit(":", 1)[1]
        ev_port = server.event_endpoint.rsplit(":", 1)[1]
        cmd, events = f"tcp://127.0.0.1:{cmd_port}", f"tcp://127.0.0.1:{ev_port}"
        result = finish(peer("curve", cmd, events, server_pub, client_secret))[0]
        assert result == {"pong": True, "version": 1, "event": "stats"}
        assert target.get_state()["params"]["prompt"] == "via curve"
        with ControlClient(cmd, timeout=1.0, curve_server_key=server_pub,
                           curve_client_key=intruder_secret) as intruder:
            with pytest.raises(ControlTimeout):
                intruder.ping()
        with ControlClient(cmd, timeout=1.0) as plaintext:
            with pytest.raises(ControlTimeout):
                plaintext.ping()


def test_curve_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ControlServer(StateTarget(), ANY_PORT, ANY_PORT, curve_secret_key_file=tmp_path / "none")
    assert "curve_authorized_keys_dir" in str(info.value)
    with pytest.raises(ConfigError) as info:
        ControlServer(StateTarget(), ANY_PORT, ANY_PORT, curve_secret_key_file=tmp_path / "none",
                      curve_authorized_keys_dir=tmp_path)
    assert set(info.value.fields) == {"curve_authorized_keys_dir", "curve_secret_key_file"}


def test_port_in_use_is_a_clear_error_and_stop_releases_the_port(
        served: tuple[ControlServer, StateTarget]) -> None:
    server, _ = served
    with pytest.raises(ControlError, match="cannot bind"):
        ControlServer(StateTarget(), server.command_endpoint, ANY_PORT).start()
    endpoint = server.command_endpoint
    server.stop()
    assert not server.running
    with ControlServer(StateTarget(), endpoint, ANY_PORT) as again:
        with ControlClient(again.command_endpoint) as client:
            assert client.ping()["pong"] is True


def test_load_preset_over_the_wire(served: tuple[ControlServer, StateTarget], tmp_path: Path) -> None:
    server, target = served
    preset = tmp_path / "look.yaml"
    preset.write_text("version: 1\nmodel: {id: tiny}\nprompt: a foggy harbour\nguidance_scale: 1.6\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompt: [unclosed\nsecret: hunter2\n")
    with ControlClient(server.command_endpoint) as client:
        result = client.load_preset(str(preset))
        assert result["applied"] == {"prompt": "a foggy harbour", "guidance_scale": 1.6}
        with pytest.raises(RemoteError) as info:
            client.load_preset(str(bad))
        assert info.value.code == "invalid_config" and "hunter2" not in str(info.value)
        with pytest.raises(RemoteError, match="not found"):
            client.load_preset(str(tmp_path / "missing.yaml"))
    validate_changes(target.get_state()["params"])
