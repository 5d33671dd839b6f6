"""sdbridge for TouchDesigner: frames through shared memory, control through OSC or ZeroMQ.

Plain CPython + numpy (TouchDesigner's Python has both); nothing here imports TouchDesigner, so
it is tested outside it. The Script TOP callback files beside this one only forward to
``cook_input`` / ``cook_output``.

TouchDesigner conventions handled here: ``TOP.numpyArray()`` gives float32 (or uint8) RGBA with
the *bottom* row first; ``scriptOp.copyNumpyArray`` takes the same orientation. sdbridge's
shared memory carries top row first, any of its pixel formats.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Inside the sdbridge repository use its protocol module; a TouchDesigner project that copied
# shm_protocol.py next to this file (no repository) uses that copy.
if (REPO / "bridge" / "io" / "shm_protocol.py").is_file():
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    from bridge.io import shm_protocol
else:
    import shm_protocol  # type: ignore[no-redef]

log = logging.getLogger("sdbridge.td")

DEFAULT_INPUT = "sdbridge-in"
DEFAULT_OUTPUT = "sdbridge-out"
OSC_MAP_FILE = REPO / "plugins" / "control-surface" / "osc-map.json"
# RGBA byte positions of R, G, B, A in each 3/4-channel format (None: no alpha byte).
_RGBA_ORDER: dict[str, tuple[int, int, int, int | None]] = {
    "RGBA": (0, 1, 2, 3), "RGBX": (0, 1, 2, None), "BGRA": (2, 1, 0, 3), "BGRX": (2, 1, 0, None),
    "RGB": (0, 1, 2, None), "BGR": (2, 1, 0, None),
}


# -- pixels ------------------------------------------------------------------------------------

def td_to_shm(array: np.ndarray) -> np.ndarray:
    """TouchDesigner TOP pixels (bottom row first, float 0..1 or uint8, 1-4 channels) → RGBA
    uint8, top row first, C-contiguous: what the input stream carries."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or not 1 <= a.shape[2] <= 4:
        raise shm_protocol.ShmFormatError(f"expected H×W×1..4 pixels, got shape {a.shape}",
                                          fix="feed a TOP (its numpyArray()) into the Script TOP")
    if a.dtype != np.uint8:
        a = np.clip(a.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    h, w, c = a.shape
    out = np.empty((h, w, 4), np.uint8)
    flipped = a[::-1]
    if c >= 3:
        out[:, :, :3] = flipped[:, :, :3]
    else:  # mono (+ alpha): grey
        out[:, :, :3] = flipped[:, :, :1]
    out[:, :, 3] = flipped[:, :, c - 1] if c in (2, 4) else 255
    return out


def shm_to_td(pixels: np.ndarray, pixel_format: str) -> np.ndarray:
    """Output-stream pixels (top row first) → RGBA uint8, bottom row first, for copyNumpyArray."""
    order = _RGBA_ORDER.get(pixel_format)
    if order is None:
        raise shm_protocol.ShmFormatError(
            f"pixel format {pixel_format} cannot be shown in TouchDesigner directly",
            fix="set output_format: BGRA (or RGBA) in the sdbridge preset")
    r, g, b, a = order
    flipped = pixels[::-1]
    out = np.empty(pixels.shape[:2] + (4,), np.uint8)
    out[:, :, 0], out[:, :, 1], out[:, :, 2] = flipped[:, :, r], flipped[:, :, g], flipped[:, :, b]
    out[:, :, 3] = 255 if a is None else flipped[:, :, a]
    return out


# -- streams -----------------------------------------------------------------------------------

class InputStream:
    """Writes TouchDesigner frames into the daemon's input stream (created on the first frame;
    a resolution change is a new header generation the daemon follows)."""

    def __init__(self, name: str = DEFAULT_INPUT) -> None:
        self.name = shm_protocol.check_name(name)
        self._writer: Any = None
        self.frames = 0

    def send(self, td_pixels: np.ndarray, seq: int | None = None) -> None:
        rgba = td_to_shm(td_pixels)
        if self._writer is None:
            self._writer = shm_protocol.ShmWriter(self.name, rgba.shape[1], rgba.shape[0], "RGBA")
        self._writer.write(rgba, seq=seq)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class OutputStream:
    """Reads the daemon's output stream without ever blocking a cook."""

    def __init__(self, name: str = DEFAULT_OUTPUT) -> None:
        self.name = shm_protocol.check_name(name)
        self._reader = shm_protocol.ShmReader(self.name)
        self.last: np.ndarray | None = None
        self.info: Any = None
        self.frames = 0

    def poll(self, timeout: float = 0.0) -> bool:
        """True when a new frame arrived (then ``last`` holds it, TouchDesigner-ready)."""
        try:
            pixels, info = self._reader.read_latest(timeout=timeout)
        except shm_protocol.ShmTimeout:
            return False  # no new frame yet (or the daemon is not running): keep the last one
        self.last, self.info = shm_to_td(pixels, info.pixel_format), info
        self.frames += 1
        return True

    @property
    def skipped(self) -> int:
        return self._reader.frames_skipped

    def close(self) -> None:
        self._reader.close()


# -- Script TOP glue ---------------------------------------------------------------------------

class ScriptTop(Protocol):
    """The part of TouchDesigner's scriptTOP these functions use."""

    inputs: Any

    def copyNumpyArray(self, array: np.ndarray) -> None: ...  # noqa: N802 - TouchDesigner API


_streams: dict[tuple[str, str], Any] = {}  # one stream per (operator path, name), across cooks


def cook_input(op: ScriptTop, stream: str = DEFAULT_INPUT, key: str = "") -> None:
    """onCook of the input Script TOP: send input 0 to sdbridge and pass it through."""
    if not op.inputs:
        return
    pixels = op.inputs[0].numpyArray(delayed=True)
    if pixels is None:  # delayed download: the first cook has no data yet
        return
    writer = _streams.get((key, stream))
    if writer is None:
        writer = _streams[(key, stream)] = InputStream(stream)
    writer.send(pixels)
    op.copyNumpyArray(np.ascontiguousarray(pixels))


def cook_output(op: ScriptTop, stream: str = DEFAULT_OUTPUT, key: str = "") -> None:
    """onCook of the output Script TOP: show the newest sdbridge frame (the last one if none)."""
    reader = _streams.get((key, stream))
    if reader is None:
        reader = _streams[(key, stream)] = OutputStream(stream)
    reader.poll()
    if reader.last is not None:
        op.copyNumpyArray(reader.last)


def close_all() -> None:
    """Release every stream (call from an Execute DAT's onExit, or when re-wiring)."""
    while _streams:
        _, stream = _streams.popitem()
        stream.close()


# -- control -----------------------------------------------------------------------------------

def load_osc_map(path: Path = OSC_MAP_FILE) -> dict[str, dict[str, Any]]:
    """param name → {address, type} from the generated map (plugins/control-surface)."""
    entries = json.loads(path.read_text(encoding="utf-8"))["addresses"]
    return {e["param"] or e["address"].rsplit("/", 1)[1]: e for e in entries}


class Control:
    """Send parameter changes to sdbridge from TouchDesigner.

    ``osc_out``: an OSC Out DAT (``op('oscout1')``) pointed at the daemon's OSC port (9000) — works
    everywhere, one message per parameter, only the parameters in the OSC map.
    ``zmq_endpoint``: the daemon's command socket; used when pyzmq (and sdbridge's control client)
    import in this Python — all-or-nothing ``set`` of any live parameter, with the daemon's reply.
    Exactly one is used; ``mode`` says which.
    """

    def __init__(self, osc_out: Any = None, zmq_endpoint: str | None = None,
                 osc_map: dict[str, dict[str, Any]] | None = None, timeout: float = 1.0) -> None:
        if (osc_out is None) == (zmq_endpoint is None):
            raise ValueError("give exactly one of osc_out (an OSC Out DAT) or zmq_endpoint")
        self.osc_out, self.mode = osc_out, "osc" if osc_out is not None else "zmq"
        self._client: Any = None
        if self.mode == "zmq":
            from bridge.control.client import ControlClient  # needs pyzmq + pyyaml in this Python

            self._client = ControlClient(zmq_endpoint, timeout=timeout)
        self.osc_map = osc_map if osc_map is not None else load_osc_map()

    def set(self, **changes: Any) -> dict[str, Any]:
        if self.mode == "zmq":
            return self._client.set(**changes)
        # Addresses that take a value: the mapped parameters plus strength (0..1 onto t_index_list).
        unknown = [name for name in changes if name not in self.osc_map or not self.osc_map[name]["type"]]
        if unknown:
            raise ValueError(f"not in the OSC map: {', '.join(unknown)} (fix: use zmq_endpoint "
                             f"for these, or one of {', '.join(n for n, e in self.osc_map.items() if e['type'])})")
        for name, value in changes.items():
            entry = self.osc_map[name]
            self.osc_out.sendOSC(entry["address"], _osc_args(entry["type"], value))
        return {"sent": sorted(changes)}

    def pause(self) -> None:
        self._command("pause")

    def resume(self) -> None:
        self._command("resume")

    def _command(self, name: str) -> None:
        if self.mode == "zmq":
            self._client.request(name)
        else:
            self.osc_out.sendOSC(self.osc_map[name]["address"], [1])

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _osc_args(type_tag: str, value: Any) -> list[Any]:
    """The OSC arguments of one value: ``i…`` (t_index_list) is the list as N integers."""
    if type_tag.endswith("…"):
        return [int(v) for v in value]
    return [_osc_value(type_tag, value)]


def _osc_value(type_tag: str, value: Any) -> Any:
    if type_tag == "f":
        return float(value)
    if type_tag == "i":
        return int(value)
    return str(value)
