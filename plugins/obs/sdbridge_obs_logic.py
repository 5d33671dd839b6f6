"""Everything the OBS script does that does not need OBS: settings → control commands, the
strength presets, the connection to the daemon (reconnect with backoff), stats formatting and
the settings of the output source it adds to a scene.

Runs in OBS's own Python (Tools → Scripts → Python Settings) with only ``pyzmq`` and ``pyyaml``
installed there; it uses sdbridge's own ``bridge.control.client`` from the repository this file
lives in (see ``bootstrap_paths``), never torch or numpy.

Threading: OBS calls the script on its UI thread, which must never block. ``DaemonLink`` owns
the ZeroMQ sockets on one worker thread (ZeroMQ sockets are not thread-safe); the UI thread only
queues changes (coalesced, last writer wins) and reads a status snapshot under a lock.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("sdbridge.obs")

# First index of each strength preset in the 50-step LCM schedule: smaller = more change.
STRENGTHS: dict[str, int] = {"subtle": 40, "medium": 32, "strong": 22}
LAST_INDEX = 45  # where the schedule of a multi-step preset ends (the default [32, 45])
NDI_SOURCE_KIND = "ndi_source"  # DistroAV (formerly obs-ndi)
BROWSER_SOURCE_KIND = "browser_source"
OUTPUT_SOURCE_NAMES = {"ndi": "sdbridge output (NDI)", "browser": "sdbridge output (browser)"}


def bootstrap_paths(script_dir: Path, python_version: tuple[int, int] = sys.version_info[:2]) -> list[str]:
    """Folders to put on ``sys.path`` so OBS's Python finds ``bridge`` (and, when the sdbridge
    venv was made with the same Python minor version, its pyzmq/pyyaml)."""
    repo = script_dir.resolve().parents[1]
    paths = [str(repo)] if (repo / "bridge" / "control" / "client.py").is_file() else []
    venv = repo / ".venv"
    cfg = venv / "pyvenv.cfg"
    if cfg.is_file() and _venv_version(cfg.read_text(encoding="utf-8")) == python_version:
        for site in (venv / "Lib" / "site-packages",
                     venv / "lib" / f"python{python_version[0]}.{python_version[1]}" / "site-packages"):
            if site.is_dir():
                paths.append(str(site))
    return paths


def _venv_version(cfg_text: str) -> tuple[int, int] | None:
    for line in cfg_text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("version", "version_info"):
            parts = value.strip().split(".")
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                return int(parts[0]), int(parts[1])
    return None


# -- strength presets ----------------------------------------------------------------------------

def strength_t_index_list(strength: str, steps: int) -> list[int]:
    """``steps`` ascending indices for a strength preset. The length never changes (a different
    length rebuilds the pipeline), only where the steps sit in the schedule."""
    from bridge.errors import ConfigError, Problem

    if strength not in STRENGTHS:
        raise ConfigError(Problem("strength", strength, "unknown strength preset",
                                  f"use one of: {', '.join(STRENGTHS)}"))
    if not isinstance(steps, int) or not 1 <= steps <= 8:
        raise ConfigError(Problem("steps", steps, "must be 1..8", "read len(t_index_list) from the daemon"))
    start = STRENGTHS[strength]
    if steps == 1:
        return [start]
    end = min(49, max(LAST_INDEX, start + steps - 1))
    start = min(start, end - steps + 1)
    span = end - start
    return [start + round(i * span / (steps - 1)) for i in range(steps)]


def strength_of(t_index_list: list[int]) -> str:
    """The preset whose first index is nearest to the list's (to show the daemon's current one)."""
    first = t_index_list[0] if t_index_list else STRENGTHS["medium"]
    return min(STRENGTHS, key=lambda name: abs(STRENGTHS[name] - first))


# -- settings → commands -------------------------------------------------------------------------

@dataclass(frozen=True)
class PanelSettings:
    """What the OBS properties panel holds (one field per control)."""

    prompt: str = "a photo of a cat"
    negative_prompt: str = ""
    guidance_scale: float = 1.2
    delta: float = 1.0
    strength: str = "medium"
    seed: int = 2
    similarity_filter: bool = False
    paused: bool = False


def changes_between(old: PanelSettings | None, new: PanelSettings, steps: int) -> dict[str, Any]:
    """The ``set`` arguments for what changed (everything when ``old`` is None), validated by
    the same schema as the daemon so a bad value is refused before it is sent."""
    from bridge.params import validate_changes

    wanted: dict[str, Any] = {
        "prompt": new.prompt, "negative_prompt": new.negative_prompt,
        "guidance_scale": new.guidance_scale, "delta": new.delta, "seed": new.seed,
        "similarity_filter": new.similarity_filter,
    }
    if old is None or old.strength != new.strength:
        wanted["t_index_list"] = strength_t_index_list(new.strength, steps)
    if old is not None:
        previous = {name: getattr(old, name) for name in wanted if name != "t_index_list"}
        wanted = {k: v for k, v in wanted.items() if k == "t_index_list" or previous[k] != v}
    return validate_changes(wanted) if wanted else {}


def pause_command(old: PanelSettings | None, new: PanelSettings) -> str | None:
    if old is not None and old.paused == new.paused:
        return None
    if old is None and not new.paused:
        return None  # never resume a daemon someone else paused just because OBS started
    return "pause" if new.paused else "resume"


# -- output source -------------------------------------------------------------------------------

def ndi_source_name(machine: str, sender: str) -> str:
    """The name NDI receivers list: ``MACHINE (sender)``."""
    return f"{machine.upper()} ({sender})"


def output_source(kind: str, *, ndi_name: str = "", preview_url: str = "", width: int = 512,
                  height: int = 512) -> tuple[str, dict[str, Any]]:
    """(OBS input kind, settings) for the source that shows the daemon's output; its name in
    OBS is ``OUTPUT_SOURCE_NAMES[kind]`` (one per kind, so switching kind never reuses the other)."""
    from bridge.errors import ConfigError, Problem

    if kind == "ndi":
        if not ndi_name.strip():
            raise ConfigError(Problem("ndi_name", ndi_name, "empty NDI source name",
                                      "type it as NDI lists it, e.g. MY-PC (sdbridge)"))
        return NDI_SOURCE_KIND, {"ndi_source_name": ndi_name}
    if kind == "browser":
        if not preview_url.startswith(("http://", "https://")):
            raise ConfigError(Problem("preview_url", preview_url, "not an http(s) URL",
                                      "use the http sink's address, e.g. http://127.0.0.1:8090/"))
        return BROWSER_SOURCE_KIND, {"url": preview_url, "width": width, "height": height,
                                     "reroute_audio": False, "restart_when_active": False}
    raise ConfigError(Problem("output_kind", kind, "unknown output kind", "use ndi or browser"))


# -- status --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinkStatus:
    connected: bool = False
    detail: str = "not started"  # why not connected, or the endpoint
    retry_in_s: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    last_error: str = ""  # the last refused command (daemon or local validation)


def _ms(value: Any) -> str:
    return "–" if value is None else f"{value:.0f}"


def format_status(status: LinkStatus) -> str:
    """One line for the panel / a text source."""
    if not status.connected:
        retry = "" if status.retry_in_s is None else f", retry in {status.retry_in_s:.0f} s"
        line = f"disconnected ({status.detail}{retry})"
    else:
        s = status.stats
        if not s:
            line = "connected, waiting for stats"
        else:
            e2e = (s.get("latency_ms") or {}).get("end_to_end") or {}
            paused = " · PAUSED" if s.get("paused") or status.state.get("paused") else ""
            line = (f"connected · {s.get('fps_out', 0):.1f} fps out / {s.get('fps_in', 0):.1f} in"
                    f" · latency p50 {_ms(e2e.get('p50'))} ms, p95 {_ms(e2e.get('p95'))} ms"
                    f" · dropped {s.get('frames_dropped', 0)}{paused}")
            daemon_error = s.get("last_error") or status.state.get("last_error")
            if isinstance(daemon_error, dict):
                daemon_error = daemon_error.get("message") or daemon_error
            if daemon_error:
                line += f" · daemon error: {daemon_error}"
    if status.last_error:
        line += f" · refused: {status.last_error}"
    return line


# -- the connection ------------------------------------------------------------------------------

class RetrySchedule:
    """Reconnect delays 0.5, 1, 2, 4, 8, 10, 10… s; reset once connected."""

    def __init__(self, first: float = 0.5, cap: float = 10.0) -> None:
        self.first, self.cap, self._next = first, cap, first

    def next_delay(self) -> float:
        delay, self._next = self._next, min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


class DaemonLink:
    """Keeps a connection to the daemon on a worker thread; the OBS thread never blocks."""

    def __init__(self, command_endpoint: str = "tcp://127.0.0.1:5555",
                 event_endpoint: str = "tcp://127.0.0.1:5556", *, token: str | None = None,
                 request_timeout: float = 1.0, silence_timeout: float = 3.0,
                 retry: RetrySchedule | None = None,
                 resync: Callable[[int], dict[str, Any]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``resync(steps)`` returns the ``set`` arguments to push on every (re)connect — the
        panel's values — so a restarted daemon comes back showing what OBS shows."""
        self.command_endpoint, self.event_endpoint = command_endpoint, event_endpoint
        self.token, self.request_timeout, self.silence_timeout = token, request_timeout, silence_timeout
        self._retry = retry or RetrySchedule()
        self._resync = resync
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending: dict[str, Any] = {}
        self._pending_pause: str | None = None
        self._status = LinkStatus()
        self._thread: threading.Thread | None = None

    # -- UI-thread API -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sdbridge-obs-link", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, changes: dict[str, Any]) -> None:
        """Queue validated ``set`` arguments; merged with anything not yet sent."""
        if changes:
            with self._lock:
                self._pending.update(changes)
            self._wake.set()

    def request_pause(self, command: str) -> None:
        with self._lock:
            self._pending_pause = command
        self._wake.set()

    def refuse(self, message: str) -> None:
        """Record a locally refused change (validation) so the panel shows it."""
        self._set_status(last_error=message)

    def status(self) -> LinkStatus:
        with self._lock:
            return self._status

    def steps(self, default: int = 2) -> int:
        """len(t_index_list) on the daemon: the strength presets keep it (no rebuild)."""
        params = self.status().state.get("params") or {}
        return len(params.get("t_index_list") or []) or default

    # -- worker thread -------------------------------------------------------------------------

    def _set_status(self, **changes: Any) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except Exception as exc:  # noqa: BLE001 - the link must outlive any one failure
                log.warning("sdbridge link: %s", exc)
                self._set_status(connected=False, detail=str(exc), stats={})
            if self._stop.is_set():
                return
            delay = self._retry.next_delay()
            self._set_status(retry_in_s=delay)
            self._stop.wait(delay)

    def _session(self) -> None:
        """One connection: connect, sync, then send/receive until the daemon goes silent."""
        from bridge.control.client import ControlClient, EventSubscriber

        with ControlClient(self.command_endpoint, timeout=self.request_timeout, token=self.token) as client, \
                EventSubscriber(self.event_endpoint) as events:
            state = client.get_state()  # raises ControlTimeout when nobody answers
            self._retry.reset()
            self._set_status(connected=True, detail=self.command_endpoint, retry_in_s=None, state=state)
            if self._resync is not None:
                self._queue_resync()
            log.info("sdbridge link: connected to %s", self.command_endpoint)
            last_heard = self._clock()
            while not self._stop.is_set():
                self._flush(client)
                if self._drain_events(events):
                    last_heard = self._clock()
                elif self._clock() - last_heard > self.silence_timeout:
                    client.ping()  # raises ControlTimeout: the daemon is gone
                    last_heard = self._clock()
            self._set_status(connected=False, detail="stopped")

    def _queue_resync(self) -> None:
        from bridge.errors import SdbridgeError

        assert self._resync is not None
        try:
            full = self._resync(self.steps())
        except SdbridgeError as exc:
            self._set_status(last_error=str(exc))
            return
        with self._lock:
            self._pending = {**full, **self._pending}  # changes made meanwhile win

    def _flush(self, client: Any) -> None:
        from bridge.control.client import RemoteError

        with self._lock:
            changes, self._pending = self._pending, {}
            pause, self._pending_pause = self._pending_pause, None
        try:
            if changes:
                client.request("set", changes)
            if pause:
                client.request(pause)
            if changes or pause:
                self._set_status(last_error="")
        except RemoteError as exc:  # the daemon refused: show it, stay connected
            self._set_status(last_error=f"[{exc.code}] {exc.remote_message}")

    def _drain_events(self, events: Any) -> bool:
        from bridge.control.client import ControlTimeout

        heard = False
        timeout = 0.05  # bounds how long a queued change waits before it is sent
        while True:
            try:
                topic, payload = events.recv(timeout=timeout)
            except ControlTimeout:
                return heard
            heard, timeout = True, 0.0
            if topic == "stats":
                self._set_status(stats=payload)
            elif topic == "state":
                self._set_status(state=payload)
            if self._wake.is_set():
                self._wake.clear()
                return heard
