"""NDI transport tests: pure helpers everywhere, real NDI on loopback between processes.

Peers run this file as a script (``python tests/test_ndi.py send NAME SECONDS`` etc.) so the
other end of every cross-process test is a separate process using the raw NDIlib binding.
Every test uses a unique sender name: other test runs on the same machine cannot interfere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # when run as a peer script
    sys.path.insert(0, str(REPO))

from bridge.errors import ConfigError, FrameTimeout, RuntimeMissingError, SourceNotFoundError  # noqa: E402
from bridge.frame import Frame, PixelFormat  # noqa: E402
from bridge.io import _ndi, ndi  # noqa: E402
from bridge.io._ndi import SourceInfo  # noqa: E402
from bridge.io.test_pattern import decode_counter, render_rgb, to_pixel_format  # noqa: E402

SIZE = 512
# NDI compresses (SpeedHQ, 4:2:2 chroma): flat areas come back within a few levels, bar edges
# differ more. A frame one step off differs by ~200 on 6% of pixels, so p99 separates them.
MEAN_TOL, P99_TOL = 6.0, 24.0


def _ndi_ready() -> str:
    status = ndi.availability()
    return "" if status.available else status.reason


requires_ndi = pytest.mark.skipif(bool(_ndi_ready()), reason=f"NDI runtime unavailable: {_ndi_ready()}")


def _unique_name(tag: str) -> str:
    return f"sdbridge-test-{tag}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _check_pattern(rgb: np.ndarray) -> int:
    """Decode the frame counter and check the pixels against the expected pattern, per channel."""
    counter = decode_counter(rgb)
    diff = np.abs(rgb.astype(np.int16) - render_rgb(rgb.shape[1], rgb.shape[0], counter))
    for channel in range(3):
        d = diff[..., channel]
        assert d.mean() <= MEAN_TOL, f"frame {counter} channel {channel}: mean error {d.mean():.2f}"
        assert np.percentile(d, 99) <= P99_TOL, f"frame {counter} channel {channel}: p99 error too big"
    return counter


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
    proc.wait(timeout=10)


def _wait_visible(name: str, timeout: float = 10.0) -> SourceInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ndi.match_source(name, ndi.scan("127.0.0.1"))
        if found:
            return found
    raise AssertionError(f"peer sender {name!r} never became visible")


# --------------------------------------------------------------------- pure helpers (any OS)


SOURCES = [SourceInfo("HOST (OBS)", "10.0.0.2:5961"), SourceInfo("HOST (OBS Preview)", "10.0.0.2:5962"),
           SourceInfo("OTHER (Resolume Arena)", "10.0.0.3:5961")]


@pytest.mark.parametrize("wanted, expected", [
    ("HOST (OBS)", "HOST (OBS)"),          # full name
    ("OBS", "HOST (OBS)"),                 # bracket part beats substring ambiguity
    ("preview", "HOST (OBS Preview)"),     # unique case-insensitive substring
    ("resolume", "OTHER (Resolume Arena)"),
    ("TouchDesigner", None),
])
def test_match_source(wanted: str, expected: str | None) -> None:
    found = ndi.match_source(wanted, SOURCES)
    assert (found.name if found else None) == expected


def test_match_source_ambiguous_substring_names_candidates() -> None:
    with pytest.raises(ConfigError, match="HOST \\(OBS\\).*HOST \\(OBS Preview\\)") as info:
        ndi.match_source("host", SOURCES)
    assert info.value.fields == ["source.name"]


def test_sender_part_and_rates_and_metadata() -> None:
    assert ndi.sender_part("A (b (c))") == "b (c)" and ndi.sender_part("plain") == "plain"
    assert ndi.frame_rate_fraction(30) == (30, 1)
    assert ndi.frame_rate_fraction(29.97) == (30000, 1001)
    assert ndi.frame_rate_fraction(59.94) == (60000, 1001)
    assert ndi.frame_rate_fraction(12.5) == (25, 2)
    assert ndi.parse_metadata('<sdbridge seq="4" t_ns="17" sent_ns="x"/>') == {"seq": 4, "t_ns": 17}
    assert ndi.parse_metadata("<other/>") == {}


@pytest.mark.parametrize("kwargs, field", [
    ({"name": ""}, "source.name"), ({"name": "x", "timeout": 0}, "source.timeout"),
    ({"name": "x", "reconnect_after": -1}, "source.reconnect_after"),
])
def test_source_bad_options(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ndi.NDISource(**kwargs)
    assert info.value.fields == [field]


@pytest.mark.parametrize("kwargs, field", [
    ({"name": " "}, "sink.name"), ({"frame_rate": 0}, "sink.frame_rate"),
    ({"pixel_format": "RGB"}, "sink.pixel_format"),
])
def test_sink_bad_options(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ndi.NDISink(**kwargs)
    assert info.value.fields == [field]


def test_unavailable_reason_when_ndilib_cannot_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ndi, "_lib", None)
    monkeypatch.setattr(_ndi, "_load_error", None)
    monkeypatch.setitem(sys.modules, "NDIlib", None)  # makes `import NDIlib` raise ImportError
    status = ndi.availability()
    assert not status.available and "cannot import NDIlib" in status.reason
    with pytest.raises(RuntimeMissingError, match="ndi-python"):
        ndi.NDISink("x").open()


# --------------------------------------------------------------------- real NDI, two processes


@pytest.mark.ndi
@requires_ndi
def test_source_receives_60_frames_in_order_from_raw_sender() -> None:
    name = _unique_name("src")
    peer = _spawn("send", name, "30")
    try:
        with ndi.NDISource(name, timeout=15) as src:
            counters, seqs = [], []
            for _ in range(60):
                frame = src.receive(timeout=5.0)
                assert frame.pixel_format in (PixelFormat.BGRA, PixelFormat.BGRX)
                assert frame.pixels.shape == (SIZE, SIZE, 4)
                counters.append(_check_pattern(frame.pixels[..., [2, 1, 0]]))
                seqs.append(frame.seq)
            assert src.connected_to is not None and src.connected_to.name.endswith(f"({name})")
    finally:
        _stop(peer)
    assert all(b > a for a, b in zip(counters, counters[1:])), f"frames out of order: {counters}"
    assert seqs == list(range(1, 61))


@pytest.mark.ndi
@requires_ndi
@pytest.mark.parametrize("pixel_format", ["BGRA", "UYVY"])
def test_sink_sends_60_frames_to_raw_receiver(pixel_format: str) -> None:
    name = _unique_name(f"sink-{pixel_format.lower()}")
    frames = 60
    with ndi.NDISink(name, frame_rate=30, pixel_format=pixel_format) as sink:
        full_name = sink.source_name
        peer = _spawn("recv", full_name, str(frames))
        try:
            deadline = time.monotonic() + 60
            i = 0
            while peer.poll() is None and time.monotonic() < deadline:
                pixels = to_pixel_format(render_rgb(SIZE, SIZE, i), PixelFormat.BGRA)
                sink.send(Frame(pixels, PixelFormat.BGRA, seq=i))
                i += 1
                time.sleep(1 / 30)  # pace like a 30 fps producer
            out, err = peer.communicate(timeout=10)
        finally:
            _stop(peer)
    assert peer.returncode == 0, err
    report = json.loads(out)
    counters = report["counters"]
    assert len(counters) == frames
    assert all(b > a for a, b in zip(counters, counters[1:])), f"frames out of order: {counters}"
    assert report["fourcc"] in ("BGRA", "BGRX")
    assert max(report["mean_err"]) <= MEAN_TOL and max(report["p99_err"]) <= P99_TOL, report
    assert report["meta_seq_matches_counter"] is True


@pytest.mark.ndi
@requires_ndi
def test_unknown_source_name_lists_what_was_found() -> None:
    name = _unique_name("present")
    peer = _spawn("send", name, "20")
    try:
        _wait_visible(name)
        missing = _unique_name("missing")
        src = ndi.NDISource(missing, timeout=3.0)
        with pytest.raises(SourceNotFoundError) as info:
            src.open()
        with pytest.raises(SourceNotFoundError):  # a failed open is retried, not "closed"
            src.receive(0.1)
    finally:
        _stop(peer)
    text = str(info.value)
    assert missing in text and f"({name})" in text and "extra_ips" in text


@pytest.mark.ndi
@requires_ndi
def test_discovery_sees_senders_in_several_processes() -> None:
    # Each NDI process on a host listens on port 5960 and one direct query reaches only one of
    # them; rotating finders must still find every sender.
    names = [_unique_name(f"multi{i}") for i in range(3)]
    peers = [_spawn("send", name, "20") for name in names]
    try:
        _wait_visible(names[0])
        found = {ndi.sender_part(s.name) for s in ndi.discover(timeout=3.0)}
        with ndi.NDISource(names[2], timeout=10) as src:
            counter = _check_pattern(src.receive(5.0).pixels[..., [2, 1, 0]])
    finally:
        for peer in peers:
            _stop(peer)
    assert set(names) <= found, f"missing: {set(names) - found}"
    assert counter >= 0


@pytest.mark.ndi
@requires_ndi
def test_source_survives_sender_restart() -> None:
    name = _unique_name("restart")
    peer = _spawn("send", name, "30")
    try:
        with ndi.NDISource(name, timeout=15, reconnect_after=0.5) as src:
            first = [_check_pattern(src.receive(5.0).pixels[..., [2, 1, 0]]) for _ in range(5)]
            _stop(peer)
            with pytest.raises(FrameTimeout, match="gone"):  # drain, then the gap shows
                for _ in range(200):
                    src.receive(1.0)
            peer = _spawn("send", name, "30", "100000")  # the new process counts from 100000
            again: list[int] = []
            deadline = time.monotonic() + 30
            while len(again) < 5 and time.monotonic() < deadline:
                try:
                    again.append(_check_pattern(src.receive(1.0).pixels[..., [2, 1, 0]]))
                except FrameTimeout:
                    continue
    finally:
        _stop(peer)
    assert len(first) == 5 and len(again) == 5, f"no frames after the sender came back: {again}"
    assert all(c >= 100000 for c in again), f"frames not from the restarted sender: {again}"
    assert all(b > a for a, b in zip(again, again[1:]))


@pytest.mark.ndi
@requires_ndi
def test_latency_bench_measures_between_processes() -> None:
    from bridge.bench.ndi_latency import measure

    result = measure(width=128, height=128, frames=10)
    assert set(result) == {"p50_ms", "p95_ms"}
    assert 0 < result["p50_ms"] <= result["p95_ms"]


@pytest.mark.ndi
@requires_ndi
def test_close_from_another_thread_while_receiving_is_safe() -> None:
    import threading

    from bridge.errors import TransportError

    src = ndi.NDISource("nobody", url="127.0.0.1:9", reconnect_after=0.1)  # direct URL: no discovery
    src.open()
    outcome: list[BaseException] = []

    def receive() -> None:
        try:
            while True:
                try:
                    src.receive(0.5)
                except FrameTimeout:
                    continue
        except BaseException as exc:  # noqa: BLE001 - collected for the assert
            outcome.append(exc)

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    time.sleep(0.3)
    src.close()  # the daemon's stop(): must not free the receiver under a running capture
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], TransportError) and "closed" in str(outcome[0])


# --------------------------------------------------------------------- peer processes


def _peer_send(name: str, seconds: float, first: int = 0) -> None:
    """Raw NDIlib sender: the test pattern counting from ``first`` at 30 fps (NDI clocks it)."""
    lib = _ndi.lib()
    sender = lib.send_create(lib.SendCreate(name, None, True, False))
    frame = lib.VideoFrameV2()
    start, i = time.monotonic(), first
    while time.monotonic() - start < seconds:
        pixels = to_pixel_format(render_rgb(SIZE, SIZE, i), PixelFormat.BGRA)
        frame.data = pixels
        frame.FourCC = lib.FOURCC_VIDEO_TYPE_BGRA
        frame.frame_rate_N, frame.frame_rate_D = 30, 1
        lib.send_send_video_v2(sender, frame)
        i += 1
    lib.send_destroy(sender)


def _peer_recv(full_name: str, frames: int) -> None:
    """Raw NDIlib receiver: prints decoded counters and per-channel errors as JSON."""
    lib = _ndi.lib()
    source = None
    deadline = time.monotonic() + 20
    while source is None and time.monotonic() < deadline:
        # A fresh finder each time: one direct query reaches only one NDI process on the host.
        finder = lib.find_create_v2(lib.FindCreate(True, None, "127.0.0.1"))
        lib.find_wait_for_sources(finder, 100)
        source = next((s for s in lib.find_get_current_sources(finder) if s.ndi_name == full_name), None)
        lib.find_destroy(finder)
    if source is None:
        sys.exit(f"peer: {full_name!r} not found")
    settings = lib.RecvCreateV3()
    settings.color_format = lib.RECV_COLOR_FORMAT_BGRX_BGRA
    receiver = lib.recv_create_v3(settings)
    lib.recv_connect(receiver, source)
    counters, means, p99s, fourcc, meta_ok = [], [], [], "", True
    while len(counters) < frames and time.monotonic() < deadline + 40:
        kind, video, _, _ = lib.recv_capture_v2(receiver, 1000, True, False, False)
        if kind != lib.FRAME_TYPE_VIDEO:
            continue
        bgr = np.array(video.data)[..., :3]
        fourcc = video.FourCC.name.replace("FOURCC_VIDEO_TYPE_", "")
        meta = ndi.parse_metadata(str(video.metadata or ""))
        lib.recv_free_video_v2(receiver, video)
        rgb = bgr[..., ::-1]
        counter = decode_counter(rgb)
        meta_ok = meta_ok and meta.get("seq") == counter
        diff = np.abs(rgb.astype(np.int16) - render_rgb(SIZE, SIZE, counter))
        counters.append(counter)
        means.append(float(diff.reshape(-1, 3).mean(axis=0).max()))
        p99s.append(float(np.percentile(diff.reshape(-1, 3), 99, axis=0).max()))
    lib.recv_destroy(receiver)
    print(json.dumps({"counters": counters, "mean_err": means, "p99_err": p99s, "fourcc": fourcc,
                      "meta_seq_matches_counter": meta_ok}))


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "send":
        _peer_send(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    elif role == "recv":
        _peer_recv(sys.argv[2], int(sys.argv[3]))
