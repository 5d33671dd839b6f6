"""HTTP preview sink over real sockets: MJPEG parts, single JPEG, page, bounds, control form."""

from __future__ import annotations

import http.client
import io
import json
import socket
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from bridge.control.target import StateTarget
from bridge.errors import ConfigError, TransportError
from bridge.frame import Frame, PixelFormat
from bridge.frame_convert import convert
from bridge.io import create_sink, is_available
from bridge.io.http_preview import BOUNDARY, HttpPreviewSink, _LatestFrame, form_fields
from bridge.params import LIVE_PARAMS, REBUILD_PARAMS


def solid(rgb: tuple[int, int, int], fmt: PixelFormat = PixelFormat.BGRA, size: int = 64,
          seq: int = 0) -> Frame:
    order = {"R": rgb[0], "G": rgb[1], "B": rgb[2], "A": 255, "X": 255}
    px = np.empty((size, size, fmt.channels), np.uint8)
    for i, ch in enumerate(fmt.value):
        px[:, :, i] = order[ch]
    return Frame(px, fmt, seq=seq)


def decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)


def assert_colour(jpeg: bytes, rgb: tuple[int, int, int], size: int = 64) -> None:
    img = decode(jpeg)
    assert img.shape == (size, size, 3)
    assert np.abs(img.mean(axis=(0, 1)) - np.array(rgb)).max() < 6, img.mean(axis=(0, 1))


@pytest.fixture
def sink() -> Iterator[HttpPreviewSink]:
    s = HttpPreviewSink(port=0)
    s.open()
    yield s
    s.close()


class MjpegReader:
    """A minimal multipart reader on a raw socket (what a browser does)."""

    def __init__(self, port: int, path: str = "/stream.mjpg") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        self.file = self.sock.makefile("rb")
        status = self.file.readline()
        assert b" 200 " in status, status
        self.headers = self._read_headers()

    def _read_headers(self) -> dict[str, str]:
        headers = {}
        while (line := self.file.readline().strip()):
            key, _, value = line.decode().partition(":")
            headers[key.lower()] = value.strip()
        return headers

    def next_part(self) -> bytes:
        boundary = self.file.readline().strip()
        assert boundary == f"--{BOUNDARY}".encode(), boundary
        part = self._read_headers()
        assert part["content-type"] == "image/jpeg"
        body = self.file.read(int(part["content-length"]))
        assert self.file.read(2) == b"\r\n"
        return body

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def get(port: int, path: str, method: str = "GET", body: Any = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


def test_registered_and_available() -> None:
    assert is_available("http").available
    s = create_sink("http", port=0)
    assert isinstance(s, HttpPreviewSink)


def test_mjpeg_stream_follows_frames(sink: HttpPreviewSink) -> None:
    sink.send(solid((255, 0, 0)))
    reader = MjpegReader(sink.port)
    try:
        assert reader.headers["content-type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        assert_colour(reader.next_part(), (255, 0, 0))
        sink.send(solid((0, 0, 255)))
        assert_colour(reader.next_part(), (0, 0, 255))
    finally:
        reader.close()


@pytest.mark.parametrize("fmt", [f for f in PixelFormat if f is not PixelFormat.UYVY])
def test_every_packed_format_encodes_true_colour(sink: HttpPreviewSink, fmt: PixelFormat) -> None:
    sink.send(solid((200, 40, 90), fmt))
    status, headers, body = get(sink.port, "/frame.jpg")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert_colour(body, (200, 40, 90))


def test_uyvy_encodes_through_bt709_conversion(sink: HttpPreviewSink) -> None:
    rgb = solid((200, 40, 90), PixelFormat.RGB).pixels
    sink.send(Frame(convert(rgb, PixelFormat.RGB, PixelFormat.UYVY), PixelFormat.UYVY))
    assert_colour(get(sink.port, "/frame.jpg")[2], (200, 40, 90))


def test_frame_jpg_before_first_frame_is_503(sink: HttpPreviewSink) -> None:
    status, _, body = get(sink.port, "/frame.jpg")
    assert status == 503 and b"no frame yet" in body


def test_page_fills_window_on_black(sink: HttpPreviewSink) -> None:
    status, headers, body = get(sink.port, "/")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert 'src="/stream.mjpg"' in page
    assert "background:#000" in page and "overflow:hidden" in page and "object-fit:contain" in page
    assert get(sink.port, "/nope")[0] == 404
    assert get(sink.port, "/control")[0] == 404  # controls are off by default


def test_jpeg_encoded_once_per_frame_for_many_clients(sink: HttpPreviewSink) -> None:
    readers = [MjpegReader(sink.port) for _ in range(3)]
    try:
        for i, colour in enumerate([(255, 0, 0), (0, 255, 0)], start=1):
            sink.send(solid(colour))
            for r in readers:
                assert_colour(r.next_part(), colour)
            assert sink.frames_encoded == i
        assert sink.clients == 3
    finally:
        for r in readers:
            r.close()


def test_stalled_client_never_blocks_send_and_others_get_newest(sink: HttpPreviewSink) -> None:
    stalled = MjpegReader(sink.port)  # connects, then never reads
    try:
        noise = np.random.default_rng(0).integers(0, 255, (512, 512, 4), dtype=np.uint8)
        for i in range(40):  # ~40 large JPEGs: far more than the socket buffers hold
            sink.send(Frame(noise.copy(), PixelFormat.BGRA, seq=i))
        sink.send(solid((0, 255, 0), size=512))
        fresh = MjpegReader(sink.port)
        try:
            assert_colour(fresh.next_part(), (0, 255, 0), size=512)
        finally:
            fresh.close()
    finally:
        stalled.close()


def test_latest_slot_skips_to_newest() -> None:
    latest = _LatestFrame(quality=80)
    assert latest.jpeg() is None
    for i in range(10):
        latest.put(solid((i * 20, 0, 0), seq=i))
    assert latest.wait_newer(1, timeout=0.01) == 10
    seq, jpeg = latest.jpeg()  # type: ignore[misc]
    assert seq == 10 and latest.frames_encoded == 1
    assert_colour(jpeg, (180, 0, 0))
    assert latest.jpeg() == (seq, jpeg) and latest.frames_encoded == 1


def test_max_clients_is_enforced() -> None:
    s = HttpPreviewSink(port=0, max_clients=1)
    s.open()
    try:
        s.send(solid((1, 2, 3)))
        first = MjpegReader(s.port)
        first.next_part()
        status, _, body = get(s.port, "/stream.mjpg")
        assert status == 503 and b"max_clients=1" in body
        first.close()
    finally:
        s.close()


def test_close_ends_streams_and_frees_port() -> None:
    s = HttpPreviewSink(port=0)
    s.open()
    port = s.port
    s.send(solid((9, 9, 9)))
    reader = MjpegReader(port)
    reader.next_part()
    s.close()
    assert reader.file.read() == b""  # server ended the multipart response
    reader.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    s.close()  # idempotent
    s.open()  # reopened (the daemon does this after a sink failure): streams work again
    try:
        s.send(solid((0, 200, 0)))
        again = MjpegReader(s.port)  # a new viewer starts with the newest frame
        assert_colour(again.next_part(), (0, 200, 0))
        again.close()
    finally:
        s.close()


def test_non_loopback_needs_allow_remote() -> None:
    with pytest.raises(ConfigError) as err:
        HttpPreviewSink(host="0.0.0.0", port=0)
    assert err.value.fields == ["sink.host"] and "allow_remote" in str(err.value)
    remote = HttpPreviewSink(host="0.0.0.0", port=0, allow_remote=True)
    remote.open()
    try:
        assert get(remote.port, "/")[0] == 200
    finally:
        remote.close()


def test_bad_options_all_reported() -> None:
    with pytest.raises(ConfigError) as err:
        HttpPreviewSink(port=70000, quality=0, max_clients=0)
    assert set(err.value.fields) == {"sink.port", "sink.quality", "sink.max_clients"}


def test_port_in_use_says_what_to_do(sink: HttpPreviewSink) -> None:
    with pytest.raises(TransportError) as err:
        HttpPreviewSink(port=sink.port).open()
    assert "sink.port" in str(err.value)


# -- control form --------------------------------------------------------------------------------

class RecordingTarget(StateTarget):
    """The real state-backed control target, recording what reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def set(self, changes: Any) -> dict[str, Any]:
        self.calls.append(dict(changes))
        return super().set(changes)


@pytest.fixture
def control_sink() -> Iterator[tuple[HttpPreviewSink, RecordingTarget]]:
    target = RecordingTarget()
    s = HttpPreviewSink(port=0, controls=True, control=target)
    s.open()
    yield s, target
    s.close()


def post_set(port: int, payload: Any, ctype: str = "application/json") -> tuple[int, dict[str, Any]]:
    status, _, body = get(port, "/control/set", "POST", json.dumps(payload),
                          {"Content-Type": ctype})
    return status, json.loads(body)


def test_form_has_one_input_per_live_parameter(control_sink: Any) -> None:
    sink, _ = control_sink
    status, _, body = get(sink.port, "/control")
    page = body.decode()
    assert status == 200
    for name in LIVE_PARAMS:
        assert f'name="{name}"' in page
    for name in REBUILD_PARAMS:
        assert f'name="{name}"' not in page
    assert [f["name"] for f in form_fields()] == list(LIVE_PARAMS)


def test_set_is_validated_then_forwarded(control_sink: Any) -> None:
    sink, target = control_sink
    version = target.get_state()["version"]
    status, reply = post_set(sink.port, {"changes": {"prompt": "a dog", "guidance_scale": 2}})
    assert status == 200 and reply["ok"] is True and reply["result"]["version"] > version
    assert target.calls == [{"prompt": "a dog", "guidance_scale": 2.0}]
    status, _, body = get(sink.port, "/control/state")
    state = json.loads(body)["result"]
    assert status == 200 and state["params"]["prompt"] == "a dog"
    assert state["params"]["guidance_scale"] == 2.0


def test_invalid_set_names_every_field_and_is_not_forwarded(control_sink: Any) -> None:
    sink, target = control_sink
    status, reply = post_set(sink.port, {"changes": {"guidance_scale": 99, "bogus": 1}})
    assert status == 400 and reply["ok"] is False
    assert reply["error"]["code"] == "invalid_config"
    assert "guidance_scale=99" in reply["error"]["message"] and "bogus" in reply["error"]["message"]
    status, reply = post_set(sink.port, {"nochanges": 1})
    assert status == 400 and reply["error"]["code"] == "invalid_config"
    assert target.calls == []


def test_set_refuses_non_json_and_foreign_host(control_sink: Any) -> None:
    sink, target = control_sink
    status, reply = post_set(sink.port, {"changes": {"delta": 1.0}}, ctype="text/plain")
    assert status == 415 and reply["error"]["code"] == "bad_request"
    status, _, body = get(sink.port, "/control/set", "POST", json.dumps({"changes": {"delta": 1.0}}),
                          {"Content-Type": "application/json", "Host": "evil.example:80"})
    assert status == 403 and b"Host header" in body
    status, _, body = get(sink.port, "/control/set", "POST", b"{not json",
                          {"Content-Type": "application/json"})
    assert status == 400 and b"not JSON" in body
    assert target.calls == []


def test_control_errors_from_the_daemon_are_shown() -> None:
    class Failing(StateTarget):
        def set(self, changes: Any) -> dict[str, Any]:
            raise TransportError("daemon is not answering", fix="start sdbridge serve")

    s = HttpPreviewSink(port=0, controls=True, control=Failing())
    s.open()
    try:
        status, reply = post_set(s.port, {"changes": {"delta": 0.5}})
        assert status == 502 and reply["error"]["code"] == "transport_error"
        assert "start sdbridge serve" in reply["error"]["message"]
    finally:
        s.close()


def test_controls_without_target_explain_fix() -> None:
    s = HttpPreviewSink(port=0, controls=True)
    s.open()
    try:
        status, reply = post_set(s.port, {"changes": {"delta": 0.5}})
        assert status == 502 and "attach" in reply["error"]["message"]
        target = StateTarget()
        s.attach_control(target)
        status, reply = post_set(s.port, {"changes": {"delta": 0.5}})
        assert status == 200 and reply["ok"] is True
        assert target.get_state()["params"]["delta"] == 0.5
    finally:
        s.close()


# -- in a real daemon ----------------------------------------------------------------------------

def test_daemon_serves_its_output_and_the_form_drives_it() -> None:
    """Test pattern -> identity daemon -> http sink, with the daemon as the form's target (the
    daemon hands itself to sinks that have ``attach_control``)."""
    from bridge.config import validate_preset
    from bridge.runtime.daemon import Daemon
    from bridge.runtime.pipelines import identity_factory

    preset = validate_preset({
        "version": 1, "model": {"id": "tiny", "device": "cpu", "dtype": "float32"},
        "width": 64, "height": 64, "source": {"kind": "test_pattern", "width": 64, "height": 64,
                                              "fps": 30},
        "sink": [{"kind": "http", "port": 0, "controls": True}], "control": {"enabled": False}})
    daemon = Daemon(preset, pipeline_factory=identity_factory)
    daemon.start()
    try:
        sink = daemon.sinks.sinks[0]
        assert isinstance(sink, HttpPreviewSink)
        assert sink._control is daemon  # the daemon hands itself to the form at open
        reader = MjpegReader(sink.port)
        try:
            first, second = decode(reader.next_part()), decode(reader.next_part())
            assert first.shape == (64, 64, 3) and not np.array_equal(first, second)  # moving bars
        finally:
            reader.close()
        status, reply = post_set(sink.port, {"changes": {"prompt": "from the form"}})
        assert status == 200 and reply["ok"] is True
        assert daemon.get_state()["params"]["prompt"] == "from the form"
    finally:
        daemon.stop()
