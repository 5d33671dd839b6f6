"""The live, versioned parameter state shared by the control plane and the inference thread.

Writers (ZeroMQ ``set``, OSC, MIDI, preset loads) call :meth:`LiveState.submit`; the inference
thread calls :meth:`LiveState.take_pending` between frames and applies what it gets. Changes
are validated all-or-nothing against the one parameter schema (``bridge.params``), then
coalesced in a pending box (last writer wins per parameter), so a burst of knob turns costs
the inference thread one merge, not one rebuild per message.

Rebuild policy (documented in docs/control-protocol.md): parameters that cannot change live
(``cfg_type``, ``frame_buffer_size``, ``width``, ``height``, ``mode``, a ``t_index_list`` of
another length) are **scheduled** by default: they are accepted into the requested state and
listed in ``pending_rebuild`` until the daemon rebuilds and calls :meth:`rebuild_done`. With
``rebuild_policy="reject"`` such a change set is refused as a whole with ``RebuildRequired``.

Every accepted change — parameters, pause/resume, error, rebuild — increments ``version`` and
calls the listeners with a full snapshot (the control server publishes it on topic ``state``).
Listeners run under the state lock so events are delivered in version order; they must be quick
(queue the snapshot, do not do I/O that can block).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any, Callable, Literal, Mapping

from bridge.errors import ConfigError, Problem, RebuildRequired, SdbridgeError
from bridge.params import PARAMS_BY_NAME, REBUILD_PARAMS, default_params, needs_rebuild, validate_changes

log = logging.getLogger(__name__)

RebuildPolicy = Literal["schedule", "reject"]
StateListener = Callable[[dict[str, Any]], None]
REBUILD_POLICIES: tuple[str, ...] = ("schedule", "reject")


class LiveState:
    """Thread-safe, versioned parameter state with a coalescing pending-changes box."""

    def __init__(self, params: Mapping[str, Any] | None = None, *,
                 rebuild_policy: RebuildPolicy = "schedule") -> None:
        if rebuild_policy not in REBUILD_POLICIES:
            raise ConfigError(Problem("rebuild_policy", rebuild_policy, "unknown policy",
                                      f"use one of: {', '.join(REBUILD_POLICIES)}"))
        initial = default_params()
        if params:
            initial.update(validate_changes(params))
        self._lock = threading.RLock()
        self._params: dict[str, Any] = initial
        # Values of the rebuild-only parameters the running pipeline was built with.
        self._built: dict[str, Any] = {n: copy.deepcopy(initial[n])
                                       for n in (*REBUILD_PARAMS, "t_index_list")}
        self._pending: dict[str, Any] = {}
        self._version = 0
        self._paused = False
        self._status = "starting"
        self._last_error: dict[str, Any] | None = None
        self._policy: RebuildPolicy = rebuild_policy
        self._listeners: list[StateListener] = []

    # ----------------------------------------------------------------- reading
    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused

    @property
    def rebuild_policy(self) -> RebuildPolicy:
        return self._policy

    def params(self) -> dict[str, Any]:
        """A deep copy of the requested parameters (what clients asked for)."""
        with self._lock:
            return copy.deepcopy(self._params)

    def snapshot(self) -> dict[str, Any]:
        """The full state as sent to clients (``get_state`` and the ``state`` event)."""
        with self._lock:
            return {
                "version": self._version,
                "params": copy.deepcopy(self._params),
                "paused": self._paused,
                "status": self._status,
                "pending_rebuild": self._pending_rebuild(),
                "rebuild_policy": self._policy,
                "last_error": copy.deepcopy(self._last_error),
            }

    def _pending_rebuild(self) -> list[str]:
        return needs_rebuild(self._built, {n: self._params[n] for n in self._built})

    # ----------------------------------------------------------------- writing
    def submit(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``changes`` as a whole and queue them; returns version + applied values.

        Raises ConfigError (nothing applied) on any invalid value, RebuildRequired when the
        policy is ``reject`` and a change needs a rebuild.
        """
        if isinstance(changes, Mapping) and not changes:
            raise ConfigError(Problem("args", {}, "no parameters given",
                                      "pass at least one parameter, e.g. {\"prompt\": \"a cat\"}"))
        clean = validate_changes(changes)
        with self._lock:
            rebuild = needs_rebuild(self._built, {n: v for n, v in clean.items() if n in self._built})
            if rebuild and self._policy == "reject":
                raise RebuildRequired([
                    Problem(n, clean[n], "cannot change while running",
                            "restart with the new value in the preset, or run with "
                            "rebuild_policy schedule") for n in rebuild])
            self._params.update(copy.deepcopy(clean))
            self._pending.update(clean)
            version = self._bump()
            return {"version": version, "applied": copy.deepcopy(clean),
                    "pending_rebuild": self._pending_rebuild()}

    def take_pending(self) -> dict[str, Any]:
        """Called by the inference thread between frames: the merged changes since last call."""
        with self._lock:
            pending, self._pending = self._pending, {}
            return pending

    def has_pending(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def pause(self) -> dict[str, Any]:
        return self._set_paused(True)

    def resume(self) -> dict[str, Any]:
        return self._set_paused(False)

    def _set_paused(self, paused: bool) -> dict[str, Any]:
        with self._lock:
            self._paused = paused
            return {"version": self._bump(), "paused": paused}

    def set_status(self, status: str) -> None:
        """Lifecycle status shown to clients (e.g. starting, running, rebuilding, stopping)."""
        with self._lock:
            if status != self._status:
                self._status = status
                self._bump()

    def set_error(self, error: BaseException | None, *, where: str = "") -> None:
        """Record the last pipeline/transport error (or clear it with None) for clients."""
        with self._lock:
            if error is None:
                if self._last_error is None:
                    return
                self._last_error = None
            else:
                code = error.code if isinstance(error, SdbridgeError) else "internal_error"
                self._last_error = {"code": code, "message": str(error) or type(error).__name__,
                                    "where": where, "time": time.time()}
            self._bump()

    def rebuild_done(self, built: Mapping[str, Any] | None = None) -> None:
        """The daemon rebuilt the pipeline with ``built`` (default: the requested params)."""
        with self._lock:
            source = self._params if built is None else {**self._params, **built}
            self._built = {n: copy.deepcopy(source[n]) for n in self._built}
            self._bump()

    def replace(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a whole parameter set (preset load): unknown names fail like ``submit``."""
        unknown = [n for n in params if n not in PARAMS_BY_NAME]
        if unknown:
            raise ConfigError([Problem(n, params[n], "unknown parameter",
                                       f"use one of: {', '.join(PARAMS_BY_NAME)}") for n in unknown])
        return self.submit(params)

    # --------------------------------------------------------------- listeners
    def add_listener(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(snapshot)`` after every change; returns a function that removes it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def _bump(self) -> int:
        """Increment the version and notify listeners; caller holds the lock."""
        self._version += 1
        snap = self.snapshot()
        for listener in list(self._listeners):
            try:
                listener(snap)
            except Exception:  # a broken listener must not break the writer
                log.exception("state listener %r failed", listener)
        return self._version
