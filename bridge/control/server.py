"""ZeroMQ control server: a ROUTER command socket and a PUB event socket on one thread.

ROUTER (not REP) so several clients can be served at once without lock-step; REQ and DEALER
clients both work (the reply mirrors the request envelope). PUB topics: ``state`` (full
versioned state on every change, whoever made it) and ``stats`` (every ``stats_interval``
seconds, 1–2 Hz). Both sockets belong to the server thread; other threads only enqueue state
snapshots and poke a wake-up socket pair.

Size limits: a request larger than ``max_message_bytes`` gets a ``too_large`` reply; one larger
than the hard cap (``ZMQ_MAXMSGSIZE``, 4× the limit, at least 1 MiB) makes libzmq drop the
connection before the bytes are buffered, so a hostile peer cannot exhaust memory.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from bridge.control.security import Security, apply_server_curve, build_security
from bridge.control.target import ControlTarget
from bridge.control.wire import DEFAULT_MAX_MESSAGE_BYTES, dispatch, error_reply
from bridge.errors import ConfigError, ControlError, Problem

log = logging.getLogger(__name__)

DEFAULT_COMMAND_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_EVENT_ENDPOINT = "tcp://127.0.0.1:5556"
DEFAULT_STATS_INTERVAL = 0.5  # seconds: 2 Hz
_BATCH = 64  # requests handled per wake-up before events get a turn


def hard_message_cap(max_message_bytes: int) -> int:
    return max(4 * max_message_bytes, 1 << 20)


class ControlServer:
    """Serves a ControlTarget over ZeroMQ. ``start()`` binds (errors raise here), ``stop()`` joins."""

    def __init__(self, target: ControlTarget, command_endpoint: str = DEFAULT_COMMAND_ENDPOINT,
                 event_endpoint: str = DEFAULT_EVENT_ENDPOINT, *,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 stats_interval: float = DEFAULT_STATS_INTERVAL, allow_remote: bool = False,
                 curve_secret_key_file: str | Path | None = None,
                 curve_authorized_keys_dir: str | Path | None = None,
                 token: str | None = None, context: zmq.Context | None = None) -> None:
        problems = []
        if not isinstance(max_message_bytes, int) or not 1024 <= max_message_bytes <= 16 << 20:
            problems.append(Problem("max_message_bytes", max_message_bytes,
                                    "must be an integer in 1024..16777216", "the default is 65536"))
        if not isinstance(stats_interval, (int, float)) or not 0.5 <= stats_interval <= 1.0:
            problems.append(Problem("stats_interval", stats_interval,
                                    "stats are published at 1-2 Hz", "use 0.5..1.0 seconds"))
        if problems:
            raise ConfigError(problems, context="control server")
        self.security: Security = build_security(
            {"command_endpoint": command_endpoint, "event_endpoint": event_endpoint},
            allow_remote=allow_remote, curve_secret_key_file=curve_secret_key_file,
            curve_authorized_keys_dir=curve_authorized_keys_dir, token=token)
        self.target = target
        self.max_message_bytes = max_message_bytes
        self.stats_interval = float(stats_interval)
        self._requested = (command_endpoint, event_endpoint)
        self.command_endpoint = command_endpoint  # replaced by the bound address on start()
        self.event_endpoint = event_endpoint
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._states: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._auth: ThreadAuthenticator | None = None
        self._router: zmq.Socket | None = None
        self._pub: zmq.Socket | None = None
        self._remove_listener: Any = None
        self.counters = {"requests": 0, "errors": 0, "replies_dropped": 0, "state_events": 0,
                         "stats_events": 0}

    # -------------------------------------------------------------- lifecycle
    def start(self) -> "ControlServer":
        if self._thread is not None:
            raise ControlError("control server already started", fix="call stop() first")
        try:
            self._bind()
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise ControlError(f"cannot bind control sockets {self._requested}: {exc}",
                               fix="another process uses the port: stop it or pick other "
                                   "endpoints (control.command_endpoint / event_endpoint)") from exc
        self._remove_listener = self.target.add_state_listener(self.publish_state)
        self._thread = threading.Thread(target=self._run, name="sdbridge-control", daemon=True)
        self._thread.start()
        log.info("control: commands on %s, events on %s", self.command_endpoint, self.event_endpoint)
        return self

    def _bind(self) -> None:
        curve = self.security.curve
        if curve is not None:
            self._auth = ThreadAuthenticator(self._ctx)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(curve.authorized_dir))
        self._router = self._ctx.socket(zmq.ROUTER)
        self._pub = self._ctx.socket(zmq.PUB)
        for sock in (self._router, self._pub):
            sock.linger = 0
            if curve is not None:
                apply_server_curve(sock, curve)
        self._router.setsockopt(zmq.MAXMSGSIZE, hard_message_cap(self.max_message_bytes))
        self._router.rcvhwm = 1000
        self._router.sndhwm = 1000
        self._router.bind(self._requested[0])
        self._pub.bind(self._requested[1])
        self.command_endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.event_endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and release the ports; safe to call twice."""
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        self._stop.set()
        self._poke()
        stuck = False
        if self._thread is not None:
            self._thread.join(timeout)
            stuck = self._thread.is_alive()
            if stuck:  # its sockets stay open: terminating the context would block forever
                log.error("control thread did not stop within %.1f s", timeout)
            self._thread = None
        else:
            self._close_sockets()
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        if self._own_context and not stuck and not self._ctx.closed:
            self._ctx.term()

    def _close_sockets(self) -> None:
        for sock in (self._router, self._pub):
            if sock is not None:
                sock.close(linger=0)
        self._router = self._pub = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --------------------------------------------------------------- events in
    def publish_state(self, state: dict[str, Any]) -> None:
        """Thread-safe: queue a state snapshot for the PUB socket."""
        self._states.put(state)
        self._poke()

    def _poke(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):  # buffer full = a wake-up is already pending
            pass

    # ------------------------------------------------------------------- loop
    def _run(self) -> None:
        assert self._router is not None and self._pub is not None
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        next_stats = time.monotonic() + self.stats_interval
        try:
            self._publish("state", self.target.get_state())  # late joiners also poll get_state
            while not self._stop.is_set():
                wait_ms = max(0.0, next_stats - time.monotonic()) * 1000
                events = dict(poller.poll(wait_ms))
                if self._router in events:
                    self._serve_batch()
                if self._wake_r.fileno() in events:
                    self._drain_wake()
                self._flush_states()
                if time.monotonic() >= next_stats:
                    self._publish_stats()
                    # From the actual publish time: a late tick never causes a burst (<= 2 Hz).
                    next_stats = time.monotonic() + self.stats_interval
        except Exception:
            log.exception("control server loop crashed")
            raise
        finally:
            self._close_sockets()

    def _serve_batch(self) -> None:
        assert self._router is not None
        for _ in range(_BATCH):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            envelope, reply = self._handle(frames)
            try:
                self._router.send_multipart([*envelope, reply], zmq.NOBLOCK)
            except zmq.Again:  # that client does not read its replies: drop, do not block
                self.counters["replies_dropped"] += 1

    def _handle(self, frames: list[bytes]) -> tuple[list[bytes], bytes]:
        """Split the ROUTER envelope (identity [+ empty delimiter]) from the JSON frame."""
        self.counters["requests"] += 1
        identity, rest = frames[0], frames[1:]
        if len(rest) >= 2 and rest[0] == b"":
            envelope, body = [identity, b""], rest[1:]
        else:
            envelope, body = [identity], rest
        if len(body) != 1:
            self.counters["errors"] += 1
            return envelope, error_reply(None, "bad_request",
                                         f"expected one JSON frame, got {len(body)} frames")
        ok, reply = dispatch(body[0], self.target, max_bytes=self.max_message_bytes,
                             token=self.security.token)
        if not ok:
            self.counters["errors"] += 1
        return envelope, reply

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _flush_states(self) -> None:
        while True:
            try:
                state = self._states.get_nowait()
            except queue.Empty:
                return
            self._publish("state", state)
            self.counters["state_events"] += 1

    def _publish_stats(self) -> None:
        try:
            stats = dict(self.target.get_stats())
        except Exception as exc:  # telemetry failure must not stop the control plane
            log.exception("get_stats failed")
            stats = {"error": {"code": getattr(exc, "code", "internal_error"), "message": str(exc)}}
        stats.setdefault("time", time.time())
        stats["control"] = dict(self.counters)
        self.counters["stats_events"] += 1
        self._publish("stats", stats)

    def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        assert self._pub is not None
        try:
            data = json.dumps(payload, allow_nan=False, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            log.error("cannot publish %s event: %s", topic, exc)
            return
        try:
            self._pub.send_multipart([topic.encode(), data], zmq.NOBLOCK)
        except zmq.Again:
            log.debug("PUB high-water mark reached: %s event dropped", topic)
