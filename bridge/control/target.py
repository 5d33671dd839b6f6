"""What the control plane drives: the ``ControlTarget`` protocol and a LiveState-backed target.

The ZeroMQ server, the OSC and the MIDI adapters all talk to a ``ControlTarget``; the daemon
implements it (usually by wrapping :class:`StateTarget`), tests use :class:`StateTarget` as is.
Methods may raise any ``SdbridgeError``; the wire layer turns it into a coded error reply.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import yaml

from bridge.errors import ConfigError, Problem
from bridge.params import PARAMS_BY_NAME
from bridge.runtime.state import LiveState, StateListener

log = logging.getLogger(__name__)

PresetLoader = Callable[[Path], dict[str, Any]]
StatsProvider = Callable[[], dict[str, Any]]


@runtime_checkable
class ControlTarget(Protocol):
    """The commands every control front-end maps onto. All methods are thread-safe."""

    def get_state(self) -> dict[str, Any]:
        """Full state: ``version``, ``params``, ``paused``, ``pending_rebuild``, ``last_error``…"""

    def set(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Validate all-or-nothing and queue; returns ``{"version", "applied", "pending_rebuild"}``."""

    def get_stats(self) -> dict[str, Any]:
        """Latest telemetry (fps, drops, latency percentiles…); published on topic ``stats``."""

    def pause(self) -> dict[str, Any]: ...

    def resume(self) -> dict[str, Any]: ...

    def load_preset(self, path: str) -> dict[str, Any]:
        """Load a preset file's parameters (validated like ``set``)."""

    def add_state_listener(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(state)`` after every state change; returns the remover."""


def load_preset_params(path: Path) -> dict[str, Any]:
    """Parameters of a preset YAML: the ``params:`` mapping if present, else the top-level keys
    that are parameter names. Other sections (model, source, sink…) belong to the daemon."""
    if not path.is_file():
        raise ConfigError(Problem("path", str(path), "preset file not found",
                                  "give the path of an existing .yaml preset"))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        # Only the position, not the parser's excerpt: a client must not read files through us.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(Problem("path", str(path), f"not valid YAML{where}",
                                  "fix the YAML syntax")) from exc
    if not isinstance(data, dict):
        raise ConfigError(Problem("path", str(path), "preset must be a YAML mapping",
                                  "write key: value pairs at the top level"))
    section = data.get("params", data)
    if not isinstance(section, dict):
        raise ConfigError(Problem("params", section, "must be a mapping of parameter: value",
                                  "write params: {prompt: ..., guidance_scale: ...}"))
    params = {k: v for k, v in section.items() if k in PARAMS_BY_NAME}
    if not params:
        raise ConfigError(Problem("path", str(path), "preset sets no parameters",
                                  f"add at least one of: {', '.join(PARAMS_BY_NAME)}"))
    return params


class StateTarget:
    """A complete ControlTarget on top of :class:`LiveState` (no pipeline attached).

    ``stats`` supplies telemetry (the daemon passes its stats collector); without it the
    target reports its uptime and state version only.
    """

    def __init__(self, state: LiveState | None = None, *, stats: StatsProvider | None = None,
                 preset_loader: PresetLoader = load_preset_params) -> None:
        self.state = state if state is not None else LiveState()
        self._stats = stats
        self._preset_loader = preset_loader
        self._started = time.monotonic()

    def get_state(self) -> dict[str, Any]:
        return self.state.snapshot()

    def set(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        return self.state.submit(changes)

    def get_stats(self) -> dict[str, Any]:
        if self._stats is not None:
            return dict(self._stats())
        return {"uptime_s": round(time.monotonic() - self._started, 3),
                "state_version": self.state.version, "paused": self.state.paused}

    def pause(self) -> dict[str, Any]:
        return self.state.pause()

    def resume(self) -> dict[str, Any]:
        return self.state.resume()

    def load_preset(self, path: str) -> dict[str, Any]:
        params = self._preset_loader(Path(path).expanduser())
        result = self.state.replace(params)
        log.info("preset %s loaded: %s", path, ", ".join(params))
        return {**result, "preset": str(path)}

    def add_state_listener(self, listener: StateListener) -> Callable[[], None]:
        return self.state.add_listener(listener)
