"""10,000 malformed, truncated, wrong-typed, oversized and random messages from another process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.control.client import ControlClient
from bridge.control.server import ControlServer
from bridge.control.target import StateTarget
from bridge.control.wire import ERROR_CODES, handle_message
from bridge.errors import SdbridgeError
from bridge.params import validate_changes

PEER = Path(__file__).with_name("control_peer.py")
KNOWN_CODES = set(ERROR_CODES) | {c.code for c in (SdbridgeError, *SdbridgeError.__subclasses__())}


def test_ten_thousand_hostile_messages_then_ping_still_answers() -> None:
    target = StateTarget()
    with ControlServer(target, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*") as server:
        proc = subprocess.run(
            [sys.executable, str(PEER), "fuzz", server.command_endpoint, "10000", "1234",
             str(server.max_message_bytes)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        report: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
        assert "error" not in report, report
        assert report["sent"] == report["replies"] == 10000  # one reply per message
        assert report["malformed"] == []
        assert report["pong"] is True
        assert set(report["codes"]) <= KNOWN_CODES | {"rebuild_required"}
        for code in ("invalid_json", "bad_request", "unknown_command", "too_large", "invalid_config"):
            assert report["codes"].get(code, 0) > 0, (code, report["codes"])
        assert 0 < report["errors"] < 10000  # valid messages in the mix succeeded
        with ControlClient(server.command_endpoint) as client:
            assert client.ping()["pong"] is True
            state = client.get_state()
        assert server.running
    validate_changes(state["params"])  # whatever got through, the state is still valid
    assert state["version"] == target.state.version


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
                              lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                              max_leaves=20).map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"id": st.integers(), "cmd": st.sampled_from(
                     ["set", "ping", "load_preset", "x"]), "args": st.dictionaries(
                     st.sampled_from(["prompt", "seed", "delta", "path", "width"]),
                     st.none() | st.integers() | st.floats() | st.text())}).map(
                     lambda v: json.dumps(v).encode())))
def test_wire_always_answers_with_a_well_formed_reply(raw: bytes) -> None:
    reply = json.loads(handle_message(raw, StateTarget()))
    assert set(reply) in ({"id", "ok", "result"}, {"id", "ok", "error"})
    if not reply["ok"]:
        assert reply["error"]["code"] in KNOWN_CODES and reply["error"]["message"]


@pytest.mark.parametrize("raw, code", [
    (b"", "invalid_json"), (b"\xff", "invalid_json"), (b"[]", "bad_request"),
    (b'{"cmd": 1}', "bad_request"), (b'{"cmd": "nope"}', "unknown_command"),
    (b'{"cmd": "ping", "args": []}', "bad_request"), (b'{"cmd": "ping", "args": {"a": 1}}', "bad_request"),
    (b'{"cmd": "set", "args": {}}', "bad_request"), (b'{"cmd": "set", "args": {"zzz": 1}}', "invalid_config"),
    (b'{"id": {"a": 1}, "cmd": "ping"}', "bad_request"), (b'{"id": 1, "cmd": "ping", "x": 0}', "bad_request"),
    (b'{"cmd": "load_preset", "args": {}}', "bad_request"), (b"[" * 60000, "invalid_json"),
])
def test_wire_error_codes(raw: bytes, code: str) -> None:
    reply = json.loads(handle_message(raw, StateTarget()))
    assert reply["ok"] is False and reply["error"]["code"] == code
