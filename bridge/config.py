"""Preset files: the YAML schema ``sdbridge serve --preset`` reads, validated all at once.

A preset is versioned (``version: 1``) and has these parts:

* pipeline parameters at the top level (``prompt``, ``guidance_scale``, ``t_index_list``…),
  named and ranged by :mod:`bridge.params` — the one parameter schema, never repeated here;
* ``model``, ``control``, ``osc`` and ``midi`` sections described by :data:`SECTIONS`;
* ``fit`` and ``fallback_output`` (how frames are resized, what is sent while the pipeline
  cannot produce output);
* ``source`` (one mapping) and ``sink`` (a mapping or a list): ``kind`` plus that transport's
  options, checked against the transport class's constructor.

``load_preset`` reports every problem (unknown keys with a did-you-mean, wrong types, values
out of range, unknown transports) in one :class:`ConfigError`, before any model loads.
``docs/presets.md`` is generated from this module (``render_preset_docs``) and a test keeps
it in sync.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from bridge.errors import ConfigError, Problem
from bridge.params import PARAMS, PARAMS_BY_NAME, validate_changes
from bridge.preset_overrides import apply_overrides, parse_override

__all__ = ["ConfigError", "Preset", "apply_overrides", "load_preset", "parse_override",
           "preflight", "validate_preset"]

PRESET_VERSION = 1
MAX_PRESET_BYTES = 1 << 20
FIT_MODES = ("crop", "letterbox", "stretch")
FALLBACK_OUTPUTS = ("passthrough", "last", "black")
ACCELERATIONS = ("none", "compile", "onnxruntime", "tensorrt")
OUTPUT_FORMATS = ("BGRA", "RGBA", "BGRX", "RGBX", "RGB", "BGR", "UYVY")  # bridge.frame.PixelFormat
DTYPES = ("auto", "float16", "bfloat16", "float32")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class Opt:
    """One option of a preset section: name, type, default, range and a one-line description."""

    name: str
    type: str  # "str" | "float" | "int" | "bool" | "enum" | "endpoint"
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False

    def describe_type(self) -> str:
        text = " | ".join(self.choices) if self.choices else self.type
        if self.minimum is not None or self.maximum is not None:
            text += f" in {'' if self.minimum is None else f'{self.minimum:g}'}.." \
                    f"{'' if self.maximum is None else f'{self.maximum:g}'}"
        return text + (" or null" if self.nullable else "")


SECTIONS: dict[str, tuple[Opt, ...]] = {
    "model": (
        Opt("id", "str", "tiny", "Hugging Face id, local diffusers folder, or `tiny` (built-in "
            "random-weight model for tests and CPU demos)."),
        Opt("lcm_lora", "str", None, "LCM-LoRA id or path fused into the UNet (SD 1.5 / SDXL "
            "base models); null for none.", nullable=True),
        Opt("lcm_lora_scale", "float", 1.0, "Weight of the fused LCM-LoRA.", minimum=0.0,
            maximum=2.0),
        Opt("tiny_vae", "str", None, "Tiny autoencoder id or path (e.g. `madebyollin/taesd`) "
            "replacing the full VAE; null keeps the model's VAE.", nullable=True),
        Opt("dtype", "enum", "auto", "Weights dtype; auto = float16 on CUDA, float32 on CPU.",
            choices=DTYPES),
        Opt("device", "enum", "auto", "auto = cuda when a GPU is usable, else cpu.",
            choices=DEVICES),
        Opt("step_kind", "enum", "auto", "Denoising step: LCM boundary scalings or plain turbo "
            "x0; auto = turbo when the id contains `turbo`.", choices=("auto", "lcm", "turbo")),
        Opt("family", "enum", "auto", "sd or sdxl; auto = detected from the weights.",
            choices=("auto", "sd", "sdxl")),
        Opt("threads", "int", 0, "torch CPU threads (process-wide); 0 = torch's default (one "
            "per core). 1 is much steadier when other programs load the CPU.", minimum=0,
            maximum=256),
        Opt("acceleration", "enum", "none", "How UNet and VAE run: eager torch, torch.compile, "
            "ONNX Runtime or TensorRT engines.", choices=ACCELERATIONS),
        Opt("fallback", "enum", None, "Acceleration to use instead when the requested one is not "
            "available here (logged as a warning and reported in state); null = fail with an "
            "error.", choices=ACCELERATIONS, nullable=True),
    ),
    "control": (
        Opt("enabled", "bool", True, "Run the ZeroMQ command + event sockets."),
        Opt("command_endpoint", "endpoint", "tcp://127.0.0.1:5555", "REP socket for commands."),
        Opt("event_endpoint", "endpoint", "tcp://127.0.0.1:5556", "PUB socket for state and "
            "stats events."),
        Opt("allow_remote", "bool", False, "Allow binding to a non-loopback address (requires "
            "token or CURVE keys)."),
        Opt("token", "str", None, "Shared secret every command must carry (`\"token\"` field); "
            "null for none.", nullable=True),
        Opt("curve_secret_key_file", "str", None, "Path of the server's ZeroMQ CURVE secret key file "
            "(zmq.auth format); null disables CURVE.", nullable=True),
        Opt("curve_authorized_keys_dir", "str", None, "Folder of the client public key files "
            "allowed to connect; needed together with curve_secret_key_file.", nullable=True),
        Opt("stats_interval", "float", 0.5, "Seconds between `stats` events (1-2 Hz).",
            minimum=0.5, maximum=1.0),
        Opt("max_message_bytes", "int", 65536, "Largest accepted command; bigger ones are "
            "refused.", minimum=1024, maximum=16 << 20),
    ),
    "osc": (
        Opt("enabled", "bool", False, "Listen for OSC messages (python-osc)."),
        Opt("listen_host", "str", "127.0.0.1", "Address the OSC server binds."),
        Opt("listen_port", "int", 9000, "UDP port of the OSC server.", minimum=1,
            maximum=65535),
        Opt("target_host", "str", None, "Where state changes are echoed as OSC; null = no echo.",
            nullable=True),
        Opt("target_port", "int", 9001, "UDP port of the echo target.", minimum=1,
            maximum=65535),
        Opt("allow_remote", "bool", False, "Listen on a non-loopback address (OSC has no "
            "authentication: trusted networks only)."),
    ),
    "midi": (
        Opt("enabled", "bool", False, "Read a MIDI input port (mido)."),
        Opt("port", "str", None, "Input port name (substring match); null = first port.",
            nullable=True),
        Opt("mapping", "str", "midi/generic-8-knob.yaml", "YAML mapping of CC/notes to "
            "parameters (relative paths resolve against the preset's folder)."),
    ),
    "": (
        Opt("version", "int", PRESET_VERSION, f"Schema version; must be {PRESET_VERSION}.",
            minimum=PRESET_VERSION, maximum=PRESET_VERSION),
        Opt("fit", "enum", "crop", "How input frames of another aspect ratio reach width×height: "
            "crop the centre, letterbox with black bars, or stretch.", choices=FIT_MODES),
        Opt("fallback_output", "enum", "passthrough", "What sinks get while the pipeline fails, "
            "rebuilds or has no source: the input resized (passthrough), the last good output "
            "(last) or black.", choices=FALLBACK_OUTPUTS),
        Opt("output_format", "enum", "BGRA", "Pixel format of output frames (BGRA is what NDI, "
            "Spout and OBS use natively).", choices=OUTPUT_FORMATS),
    ),
}
TRANSPORT_KEYS = ("source", "sink")
TOP_LEVEL_KEYS = tuple(o.name for o in SECTIONS[""]) + tuple(p.name for p in PARAMS) + \
    tuple(s for s in SECTIONS if s) + TRANSPORT_KEYS


@dataclass(frozen=True)
class ModelConfig:
    id: str = "tiny"
    lcm_lora: str | None = None
    lcm_lora_scale: float = 1.0
    tiny_vae: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    step_kind: str = "auto"
    family: str = "auto"
    threads: int = 0
    acceleration: str = "none"
    fallback: str | None = None


@dataclass(frozen=True)
class ControlConfig:
    enabled: bool = True
    command_endpoint: str = "tcp://127.0.0.1:5555"
    event_endpoint: str = "tcp://127.0.0.1:5556"
    allow_remote: bool = False
    token: str | None = None
    curve_secret_key_file: str | None = None
    curve_authorized_keys_dir: str | None = None
    stats_interval: float = 0.5
    max_message_bytes: int = 65536


@dataclass(frozen=True)
class OscConfig:
    enabled: bool = False
    listen_host: str = "127.0.0.1"
    listen_port: int = 9000
    target_host: str | None = None
    target_port: int = 9001
    allow_remote: bool = False


@dataclass(frozen=True)
class MidiConfig:
    enabled: bool = False
    port: str | None = None
    mapping: str = "midi/generic-8-knob.yaml"


@dataclass(frozen=True)
class TransportConfig:
    kind: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Preset:
    """A validated preset. ``params`` holds every pipeline parameter (defaults filled in)."""

    params: dict[str, Any]
    model: ModelConfig = ModelConfig()
    source: TransportConfig = TransportConfig("test_pattern")
    sinks: tuple[TransportConfig, ...] = (TransportConfig("null"),)
    fit: str = "crop"
    fallback_output: str = "passthrough"
    output_format: str = "BGRA"
    control: ControlConfig = ControlConfig()
    osc: OscConfig = OscConfig()
    midi: MidiConfig = MidiConfig()
    version: int = PRESET_VERSION
    path: Path | None = None


_SECTION_TYPES = {"model": ModelConfig, "control": ControlConfig, "osc": OscConfig,
                  "midi": MidiConfig}

# The embedded default (`sdbridge demo`): test pattern -> tiny model -> shm + PNG files.
DEFAULT_PRESET: dict[str, Any] = {
    "version": 1,
    "model": {"id": "tiny", "device": "cpu", "dtype": "float32"},
    "width": 64, "height": 64,
    "prompt": "a watercolour painting of moving stripes",
    "t_index_list": [32, 45], "cfg_type": "self", "guidance_scale": 1.2,
    "source": {"kind": "test_pattern"},
    "sink": [{"kind": "shm", "name": "sdbridge-out"}],
}


def did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else f"use one of: {', '.join(options)}"


def _check_opt(opt: Opt, value: Any) -> tuple[Any, str | None]:
    if value is None:
        return None, None if opt.nullable else "must not be null"
    kind = opt.type
    if kind == "bool":
        return value, None if isinstance(value, bool) else "must be true or false"
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, f"must be a{'n integer' if kind == 'int' else ' number'}"
        if kind == "int" and not float(value).is_integer():
            return value, "must be an integer"
        value = int(value) if kind == "int" else float(value)
        if opt.minimum is not None and value < opt.minimum:
            return value, f"must be >= {opt.minimum:g}"
        if opt.maximum is not None and value > opt.maximum:
            return value, f"must be <= {opt.maximum:g}"
        return value, None
    if not isinstance(value, str) or not value:
        return value, "must be a non-empty string"
    if opt.choices and value not in opt.choices:
        return value, f"must be one of {', '.join(opt.choices)}"
    if kind == "endpoint" and not re.match(r"^(tcp|ipc|inproc)://.+", value):
        return value, "must be a ZeroMQ endpoint like tcp://127.0.0.1:5555"
    return value, None


def _section(name: str, raw: Any, problems: list[Problem]) -> dict[str, Any]:
    """Validate one section mapping against its options; returns only the valid values."""
    opts = {o.name: o for o in SECTIONS[name]}
    prefix = f"{name}." if name else ""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(Problem(name, raw, "must be a mapping", f"write `{name}:` with keys "
                                f"{', '.join(opts)} below it"))
        return {}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        opt = opts.get(key)
        if opt is None:
            problems.append(Problem(prefix + str(key), value, "unknown key", did_you_mean(key, opts)))
            continue
        clean, error = _check_opt(opt, value)
        if error:
            problems.append(Problem(prefix + key, value, error, f"expected {opt.describe_type()}"))
        else:
            values[key] = clean
    return values


def _transport(role: str, field_path: str, raw: Any, problems: list[Problem]) -> TransportConfig | None:
    from bridge.io.base import transport_entry, transport_kinds
    import bridge.io  # noqa: F401  (registers the transport kinds)

    if not isinstance(raw, Mapping):
        problems.append(Problem(field_path, raw, "must be a mapping with a `kind`",
                                f"e.g. {field_path}: {{kind: {'shm' if role == 'sink' else 'test_pattern'}}}"))
        return None
    kind = raw.get("kind")
    if kind is None and "kind" in raw:
        kind = "null"  # YAML reads `kind: null` as None; the only meaning is the null transport
    options = {str(k): v for k, v in raw.items() if k != "kind"}
    if kind not in transport_kinds():
        problems.append(Problem(f"{field_path}.kind", kind, "unknown transport kind",
                                did_you_mean(kind, transport_kinds())))
        return None
    entry = transport_entry(kind)
    class_name = entry.source_class if role == "source" else entry.sink_class
    if class_name is None:
        able = [k for k in transport_kinds()
                if getattr(transport_entry(k), f"{role}_class") is not None]
        problems.append(Problem(f"{field_path}.kind", kind, f"this transport cannot be a {role}",
                                f"use one of: {', '.join(able)}"))
        return None
    problems.extend(_check_transport_options(entry.module, class_name, field_path, options))
    return TransportConfig(kind, options)


def _check_transport_options(module_name: str, class_name: str, field_path: str,
                             options: dict[str, Any]) -> list[Problem]:
    """Match options to the transport constructor. A module that cannot be imported here
    (missing vendor package) is reported by ``preflight``, not as an option problem."""
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        params = inspect.signature(cls.__init__).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    names = [n for n, p in params.items() if n != "self" and p.kind in
             (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    problems = [Problem(f"{field_path}.{key}", value, "unknown option for this transport",
                        did_you_mean(key, names) if names else "this transport takes no options")
                for key, value in options.items() if key not in names]
    for name in names:
        if params[name].default is inspect.Parameter.empty and name not in options:
            problems.append(Problem(f"{field_path}.{name}", None, "required option missing",
                                    f"add `{name}:` under {field_path}"))
    return problems


def _sinks(raw: Any, problems: list[Problem]) -> tuple[TransportConfig, ...]:
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        problems.append(Problem("sink", raw, "needs at least one sink", "e.g. sink: {kind: shm}"))
    paths = ["sink"] if not isinstance(raw, list) else [f"sink.{i}" for i in range(len(items))]
    built = [_transport("sink", path, item, problems) for path, item in zip(paths, items)]
    return tuple(t for t in built if t is not None)


def validate_preset(raw: Any, *, path: Path | None = None) -> Preset:
    """Validate a preset mapping (already parsed YAML); raises ConfigError with every problem."""
    context = f"preset {path}" if path else "preset"
    if not isinstance(raw, Mapping):
        raise ConfigError(Problem("(root)", raw, "a preset must be a YAML mapping",
                                  "start from presets/cpu-demo.yaml"), context=context)
    problems: list[Problem] = []
    for key, value in raw.items():
        if key not in TOP_LEVEL_KEYS:
            problems.append(Problem(str(key), value, "unknown key", did_you_mean(key, TOP_LEVEL_KEYS)))
    if "version" not in raw:
        problems.append(Problem("version", None, "missing schema version",
                                f"add `version: {PRESET_VERSION}` at the top"))
    top = _section("", {k: raw[k] for k in raw if k in (o.name for o in SECTIONS[""])}, problems)
    sections = {name: _section(name, raw.get(name), problems) for name in _SECTION_TYPES}
    params = _params({k: raw[k] for k in raw if k in PARAMS_BY_NAME}, problems)
    source = None
    if "source" not in raw:
        problems.append(Problem("source", None, "missing source", "e.g. source: {kind: test_pattern}"))
    else:
        source = _transport("source", "source", raw["source"], problems)
    if "sink" not in raw:
        problems.append(Problem("sink", None, "missing sink", "e.g. sink: {kind: shm}"))
    sinks = _sinks(raw.get("sink"), problems)
    if problems:
        raise ConfigError(problems, context=context)
    return Preset(
        params=params, source=source or TransportConfig("test_pattern"), sinks=sinks, path=path,
        version=top.get("version", PRESET_VERSION), fit=top.get("fit", "crop"),
        fallback_output=top.get("fallback_output", "passthrough"),
        output_format=top.get("output_format", "BGRA"),
        **{name: cls(**sections[name]) for name, cls in _SECTION_TYPES.items()},
    )


def _params(raw: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    from bridge.params import default_params

    params = default_params()
    try:
        params.update(validate_changes(raw))
    except ConfigError as exc:
        problems.extend(exc.problems)
    return params


def read_preset_file(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    try:
        # Only regular, small files: a control client's load_preset must not make the daemon
        # read /dev/zero or a multi-GB file.
        if not file.is_file():
            raise ConfigError(Problem("--preset", str(path), "not a regular file",
                                      "pass a preset .yaml file, e.g. presets/cpu-demo.yaml"))
        if file.stat().st_size > MAX_PRESET_BYTES:
            raise ConfigError(Problem("--preset", str(path), f"larger than {MAX_PRESET_BYTES} bytes",
                                      "a preset is a short YAML file; check the path"))
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(Problem("--preset", str(path), "not UTF-8 text",
                                  "save the preset as UTF-8 YAML")) from exc
    except OSError as exc:
        raise ConfigError(Problem("--preset", str(path), f"cannot read: {exc.strerror}",
                                  "pass an existing preset file, e.g. presets/cpu-demo.yaml")) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(Problem("--preset", str(path), f"not valid YAML: {exc}",
                                  "fix the YAML syntax at the line shown")) from exc
    if not isinstance(raw, dict):
        raise ConfigError(Problem("--preset", str(path), "a preset must be a YAML mapping",
                                  "start from presets/cpu-demo.yaml"))
    return raw


def load_preset(path: str | Path | None, overrides: list[str] | None = None) -> Preset:
    """Read, override and validate a preset. ``path=None`` uses the embedded default."""
    raw = DEFAULT_PRESET if path is None else read_preset_file(path)
    raw = apply_overrides(raw, list(overrides or []))
    return validate_preset(raw, path=None if path is None else Path(path))


def preflight(preset: Preset) -> None:
    """Checks that need this machine (transport runtimes present); run before loading models."""
    from bridge.io.base import is_available

    problems = []
    pairs = [("source", preset.source)] + [(f"sink.{i}", s) for i, s in enumerate(preset.sinks)]
    for where, transport in pairs:
        status = is_available(transport.kind)
        if not status.available:
            problems.append(Problem(f"{where}.kind", transport.kind,
                                    f"not available on this machine: {status.reason}",
                                    "install its runtime (see docs/transports.md) or pick another kind"))
    if preset.control.enabled:  # non-loopback without auth, bad keys: refuse before loading
        from bridge.control.security import build_security

        options = control_options(preset)
        try:
            build_security({"command_endpoint": options["command_endpoint"],
                            "event_endpoint": options["event_endpoint"]},
                           allow_remote=options["allow_remote"],
                           curve_secret_key_file=options["curve_secret_key_file"],
                           curve_authorized_keys_dir=options["curve_authorized_keys_dir"],
                           token=options["token"])
        except ConfigError as exc:
            problems.extend(Problem(f"control.{p.field}", p.value, p.message, p.fix)
                            for p in exc.problems)
    if preset.midi.enabled:  # a broken mapping fails now, not after a minute of model loading
        from bridge.control.midi import load_mapping

        try:
            load_mapping(resolve_relative(preset, preset.midi.mapping))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems, context="preflight")


def control_options(preset: Preset) -> dict[str, Any]:
    """ControlServer keyword arguments from the preset, key paths resolved like every path."""
    options = {k: v for k, v in asdict(preset.control).items() if k != "enabled"}
    for key in ("curve_secret_key_file", "curve_authorized_keys_dir"):
        if options.get(key):
            options[key] = str(resolve_relative(preset, options[key]))
    return options


def resolve_relative(preset: Preset, value: str) -> Path:
    """Paths inside a preset resolve against the preset's folder."""
    path = Path(value).expanduser()
    if path.is_absolute() or preset.path is None:
        return path
    return preset.path.parent / path
