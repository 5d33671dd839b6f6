"""MIDI mapping: YAML validation, pure mapper fed real mido.Message objects, adapter, port opener."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mido
import pytest

from bridge.control import midi
from bridge.control.midi import (MidiAdapter, MidiMapper, apply_curve, choose_port, load_mapping,
                                 parse_mapping)
from bridge.control.target import StateTarget
from bridge.errors import ConfigError, RuntimeMissingError, SourceNotFoundError
from bridge.params import validate_changes

PRESETS = Path(__file__).resolve().parent.parent / "presets" / "midi"


def cc(control: int, value: int, channel: int = 0) -> mido.Message:
    return mido.Message("control_change", control=control, value=value, channel=channel)


def note(number: int, velocity: int = 100, channel: int = 0) -> mido.Message:
    return mido.Message("note_on", note=number, velocity=velocity, channel=channel)


@pytest.mark.parametrize("path", sorted(PRESETS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_mappings_load(path: Path) -> None:
    mapping = load_mapping(path)
    assert mapping.controls and mapping.notes


def test_generic_8_knob_covers_eight_ccs_with_valid_output() -> None:
    mapping = load_mapping(PRESETS / "generic-8-knob.yaml")
    assert len(mapping.controls) == 8
    mapper = MidiMapper(mapping)
    params = StateTarget().get_state()["params"]
    for number in mapping.controls:
        for value in (0, 1, 63, 64, 126, 127):
            action = mapper.handle(cc(number, value), params)
            assert action is not None and action.kind == "set"
            try:
                validate_changes(action.changes)
            except ConfigError as exc:  # only a crossing t_index_list may be refused
                assert exc.fields == ["t_index_list"], exc


def test_curves_hit_the_range_ends_and_shape_the_middle() -> None:
    for curve in ("linear", "exp", "log"):
        assert apply_curve(curve, 0.0) == pytest.approx(0.0)
        assert apply_curve(curve, 1.0) == pytest.approx(1.0)
    assert apply_curve("exp", 0.5) == pytest.approx(9 / 99)
    assert apply_curve("log", 0.5) == pytest.approx(math.log(50.5) / math.log(100))
    mapper = MidiMapper(parse_mapping({"controls": [
        {"cc": 1, "param": "guidance_scale", "range": [0.0, 3.0]},
        {"cc": 2, "param": "delta", "range": [2.0, 0.0], "curve": "exp"},  # inverted knob
        {"cc": 3, "param": "similarity_max_skip", "range": [0, 30]},
        {"cc": 4, "param": "similarity_filter"},
    ]}))
    assert mapper.handle(cc(1, 127)).changes == {"guidance_scale": 3.0}
    assert mapper.handle(cc(1, 0)).changes == {"guidance_scale": 0.0}
    assert mapper.handle(cc(2, 0)).changes == {"delta": 2.0}
    assert mapper.handle(cc(3, 64)).changes == {"similarity_max_skip": 15}
    assert mapper.handle(cc(4, 63)).changes == {"similarity_filter": False}
    assert mapper.handle(cc(4, 64)).changes == {"similarity_filter": True}


def test_list_element_blend_and_notes() -> None:
    mapper = MidiMapper(parse_mapping({
        "channel": 2,
        "controls": [{"cc": 10, "param": "t_index_list", "index": 0, "range": [0, 40]},
                     {"cc": 11, "blend": ["forest", "city"]}],
        "notes": [{"note": 36, "prompt": "a fox"}, {"note": 37, "set": {"seed": 5, "delta": 0.5}},
                  {"note": 38, "action": "pause_toggle"}]}))
    params = {"t_index_list": [32, 45]}
    assert mapper.handle(cc(10, 127, channel=1), params).changes == {"t_index_list": [40, 45]}
    assert mapper.handle(cc(10, 127, channel=0), params) is None  # other channel
    assert mapper.handle(cc(11, 127, channel=1)).changes == {"prompt": [["forest", 0.0], ["city", 1.0]]}
    assert mapper.handle(note(36, channel=1)).changes == {"prompt": "a fox"}
    assert mapper.handle(note(37, channel=1)).changes == {"seed": 5, "delta": 0.5}
    assert mapper.handle(note(38, channel=1)).kind == "pause_toggle"
    assert mapper.handle(note(38, velocity=0, channel=1)) is None  # note-off spelled as note_on
    assert mapper.handle(mido.Message("note_off", note=38, channel=1)) is None
    assert mapper.handle(note(99, channel=1)) is None and mapper.handle(cc(99, 1, channel=1)) is None
    assert mapper.handle(mido.Message("pitchwheel", pitch=100, channel=1)) is None


def test_validation_reports_every_problem_with_field_value_fix() -> None:
    with pytest.raises(ConfigError) as info:
        parse_mapping({
            "version": 2, "channel": 17, "colour": "red",
            "controls": [{"cc": 200, "param": "delta"},
                         {"cc": 5, "param": "width", "range": [64, 128]},
                         {"cc": 6, "param": "delta", "range": [0, 9]},
                         {"cc": 6, "param": "guidance_scale", "curve": "cubic"},
                         {"cc": 7, "param": "t_index_list", "range": [0, 10]},
                         {"cc": 8, "param": "seed"},
                         "knob"],
            "notes": [{"note": 36}, {"note": 37, "set": {"guidance_scale": 99}},
                      {"note": 38, "action": "explode"}, {"note": 38, "prompt": "x"}]})
    fields = info.value.fields
    for expected in ("version", "channel", "colour", "controls[0].cc", "controls[1].param",
                     "controls[2].range", "controls[3].curve", "controls[4].index",
                     "controls[5].range", "controls[6]", "notes[0]", "notes[1].set.guidance_scale",
                     "notes[2].action"):
        assert expected in fields, (expected, fields)
    text = str(info.value)
    assert "fix:" in text and "200" in text and "cubic" in text


def test_bad_yaml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_mapping(tmp_path / "none.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("controls: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_mapping(broken)
    with pytest.raises(ConfigError, match="mapping"):
        parse_mapping(["not", "a", "mapping"])


def test_adapter_applies_actions_to_the_target_and_survives_bad_input() -> None:
    target = StateTarget()
    adapter = MidiAdapter(target, load_mapping(PRESETS / "generic-8-knob.yaml"))
    adapter.feed(cc(70, 127))
    adapter.feed(note(37))
    adapter.feed(cc(74, 127))  # t_index_list[0] -> 40 while [1] is 45: still ascending
    state = target.get_state()
    assert state["params"]["guidance_scale"] == 3.0
    assert state["params"]["prompt"] == "a neon cyberpunk city at night"
    assert state["params"]["t_index_list"] == [40, 45]
    adapter.feed(note(43))
    assert target.get_state()["paused"] is True
    adapter.feed(note(43))
    assert target.get_state()["paused"] is False
    target.set({"t_index_list": [3, 4]})
    version = target.get_state()["version"]
    adapter.feed(cc(74, 127))  # [40, 4] is not ascending: refused, logged, nothing applied
    assert adapter.errors == 1 and target.get_state()["version"] == version
    adapter.feed(mido.Message("sysex", data=[1, 2, 3]))
    assert target.get_state()["version"] == version


def test_choose_port_matches_names_and_lists_the_available_ones() -> None:
    ports = ["Arturia MiniLab mkII:0", "Midi Through Port-0"]
    assert choose_port(None, ports) == ports[0]
    assert choose_port("Midi Through Port-0", ports) == ports[1]
    assert choose_port("minilab", ports) == ports[0]
    with pytest.raises(SourceNotFoundError) as info:
        choose_port("nanoKONTROL", ports)
    assert "Arturia MiniLab mkII:0" in str(info.value) and "Midi Through" in str(info.value)
    with pytest.raises(ConfigError, match="several"):
        choose_port("i", ports)
    with pytest.raises(SourceNotFoundError, match="no MIDI input ports"):
        choose_port(None, [])


def test_port_opener_with_the_real_backend() -> None:
    """Opens the port only when the backend works; here that depends on the machine."""
    try:
        names = midi.list_input_ports()
    except RuntimeMissingError as exc:
        assert "python-rtmidi" in exc.fix  # the install / ALSA hint is in the error
        pytest.skip(f"no usable MIDI backend on this machine: {exc.message}")
    with pytest.raises(SourceNotFoundError) as info:
        MidiAdapter(StateTarget(), parse_mapping({})).open("no-such-port-xyz")
    assert "available" in str(info.value)
    if not names:
        pytest.skip("MIDI backend works but no input port is present")
    adapter = MidiAdapter(StateTarget(), parse_mapping({}))
    assert adapter.open(names[0]) == names[0]
    adapter.close()


def test_missing_backend_maps_to_runtime_missing(monkeypatch: Any) -> None:
    def no_backend() -> list[str]:
        raise ImportError("No module named 'rtmidi'")

    monkeypatch.setattr(mido, "get_input_names", no_backend)
    with pytest.raises(RuntimeMissingError) as info:
        MidiAdapter(StateTarget(), parse_mapping({})).open(None)
    assert "pip install python-rtmidi" in str(info.value)
