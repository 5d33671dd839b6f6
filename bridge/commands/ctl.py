"""`sdbridge ctl`: talk to a running daemon over its ZeroMQ control socket.

Values in ``set key=value`` are parsed as JSON first, else taken as a string:
``guidance_scale=1.4`` is a number, ``prompt="a red fox"`` a string, ``seed=[[1,0.5],[7,0.5]]``
a weighted list; to force a string that looks like JSON, quote it twice: ``prompt='"true"'``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bridge.errors import ConfigError, Problem

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
TOKEN_ENV = "SDBRIDGE_CONTROL_TOKEN"


def register(sub: argparse._SubParsersAction) -> None:
    ctl = sub.add_parser("ctl", help="control a running daemon (ping, state, set, stats, watch…)",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ctl.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="command socket (default %(default)s)")
    ctl.add_argument("--events", default=None,
                     help="event socket (default: same host, command port + 1)")
    ctl.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for a reply")
    ctl.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                     help=f"shared token if the daemon requires one (env {TOKEN_ENV})")
    ctl.add_argument("--server-key", type=Path, help="CURVE: the daemon's public key file (.key)")
    ctl.add_argument("--client-key", type=Path, help="CURVE: this client's secret key file (.key_secret)")
    ctl.add_argument("--json", action="store_true", help="print JSON")
    actions = ctl.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, parents=[common])
        parser.set_defaults(func=_run)
        return parser

    add("ping", "check the daemon answers")
    add("state", "print the full state")
    setter = add("set", "change parameters: set prompt=\"a fox\" guidance_scale=1.4")
    setter.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    add("stats", "print the latest telemetry")
    add("pause", "pause processing")
    add("resume", "resume processing")
    preset = add("load-preset", "apply a preset file's parameters (path on the daemon host)")
    preset.add_argument("file")
    add("schema", "print the parameter schema")
    watch = add("watch", "live stats and state in the terminal (Ctrl-C to stop)")
    watch.add_argument("--topics", default="state,stats", help="comma list (default %(default)s)")
    watch.add_argument("--count", type=int, default=0, help="stop after N events (0 = forever)")
    keygen = add("keygen", "create a CURVE key pair (NAME.key public, NAME.key_secret secret)")
    keygen.add_argument("name")
    keygen.add_argument("--dir", type=Path, default=Path("."), help="where to write the files")


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; value as JSON if it parses, else the raw string."""
    changes: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(Problem(item, item, "expected KEY=VALUE", 'write e.g. prompt="a red fox"'))
            continue
        try:
            changes[key] = json.loads(raw)
        except ValueError:
            changes[key] = raw
    if problems:
        raise ConfigError(problems, context="ctl set")
    return changes


def events_endpoint_for(command_endpoint: str) -> str:
    """Default event endpoint: same host, port + 1 (5555 -> 5556)."""
    match = re.match(r"^(tcp://.+):(\d+)$", command_endpoint)
    if not match:
        raise ConfigError(Problem("--events", None, f"cannot derive it from {command_endpoint}",
                                  "pass --events tcp://HOST:PORT"))
    return f"{match.group(1)}:{int(match.group(2)) + 1}"


def _run(args: argparse.Namespace) -> int:
    if args.action == "keygen":
        return _keygen(args)
    if args.action == "watch":
        return _watch(args)
    from bridge.control.client import ControlClient

    requests = {"ping": ("ping", {}), "state": ("get_state", {}), "stats": ("get_stats", {}),
                "pause": ("pause", {}), "resume": ("resume", {}), "schema": ("get_schema", {})}
    if args.action == "set":
        cmd, cmd_args = "set", parse_assignments(args.assignments)
    elif args.action == "load-preset":
        cmd, cmd_args = "load_preset", {"path": str(Path(args.file).expanduser().resolve())}
    else:
        cmd, cmd_args = requests[args.action]
    with ControlClient(args.endpoint, timeout=args.timeout, token=args.token,
                       curve_server_key=args.server_key, curve_client_key=args.client_key) as client:
        result = client.request(cmd, cmd_args)
    if args.json:
        print(json.dumps({"ok": True, "result": result}))
    else:
        _print_human(args.action, result)
    return 0


def _print_human(action: str, result: dict[str, Any]) -> None:
    if action == "ping":
        print(f"pong (sdbridge {result.get('version')}, protocol {result.get('protocol')})")
    elif action == "schema":
        for p in result.get("params", []):
            live = "live" if p["live"] else "rebuild"
            print(f"{p['name']:22} {p['type']:9} {p['range'] or '-':28} {live:8} {p['description']}")
    else:
        for key, value in result.items():
            if isinstance(value, dict):
                print(f"{key}:")
                for sub_key, sub_value in value.items():
                    print(f"  {sub_key}: {json.dumps(sub_value, ensure_ascii=False)}")
            else:
                print(f"{key}: {json.dumps(value, ensure_ascii=False)}")


def _watch(args: argparse.Namespace) -> int:
    from bridge.control.client import ControlTimeout, EventSubscriber

    endpoint = args.events or events_endpoint_for(args.endpoint)
    topics = tuple(t.strip() for t in args.topics.split(",") if t.strip())
    live_line = sys.stdout.isatty() and not args.json
    seen = 0
    wait = args.timeout if args.count else max(args.timeout, 5.0)
    with EventSubscriber(endpoint, topics, curve_server_key=args.server_key,
                         curve_client_key=args.client_key) as sub:
        while not args.count or seen < args.count:
            try:
                topic, payload = sub.recv(timeout=wait)
            except ControlTimeout:
                if args.count:  # a script waiting for N events wants an error, not a hang
                    raise
                # Watching forever: SUB reconnects by itself when the daemon comes back.
                print(f"no events from {endpoint} for {wait:g} s "
                      "(daemon down?); still waiting", file=sys.stderr, flush=True)
                continue
            seen += 1
            if args.json:
                print(json.dumps({"topic": topic, "data": payload}), flush=True)
            elif topic == "stats" and live_line:
                width = shutil.get_terminal_size((120, 20)).columns - 1
                sys.stdout.write("\r" + format_stats(payload)[:width].ljust(width))
                sys.stdout.flush()
            else:
                prefix = "\n" if live_line else ""
                print(prefix + (format_stats(payload) if topic == "stats" else format_state(payload)),
                      flush=True)
    if live_line:
        print()
    return 0


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items.extend(_flatten(value, name + "."))
        else:
            items.append((name, value))
    return items


def format_stats(stats: dict[str, Any]) -> str:
    """One line: every numeric telemetry field, nested keys dotted (time and control omitted)."""
    parts = []
    for key, value in _flatten({k: v for k, v in stats.items() if k not in ("time", "control")}):
        shown = f"{value:.1f}" if isinstance(value, float) else json.dumps(value, ensure_ascii=False)
        parts.append(f"{key}={shown}")
    return f"[{time.strftime('%H:%M:%S')}] stats " + " ".join(parts)


def format_state(state: dict[str, Any]) -> str:
    params = state.get("params", {})
    flags = ["paused" if state.get("paused") else "running"]
    if state.get("pending_rebuild"):
        flags.append(f"rebuild pending: {','.join(state['pending_rebuild'])}")
    if state.get("last_error"):
        flags.append(f"error: {state['last_error'].get('message')}")
    return (f"[{time.strftime('%H:%M:%S')}] state v{state.get('version')} ({'; '.join(flags)}) "
            f"prompt={json.dumps(params.get('prompt'), ensure_ascii=False)} "
            f"guidance_scale={params.get('guidance_scale')} delta={params.get('delta')} "
            f"seed={params.get('seed')}")


def _keygen(args: argparse.Namespace) -> int:
    import zmq.auth

    args.dir.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(args.dir, args.name)
    os.chmod(secret, 0o600)  # the secret key is a credential: owner-only
    if args.json:
        print(json.dumps({"ok": True, "result": {"public": public, "secret": secret}}))
    else:
        print(f"public key: {public}\nsecret key: {secret} (keep private)")
    return 0
