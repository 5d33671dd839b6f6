"""A separate-process control peer for the control tests (run as a script, prints JSON lines).

    python tests/control_peer.py clients ENDPOINT NAME COUNT
    python tests/control_peer.py subscribe EVENTS TOPIC COUNT TIMEOUT
    python tests/control_peer.py fuzz ENDPOINT COUNT SEED MAX_BYTES
    python tests/control_peer.py curve ENDPOINT EVENTS SERVER_KEY CLIENT_KEY
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq  # noqa: E402

from bridge.control.client import ControlClient, ControlTimeout, EventSubscriber  # noqa: E402


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def run_clients(endpoint: str, name: str, count: int) -> None:
    """``count`` set requests with this client's name in the prompt, each reply checked."""
    ok = 0
    versions = []
    with ControlClient(endpoint, timeout=10.0) as client:
        for i in range(count):
            result = client.set(prompt=f"{name}-{i}")
            ok += result["applied"] == {"prompt": f"{name}-{i}"}
            versions.append(result["version"])
        ok += client.ping()["pong"] is True
    emit({"name": name, "ok": ok, "versions": versions})


def run_subscribe(events: str, topic: str, count: int, timeout: float) -> None:
    """Wait until the subscription is live (a stats event arrived), say ready, collect events."""
    with EventSubscriber(events, ("state", "stats")) as sub:
        while sub.recv(timeout)[0] != "stats":
            pass
        emit({"ready": True})
        got = []
        try:
            while len(got) < count:
                name, payload = sub.recv(timeout)
                if name == topic:
                    got.append(payload)
        except ControlTimeout:
            pass
    emit({"events": got})


# ---------------------------------------------------------------------- fuzzing
def _fuzz_generators(rng: random.Random, max_bytes: int) -> list[Callable[[], list[bytes]]]:
    valid = [b'{"id": 1, "cmd": "ping"}', b'{"id": "x", "cmd": "set", "args": {"prompt": "a"}}',
             b'{"id": 2, "cmd": "get_state", "args": {}}', b'{"cmd": "get_schema"}',
             b'{"id": 3, "cmd": "set", "args": {"guidance_scale": 1.5, "seed": 9}}']
    names = ["prompt", "guidance_scale", "delta", "seed", "t_index_list", "width", "cfg_type",
             "similarity_filter", "nope", "", "\u2603", "__class__"]
    cmds = ["ping", "get_state", "set", "get_stats", "pause", "resume", "load_preset",
            "get_schema", "PING", "exec", "", "set ", "\x00"]

    def any_value(depth: int = 0) -> Any:
        kind = rng.randrange(10 if depth < 3 else 7)
        return [lambda: rng.randint(-2**70, 2**70), lambda: rng.uniform(-1e6, 1e6),
                lambda: rng.choice([True, False, None]), lambda: "".join(
                    chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(30))),
                lambda: rng.choice([0, 1, -1, 49, 50, 2048, 2**63]),
                lambda: rng.choice(["self", "full", "a cat", ""]),
                lambda: rng.choice([1e308, -0.0, 1e-320]),
                lambda: [any_value(depth + 1) for _ in range(rng.randrange(4))],
                lambda: {str(any_value(depth + 1))[:10]: any_value(depth + 1)
                         for _ in range(rng.randrange(3))},
                lambda: [[rng.choice(["a", "b"]), rng.uniform(-1, 2)] for _ in range(rng.randrange(3))],
                ][kind]()

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj).encode()

    return [
        lambda: [rng.randbytes(rng.randrange(0, 300))],
        lambda: [(v := rng.choice(valid))[:rng.randrange(len(v))]],
        lambda: [dumps(any_value())],
        lambda: [dumps({"id": any_value(), "cmd": rng.choice(cmds + [any_value()]),
                        "args": rng.choice([{}, any_value(), None])})],
        lambda: [dumps({"id": rng.randrange(1000), "cmd": "set",
                        "args": {rng.choice(names): any_value() for _ in range(rng.randrange(1, 4))}})],
        lambda: [dumps({"id": 1, "cmd": "load_preset", "args": {"path": any_value()}})],
        lambda: [b"x" * rng.randrange(max_bytes + 1, 2 * max_bytes)],
        lambda: [b"[" * rng.randrange(1000, 50000)],
        lambda: [b'{"id": 1e999999, "cmd": "ping"}'],
        lambda: [b'{"id": ' + b"9" * rng.randrange(4000, 9000) + b', "cmd": "ping"}'],
        lambda: [b'{"id": NaN, "cmd": "set", "args": {"delta": Infinity}}'],
        lambda: [rng.choice(valid).replace(b"p", bytes([rng.randrange(0x80, 0x100)]), 1)],
        lambda: [rng.choice(valid), rng.randbytes(10)],  # two frames
        lambda: [b""],
        lambda: [rng.choice(valid)],
        lambda: [b'{"id": 5, "cmd": "ping", "extra": 1}'],
        lambda: [b'{"id": 6, "cmd": "ping", "args": {"x": 1}}'],
        lambda: [dumps({"id": 7, "cmd": "set", "args": {"prompt": "x" * rng.randrange(1900, 2100)}})],
    ]


def run_fuzz(endpoint: str, count: int, seed: int, max_bytes: int) -> None:
    """Send ``count`` hostile messages in batches; every one must get a well-formed reply."""
    rng = random.Random(seed)
    generators = _fuzz_generators(rng, max_bytes)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    replies = codes = 0
    code_counts: dict[str, int] = {}
    malformed: list[str] = []
    sent = 0
    while sent < count:
        batch = min(100, count - sent)
        for _ in range(batch):
            frames = rng.choice(generators)()
            sock.send_multipart([b"", *frames])
        sent += batch
        for _ in range(batch):
            if not sock.poll(10000):
                emit({"error": f"no reply after {sent} sent, {replies} replies"})
                return
            reply = json.loads(sock.recv_multipart()[-1])
            replies += 1
            if not (isinstance(reply, dict) and isinstance(reply.get("ok"), bool) and "id" in reply):
                malformed.append(repr(reply)[:200])
            elif not reply["ok"]:
                code = reply["error"]["code"]
                assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
                code_counts[code] = code_counts.get(code, 0) + 1
                codes += 1
    sock.close()
    with ControlClient(endpoint, timeout=5.0) as client:
        pong = client.ping()["pong"]
    emit({"sent": sent, "replies": replies, "errors": codes, "codes": code_counts,
          "malformed": malformed, "pong": pong})


def run_curve(endpoint: str, events: str, server_key: str, client_key: str) -> None:
    out: dict[str, Any] = {}
    with ControlClient(endpoint, timeout=5.0, curve_server_key=server_key,
                       curve_client_key=client_key) as client:
        out["pong"] = client.ping()["pong"]
        out["version"] = client.set(prompt="via curve")["version"]
    with EventSubscriber(events, ("stats",), curve_server_key=server_key,
                         curve_client_key=client_key) as sub:
        out["event"] = sub.recv(10.0)[0]
    emit(out)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "clients":
        run_clients(rest[0], rest[1], int(rest[2]))
    elif mode == "subscribe":
        run_subscribe(rest[0], rest[1], int(rest[2]), float(rest[3]))
    elif mode == "fuzz":
        run_fuzz(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
    elif mode == "curve":
        run_curve(*rest[:4])
    else:
        raise SystemExit(f"unknown mode {mode}")
