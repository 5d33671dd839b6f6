"""OBS plugin logic without OBS: settings → commands, strength presets, status text, output
source settings, and the daemon link against a real ZeroMQ control server (incl. restart)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from bridge.control.server import ControlServer
from bridge.control.target import StateTarget
from bridge.errors import ConfigError
from bridge.params import validate_value
from bridge.runtime.stats import Stats

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins" / "obs"
sys.path.insert(0, str(PLUGIN_DIR))

import sdbridge_obs_logic as logic  # noqa: E402
from sdbridge_obs_logic import DaemonLink, LinkStatus, PanelSettings, RetrySchedule  # noqa: E402

from runtime_helpers import wait_until  # noqa: E402


# -- pure logic ----------------------------------------------------------------------------------

def test_bootstrap_paths_find_repo_and_matching_venv(tmp_path: Path) -> None:
    repo = tmp_path / "sdbridge"
    (repo / "bridge" / "control").mkdir(parents=True)
    (repo / "bridge" / "control" / "client.py").write_text("")
    script_dir = repo / "plugins" / "obs"
    script_dir.mkdir(parents=True)
    site = repo / ".venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (repo / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.7\n")
    assert logic.bootstrap_paths(script_dir, (3, 11)) == [str(repo.resolve()), str(site.resolve())]
    assert logic.bootstrap_paths(script_dir, (3, 12)) == [str(repo.resolve())]  # other ABI: not mixed
    assert logic.bootstrap_paths(tmp_path / "a" / "b") == []


def test_bootstrap_paths_of_this_repository() -> None:
    assert str(PLUGIN_DIR.parents[1]) in logic.bootstrap_paths(PLUGIN_DIR)


@pytest.mark.parametrize("steps", range(1, 9))
def test_strength_presets_keep_the_length_and_are_valid(steps: int) -> None:
    firsts = []
    for name in ("subtle", "medium", "strong"):
        t_index_list = logic.strength_t_index_list(name, steps)
        assert len(t_index_list) == steps
        assert validate_value("t_index_list", t_index_list) == t_index_list
        firsts.append(t_index_list[0])
    assert firsts[0] > firsts[1] > firsts[2]  # subtle stays closest to the input


def test_strength_defaults_and_errors() -> None:
    assert logic.strength_t_index_list("medium", 2) == [32, 45]  # the schema's default
    assert logic.strength_of([32, 45]) == "medium" and logic.strength_of([20, 45]) == "strong"
    assert logic.strength_of(logic.strength_t_index_list("subtle", 3)) == "subtle"
    with pytest.raises(ConfigError) as err:
        logic.strength_t_index_list("extreme", 2)
    assert err.value.fields == ["strength"] and "subtle" in str(err.value)
    with pytest.raises(ConfigError):
        logic.strength_t_index_list("medium", 0)


def test_changes_between_sends_only_what_changed() -> None:
    start = PanelSettings()
    full = logic.changes_between(None, start, steps=3)
    assert full["t_index_list"] == logic.strength_t_index_list("medium", 3)
    assert set(full) == {"prompt", "negative_prompt", "guidance_scale", "delta", "seed",
                         "similarity_filter", "t_index_list"}
    edited = PanelSettings(prompt="a fox", guidance_scale=2)
    assert logic.changes_between(start, edited, steps=2) == {"prompt": "a fox", "guidance_scale": 2.0}
    stronger = PanelSettings(strength="strong")
    assert logic.changes_between(start, stronger, steps=2) == {"t_index_list": [22, 45]}
    assert logic.changes_between(start, PanelSettings(paused=True), steps=2) == {}


def test_changes_between_refuses_bad_values_with_the_schema() -> None:
    with pytest.raises(ConfigError) as err:
        logic.changes_between(PanelSettings(), PanelSettings(guidance_scale=99.0, delta=-1), steps=2)
    assert set(err.value.fields) == {"guidance_scale", "delta"}


def test_pause_command() -> None:
    assert logic.pause_command(None, PanelSettings()) is None
    assert logic.pause_command(None, PanelSettings(paused=True)) == "pause"
    assert logic.pause_command(PanelSettings(paused=True), PanelSettings()) == "resume"
    assert logic.pause_command(PanelSettings(), PanelSettings(prompt="x")) is None


def test_output_source_settings() -> None:
    assert logic.ndi_source_name("my-pc", "sdbridge") == "MY-PC (sdbridge)"
    assert logic.output_source("ndi", ndi_name="MY-PC (sdbridge)") == (
        "ndi_source", {"ndi_source_name": "MY-PC (sdbridge)"})
    kind, settings = logic.output_source("browser", preview_url="http://127.0.0.1:8090/",
                                         width=768, height=432)
    assert kind == "browser_source"
    assert settings["url"] == "http://127.0.0.1:8090/" and (settings["width"], settings["height"]) == (768, 432)
    assert set(logic.OUTPUT_SOURCE_NAMES) == {"ndi", "browser"}  # a name for every kind
    assert len(set(logic.OUTPUT_SOURCE_NAMES.values())) == 2
    for bad in ({"kind": "ndi", "ndi_name": " "}, {"kind": "browser", "preview_url": "127.0.0.1:8090"},
                {"kind": "spout"}):
        with pytest.raises(ConfigError):
            logic.output_source(**bad)


def test_format_status_from_real_stats() -> None:
    assert logic.format_status(LinkStatus(detail="no reply", retry_in_s=4.0)) == \
        "disconnected (no reply, retry in 4 s)"
    stats = Stats(window_s=5.0)
    for _ in range(3):
        now = time.monotonic_ns()
        stats.frame_in()
        stats.frame_out(now - 40_000_000)
    snap = stats.snapshot({"paused": True, "last_error": {"code": "pipeline_error", "message": "boom"}})
    text = logic.format_status(LinkStatus(connected=True, stats=snap, last_error="[invalid_config] x"))
    assert text.startswith("connected · ") and "fps out" in text and "latency p50 " in text
    assert "PAUSED" in text and "daemon error: boom" in text and text.endswith("refused: [invalid_config] x")
    assert logic.format_status(LinkStatus(connected=True)) == "connected, waiting for stats"


def test_retry_schedule() -> None:
    retry = RetrySchedule(first=0.5, cap=4.0)
    assert [retry.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    retry.reset()
    assert retry.next_delay() == 0.5


# -- the link against a real control server -----------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def endpoints() -> tuple[str, str]:
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture
def server(endpoints: tuple[str, str]) -> Iterator[ControlServer]:
    srv = ControlServer(StateTarget(), *endpoints).start()
    yield srv
    srv.stop()


def make_link(endpoints: tuple[str, str], panel: list[PanelSettings]) -> DaemonLink:
    return DaemonLink(*endpoints, request_timeout=0.5, silence_timeout=1.0,
                      retry=RetrySchedule(first=0.1, cap=0.5),
                      resync=lambda steps: logic.changes_between(None, panel[0], steps))


def test_link_syncs_sends_and_shows_stats(server: ControlServer, endpoints: tuple[str, str]) -> None:
    target: StateTarget = server.target  # type: ignore[assignment]
    panel = [PanelSettings(prompt="from obs", strength="subtle")]
    link = make_link(endpoints, panel)
    link.start()
    try:
        wait_until(lambda: link.status().connected, "connect")
        params = wait_until(lambda: target.get_state()["params"]["prompt"] == "from obs"
                            and target.get_state()["params"], "resync of the panel")
        assert params["t_index_list"] == [40, 45]  # subtle, same length as the daemon's list
        link.submit(logic.changes_between(panel[0], PanelSettings(prompt="a fox"), link.steps()))
        wait_until(lambda: target.get_state()["params"]["prompt"] == "a fox", "prompt change")
        wait_until(lambda: link.status().state.get("params", {}).get("prompt") == "a fox",
                   "state event echoed back")
        link.request_pause("pause")
        wait_until(lambda: target.get_state()["paused"], "pause")
        wait_until(lambda: link.status().stats, "stats event")
        assert "fps out" in logic.format_status(link.status())
        link.submit({"guidance_scale": 99})  # bypasses local validation: the daemon refuses it
        refused = wait_until(lambda: link.status().last_error, "refusal")
        assert "invalid_config" in refused and "guidance_scale" in refused
        assert link.status().connected and target.get_state()["params"]["guidance_scale"] != 99
    finally:
        link.stop()


def test_link_reconnects_after_daemon_restart(endpoints: tuple[str, str]) -> None:
    panel = [PanelSettings(prompt="keep me")]
    link = make_link(endpoints, panel)
    link.start()  # daemon not up yet: retries
    try:
        status = wait_until(lambda: link.status().retry_in_s is not None and link.status(), "retry")
        assert not status.connected and "no reply" in status.detail
        first = ControlServer(StateTarget(), *endpoints).start()
        try:
            wait_until(lambda: link.status().connected, "first connect")
        finally:
            first.stop()
        wait_until(lambda: not link.status().connected, "noticing the daemon is gone")
        assert "disconnected" in logic.format_status(link.status())
        fresh = StateTarget()
        second = ControlServer(fresh, *endpoints).start()
        try:
            wait_until(lambda: link.status().connected, "reconnect")
            wait_until(lambda: fresh.get_state()["params"]["prompt"] == "keep me",
                       "panel pushed to the restarted daemon")
        finally:
            second.stop()
    finally:
        link.stop()


def test_obs_glue_compiles_and_keeps_logic_out() -> None:
    source = (PLUGIN_DIR / "sdbridge_obs.py").read_text(encoding="utf-8")
    compile(source, "sdbridge_obs.py", "exec")  # obspython itself only exists inside OBS
    assert "import sdbridge_obs_logic as logic" in source
    assert "import zmq" not in source  # sockets live in the logic module's DaemonLink
