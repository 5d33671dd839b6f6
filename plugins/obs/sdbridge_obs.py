"""sdbridge for OBS Studio (Tools → Scripts → +): steer a running `sdbridge serve` from a panel.

Thin obspython glue; all logic (and its tests) lives in sdbridge_obs_logic.py beside this file.
Needs pyzmq and pyyaml in the Python that OBS uses (see plugins/obs/README.md).
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import obspython as obs  # provided by OBS; this file only runs inside OBS

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))
import sdbridge_obs_logic as logic  # noqa: E402

for _path in logic.bootstrap_paths(_HERE):
    if _path not in sys.path:
        sys.path.append(_path)

from bridge.errors import SdbridgeError  # noqa: E402
from bridge.params import PARAMS_BY_NAME  # noqa: E402

_link: logic.DaemonLink | None = None
_panel: logic.PanelSettings | None = None
_endpoints: tuple[str, str, str] = ("", "", "")
_settings: Any = None  # OBS owns it; kept to show the status line in the panel
_status_line = ""
_was_connected: bool | None = None


def _log(level: int, text: str) -> None:
    obs.script_log(level, f"[sdbridge] {text}")


def _read_panel(settings: Any) -> logic.PanelSettings:
    return logic.PanelSettings(
        prompt=obs.obs_data_get_string(settings, "prompt"),
        negative_prompt=obs.obs_data_get_string(settings, "negative_prompt"),
        guidance_scale=obs.obs_data_get_double(settings, "guidance_scale"),
        delta=obs.obs_data_get_double(settings, "delta"),
        strength=obs.obs_data_get_string(settings, "strength"),
        seed=obs.obs_data_get_int(settings, "seed"),
        similarity_filter=obs.obs_data_get_bool(settings, "similarity_filter"),
        paused=obs.obs_data_get_bool(settings, "paused"),
    )


def _resync(steps: int) -> dict[str, Any]:
    return logic.changes_between(None, _panel, steps) if _panel is not None else {}


def _restart_link(settings: Any) -> None:
    global _link, _endpoints
    endpoints = (obs.obs_data_get_string(settings, "command_endpoint"),
                 obs.obs_data_get_string(settings, "event_endpoint"),
                 obs.obs_data_get_string(settings, "token"))
    if _link is not None and endpoints == _endpoints:
        return
    if _link is not None:
        _link.stop()
    _endpoints = endpoints
    _link = logic.DaemonLink(endpoints[0], endpoints[1], token=endpoints[2] or None, resync=_resync)
    _link.start()


# -- OBS script API ------------------------------------------------------------------------------

def script_description() -> str:
    return ("<b>sdbridge</b>: live StreamDiffusion control.<br>Start the daemon first "
            "(<code>sdbridge serve --preset ...</code>), then change the prompt here.")


def script_defaults(settings: Any) -> None:
    d = logic.PanelSettings()
    obs.obs_data_set_default_string(settings, "prompt", d.prompt)
    obs.obs_data_set_default_string(settings, "negative_prompt", d.negative_prompt)
    obs.obs_data_set_default_double(settings, "guidance_scale", d.guidance_scale)
    obs.obs_data_set_default_double(settings, "delta", d.delta)
    obs.obs_data_set_default_string(settings, "strength", d.strength)
    obs.obs_data_set_default_int(settings, "seed", d.seed)
    obs.obs_data_set_default_bool(settings, "similarity_filter", d.similarity_filter)
    obs.obs_data_set_default_bool(settings, "paused", False)
    obs.obs_data_set_default_string(settings, "command_endpoint", "tcp://127.0.0.1:5555")
    obs.obs_data_set_default_string(settings, "event_endpoint", "tcp://127.0.0.1:5556")
    obs.obs_data_set_default_string(settings, "output_kind", "ndi")
    obs.obs_data_set_default_string(settings, "ndi_name",
                                    logic.ndi_source_name(socket.gethostname(), "sdbridge"))
    obs.obs_data_set_default_string(settings, "preview_url", "http://127.0.0.1:8090/")


def _slider(props: Any, name: str, label: str, step: float) -> None:
    spec = PARAMS_BY_NAME[name]
    obs.obs_properties_add_float_slider(props, name, label, spec.minimum, spec.maximum, step)


def script_properties() -> Any:
    props = obs.obs_properties_create()
    obs.obs_properties_add_text(props, "status", "Status", obs.OBS_TEXT_INFO)
    obs.obs_properties_add_button(props, "refresh", "Refresh status", lambda *_: True)
    obs.obs_properties_add_text(props, "prompt", "Prompt", obs.OBS_TEXT_MULTILINE)
    obs.obs_properties_add_text(props, "negative_prompt", "Negative prompt", obs.OBS_TEXT_MULTILINE)
    _slider(props, "guidance_scale", "Guidance scale", 0.05)
    _slider(props, "delta", "Delta (RCFG)", 0.05)
    strength = obs.obs_properties_add_list(props, "strength", "Strength", obs.OBS_COMBO_TYPE_LIST,
                                           obs.OBS_COMBO_FORMAT_STRING)
    for name in logic.STRENGTHS:
        obs.obs_property_list_add_string(strength, name, name)
    obs.obs_properties_add_int(props, "seed", "Seed", 0, 2**31 - 1, 1)
    obs.obs_properties_add_bool(props, "similarity_filter", "Skip near-static frames (similarity filter)")
    obs.obs_properties_add_bool(props, "paused", "Pause")

    out = obs.obs_properties_create()
    kind = obs.obs_properties_add_list(out, "output_kind", "Add as", obs.OBS_COMBO_TYPE_LIST,
                                       obs.OBS_COMBO_FORMAT_STRING)
    obs.obs_property_list_add_string(kind, "NDI source (DistroAV)", "ndi")
    obs.obs_property_list_add_string(kind, "Browser source (preview page)", "browser")
    obs.obs_properties_add_text(out, "ndi_name", "NDI source name", obs.OBS_TEXT_DEFAULT)
    obs.obs_properties_add_text(out, "preview_url", "Preview page URL", obs.OBS_TEXT_DEFAULT)
    obs.obs_properties_add_button(out, "add_output", "Add output to current scene", _add_output)
    status_src = obs.obs_properties_add_list(out, "status_source", "Show status in text source",
                                             obs.OBS_COMBO_TYPE_EDITABLE, obs.OBS_COMBO_FORMAT_STRING)
    obs.obs_property_list_add_string(status_src, "(none)", "")
    sources = obs.obs_enum_sources()
    if sources is not None:
        for source in sources:
            if obs.obs_source_get_unversioned_id(source) in ("text_gdiplus", "text_ft2_source"):
                name = obs.obs_source_get_name(source)
                obs.obs_property_list_add_string(status_src, name, name)
        obs.source_list_release(sources)
    obs.obs_properties_add_group(props, "output", "Output", obs.OBS_GROUP_NORMAL, out)

    conn = obs.obs_properties_create()
    obs.obs_properties_add_text(conn, "command_endpoint", "Command endpoint", obs.OBS_TEXT_DEFAULT)
    obs.obs_properties_add_text(conn, "event_endpoint", "Event endpoint", obs.OBS_TEXT_DEFAULT)
    obs.obs_properties_add_text(conn, "token", "Token (remote daemons)", obs.OBS_TEXT_PASSWORD)
    obs.obs_properties_add_group(props, "connection", "Connection", obs.OBS_GROUP_NORMAL, conn)
    return props


def script_load(settings: Any) -> None:
    global _settings, _panel
    _settings = settings
    _panel = _read_panel(settings)
    _restart_link(settings)
    pause = logic.pause_command(None, _panel)
    if pause and _link is not None:
        _link.request_pause(pause)
    obs.timer_add(_tick, 1000)


def script_update(settings: Any) -> None:
    global _settings, _panel
    _settings = settings
    _restart_link(settings)
    new = _read_panel(settings)
    assert _link is not None
    try:
        _link.submit(logic.changes_between(_panel, new, _link.steps()))
    except SdbridgeError as exc:
        _link.refuse(str(exc))
    pause = logic.pause_command(_panel, new)
    if pause:
        _link.request_pause(pause)
    _panel = new


def script_unload() -> None:
    obs.timer_remove(_tick)
    if _link is not None:
        _link.stop()


# -- timer and buttons ---------------------------------------------------------------------------

def _tick() -> None:
    global _status_line, _was_connected
    if _link is None:
        return
    status = _link.status()
    line = logic.format_status(status)
    if status.connected != _was_connected:
        _log(obs.LOG_INFO, line)
        _was_connected = status.connected
    if line == _status_line:
        return
    _status_line = line
    if _settings is not None:
        obs.obs_data_set_string(_settings, "status", line)
        target = obs.obs_data_get_string(_settings, "status_source")
        if target:
            _set_text_source(target, line)


def _set_text_source(name: str, text: str) -> None:
    source = obs.obs_get_source_by_name(name)
    if source is None:
        return
    data = obs.obs_data_create()
    obs.obs_data_set_string(data, "text", text)
    obs.obs_source_update(source, data)
    obs.obs_data_release(data)
    obs.obs_source_release(source)


def _add_output(props: Any, prop: Any) -> bool:
    params = (_link.status().state.get("params") or {}) if _link is not None else {}
    try:
        kind, values = logic.output_source(
            obs.obs_data_get_string(_settings, "output_kind"),
            ndi_name=obs.obs_data_get_string(_settings, "ndi_name"),
            preview_url=obs.obs_data_get_string(_settings, "preview_url"),
            width=int(params.get("width", 512)), height=int(params.get("height", 512)))
    except SdbridgeError as exc:
        _log(obs.LOG_WARNING, str(exc))
        return False
    if obs.obs_source_get_display_name(kind) is None:
        _log(obs.LOG_WARNING, f"OBS has no '{kind}' source type: install DistroAV for NDI "
                              "(distroav.org), or choose the Browser source")
        return False
    name = logic.OUTPUT_SOURCE_NAMES[obs.obs_data_get_string(_settings, "output_kind")]
    source = obs.obs_get_source_by_name(name)
    if source is None:
        data = obs.obs_data_create_from_json(json.dumps(values))
        source = obs.obs_source_create(kind, name, data, None)
        obs.obs_data_release(data)
    scene_source = obs.obs_frontend_get_current_scene()
    scene = obs.obs_scene_from_source(scene_source)
    obs.obs_scene_add(scene, source)
    obs.obs_source_release(scene_source)
    obs.obs_source_release(source)
    _log(obs.LOG_INFO, f"added '{name}' ({kind}) to the current scene")
    return False
