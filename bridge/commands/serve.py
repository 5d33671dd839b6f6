"""`sdbridge serve --preset FILE [--set key=value ...]`: run the daemon until SIGINT/SIGTERM.

Order of start-up: validate the whole preset (every problem at once) and check this machine's
transports, load the model (progress bar on stderr), open sinks, start the threads, then the
control plane (ZeroMQ, OSC, MIDI). SIGINT/SIGTERM stop everything within a few seconds, release
shared memory and NDI, and exit 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

log = logging.getLogger("sdbridge.serve")

SHUTDOWN_BUDGET_S = 4.0  # the promise is 5 s; keep a margin for interpreter exit


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="run the bridge: source -> diffusion -> sinks, with control",
                            description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_serve_arguments(parser, preset_required=True)
    parser.set_defaults(func=run)


def add_serve_arguments(parser: argparse.ArgumentParser, *, preset_required: bool) -> None:
    parser.add_argument("--preset", required=preset_required, metavar="FILE",
                        help="preset YAML (see docs/presets.md and presets/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a preset value, e.g. --set prompt=\"a fox\" "
                             "--set source.kind=shm (repeatable)")
    parser.add_argument("--json-logs", action="store_true", help="log one JSON object per line")
    parser.add_argument("--identity", action="store_true",
                        help="no model: pass frames through unchanged (checks transports and "
                             "measures the daemon itself)")
    parser.add_argument("--check", action="store_true",
                        help="validate the preset and this machine's transports, then exit")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": round(record.created, 3), "level": record.levelname,
                                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _setup_logging(json_logs: bool) -> None:
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)  # a daemon reports what it does
    if json_logs:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.handlers[:] = [handler]
    logging.getLogger("httpx").setLevel(logging.WARNING)


def run(args: argparse.Namespace, preset: Any = None) -> int:
    _setup_logging(args.json_logs)
    # Handlers first: a signal while torch is still importing must still end with exit code 0.
    stop = threading.Event()
    previous = _install_signal_handlers(stop)
    try:
        return _run(args, preset, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace, preset: Any, stop: threading.Event) -> int:
    from bridge.config import load_preset, preflight

    if preset is None:
        preset = load_preset(args.preset, args.overrides)
    preflight(preset)
    if args.check:
        print(f"preset OK: model {preset.model.id}, source {preset.source.kind}, "
              f"sinks {', '.join(s.kind for s in preset.sinks)}")
        return 0
    if stop.is_set():
        return 0
    return serve(preset, identity=args.identity, progress=not args.json_logs, stop=stop)


def serve(preset: Any, *, identity: bool = False, pipeline_factory: Any = None,
          progress: bool = True, stop: threading.Event | None = None) -> int:
    """Run until a signal (or ``stop`` is set); returns the exit code. ``pipeline_factory``
    replaces the model (tests and benchmarks run the real daemon around a stand-in pipeline);
    ``progress=False`` hides the model-load bar (JSON logs must stay one object per line)."""
    from bridge.runtime.daemon import Daemon
    from bridge.runtime.pipelines import identity_factory, stream_batch_factory

    previous: dict[int, Any] = {}
    if stop is None:
        stop = threading.Event()
        previous = _install_signal_handlers(stop)
    if pipeline_factory is None:
        pipeline_factory = identity_factory if identity else \
            (lambda p, params: stream_batch_factory(p, params, progress=progress))
    daemon = Daemon(preset, pipeline_factory=pipeline_factory)
    adapters: list[Any] = []
    try:
        log.info("loading %s", "identity pipeline" if identity else f"model {preset.model.id}")
        if not daemon.start(cancel=stop):
            log.info("stopped during start-up")
            return 0
        adapters = _start_control(preset, daemon)
        log.info("serving: %s -> %s", preset.source.kind, ", ".join(s.kind for s in preset.sinks))
        while not stop.wait(0.5):
            pass
        log.info("shutting down")
        return 0
    finally:
        started = time.monotonic()
        for adapter in reversed(adapters):
            _stop_quietly(adapter)
        daemon.stop(max(1.0, SHUTDOWN_BUDGET_S - (time.monotonic() - started)))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if daemon.busy:
            # A model load or call cannot be interrupted. Sinks are closed and shared memory unlinked;
            # letting the interpreter tear torch down under a running op would abort (SIGABRT),
            # so leave now with the exit code the user asked for.
            log.warning("a model load or call is still running: exiting without waiting for it")
            logging.shutdown()
            sys.stdout.flush()
            os._exit(0)


def _install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous  # signals can only be handled on the main thread (tests call serve())

    def handler(signum: int, frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _start_control(preset: Any, daemon: Any) -> list[Any]:
    """ZeroMQ server, then OSC and MIDI when enabled; returns what must be stopped."""
    started: list[Any] = []
    if preset.control.enabled:
        from bridge.config import control_options
        from bridge.control.server import ControlServer

        server = ControlServer(daemon, **control_options(preset)).start()
        started.append(server)
        log.info("control: commands on %s, events on %s", server.command_endpoint,
                 server.event_endpoint)
    if preset.osc.enabled:
        from bridge.control.osc import OscAdapter

        echo = (preset.osc.target_host, preset.osc.target_port) if preset.osc.target_host else None
        started.append(OscAdapter(daemon, preset.osc.listen_host, preset.osc.listen_port,
                                  echo=echo, allow_remote=preset.osc.allow_remote).start())
    if preset.midi.enabled:
        started.extend(_start_midi(preset, daemon))
    return started


def _start_midi(preset: Any, daemon: Any) -> list[Any]:
    from bridge.config import resolve_relative
    from bridge.control.midi import MidiAdapter, load_mapping
    from bridge.errors import RuntimeMissingError, SourceNotFoundError

    adapter = MidiAdapter(daemon, load_mapping(resolve_relative(preset, preset.midi.mapping)))
    try:
        name = adapter.open(preset.midi.port)
    except (SourceNotFoundError, RuntimeMissingError) as exc:
        # The controller is optional hardware: serve without it, and say so.
        log.warning("MIDI not started: %s", exc)
        return []
    log.info("MIDI: listening on %r", name)
    return [_Closer(adapter.close)]


class _Closer:
    def __init__(self, close: Any) -> None:
        self.stop = close


def _stop_quietly(adapter: Any) -> None:
    try:
        adapter.stop()
    except Exception:  # shutdown goes on whatever one adapter does
        log.exception("stopping %r failed", adapter)
