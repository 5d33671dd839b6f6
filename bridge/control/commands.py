"""Typed control commands and the parameter schema as clients see it.

A request's ``cmd`` names one :class:`CommandSpec`; its ``parse(args)`` checks the arguments'
shape (raising ``BadRequest`` naming the field) and returns a typed command whose
``execute(target)`` calls the :class:`~bridge.control.target.ControlTarget`. Parameter
*values* are validated by the target (one schema, ``bridge.params``), all-or-nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from bridge import __version__
from bridge.control.target import ControlTarget
from bridge.errors import BadRequest
from bridge.params import PARAMS, ParamSpec

PROTOCOL_VERSION = 1


def param_schema(spec: ParamSpec) -> dict[str, Any]:
    """One parameter as JSON: what ``get_schema`` returns and the docs table shows."""
    return {
        "name": spec.name, "type": spec.type, "default": spec.default,
        "live": spec.live, "minimum": spec.minimum, "maximum": spec.maximum,
        "choices": list(spec.choices), "multiple_of": spec.multiple_of,
        "osc_type": spec.osc_type or None, "range": spec.describe_range(),
        "description": spec.description,
    }


def parameter_schema() -> list[dict[str, Any]]:
    return [param_schema(p) for p in PARAMS]


# --------------------------------------------------------------------- commands
@dataclass(frozen=True)
class Ping:
    def execute(self, target: ControlTarget) -> dict[str, Any]:
        return {"pong": True, "version": __version__, "protocol": PROTOCOL_VERSION}


@dataclass(frozen=True)
class GetState:
    def execute(self, target: ControlTarget) -> dict[str, Any]:
        return target.get_state()


@dataclass(frozen=True)
class Set:
    changes: dict[str, Any] = field(default_factory=dict)

    def execute(self, target: ControlTarget) -> dict[str, Any]:
        return target.set(self.changes)


@dataclass(frozen=True)
class GetStats:
    def execute(self, target: ControlTarget) -> dict[str, Any]:
        return target.get_stats()


@dataclass(frozen=True)
class Pause:
    def execute(self, target: ControlTarget) -> dict[str, Any]:
        return target.pause()


@dataclass(frozen=True)
class Resume:
    def execute(self, target: ControlTarget) -> dict[str, Any]:
        return target.resume()


@dataclass(frozen=True)
class LoadPreset:
    path: str

    def execute(self, target: ControlTarget) -> dict[str, Any]:
        return target.load_preset(self.path)


@dataclass(frozen=True)
class GetSchema:
    def execute(self, target: ControlTarget) -> dict[str, Any]:
        return {"protocol": PROTOCOL_VERSION, "params": parameter_schema()}


Command = Ping | GetState | Set | GetStats | Pause | Resume | LoadPreset | GetSchema


# ------------------------------------------------------------------ arg parsing
def _no_args(cmd: str, factory: Callable[[], Command]) -> Callable[[Mapping[str, Any]], Command]:
    def parse(args: Mapping[str, Any]) -> Command:
        if args:
            raise BadRequest(f"args: {cmd} takes no arguments, got {sorted(map(str, args))}",
                             fix='send "args": {} or omit it')
        return factory()

    return parse


def _parse_set(args: Mapping[str, Any]) -> Command:
    if not args:
        raise BadRequest("args: set needs at least one parameter",
                         fix='send e.g. {"cmd": "set", "args": {"prompt": "a cat"}}')
    return Set(dict(args))


def _parse_load_preset(args: Mapping[str, Any]) -> Command:
    path = args.get("path")
    extra = sorted(str(k) for k in args if k != "path")
    if not isinstance(path, str) or not path or len(path) > 4096:
        raise BadRequest(f"args.path={path!r}: must be a non-empty file path string",
                         fix='send {"cmd": "load_preset", "args": {"path": "presets/x.yaml"}}')
    if extra:
        raise BadRequest(f"args: unexpected {extra} for load_preset", fix='only "path" is accepted')
    return LoadPreset(path)


@dataclass(frozen=True)
class CommandSpec:
    name: str
    summary: str
    args: str  # human description of args, for the docs
    result: str  # human description of the result, for the docs
    parse: Callable[[Mapping[str, Any]], Command]


COMMANDS: dict[str, CommandSpec] = {spec.name: spec for spec in (
    CommandSpec("ping", "Liveness check.", "none",
                '`{"pong": true, "version": "<sdbridge version>", "protocol": 1}`',
                _no_args("ping", Ping)),
    CommandSpec("get_state", "Full current state.", "none",
                "the state object (see *State*)", _no_args("get_state", GetState)),
    CommandSpec("set", "Change any subset of parameters, validated all-or-nothing.",
                "`{<param>: <value>, ...}` (at least one)",
                '`{"version": n, "applied": {...normalised values}, "pending_rebuild": [...]}`',
                _parse_set),
    CommandSpec("get_stats", "Latest telemetry (same object as the `stats` event).", "none",
                "the stats object", _no_args("get_stats", GetStats)),
    CommandSpec("pause", "Stop processing new frames (outputs stay alive).", "none",
                '`{"version": n, "paused": true}`', _no_args("pause", Pause)),
    CommandSpec("resume", "Resume processing.", "none",
                '`{"version": n, "paused": false}`', _no_args("resume", Resume)),
    CommandSpec("load_preset", "Apply the parameters of a preset file on the daemon's machine.",
                '`{"path": "<file on the daemon host>"}`',
                'like `set`, plus `"preset": "<path>"`', _parse_load_preset),
    CommandSpec("get_schema", "The parameter schema (names, types, ranges, live/rebuild).", "none",
                '`{"protocol": 1, "params": [{name, type, default, live, minimum, maximum, '
                'choices, multiple_of, osc_type, range, description}, ...]}`',
                _no_args("get_schema", GetSchema)),
)}
