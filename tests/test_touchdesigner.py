"""TouchDesigner plugin code in plain CPython: pixel conventions, the Script TOP callbacks, and a
round trip through a real `sdbridge serve` subprocess (identity pipeline, shm in and out) with
control over OSC (what TouchDesigner's OSC Out DAT sends) and over ZeroMQ."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from pythonosc.udp_client import SimpleUDPClient

from bridge.control.client import ControlClient

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins" / "touchdesigner"
sys.path.insert(0, str(PLUGIN_DIR))

import sdbridge_td as td  # noqa: E402


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value is not None and value is not False:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def td_image(h: int = 64, w: int = 64) -> np.ndarray:
    """What TOP.numpyArray() returns: float32 RGBA 0..1, bottom row first. The image shows red on
    top and blue at the bottom, so it is stored blue-first."""
    img = np.zeros((h, w, 4), np.float32)
    img[: h // 2] = (0.0, 0.0, 1.0, 1.0)  # bottom rows (stored first): blue
    img[h // 2:] = (1.0, 0.0, 0.0, 1.0)  # top rows: red
    return img


class FakeScriptTop:
    """The two members of TouchDesigner's scriptTOP the callbacks touch."""

    class _Input:
        def __init__(self, pixels: np.ndarray | None) -> None:
            self.pixels = pixels

        def numpyArray(self, delayed: bool = False) -> np.ndarray | None:  # noqa: N802
            return self.pixels

    def __init__(self, pixels: np.ndarray | None = None) -> None:
        self.inputs = [self._Input(pixels)] if pixels is not None else []
        self.copied: list[np.ndarray] = []

    def copyNumpyArray(self, array: np.ndarray) -> None:  # noqa: N802
        self.copied.append(array.copy())


class OscOutDat:
    """TouchDesigner's OSC Out DAT API (``sendOSC(address, args)``) over real UDP."""

    def __init__(self, port: int) -> None:
        self._client = SimpleUDPClient("127.0.0.1", port)

    def sendOSC(self, address: str, args: list[Any]) -> None:  # noqa: N802
        self._client.send_message(address, args)


# -- pixels ----------------------------------------------------------------------------------------

def test_td_to_shm_flips_and_quantises() -> None:
    out = td.td_to_shm(td_image(8, 6))
    assert out.dtype == np.uint8 and out.shape == (8, 6, 4) and out.flags.c_contiguous
    assert tuple(out[0, 0]) == (255, 0, 0, 255)  # top row is red after the flip
    assert tuple(out[-1, 0]) == (0, 0, 255, 255)
    grey = td.td_to_shm(np.full((2, 2, 1), 0.5, np.float32))
    assert tuple(grey[0, 0]) == (128, 128, 128, 255)
    assert td.td_to_shm(np.zeros((2, 2, 4), np.uint8) + 7)[0, 0, 3] == 7
    with pytest.raises(td.shm_protocol.ShmFormatError):
        td.td_to_shm(np.zeros((2, 2, 5), np.float32))


@pytest.mark.parametrize("fmt", ["RGBA", "RGBX", "BGRA", "BGRX", "RGB", "BGR"])
def test_shm_to_td_every_format(fmt: str) -> None:
    rgb = {"R": 200, "G": 50, "B": 10, "A": 99, "X": 255}
    px = np.zeros((4, 2, len(fmt)), np.uint8)
    for i, ch in enumerate(fmt):
        px[:, :, i] = rgb[ch]
    px[0, :, :] = 0  # top row black: must end up last (TouchDesigner is bottom-up)
    out = td.shm_to_td(px, fmt)
    alpha = 99 if fmt.endswith("A") else 255
    assert tuple(out[0, 0]) == (200, 50, 10, alpha) and tuple(out[-1, 0, :3]) == (0, 0, 0)
    with pytest.raises(td.shm_protocol.ShmFormatError) as err:
        td.shm_to_td(np.zeros((2, 2, 2), np.uint8), "UYVY")
    assert "output_format" in str(err.value)


def test_round_trip_of_conventions() -> None:
    img = td_image()
    back = td.shm_to_td(td.td_to_shm(img), "RGBA")
    assert np.array_equal(back, (img * 255).astype(np.uint8))


# -- callbacks on the shm protocol directly ---------------------------------------------------------

def test_script_top_callbacks_pass_frames_through_shared_memory() -> None:
    name = f"tdtest-{secrets.token_hex(3)}"
    source = FakeScriptTop(td_image())
    viewer = FakeScriptTop()
    try:
        td.cook_output(viewer, stream=name, key="/out")  # daemon not there yet: shows nothing
        assert viewer.copied == []
        td.cook_input(source, stream=name, key="/in")
        assert len(source.copied) == 1  # input passed through

        def cook_until_shown(shape: tuple[int, ...]) -> bool:  # TouchDesigner cooks every frame
            td.cook_output(viewer, stream=name, key="/out")
            return bool(viewer.copied) and viewer.copied[-1].shape == shape

        wait_until(lambda: cook_until_shown((64, 64, 4)), "the stream to be attached", 10)
        assert np.array_equal(viewer.copied[-1], (td_image() * 255).astype(np.uint8))
        shown = len(viewer.copied)
        td.cook_output(viewer, stream=name, key="/out")  # no new frame: the last one again
        assert len(viewer.copied) == shown + 1
        td.cook_input(FakeScriptTop(td_image(32, 48)), stream=name, key="/in")  # resolution change
        wait_until(lambda: cook_until_shown((32, 48, 4)), "the new resolution", 10)
        td.cook_input(FakeScriptTop(), stream=name, key="/nothing")  # unwired input: no-op
    finally:
        td.close_all()


# -- against a real daemon --------------------------------------------------------------------------

def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tag = secrets.token_hex(3)
    cfg = {"in": f"td-in-{tag}", "out": f"td-out-{tag}", "cmd": f"tcp://127.0.0.1:{free_port()}",
           "evt": f"tcp://127.0.0.1:{free_port()}", "osc": free_port(socket.SOCK_DGRAM)}
    preset = tmp_path_factory.mktemp("td") / "td.yaml"
    preset.write_text(f"""version: 1
model: {{id: tiny, device: cpu, dtype: float32}}
width: 64
height: 64
output_format: BGRA
source: {{kind: shm, name: {cfg['in']}}}
sink:
  - {{kind: shm, name: {cfg['out']}}}
control: {{command_endpoint: "{cfg['cmd']}", event_endpoint: "{cfg['evt']}"}}
osc: {{enabled: true, listen_port: {cfg['osc']}}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve", "--preset", str(preset),
                             "--identity"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    client = ControlClient(cfg["cmd"], timeout=0.5)

    def ping() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"sdbridge serve exited early:\n{proc.stdout.read()}")  # type: ignore[union-attr]
        try:
            client.ping()
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    try:
        wait_until(ping, "sdbridge serve to answer ping")
        yield {**cfg, "proc": proc, "client": client}
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_frames_round_trip_through_sdbridge_serve(daemon: dict[str, Any]) -> None:
    source, viewer = FakeScriptTop(td_image()), FakeScriptTop()
    try:
        def round_trip() -> bool:
            td.cook_input(source, stream=daemon["in"], key="/in")
            td.cook_output(viewer, stream=daemon["out"], key="/out")
            # before our first frame arrives the daemon sends its black idle fallback
            return bool(viewer.copied) and int(viewer.copied[-1][:, :, :3].max()) > 100

        wait_until(round_trip, "a processed frame back from the daemon")
        out = viewer.copied[-1].astype(int)  # TouchDesigner orientation: bottom row first
        assert out.shape == (64, 64, 4)
        top, bottom = out[48:].mean(axis=(0, 1)), out[:16].mean(axis=(0, 1))
        assert top[0] > 200 and top[2] < 50, top  # red stays on top
        assert bottom[2] > 200 and bottom[0] < 50, bottom
        assert td._streams[("/out", daemon["out"])].info.pixel_format == "BGRA"
    finally:
        td.close_all()


def test_control_over_osc_out_dat(daemon: dict[str, Any]) -> None:
    ctl = td.Control(osc_out=OscOutDat(daemon["osc"]))
    assert ctl.mode == "osc"
    assert ctl.set(prompt="from touchdesigner osc", guidance_scale=1.7) == {
        "sent": ["guidance_scale", "prompt"]}
    client: ControlClient = daemon["client"]
    # one UDP message per parameter: wait for both (they are applied in arrival order)
    wait_until(lambda: (client.get_state()["params"]["prompt"] == "from touchdesigner osc"
                        and abs(client.get_state()["params"]["guidance_scale"] - 1.7) < 1e-6) or None,
               "the OSC prompt and guidance to reach the daemon")
    ctl.pause()
    wait_until(lambda: client.get_state()["paused"] or None, "OSC pause")
    ctl.resume()
    wait_until(lambda: not client.get_state()["paused"] or None, "OSC resume")
    ctl.set(strength=1.0)  # [32, 45] shifted to first index 0, same length: live
    wait_until(lambda: client.get_state()["params"]["t_index_list"] == [0, 13] or None, "OSC strength")
    ctl.set(t_index_list=[30, 43])  # the list as N integers
    wait_until(lambda: client.get_state()["params"]["t_index_list"] == [30, 43] or None,
               "OSC t_index_list")
    with pytest.raises(ValueError) as err:
        ctl.set(cfg_type="full")  # not in the OSC map (rebuild parameter)
    assert "zmq_endpoint" in str(err.value) and "strength" in str(err.value)
    with pytest.raises(ValueError):
        ctl.set(pause=1)  # a button, not a value: ctl.pause()


def test_control_over_zmq(daemon: dict[str, Any]) -> None:
    ctl = td.Control(zmq_endpoint=daemon["cmd"])
    try:
        assert ctl.mode == "zmq"
        reply = ctl.set(prompt="from touchdesigner zmq", t_index_list=[20, 45])
        assert "version" in reply
        state = daemon["client"].get_state()["params"]
        assert state["prompt"] == "from touchdesigner zmq" and state["t_index_list"] == [20, 45]
    finally:
        ctl.close()


def test_daemon_stops_cleanly(daemon: dict[str, Any]) -> None:
    proc: subprocess.Popen[str] = daemon["proc"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


def test_shipped_touchdesigner_preset_is_valid() -> None:
    from bridge.config import load_preset

    preset = load_preset(PLUGIN_DIR / "touchdesigner-shm.yaml")
    assert (preset.source.kind, preset.source.options["name"]) == ("shm", td.DEFAULT_INPUT)
    assert [(s.kind, s.options["name"]) for s in preset.sinks] == [("shm", td.DEFAULT_OUTPUT)]
    assert preset.osc.enabled and preset.output_format in ("BGRA", "RGBA")


@pytest.mark.parametrize("name,call", [("script_top_input.py", "sdbridge_td.cook_input("),
                                       ("script_top_output.py", "sdbridge_td.cook_output("),
                                       ("execute_dat.py", "sdbridge_td.close_all()")])
def test_callback_files_compile_and_stay_thin(name: str, call: str) -> None:
    text = (PLUGIN_DIR / name).read_text(encoding="utf-8")
    compile(text, name, "exec")  # TouchDesigner globals (op, absTime) only exist inside it
    assert call in text and len(text.splitlines()) < 40
