"""Preset schema: loading, overrides, every-error-at-once reporting, docs in sync."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bridge.config import (
    DEFAULT_PRESET,
    ConfigError,
    apply_overrides,
    control_options,
    load_preset,
    preflight,
    resolve_relative,
    validate_preset,
)
from bridge.preset_docs import render_preset_docs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["cpu-demo", "sd-turbo-img2img-512", "lcm-lora-sd15", "sdxl-turbo-img2img",
            "sd-turbo-txt2img"]


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_default_preset_loads_with_defaults_filled():
    preset = load_preset(None)
    assert preset.model.id == "tiny"
    assert preset.params["width"] == 64 and preset.params["t_index_list"] == [32, 45]
    assert preset.params["negative_prompt"] == ""  # default from bridge.params
    assert [s.kind for s in preset.sinks] == ["shm"]
    assert preset.fit == "crop" and preset.fallback_output == "passthrough"
    assert preset.control.command_endpoint == "tcp://127.0.0.1:5555"


def test_every_problem_reported_at_once_with_field_paths():
    raw = {
        "versoin": 1,
        "model": {"id": "tiny", "dtyp": "float16", "device": "gpu", "acceleration": "tensorrtt"},
        "guidance_scale": 99, "t_index_list": [45, 32],
        "fit": "zoom",
        "source": {"kind": "shmm"},
        "sink": [{"kind": "test_pattern"}, {"kind": "null", "keep_lsat": True}],
        "control": {"command_endpoint": "localhost:5555"},
    }
    with pytest.raises(ConfigError) as info:
        validate_preset(raw)
    fields = info.value.fields
    for expected in ["versoin", "version", "model.dtyp", "model.device", "model.acceleration",
                     "guidance_scale", "t_index_list", "fit", "source.kind", "sink.0.kind",
                     "sink.1.keep_lsat", "control.command_endpoint"]:
        assert expected in fields, (expected, fields)
    text = str(info.value)
    assert "did you mean 'version'" in text and "did you mean 'dtype'" in text
    assert "did you mean 'shm'" in text and "did you mean 'keep_last'" in text


def test_overrides_dotted_paths_and_yaml_values(tmp_path):
    path = _write(tmp_path, DEFAULT_PRESET)
    preset = load_preset(path, ["prompt=a red fox", "guidance_scale=1.4", "t_index_list=[10, 20]",
                                "model.dtype=float32", "sink.0.kind=null",
                                "control.enabled=false"])
    assert preset.params["prompt"] == "a red fox"
    assert preset.params["guidance_scale"] == 1.4
    assert preset.params["t_index_list"] == [10, 20]
    assert preset.sinks[0].kind == "null"
    assert preset.control.enabled is False
    assert preset.path == path


def test_override_errors_are_collected():
    with pytest.raises(ConfigError) as info:
        apply_overrides(DEFAULT_PRESET, ["noequals", "sink.7.kind=null"])
    assert len(info.value.problems) == 2
    with pytest.raises(ConfigError) as info:
        load_preset(None, ["guidance_scale=high", "width=65"])
    assert set(info.value.fields) == {"guidance_scale", "width"}


def test_single_sink_mapping_and_options_kept():
    raw = dict(DEFAULT_PRESET, sink={"kind": "null", "keep_last": True})
    preset = validate_preset(raw)
    assert len(preset.sinks) == 1 and preset.sinks[0].options == {"keep_last": True}


def test_missing_required_parts_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError) as info:
        validate_preset({"version": 1})
    assert set(info.value.fields) == {"source", "sink"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmodel: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_preset(bad)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_preset(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be 1|<= 1"):
        validate_preset(dict(DEFAULT_PRESET, version=2))


def test_preflight_reports_unavailable_transport():
    preset = validate_preset(dict(DEFAULT_PRESET, source={"kind": "spout"},
                                      sink={"kind": "null"}))
    import sys

    if sys.platform == "win32":
        pytest.skip("Spout may be available on Windows")
    with pytest.raises(ConfigError) as info:
        preflight(preset)
    assert info.value.fields == ["source.kind"]


def test_relative_paths_resolve_against_preset_folder(tmp_path):
    preset = load_preset(_write(tmp_path, DEFAULT_PRESET))
    assert resolve_relative(preset, "midi/x.yaml") == tmp_path / "midi/x.yaml"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_presets_validate(name):
    preset = load_preset(ROOT / "presets" / f"{name}.yaml")
    assert preset.version == 1


def test_docs_presets_md_matches_schema():
    committed = (ROOT / "docs" / "presets.md").read_text(encoding="utf-8")
    assert committed == render_preset_docs(), \
        "docs/presets.md is stale: run `python -m bridge.preset_docs > docs/presets.md`"


def test_output_formats_match_pixel_formats():
    from bridge.config import OUTPUT_FORMATS
    from bridge.frame import PixelFormat

    assert set(OUTPUT_FORMATS) == {p.value for p in PixelFormat}


def test_preflight_checks_the_midi_mapping_before_any_model_loads(tmp_path):
    preset = validate_preset(dict(DEFAULT_PRESET, sink={"kind": "null"},
                                  midi={"enabled": True, "mapping": "missing.yaml"}))
    with pytest.raises(ConfigError) as info:
        preflight(preset)
    assert info.value.fields == ["midi.mapping"]


def test_preflight_refuses_remote_control_without_authentication():
    preset = validate_preset(dict(DEFAULT_PRESET, sink={"kind": "null"},
                                  control={"command_endpoint": "tcp://0.0.0.0:5555",
                                           "allow_remote": True}))
    with pytest.raises(ConfigError) as info:
        preflight(preset)
    assert info.value.fields == ["control.command_endpoint"]
    assert "authentication" in str(info.value)


def test_curve_key_paths_resolve_against_the_preset_folder(tmp_path, monkeypatch):
    import zmq.auth

    keys = tmp_path / "keys"
    clients = keys / "clients"
    clients.mkdir(parents=True)
    _, secret = zmq.auth.create_certificates(str(keys), "server")
    zmq.auth.create_certificates(str(clients), "client")
    path = _write(tmp_path, {"version": 1, "source": {"kind": "test_pattern"},
                             "sink": {"kind": "null"}, "control": {
        "command_endpoint": "tcp://0.0.0.0:5555", "event_endpoint": "tcp://0.0.0.0:5556",
        "allow_remote": True, "curve_secret_key_file": "keys/server.key_secret",
        "curve_authorized_keys_dir": "keys/clients"}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the preset, not to where serve was started
    preset = load_preset(path)
    options = control_options(preset)
    assert options["curve_secret_key_file"] == str(Path(secret))
    assert options["curve_authorized_keys_dir"] == str(clients)
    preflight(preset)  # the keys are found: no ConfigError
