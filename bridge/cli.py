"""`sdbridge` command line. Each command group lives in bridge/commands/<name>.py and exposes
``register(subparsers)``; heavy imports (torch, diffusers, vendor SDKs) happen inside handlers
so ``sdbridge --help`` and ``sdbridge ctl`` stay fast."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Sequence

from bridge import __version__
from bridge.errors import SdbridgeError

log = logging.getLogger("sdbridge")

# Order here is the order in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "bridge.commands.serve",
    "bridge.commands.bench",
    "bridge.commands.ctl",
    "bridge.commands.doctor",
    "bridge.commands.models",
    "bridge.commands.engines",
    "bridge.commands.demo",
    "bridge.commands.probe",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdbridge", description="Real-time StreamDiffusion bridge for NDI, Spout and shared memory.")
    parser.add_argument("--version", action="version", version=f"sdbridge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    if verbosity == 0:
        # transformers warns about optional image processors (torchvision) we never use.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SdbridgeError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": {"code": exc.code, "message": str(exc)}}))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
