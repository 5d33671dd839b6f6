"""The one parameter schema: names, types, ranges, live-or-rebuild, descriptions.

It drives validation of presets and of control ``set`` commands, the generated control
protocol docs, the OSC address map and the plugins. Nothing else lists parameters.

``validate_changes`` checks a whole change set at once (all-or-nothing) and raises a
``ConfigError`` listing every problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from bridge.errors import ConfigError, Problem

NUM_LCM_STEPS = 50  # the 50-step LCM schedule t_index_list indexes into
CFG_TYPES = ("none", "full", "self", "initialize")
MODES = ("img2img", "txt2img")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str  # "str" | "float" | "int" | "bool" | "enum" | "int_list" | "prompt" | "seed"
    default: Any
    description: str
    live: bool = True  # False: changing it rebuilds the pipeline
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    multiple_of: int | None = None
    osc_type: str = ""  # OSC type tag for control surfaces ("" = not mapped; "i…" = N ints)

    def describe_range(self) -> str:
        if self.choices:
            return " | ".join(self.choices)
        if self.minimum is not None or self.maximum is not None:
            lo = "" if self.minimum is None else f"{self.minimum:g}"
            hi = "" if self.maximum is None else f"{self.maximum:g}"
            step = f", multiple of {self.multiple_of}" if self.multiple_of else ""
            return f"{lo}..{hi}{step}"
        return ""


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("prompt", "prompt", "a photo of a cat",
              "Prompt text, or a weighted list [[text, weight], ...] blended in embedding space.",
              osc_type="s"),
    ParamSpec("negative_prompt", "str", "",
              "Negative prompt (used by cfg_type full and initialize).", osc_type="s"),
    ParamSpec("guidance_scale", "float", 1.2,
              "Classifier-free guidance scale γ; 1.0 with cfg_type none disables guidance.",
              minimum=0.0, maximum=20.0, osc_type="f"),
    ParamSpec("delta", "float", 1.0,
              "RCFG virtual-negative strength δ (cfg_type self / initialize).",
              minimum=0.0, maximum=5.0, osc_type="f"),
    ParamSpec("seed", "seed", 2,
              "Noise seed, or a weighted list [[seed, weight], ...] blended.", osc_type="i"),
    ParamSpec("t_index_list", "int_list", [32, 45],
              "Denoising steps as indices 0..49 into the 50-step LCM schedule, ascending. Smaller = "
              "more change. Same length: live; other length: rebuild.",
              minimum=0, maximum=NUM_LCM_STEPS - 1, osc_type="i…"),
    ParamSpec("similarity_filter", "bool", False,
              "Skip the networks on near-static input (stochastic similarity filter).",
              osc_type="i"),
    ParamSpec("similarity_threshold", "float", 0.98,
              "Cosine similarity above which frames may be skipped (η < 1).",
              minimum=0.0, maximum=0.9999, osc_type="f"),
    ParamSpec("similarity_max_skip", "int", 10,
              "Never skip more than this many frames in a row.", minimum=0, maximum=1000,
              osc_type="i"),
    ParamSpec("cfg_type", "enum", "self", "Guidance: none, full CFG, RCFG self-negative, "
              "RCFG onetime-negative (initialize). Changes the UNet batch: rebuild.",
              live=False, choices=CFG_TYPES),
    ParamSpec("frame_buffer_size", "int", 1, "Frames per UNet batch F (B = n·F).", live=False,
              minimum=1, maximum=8),
    ParamSpec("width", "int", 512, "Processing width in pixels.", live=False, minimum=64,
              maximum=2048, multiple_of=8),
    ParamSpec("height", "int", 512, "Processing height in pixels.", live=False, minimum=64,
              maximum=2048, multiple_of=8),
    ParamSpec("mode", "enum", "img2img", "img2img transforms input frames; txt2img ignores them.",
              live=False, choices=MODES),
)

PARAMS_BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMS}
LIVE_PARAMS = tuple(p.name for p in PARAMS if p.live)
REBUILD_PARAMS = tuple(p.name for p in PARAMS if not p.live)


def default_params() -> dict[str, Any]:
    return {p.name: _copy(p.default) for p in PARAMS}


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_range(spec: ParamSpec, value: float) -> str | None:
    if spec.minimum is not None and value < spec.minimum:
        return f"must be >= {spec.minimum:g}"
    if spec.maximum is not None and value > spec.maximum:
        return f"must be <= {spec.maximum:g}"
    if spec.multiple_of and int(value) % spec.multiple_of:
        return f"must be a multiple of {spec.multiple_of}"
    return None


def _coerce_float(spec: ParamSpec, value: Any) -> tuple[Any, str | None]:
    if not _is_number(value):
        return value, "must be a finite number"
    return float(value), _check_range(spec, float(value))


def _coerce_int(spec: ParamSpec, value: Any) -> tuple[Any, str | None]:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        return value, "must be an integer"
    return value, _check_range(spec, value)


def _coerce_bool(spec: ParamSpec, value: Any) -> tuple[Any, str | None]:
    if isinstance(value, bool):
        return value, None
    if isinstance(value, int) and value in (0, 1):  # OSC and MIDI send 0/1
        return bool(value), None
    return value, "must be true or false"


def _coerce_str(spec: ParamSpec, value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str):
        return value, "must be a string"
    if len(value) > 2000:
        return value, "must be at most 2000 characters"
    return value, None


def _coerce_enum(spec: ParamSpec, value: Any) -> tuple[Any, str | None]:
    if value not in spec.choices:
        return value, f"must be one of {', '.join(spec.choices)}"
    return value, None


def _coerce_int_list(spec: ParamSpec, value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, (list, tuple)) or not value:
        return value, "must be a non-empty list of integers"
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value, "must contain only integers"
    if any(v < 0 or v >= NUM_LCM_STEPS for v in value):
        return value, f"every index must be in 0..{NUM_LCM_STEPS - 1}"
    if any(b <= a for a, b in zip(value, value[1:])):
        return value, "must be strictly ascending"
    if len(value) > 8:
        return value, "at most 8 steps"
    return list(value), None


def _coerce_weighted(value: Any, item_ok: Callable[[Any], bool], what: str) -> tuple[Any, str | None]:
    """A weighted list [[item, weight], ...] with non-negative weights summing > 0."""
    if not isinstance(value, (list, tuple)) or not value:
        return value, f"must be a {what} or a non-empty list of [{what}, weight] pairs"
    pairs = []
    for item in value:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and item_ok(item[0])
                and _is_number(item[1]) and item[1] >= 0):
            return value, f"each entry must be [{what}, weight >= 0], got {item!r}"
        pairs.append([item[0], float(item[1])])
    if sum(w for _, w in pairs) <= 0:
        return value, "weights must not all be zero"
    return pairs, None


def _coerce_prompt(spec: ParamSpec, value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str):
        return _coerce_str(spec, value)
    return _coerce_weighted(value, lambda t: isinstance(t, str) and len(t) <= 2000, "prompt text")


def _is_seed(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _coerce_seed(spec: ParamSpec, value: Any) -> tuple[Any, str | None]:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value, None if _is_seed(value) else "must be in 0..2**63-1"
    return _coerce_weighted(value, _is_seed, "seed")


_COERCERS: dict[str, Callable[[ParamSpec, Any], tuple[Any, str | None]]] = {
    "float": _coerce_float, "int": _coerce_int, "bool": _coerce_bool, "str": _coerce_str,
    "enum": _coerce_enum, "int_list": _coerce_int_list, "prompt": _coerce_prompt,
    "seed": _coerce_seed,
}


def validate_value(name: str, value: Any) -> Any:
    """Validate and normalise one parameter; raises ConfigError naming field, value and fix."""
    return validate_changes({name: value})[name]


def validate_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a whole change set; every problem is reported at once, nothing is partial."""
    if not isinstance(changes, Mapping):
        raise ConfigError(Problem("args", changes, "must be an object of parameter: value"))
    problems: list[Problem] = []
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        spec = PARAMS_BY_NAME.get(name)
        if spec is None:
            problems.append(Problem(str(name), value, "unknown parameter",
                                    f"use one of: {', '.join(PARAMS_BY_NAME)}"))
            continue
        normal, error = _COERCERS[spec.type](spec, value)
        if error:
            hint = spec.describe_range()
            problems.append(Problem(name, value, error, f"expected {spec.type}"
                                    + (f" in {hint}" if hint else "")))
        else:
            clean[name] = normal
    if problems:
        raise ConfigError(problems)
    return clean


def needs_rebuild(current: Mapping[str, Any], changes: Mapping[str, Any]) -> list[str]:
    """Names in ``changes`` that cannot be applied live against ``current``."""
    rebuild = []
    for name, value in changes.items():
        if name == "t_index_list":
            if len(value) != len(current.get(name, value)):
                rebuild.append(name)
        elif not PARAMS_BY_NAME[name].live and current.get(name) != value:
            rebuild.append(name)
    return rebuild


def shift_t_index_list(current: list[int], strength: float) -> list[int]:
    """``current`` moved so its first index is round((1 − strength) · (49 − span)).

    ``strength`` 0..1: 1 = most change (first index 0), 0 = least (last index 49). The length and
    the gaps between entries are kept, so the result is always a live change (never a rebuild)
    and a fader can steer it. span = last − first; Python's round (half to even).
    """
    steps = validate_value("t_index_list", current)
    if not _is_number(strength) or not 0.0 <= strength <= 1.0:
        raise ConfigError(Problem("strength", strength, "must be a number in 0..1",
                                  "send 0 (least change) .. 1 (most change)"))
    span = steps[-1] - steps[0]
    first = round((1.0 - float(strength)) * (NUM_LCM_STEPS - 1 - span))
    return [first + step - steps[0] for step in steps]


def t_index_strength(t_index_list: list[int]) -> float:
    """The strength (0..1) that ``shift_t_index_list`` maps onto this list's first index."""
    steps = validate_value("t_index_list", t_index_list)
    room = NUM_LCM_STEPS - 1 - (steps[-1] - steps[0])
    return 1.0 if room == 0 else 1.0 - steps[0] / room
