"""Control-surface files: generated from the schema and current, and every widget of the Open
Stage Control session drives the real OSC adapter as intended."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from pythonosc.udp_client import SimpleUDPClient

from bridge.control.osc import OscAdapter, osc_address_map
from bridge.control.target import StateTarget
from bridge.params import PARAMS_BY_NAME, shift_t_index_list

ROOT = Path(__file__).resolve().parents[1]
SURFACE = ROOT / "plugins" / "control-surface"


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("cs_generate", SURFACE / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load_generator()


def widgets(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for child in node.get("widgets", []):
        yield child
        yield from widgets(child)


def session_widgets() -> dict[str, dict[str, Any]]:
    session = json.loads((SURFACE / "sdbridge.osc.json").read_text(encoding="utf-8"))
    assert session["type"] == "session" and session["content"]["type"] == "root"
    return {w["id"]: w for w in widgets(session["content"])}


def test_generated_files_are_current() -> None:
    assert gen.main(["--check"]) == 0, "run: python plugins/control-surface/generate.py"


def test_osc_map_is_the_adapters_map() -> None:
    doc = json.loads((SURFACE / "osc-map.json").read_text(encoding="utf-8"))
    assert [(e["address"], e["type"], e["param"]) for e in doc["addresses"]] == [
        (e.address, e.type_tag, e.param) for e in osc_address_map()]
    mapped = {e["param"] for e in doc["addresses"] if e["param"]}
    assert mapped == {p.name for p in PARAMS_BY_NAME.values() if p.osc_type}


def test_fader_ranges_lie_inside_the_schema() -> None:
    for name, (lo, hi) in gen.FADER_RANGES.items():
        spec = PARAMS_BY_NAME[name]
        assert spec.minimum <= lo < hi <= spec.maximum, name
        assert lo <= spec.default <= hi, name


def test_session_has_the_controls_and_only_known_addresses() -> None:
    found = session_widgets()
    for fader in ("strength", "guidance_scale", "delta", "similarity_threshold"):
        assert found[fader]["type"] == "fader" and found[fader]["address"] == f"/sdbridge/{fader}"
    assert found["strength"]["range"] == {"min": 0.0, "max": 1.0} and found["strength"]["typeTags"] == "f"
    assert shift_t_index_list([32, 45], found["strength"]["default"]) == [32, 45]  # schema default
    presets = [w for w in found.values() if w["id"].startswith("preset_")]
    assert [w["on"] for w in presets] == list(gen.PROMPT_PRESETS)
    assert all(w["address"] == "/sdbridge/prompt" and w["typeTags"] == "s" for w in presets)
    assert found["pause"]["address"] == "/sdbridge/pause" and found["resume"]["address"] == "/sdbridge/resume"
    known = {e.address for e in osc_address_map()} | {gen.ECHO_PAUSED, gen.ECHO_ERROR}
    sent = {w["address"] for w in found.values() if "address" in w}
    assert sent <= known, sent - known
    protocol = (ROOT / "docs" / "control-protocol.md").read_text(encoding="utf-8")
    assert gen.ECHO_PAUSED in protocol and gen.ECHO_ERROR in protocol  # echo addresses documented


def test_midi_map_for_8_knobs_exists() -> None:
    assert (ROOT / "presets" / "midi" / "generic-8-knob.yaml").is_file()
    assert "presets/midi/generic-8-knob.yaml" in (SURFACE / "README.md").read_text(encoding="utf-8")


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def send_like_open_stage_control(client: SimpleUDPClient, widget: dict[str, Any], value: Any) -> None:
    """One OSC message as the widget sends it: its address, the value cast by its typeTags."""
    tag = widget.get("typeTags", "")
    cast = {"i": int, "f": float, "s": str}.get(tag[:1], lambda v: v)
    client.send_message(widget["address"], cast(value))


def test_every_session_control_drives_the_real_osc_adapter() -> None:
    found = session_widgets()
    target = StateTarget()
    with OscAdapter(target, port=0) as adapter:
        client = SimpleUDPClient(*adapter.address)
        params = lambda: target.get_state()["params"]  # noqa: E731
        send_like_open_stage_control(client, found["preset_2"], found["preset_2"]["on"])
        wait_until(lambda: params()["prompt"] == gen.PROMPT_PRESETS[1], "preset prompt")
        send_like_open_stage_control(client, found["prompt"], "typed in the field")
        wait_until(lambda: params()["prompt"] == "typed in the field", "typed prompt")
        send_like_open_stage_control(client, found["guidance_scale"], 2.25)
        send_like_open_stage_control(client, found["delta"], 0.5)
        send_like_open_stage_control(client, found["similarity_threshold"], 0.95)
        wait_until(lambda: abs(params()["similarity_threshold"] - 0.95) < 1e-6, "fader values")
        assert params()["guidance_scale"] == pytest.approx(2.25) and params()["delta"] == pytest.approx(0.5)
        send_like_open_stage_control(client, found["similarity_filter"], found["similarity_filter"]["on"])
        send_like_open_stage_control(client, found["seed"], "7")
        wait_until(lambda: params()["similarity_filter"] is True and params()["seed"] == 7, "toggle + seed")
        send_like_open_stage_control(client, found["strength"], 0.5)  # [32, 45]: first = round(0.5·36)
        wait_until(lambda: params()["t_index_list"] == [18, 31], "strength fader")
        send_like_open_stage_control(client, found["pause"], found["pause"]["on"])
        wait_until(lambda: target.get_state()["paused"], "pause")
        send_like_open_stage_control(client, found["resume"], found["resume"]["on"])
        wait_until(lambda: not target.get_state()["paused"], "resume")
        assert adapter.errors == 0
