"""Small ZeroMQ control client (DEALER, request ids, timeouts) and an event subscriber.

Used by ``sdbridge ctl``, the tests and the plugins. One client per thread (ZeroMQ sockets are
not thread-safe). A DEALER with a REQ-style empty delimiter is used instead of REQ so that a
timed-out request does not wedge the socket: late replies are recognised by id and dropped.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq

from bridge.control.security import apply_client_curve
from bridge.control.server import DEFAULT_COMMAND_ENDPOINT, DEFAULT_EVENT_ENDPOINT
from bridge.errors import ControlError


class ControlTimeout(ControlError):
    code = "timeout"


class RemoteError(ControlError):
    """The daemon answered ``ok: false``; ``code`` is the daemon's stable error code."""

    def __init__(self, code: str, message: str, reply: dict[str, Any]) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.remote_message = message
        self.reply = reply


def _socket_with_auth(ctx: zmq.Context, kind: int, endpoint: str, *,
                      curve_server_key: str | Path | None,
                      curve_client_key: str | Path | None) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.linger = 0
    if curve_server_key is not None or curve_client_key is not None:
        if curve_server_key is None or curve_client_key is None:
            raise ControlError("CURVE needs both the server public key and the client secret key",
                               fix="pass --server-key SERVER.key and --client-key CLIENT.key_secret")
        apply_client_curve(sock, curve_server_key, curve_client_key)
    sock.connect(endpoint)
    return sock


class ControlClient:
    def __init__(self, endpoint: str = DEFAULT_COMMAND_ENDPOINT, *, timeout: float = 3.0,
                 token: str | None = None, curve_server_key: str | Path | None = None,
                 curve_client_key: str | Path | None = None,
                 context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.token = token
        self._ctx = context or zmq.Context.instance()
        self._sock = _socket_with_auth(self._ctx, zmq.DEALER, endpoint,
                                       curve_server_key=curve_server_key,
                                       curve_client_key=curve_client_key)
        self._ids = itertools.count(1)

    def request(self, cmd: str, args: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> dict[str, Any]:
        """Send one command; return its ``result`` or raise RemoteError / ControlTimeout."""
        request_id = next(self._ids)
        message: dict[str, Any] = {"id": request_id, "cmd": cmd, "args": args or {}}
        if self.token is not None:
            message["token"] = self.token
        reply = self.send_raw(json.dumps(message).encode("utf-8"), request_id, timeout=timeout)
        if reply.get("ok") is True:
            return reply.get("result", {})
        error = reply.get("error") or {}
        raise RemoteError(str(error.get("code", "unknown")), str(error.get("message", "")), reply)

    def send_raw(self, payload: bytes, request_id: Any = None, *,
                 timeout: float | None = None) -> dict[str, Any]:
        """Send raw bytes; return the first reply whose id matches (any reply if id is None)."""
        self._sock.send_multipart([b"", payload])
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._sock.poll(remaining * 1000, zmq.POLLIN):
                raise ControlTimeout(f"no reply from {self.endpoint} within "
                                     f"{self.timeout if timeout is None else timeout:g} s",
                                     fix="is `sdbridge serve` running with this control endpoint?")
            frames = self._sock.recv_multipart()
            try:
                reply = json.loads(frames[-1])
            except ValueError:
                continue
            if request_id is None or (isinstance(reply, dict) and reply.get("id") == request_id):
                return reply

    def ping(self) -> dict[str, Any]:
        return self.request("ping")

    def get_state(self) -> dict[str, Any]:
        return self.request("get_state")

    def set(self, **changes: Any) -> dict[str, Any]:
        return self.request("set", changes)

    def get_stats(self) -> dict[str, Any]:
        return self.request("get_stats")

    def pause(self) -> dict[str, Any]:
        return self.request("pause")

    def resume(self) -> dict[str, Any]:
        return self.request("resume")

    def load_preset(self, path: str) -> dict[str, Any]:
        return self.request("load_preset", {"path": path})

    def get_schema(self) -> dict[str, Any]:
        return self.request("get_schema")

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class EventSubscriber:
    """SUB socket on the event endpoint; ``recv`` returns ``(topic, payload)``."""

    def __init__(self, endpoint: str = DEFAULT_EVENT_ENDPOINT,
                 topics: tuple[str, ...] = ("state", "stats"), *,
                 curve_server_key: str | Path | None = None,
                 curve_client_key: str | Path | None = None,
                 context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self._ctx = context or zmq.Context.instance()
        self._sock = _socket_with_auth(self._ctx, zmq.SUB, endpoint,
                                       curve_server_key=curve_server_key,
                                       curve_client_key=curve_client_key)
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())

    def recv(self, timeout: float = 3.0) -> tuple[str, dict[str, Any]]:
        if not self._sock.poll(timeout * 1000, zmq.POLLIN):
            raise ControlTimeout(f"no event from {self.endpoint} within {timeout:g} s",
                                 fix="is `sdbridge serve` running with this event endpoint?")
        topic, payload = self._sock.recv_multipart()[:2]
        return topic.decode("utf-8", "replace"), json.loads(payload)

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> "EventSubscriber":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
