"""`sdbridge bench pipeline|transport|daemon`: the project's own speed measurements.

Each target lives in bridge/bench/<target>.py with ``add_arguments(parser)`` and
``run(args) -> dict``; the dict is printed as JSON with --json, else as readable lines.
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

# Target modules must not import torch or vendor SDKs at module level (keeps --help fast).
TARGETS: dict[str, str] = {
    "pipeline": "bridge.bench.pipeline",
    "transport": "bridge.bench.transport",
    "daemon": "bridge.bench.daemon",
}


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure speed (pipeline, transport, daemon)")
    targets = bench.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, module_name in TARGETS.items():
        module = importlib.import_module(module_name)
        parser = targets.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        module.add_arguments(parser)
        parser.set_defaults(func=_runner(module))


def _runner(module: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        result = module.run(args)
        if args.json:
            print(json.dumps(result))
        else:
            _print_readable(result)
        return 0

    return run


def _print_readable(result: dict[str, Any], indent: str = "") -> None:
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_readable(value, indent + "  ")
        else:
            shown = f"{value:.3f}" if isinstance(value, float) else value
            print(f"{indent}{key}: {shown}")
