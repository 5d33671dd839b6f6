"""OSC adapter (python-osc): control surfaces drive the same ``set`` path as ZeroMQ.

The address map is generated from the parameter schema: every parameter with an ``osc_type``
gets ``/sdbridge/<name>`` with that type tag (``i…`` = the whole list as N integer arguments),
plus ``/sdbridge/strength`` (one 0..1 fader onto ``t_index_list``, see
:func:`bridge.params.shift_t_index_list`), ``/sdbridge/pause``, ``/sdbridge/resume`` and
``/sdbridge/state`` (echo now). Values go through the target's ``set`` (same validation,
all-or-nothing); a bad message is logged and echoed as ``/sdbridge/error <code> <message>``,
never raised into the server loop. With an echo target configured, every state change is sent
back: each mapped parameter at its address (lists as their integers; weighted prompt/seed lists
only in the JSON), ``/sdbridge/version``, ``/sdbridge/paused`` and the whole state as JSON on
``/sdbridge/state``. Strength is echoed too, computed from ``t_index_list``, so faders follow.
OSC has no authentication: it listens on loopback unless ``allow_remote`` is set explicitly.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer
from pythonosc.udp_client import SimpleUDPClient

from bridge.control.security import endpoint_is_local
from bridge.control.target import ControlTarget
from bridge.errors import ConfigError, ControlError, Problem, SdbridgeError
from bridge.params import PARAMS, PARAMS_BY_NAME, shift_t_index_list, t_index_strength

log = logging.getLogger(__name__)

PREFIX = "/sdbridge"
DEFAULT_OSC_PORT = 9000
LIST_TAG = "…"  # type tag suffix: the parameter is a list sent as N arguments ("i…")
STRENGTH_ADDRESS = f"{PREFIX}/strength"


@dataclass(frozen=True)
class OscAddress:
    address: str
    type_tag: str  # "" = no argument; "i…" = N integers
    param: str | None
    description: str
    minimum: float | None = None  # range of an address that is not a parameter (strength)
    maximum: float | None = None


def osc_address_map() -> list[OscAddress]:
    """The documented address map, generated from the parameter schema."""
    entries = [OscAddress(f"{PREFIX}/{p.name}", p.osc_type, p.name, p.description)
               for p in PARAMS if p.osc_type]
    entries += [
        OscAddress(STRENGTH_ADDRESS, "f", None,
                   "Strength 0..1 (1 = most change): shifts the current t_index_list so its first "
                   "index = round((1 − strength) · (49 − span)), span = last − first, keeping its "
                   "length and gaps (always live, never a rebuild). Not echoed: t_index_list is.",
                   minimum=0.0, maximum=1.0),
        OscAddress(f"{PREFIX}/pause", "", None,
                   "Pause processing (an argument of 0 is ignored: button release)."),
        OscAddress(f"{PREFIX}/resume", "", None,
                   "Resume processing (an argument of 0 is ignored: button release)."),
        OscAddress(f"{PREFIX}/state", "", None, "Echo the full state to the echo target now."),
    ]
    return entries


def _pressed(args: tuple[Any, ...]) -> bool:
    """No argument or a non-zero first argument = press; 0 = release (ignored)."""
    return not args or bool(args[0])


class OscAdapter:
    """OSC server thread feeding a ControlTarget; optional state echo to ``echo=(host, port)``."""

    def __init__(self, target: ControlTarget, host: str = "127.0.0.1", port: int = DEFAULT_OSC_PORT,
                 *, echo: tuple[str, int] | None = None, allow_remote: bool = False) -> None:
        problems = []
        if not endpoint_is_local(f"tcp://{host}:{port}") and not allow_remote:
            problems.append(Problem("osc.host", host, "OSC has no authentication: refusing a "
                                    "non-loopback address", "use 127.0.0.1, or set "
                                    "osc.allow_remote: true on a trusted network"))
        if not isinstance(port, int) or not 0 <= port <= 65535:
            problems.append(Problem("osc.port", port, "not a UDP port", "use 1..65535 (0 = any)"))
        if echo is not None and not (isinstance(echo, tuple) and len(echo) == 2
                                     and isinstance(echo[1], int) and 0 < echo[1] <= 65535):
            problems.append(Problem("osc.echo", echo, "must be (host, port)", "e.g. 127.0.0.1:9001"))
        if problems:
            raise ConfigError(problems, context="OSC adapter")
        self.target = target
        self._requested = (host, port)
        self._echo = SimpleUDPClient(*echo) if echo is not None else None
        self._server: BlockingOSCUDPServer | None = None
        self._thread: threading.Thread | None = None
        self._remove_listener: Callable[[], None] | None = None
        self.errors = 0

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); port 0 in the constructor picks a free one."""
        if self._server is None:
            return self._requested
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def dispatcher(self) -> Dispatcher:
        disp = Dispatcher()
        for entry in osc_address_map():
            if entry.param is not None and entry.type_tag.endswith(LIST_TAG):
                disp.map(entry.address, self._list_handler(entry.param))
            elif entry.param is not None:
                disp.map(entry.address, self._param_handler(entry.param))
        disp.map(STRENGTH_ADDRESS, self._on_strength)
        disp.map(f"{PREFIX}/pause", self._on_pause)
        disp.map(f"{PREFIX}/resume", self._on_resume)
        disp.map(f"{PREFIX}/state", self._on_state)
        disp.set_default_handler(self._on_unknown)
        return disp

    def start(self) -> "OscAdapter":
        try:
            self._server = BlockingOSCUDPServer(self._requested, self.dispatcher())
        except OSError as exc:
            raise ControlError(f"cannot listen for OSC on {self._requested}: {exc}",
                               fix="pick another osc.port or stop the program using it") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,),
                                        name="sdbridge-osc", daemon=True)
        self._thread.start()
        if self._echo is not None:
            self._remove_listener = self.target.add_state_listener(self.echo_state)
        log.info("OSC: listening on %s:%d", *self.address)
        return self

    def stop(self) -> None:
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
        self._server = self._thread = None

    def __enter__(self) -> "OscAdapter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------- handlers
    def _param_handler(self, name: str) -> Callable[..., None]:
        float_param = PARAMS_BY_NAME[name].type == "float"

        def handle(address: str, *args: Any) -> None:
            if len(args) != 1:
                self._fail(address, ControlError(f"{address} takes exactly one argument, got {len(args)}",
                                                 fix=f"send {address} with one value"))
                return
            value = args[0]
            if isinstance(value, float) and float_param:  # OSC floats are float32: drop the noise
                value = float(f"{value:.7g}")
            self._call(address, lambda: self.target.set({name: value}))

        return handle

    def _list_handler(self, name: str) -> Callable[..., None]:
        def handle(address: str, *args: Any) -> None:
            if not args:
                self._fail(address, ControlError(f"{address} takes one or more integers, got none",
                                                 fix=f"send e.g. {address} 32 45"))
                return
            # Surfaces often send every number as a float: whole floats are the integers meant.
            values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in args]
            self._call(address, lambda: self.target.set({name: values}))

        return handle

    def _on_strength(self, address: str, *args: Any) -> None:
        if len(args) != 1:
            self._fail(address, ControlError(f"{address} takes exactly one argument, got {len(args)}",
                                             fix=f"send {address} with one float in 0..1"))
            return
        strength = args[0]
        if isinstance(strength, float):  # float32 noise: 0.3 arrives as 0.30000001192…
            strength = float(f"{strength:.7g}")
        self._call(address, lambda: self._apply_strength(strength))

    def _apply_strength(self, strength: Any) -> None:
        current = self.target.get_state()["params"]["t_index_list"]
        shifted = shift_t_index_list(current, strength)
        # A fader sweep sends many values per index step: only real changes bump the version.
        if shifted != current:
            self.target.set({"t_index_list": shifted})

    def _on_pause(self, address: str, *args: Any) -> None:
        if _pressed(args):
            self._call(address, self.target.pause)

    def _on_resume(self, address: str, *args: Any) -> None:
        if _pressed(args):
            self._call(address, self.target.resume)

    def _on_state(self, address: str, *args: Any) -> None:
        self._call(address, lambda: self.echo_state(self.target.get_state()))

    def _on_unknown(self, address: str, *args: Any) -> None:
        self._fail(address, ControlError(f"unknown OSC address {address}",
                                         fix="see the OSC map in docs/control-protocol.md"))

    def _call(self, address: str, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:  # a bad control message must never kill the OSC thread
            self._fail(address, exc)

    def _fail(self, address: str, exc: BaseException) -> None:
        self.errors += 1
        code = exc.code if isinstance(exc, SdbridgeError) else "internal_error"
        if isinstance(exc, SdbridgeError):
            log.warning("OSC %s refused: %s", address, exc)
        else:
            log.error("OSC %s failed", address, exc_info=exc)
        self._send(f"{PREFIX}/error", [code, f"{address}: {exc}"])

    # ------------------------------------------------------------------- echo
    def echo_state(self, state: dict[str, Any]) -> None:
        """Send the state to the echo target (called on every state change)."""
        if self._echo is None:
            return
        params = state.get("params", {})
        for entry in osc_address_map():
            value = params.get(entry.param) if entry.param else None
            if isinstance(value, list) and entry.type_tag.endswith(LIST_TAG):
                self._send(entry.address, [int(v) for v in value])  # N int arguments
            elif isinstance(value, (str, int, float)):  # weighted lists only go in the JSON
                self._send(entry.address, int(value) if isinstance(value, bool) else value)
        if isinstance(params.get("t_index_list"), list):  # faders follow changes made elsewhere
            self._send(STRENGTH_ADDRESS, round(t_index_strength(params["t_index_list"]), 4))
        self._send(f"{PREFIX}/version", int(state.get("version", 0)))
        self._send(f"{PREFIX}/paused", int(bool(state.get("paused"))))
        self._send(f"{PREFIX}/state", json.dumps(state, ensure_ascii=False))

    def _send(self, address: str, value: Any) -> None:
        if self._echo is None:
            return
        try:
            self._echo.send_message(address, value)
        except OSError as exc:  # echo target down: control keeps working
            log.debug("OSC echo to %s failed: %s", address, exc)
