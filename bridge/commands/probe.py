"""`sdbridge probe [--json] [--timeout S]`: what can this machine send and receive?

Lists every transport kind with whether it is available here and why not, the NDI sources
visible within the timeout (mDNS plus the extra IPs asked directly) and the Spout senders.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

DEFAULT_TIMEOUT_S = 2.0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("probe", help="list transports, NDI sources and Spout senders on this machine",
                            description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"how long to listen for NDI sources (default {DEFAULT_TIMEOUT_S:g} s)")
    parser.add_argument("--extra-ips", default="127.0.0.1", metavar="IPS",
                        help="comma-separated hosts to ask for NDI sources directly, without mDNS "
                             "(default 127.0.0.1)")
    parser.set_defaults(func=run)


def probe(timeout: float = DEFAULT_TIMEOUT_S, extra_ips: str = "127.0.0.1") -> dict[str, Any]:
    """The probe report as a dict (the --json output)."""
    from bridge.io import is_available, transport_kinds
    from bridge.io.base import transport_entry

    transports: dict[str, Any] = {}
    for kind in transport_kinds():
        entry = transport_entry(kind)
        status = is_available(kind)
        transports[kind] = {"available": status.available, "reason": status.reason,
                            "source": entry.source_class is not None, "sink": entry.sink_class is not None,
                            "description": entry.description}
    return {"transports": transports,
            "ndi": _ndi_sources(transports.get("ndi", {}), timeout, extra_ips),
            "spout": _spout_senders(transports.get("spout", {}))}


def _ndi_sources(status: dict[str, Any], timeout: float, extra_ips: str) -> dict[str, Any]:
    report: dict[str, Any] = {"sources": [], "timeout_s": timeout, "extra_ips": extra_ips, "error": None}
    if not status.get("available"):
        report["error"] = f"not searched: {status.get('reason') or 'NDI transport not registered'}"
        return report
    from bridge.errors import SdbridgeError
    from bridge.io.ndi import discover

    try:
        report["sources"] = [{"name": s.name, "url": s.url} for s in discover(timeout, extra_ips)]
    except SdbridgeError as exc:
        report["error"] = str(exc)
    return report


def _spout_senders(status: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {"senders": [], "error": None}
    if not status.get("available"):
        report["error"] = f"not searched: {status.get('reason') or 'Spout transport not registered'}"
        return report
    from bridge.errors import SdbridgeError
    from bridge.io.spout import list_senders

    try:
        report["senders"] = list_senders()
    except SdbridgeError as exc:
        report["error"] = str(exc)
    return report


def run(args: argparse.Namespace) -> int:
    if not args.timeout >= 0:
        from bridge.errors import ConfigError, Problem

        raise ConfigError(Problem("--timeout", args.timeout, "must be >= 0 seconds", "e.g. --timeout 2"))
    report = probe(args.timeout, args.extra_ips)
    if args.json:
        print(json.dumps(report))
    else:
        _print_readable(report)
    return 0


def _print_readable(report: dict[str, Any]) -> None:
    print("Transports:")
    for kind, info in report["transports"].items():
        roles = "/".join(r for r in ("source", "sink") if info[r])
        state = "available" if info["available"] else f"unavailable: {info['reason']}"
        print(f"  {kind:<13} {roles:<12} {state}")
    ndi = report["ndi"]
    print(f"NDI sources (listened {ndi['timeout_s']:g} s, extra IPs {ndi['extra_ips'] or 'none'}):")
    if ndi["error"]:
        print(f"  {ndi['error']}")
    for source in ndi["sources"]:
        print(f"  {source['name']}  [{source['url'] or 'no url'}]")
    if not ndi["sources"] and not ndi["error"]:
        print("  none found")
    spout = report["spout"]
    print("Spout senders:")
    if spout["error"]:
        print(f"  {spout['error']}")
    for name in spout["senders"]:
        print(f"  {name}")
    if not spout["senders"] and not spout["error"]:
        print("  none found")
