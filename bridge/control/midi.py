"""MIDI adapter (mido): a YAML mapping turns CCs and notes into the same target commands.

Mapping file (``presets/midi/*.yaml``, documented in docs/control-protocol.md)::

    version: 1
    channel: any              # or 1..16
    controls:                 # CC -> parameter
      - {cc: 70, param: guidance_scale, range: [0.0, 3.0], curve: linear}
      - {cc: 76, param: t_index_list, index: 0, range: [10, 40]}   # one step of the list
      - {cc: 77, blend: ["a forest", "a city at night"]}           # crossfade two prompts
    notes:                    # note-on -> action
      - {note: 36, prompt: "a watercolour painting"}
      - {note: 38, set: {prompt: "neon", seed: 7}}
      - {note: 48, action: pause_toggle}                         # or pause / resume

Curves map the CC value x = value/127 to the range: ``linear`` x, ``exp`` (100^x - 1)/99
(fine control near the low end), ``log`` log(1 + 99x)/log(100) (fine control near the high
end). Boolean parameters switch on at CC >= 64. :class:`MidiMapper` is pure (message in,
action out); :class:`MidiAdapter` applies actions to a ControlTarget and opens the port only
when it exists.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import yaml

from bridge.control.target import ControlTarget
from bridge.errors import (ConfigError, Problem, RuntimeMissingError, SdbridgeError,
                           SourceNotFoundError)
from bridge.params import PARAMS_BY_NAME, validate_changes

log = logging.getLogger(__name__)

CURVES = ("linear", "exp", "log")
NOTE_ACTIONS = ("pause_toggle", "pause", "resume")
CC_TYPES = ("float", "int", "seed", "bool", "int_list")
MAPPING_VERSION = 1
INSTALL_HINT = "pip install python-rtmidi (or: pip install 'sdbridge[midi]')"
_SEED_MAX = 2**63 - 1


def apply_curve(curve: str, x: float) -> float:
    """Map x in 0..1 onto 0..1 along ``curve``."""
    if curve == "exp":
        return (100.0 ** x - 1.0) / 99.0
    if curve == "log":
        return math.log1p(99.0 * x) / math.log(100.0)
    return x


@dataclass(frozen=True)
class CcControl:
    cc: int
    param: str  # "prompt" for blends
    low: float = 0.0
    high: float = 1.0
    curve: str = "linear"
    index: int | None = None  # element of an int_list parameter
    blend: tuple[str, str] | None = None


@dataclass(frozen=True)
class NoteBinding:
    note: int
    action: str  # "set" | "pause_toggle" | "pause" | "resume"
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MidiMapping:
    controls: dict[int, CcControl]
    notes: dict[int, NoteBinding]
    channel: int | None = None  # 0-based as mido counts; None = any
    name: str = ""


@dataclass(frozen=True)
class MidiAction:
    kind: Literal["set", "pause", "resume", "pause_toggle"]
    changes: dict[str, Any] = field(default_factory=dict)


# -------------------------------------------------------------------- loading
def load_mapping(path: str | Path) -> MidiMapping:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(Problem("midi.mapping", str(path), "file not found",
                                  "point to a YAML file such as presets/midi/generic-8-knob.yaml")) from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(Problem("midi.mapping", str(path), f"not valid YAML: {exc}",
                                  "fix the YAML syntax")) from exc
    return parse_mapping(data, name=path.stem)


def parse_mapping(data: Any, *, name: str = "") -> MidiMapping:
    """Validate a whole mapping; every problem is reported at once (field, value, fix)."""
    problems: list[Problem] = []
    if not isinstance(data, dict):
        raise ConfigError(Problem("mapping", data, "must be a YAML mapping",
                                  "start with version: 1, controls: [...], notes: [...]"), context=name)
    for key in sorted(set(data) - {"version", "name", "channel", "controls", "notes"}):
        problems.append(Problem(str(key), data[key], "unknown key",
                                "use version, name, channel, controls, notes"))
    if data.get("version", MAPPING_VERSION) != MAPPING_VERSION:
        problems.append(Problem("version", data.get("version"), "unsupported mapping version",
                                f"set version: {MAPPING_VERSION}"))
    channel = _parse_channel(data.get("channel", "any"), problems)
    controls: dict[int, CcControl] = {}
    for i, item in enumerate(_as_list(data.get("controls", []), "controls", problems)):
        control = _parse_control(f"controls[{i}]", item, problems)
        if control is not None:
            if control.cc in controls:
                problems.append(Problem(f"controls[{i}].cc", control.cc, "CC mapped twice",
                                        "map every CC number once"))
            controls[control.cc] = control
    notes: dict[int, NoteBinding] = {}
    for i, item in enumerate(_as_list(data.get("notes", []), "notes", problems)):
        binding = _parse_note(f"notes[{i}]", item, problems)
        if binding is not None:
            if binding.note in notes:
                problems.append(Problem(f"notes[{i}].note", binding.note, "note mapped twice",
                                        "map every note number once"))
            notes[binding.note] = binding
    if problems:
        raise ConfigError(problems, context=f"MIDI mapping {name}".strip())
    return MidiMapping(controls, notes, channel, str(data.get("name", name)))


def _as_list(value: Any, field_name: str, problems: list[Problem]) -> list[Any]:
    if isinstance(value, list):
        return value
    problems.append(Problem(field_name, value, "must be a list", f"write {field_name}: [...]"))
    return []


def _parse_channel(value: Any, problems: list[Problem]) -> int | None:
    if value in ("any", None):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 16:
        return value - 1
    problems.append(Problem("channel", value, "must be 1..16 or any", "write channel: any"))
    return None


def _midi_number(where: str, value: Any, problems: list[Problem]) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 127:
        return value
    problems.append(Problem(where, value, "must be a MIDI number 0..127",
                            "use the number your controller sends (see a MIDI monitor)"))
    return None


def _parse_control(where: str, item: Any, problems: list[Problem]) -> CcControl | None:
    if not isinstance(item, dict):
        problems.append(Problem(where, item, "must be a mapping", "write {cc: 70, param: delta}"))
        return None
    count = len(problems)
    extra = set(item) - {"cc", "param", "range", "curve", "index", "blend"}
    for key in sorted(extra):
        problems.append(Problem(f"{where}.{key}", item[key], "unknown key",
                                "use cc, param, range, curve, index or blend"))
    cc = _midi_number(f"{where}.cc", item.get("cc"), problems)
    curve = item.get("curve", "linear")
    if curve not in CURVES:
        problems.append(Problem(f"{where}.curve", curve, "unknown curve", f"use one of {CURVES}"))
    if "blend" in item:
        blend = item["blend"]
        if "param" in item:
            problems.append(Problem(f"{where}.param", item["param"], "blend sets the prompt",
                                    "remove param from a blend control"))
        if not (isinstance(blend, list) and len(blend) == 2 and all(isinstance(t, str) for t in blend)):
            problems.append(Problem(f"{where}.blend", blend, "must be two prompt strings",
                                    'write blend: ["a forest", "a city"]'))
            return None
        return None if len(problems) > count or cc is None else CcControl(
            cc, "prompt", 0.0, 1.0, curve, blend=(blend[0], blend[1]))
    param = item.get("param")
    spec = PARAMS_BY_NAME.get(param) if isinstance(param, str) else None
    if spec is None or spec.type not in CC_TYPES or not spec.live:
        numeric = [p.name for p in PARAMS_BY_NAME.values() if p.type in CC_TYPES and p.live]
        problems.append(Problem(f"{where}.param", param, "not a live numeric/boolean parameter",
                                f"use one of: {', '.join(numeric)} (or blend: [a, b])"))
        return None
    index = item.get("index")
    if spec.type == "int_list":
        if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < 8):
            problems.append(Problem(f"{where}.index", index, f"{param} needs the element index",
                                    "add index: 0 (first step) .. 7"))
    elif index is not None:
        problems.append(Problem(f"{where}.index", index, "only list parameters take an index",
                                "remove index"))
    low, high = _parse_range(where, spec.name, item.get("range"), problems)
    if len(problems) > count or cc is None:
        return None
    return CcControl(cc, spec.name, low, high, curve, index=index)


def _parse_range(where: str, param: str, value: Any, problems: list[Problem]) -> tuple[float, float]:
    spec = PARAMS_BY_NAME[param]
    if spec.type == "bool":
        if value is not None:
            problems.append(Problem(f"{where}.range", value, "boolean parameters switch at CC 64",
                                    "remove range"))
        return 0.0, 1.0
    lo_limit = spec.minimum if spec.minimum is not None else 0
    hi_limit = spec.maximum if spec.maximum is not None else _SEED_MAX
    if value is None:
        if spec.minimum is None or spec.maximum is None:
            problems.append(Problem(f"{where}.range", value, f"{param} needs an explicit range",
                                    "write range: [0, 127]"))
        return float(lo_limit), float(hi_limit)
    numbers = isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not numbers:
        problems.append(Problem(f"{where}.range", value, "must be [low, high]", "write range: [0.0, 3.0]"))
        return 0.0, 1.0
    if any(v < lo_limit or v > hi_limit for v in value):
        problems.append(Problem(f"{where}.range", value, f"outside {param}'s {lo_limit:g}..{hi_limit:g}",
                                f"keep both ends within {lo_limit:g}..{hi_limit:g}"))
    return float(value[0]), float(value[1])


def _parse_note(where: str, item: Any, problems: list[Problem]) -> NoteBinding | None:
    if not isinstance(item, dict):
        problems.append(Problem(where, item, "must be a mapping", 'write {note: 36, prompt: "..."}'))
        return None
    count = len(problems)
    note = _midi_number(f"{where}.note", item.get("note"), problems)
    kinds = [k for k in ("prompt", "set", "action") if k in item]
    for key in sorted(set(item) - {"note", "prompt", "set", "action"}):
        problems.append(Problem(f"{where}.{key}", item[key], "unknown key", "use note + one of prompt, set, action"))
    if len(kinds) != 1:
        problems.append(Problem(where, item, "needs exactly one of prompt, set, action",
                                'e.g. {note: 36, prompt: "a fox"} or {note: 48, action: pause_toggle}'))
        return None
    kind = kinds[0]
    if kind == "action":
        if item["action"] not in NOTE_ACTIONS:
            problems.append(Problem(f"{where}.action", item["action"], "unknown action",
                                    f"use one of {NOTE_ACTIONS}"))
        binding = NoteBinding(note or 0, str(item["action"]))
    else:
        changes = {"prompt": item["prompt"]} if kind == "prompt" else item["set"]
        try:
            binding = NoteBinding(note or 0, "set", validate_changes(changes))
        except ConfigError as exc:
            problems.extend(Problem(f"{where}.{kind}" + ("" if kind == "prompt" else f".{p.field}"),
                                    p.value, p.message, p.fix) for p in exc.problems)
            return None
    return None if len(problems) > count or note is None else binding


# --------------------------------------------------------------------- mapping
class MidiMapper:
    """Pure: a mido message (+ the current params, for list elements) -> a MidiAction or None."""

    def __init__(self, mapping: MidiMapping) -> None:
        self.mapping = mapping

    def handle(self, msg: Any, params: Mapping[str, Any] | None = None) -> MidiAction | None:
        channel = getattr(msg, "channel", None)
        if self.mapping.channel is not None and channel != self.mapping.channel:
            return None
        if msg.type == "control_change":
            control = self.mapping.controls.get(msg.control)
            return None if control is None else MidiAction("set", self._cc_changes(control, msg.value, params))
        if msg.type == "note_on" and msg.velocity > 0:  # note_on velocity 0 is a note-off
            binding = self.mapping.notes.get(msg.note)
            if binding is None:
                return None
            if binding.action == "set":
                return MidiAction("set", dict(binding.changes))
            return MidiAction(binding.action)  # type: ignore[arg-type]
        return None

    @staticmethod
    def _cc_changes(control: CcControl, value: int, params: Mapping[str, Any] | None) -> dict[str, Any]:
        x = apply_curve(control.curve, max(0, min(127, value)) / 127.0)
        if control.blend is not None:
            return {"prompt": [[control.blend[0], 1.0 - x], [control.blend[1], x]]}
        spec = PARAMS_BY_NAME[control.param]
        if spec.type == "bool":
            return {control.param: value >= 64}
        scaled = control.low + (control.high - control.low) * x
        if spec.type == "float":
            return {control.param: round(scaled, 6)}
        number = int(round(scaled))
        if spec.type == "int_list":
            current = list((params or {}).get(control.param) or PARAMS_BY_NAME[control.param].default)
            assert control.index is not None
            if control.index >= len(current):
                raise ConfigError(Problem(f"{control.param}[{control.index}]", number,
                                          f"the list has only {len(current)} steps",
                                          "map an index that exists in the preset's t_index_list"))
            current[control.index] = number
            return {control.param: current}
        return {control.param: number}


class MidiAdapter:
    """Applies mapped MIDI messages to a ControlTarget; errors are logged, never raised."""

    def __init__(self, target: ControlTarget, mapping: MidiMapping) -> None:
        self.target = target
        self.mapper = MidiMapper(mapping)
        self.errors = 0
        self._port: Any = None

    def feed(self, msg: Any) -> MidiAction | None:
        """Handle one message (mido calls this from its backend thread)."""
        try:
            action = self.mapper.handle(msg, self.target.get_state().get("params"))
            if action is not None:
                self._apply(action)
            return action
        except SdbridgeError as exc:
            self.errors += 1
            log.warning("MIDI %s refused: %s", msg, exc)
        except Exception:  # the backend thread must survive anything a controller sends
            self.errors += 1
            log.exception("MIDI %s failed", msg)
        return None

    def _apply(self, action: MidiAction) -> None:
        if action.kind == "set":
            self.target.set(action.changes)
        elif action.kind == "pause" or (action.kind == "pause_toggle"
                                        and not self.target.get_state().get("paused")):
            self.target.pause()
        else:
            self.target.resume()

    def open(self, port: str | None = None) -> str:
        """Open the input port (``None`` = first); returns its name."""
        self._port = open_midi_input(port, self.feed)
        return str(self._port.name)

    def close(self) -> None:
        if self._port is not None:
            self._port.close()
            self._port = None


# ------------------------------------------------------------------------ port
def list_input_ports() -> list[str]:
    """Input port names; RuntimeMissingError when no usable MIDI backend is installed."""
    try:
        import mido

        return list(mido.get_input_names())
    except ImportError as exc:
        raise RuntimeMissingError(f"no MIDI backend: {exc}", fix=INSTALL_HINT) from exc
    except Exception as exc:  # rtmidi raises its own SystemError when ALSA/CoreMIDI is missing
        raise RuntimeMissingError(
            f"MIDI backend unusable: {exc}",
            fix=f"{INSTALL_HINT}; on Linux the ALSA sequencer must exist "
                "(/dev/snd/seq: sudo modprobe snd-seq; in containers pass --device /dev/snd)") from exc


def choose_port(requested: str | None, available: list[str]) -> str:
    """Exact name, else a unique case-insensitive substring; None = first port."""
    listing = ", ".join(repr(n) for n in available) or "none"
    if not available:
        raise SourceNotFoundError("no MIDI input ports found",
                                  fix="plug in the controller (and check it shows in a MIDI monitor)")
    if requested is None:
        return available[0]
    if requested in available:
        return requested
    matches = [n for n in available if requested.lower() in n.lower()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(Problem("midi.port", requested, f"matches several ports: {listing}",
                                  "use a longer part of the name"))
    raise SourceNotFoundError(f"MIDI input port {requested!r} not found; available: {listing}",
                              fix="set midi.port to one of the available names (substring is enough)")


def open_midi_input(requested: str | None, callback: Callable[[Any], None]) -> Any:
    """Open an input port only if it is present; errors list what is available."""
    import mido

    name = choose_port(requested, list_input_ports())
    try:
        return mido.open_input(name, callback=callback)
    except Exception as exc:
        raise RuntimeMissingError(f"cannot open MIDI port {name!r}: {exc}",
                                  fix="close other programs holding the port, then retry") from exc
