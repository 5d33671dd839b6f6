"""OSC adapter over real UDP: python-osc client in, state echo out to a real OSC server."""

from __future__ import annotations

import json
import queue
import threading
from typing import Any, Iterator

import pytest
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer
from pythonosc.udp_client import SimpleUDPClient

from bridge.control.osc import OscAdapter, osc_address_map
from bridge.control.target import StateTarget
from bridge.errors import ConfigError
from bridge.params import PARAMS

Message = tuple[str, tuple[Any, ...]]


class EchoListener:
    """A real OSC server standing in for TouchOSC / TouchDesigner receiving our echo."""

    def __init__(self) -> None:
        self.messages: queue.Queue[Message] = queue.Queue()
        disp = Dispatcher()
        disp.set_default_handler(lambda address, *args: self.messages.put((address, args)))
        self.server = BlockingOSCUDPServer(("127.0.0.1", 0), disp)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", int(self.server.server_address[1])

    def wait_for(self, address: str, expected: tuple[Any, ...] | None = None,
                 timeout: float = 5.0) -> tuple[Any, ...]:
        """The next message at ``address`` (equal to ``expected`` when given)."""
        while True:
            got, args = self.messages.get(timeout=timeout)
            if got == address and (expected is None or args == expected):
                return args

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def rig() -> Iterator[tuple[StateTarget, OscAdapter, SimpleUDPClient, EchoListener]]:
    echo = EchoListener()
    target = StateTarget()
    adapter = OscAdapter(target, "127.0.0.1", 0, echo=echo.address).start()
    client = SimpleUDPClient(*adapter.address)
    yield target, adapter, client, echo
    adapter.stop()
    echo.close()


def test_address_map_is_generated_from_the_schema() -> None:
    mapped = {e.address: e.type_tag for e in osc_address_map()}
    for spec in PARAMS:
        if spec.osc_type:
            assert mapped[f"/sdbridge/{spec.name}"] == spec.osc_type
        else:
            assert f"/sdbridge/{spec.name}" not in mapped
    assert mapped["/sdbridge/prompt"] == "s" and mapped["/sdbridge/guidance_scale"] == "f"
    assert mapped["/sdbridge/t_index_list"] == "i…" and mapped["/sdbridge/strength"] == "f"
    assert {"/sdbridge/pause", "/sdbridge/resume", "/sdbridge/state"} <= set(mapped)
    strength = next(e for e in osc_address_map() if e.address == "/sdbridge/strength")
    assert strength.param is None and (strength.minimum, strength.maximum) == (0.0, 1.0)
    assert "t_index_list" in strength.description


def test_osc_messages_set_parameters_and_state_is_echoed(rig: Any) -> None:
    target, _, client, echo = rig
    client.send_message("/sdbridge/prompt", "a neon fox")
    assert echo.wait_for("/sdbridge/prompt") == ("a neon fox",)
    client.send_message("/sdbridge/guidance_scale", 1.4)
    assert echo.wait_for("/sdbridge/version", (2,)) == (2,)
    client.send_message("/sdbridge/similarity_filter", 1)
    client.send_message("/sdbridge/seed", 16777216.0)  # surfaces send floats for everything
    state = json.loads(echo.wait_for("/sdbridge/state")[0])
    while state["version"] < 4:
        state = json.loads(echo.wait_for("/sdbridge/state")[0])
    params = target.get_state()["params"]
    assert params["prompt"] == "a neon fox" and params["guidance_scale"] == 1.4  # float32 noise removed
    assert params["similarity_filter"] is True and params["seed"] == 2**24
    assert state["params"] == params


def test_t_index_list_and_strength_steer_the_steps_live(rig: Any) -> None:
    target, adapter, client, echo = rig
    params = lambda: target.get_state()["params"]  # noqa: E731
    client.send_message("/sdbridge/t_index_list", [20, 30, 45])  # N ints -> the list
    assert echo.wait_for("/sdbridge/t_index_list") == (20, 30, 45)  # echoed as its ints
    assert params()["t_index_list"] == [20, 30, 45]
    client.send_message("/sdbridge/t_index_list", [10.0, 45.0])  # surfaces sending floats
    assert echo.wait_for("/sdbridge/t_index_list") == (10, 45)
    client.send_message("/sdbridge/strength", 1.0)  # most change: first index 0, gap kept
    assert echo.wait_for("/sdbridge/t_index_list") == (0, 35)
    client.send_message("/sdbridge/strength", 0.3)  # float32 on the wire: round(0.7 * 14) = 10
    assert echo.wait_for("/sdbridge/t_index_list") == (10, 45)
    version = echo.wait_for("/sdbridge/version")[0]
    client.send_message("/sdbridge/strength", 0.31)  # same list: nothing changes, no new version
    client.send_message("/sdbridge/strength", 0.0)  # least change: last index 49
    assert echo.wait_for("/sdbridge/t_index_list") == (14, 49)
    assert echo.wait_for("/sdbridge/version") == (version + 1,)
    assert params()["t_index_list"] == [14, 49] and adapter.errors == 0
    client.send_message("/sdbridge/t_index_list", [7, 21])  # changed elsewhere: fader follows
    assert echo.wait_for("/sdbridge/strength")[0] == pytest.approx(1 - 7 / 35, abs=1e-6)


def test_bad_t_index_list_and_strength_are_refused(rig: Any) -> None:
    target, adapter, client, echo = rig
    client.send_message("/sdbridge/t_index_list", [45, 32])
    code, message = echo.wait_for("/sdbridge/error")
    assert code == "invalid_config" and "t_index_list" in message and "ascending" in message
    client.send_message("/sdbridge/t_index_list", [])
    assert "one or more integers" in echo.wait_for("/sdbridge/error")[1]
    client.send_message("/sdbridge/t_index_list", [10, 60])
    assert "0..49" in echo.wait_for("/sdbridge/error")[1]
    client.send_message("/sdbridge/strength", 1.5)
    code, message = echo.wait_for("/sdbridge/error")
    assert code == "invalid_config" and "strength=1.5" in message and "0..1" in message
    client.send_message("/sdbridge/strength", "strong")
    assert "strength='strong'" in echo.wait_for("/sdbridge/error")[1]
    client.send_message("/sdbridge/strength", [0.1, 0.2])
    assert "exactly one argument" in echo.wait_for("/sdbridge/error")[1]
    client.send_message("/sdbridge/strength", 0.5)  # still alive: round(0.5 * 36) = 18
    assert echo.wait_for("/sdbridge/t_index_list") == (18, 31)
    assert target.get_state()["version"] == 1 and adapter.errors == 6


def test_pause_and_resume_buttons(rig: Any) -> None:
    target, _, client, echo = rig
    client.send_message("/sdbridge/pause", 1.0)
    assert echo.wait_for("/sdbridge/paused") == (1,)
    echo.wait_for("/sdbridge/state")  # the echo of the pause itself
    client.send_message("/sdbridge/resume", 0.0)  # button release: ignored
    client.send_message("/sdbridge/state", [])  # handled after it (one UDP sender, in order)
    state = json.loads(echo.wait_for("/sdbridge/state")[0])
    assert state["paused"] is True and state["version"] == 1
    client.send_message("/sdbridge/resume", [])
    assert echo.wait_for("/sdbridge/paused", (0,)) == (0,)
    assert target.get_state()["paused"] is False


def test_bad_messages_are_refused_echoed_and_never_crash(rig: Any) -> None:
    target, adapter, client, echo = rig
    client.send_message("/sdbridge/guidance_scale", 99.0)
    code, message = echo.wait_for("/sdbridge/error")
    assert code == "invalid_config" and "guidance_scale" in message
    client.send_message("/sdbridge/prompt", ["two", "args"])
    assert "exactly one argument" in echo.wait_for("/sdbridge/error")[1]
    client.send_message("/sdbridge/nope", 1)
    assert "unknown OSC address" in echo.wait_for("/sdbridge/error")[1]
    client.send_message("/sdbridge/delta", "not a number")
    assert echo.wait_for("/sdbridge/error")[0] == "invalid_config"
    client._sock.sendto(b"\x00garbage that is not OSC", adapter.address)  # raw junk datagram
    client.send_message("/sdbridge/delta", 0.5)
    assert echo.wait_for("/sdbridge/delta") == (0.5,)
    assert target.get_state()["version"] == 1 and adapter.errors == 4


def test_non_loopback_osc_needs_explicit_opt_in() -> None:
    with pytest.raises(ConfigError, match="allow_remote"):
        OscAdapter(StateTarget(), "0.0.0.0", 0)
    with pytest.raises(ConfigError, match="osc.echo"):
        OscAdapter(StateTarget(), "127.0.0.1", 0, echo=("127.0.0.1", 0))
    adapter = OscAdapter(StateTarget(), "0.0.0.0", 0, allow_remote=True).start()
    adapter.stop()
