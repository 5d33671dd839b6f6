"""Shared-memory transport across real processes: seqlock, faults, generations, resource tracker."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from bridge.errors import ConfigError, FrameTimeout, ProtocolError
from bridge.frame import Frame, PixelFormat
from bridge.io import create_sink, create_source, is_available
from bridge.io import shm_protocol as proto
from bridge.io.shared_memory import SharedMemorySink, SharedMemorySource
from bridge.io.shm_protocol import ShmProtocolError, ShmReader, ShmTimeout, ShmWriter

REPO = Path(__file__).resolve().parents[1]
RING = 16  # distinct precomputed frames: the writer spends its time copying, not generating
SPAWN = mp.get_context("spawn")


# --- helpers (module level: spawned children import them) ------------------------------------


def _ring(width: int, height: int) -> list[np.ndarray]:
    """Random frames; bytes 0..3 hold the ring index, 4..7 the CRC32 of bytes 8.. (the checksum)."""
    frames = []
    for k in range(RING):
        px = np.random.default_rng(k).integers(0, 256, (height, width, 4), dtype=np.uint8)
        flat = px.reshape(-1)
        flat[:4] = np.frombuffer(struct.pack("<I", k), np.uint8)
        flat[4:8] = np.frombuffer(struct.pack("<I", zlib.crc32(flat[8:])), np.uint8)
        frames.append(px)
    return frames


def _intact(px: np.ndarray, info: proto.FrameInfo) -> bool:
    flat = px.reshape(-1)
    k, crc = struct.unpack("<II", flat[:8].tobytes())
    return k == info.seq % RING and crc == zlib.crc32(flat[8:])


def _write_frames(name: str, width: int, height: int, count: int | None, seq_base: int,
                  hold: object | None, close: bool) -> None:
    """Writer child: ``count`` frames (None: until killed), then wait for ``hold`` (an Event)."""
    frames = _ring(width, height)
    writer = ShmWriter(name, width, height, "BGRA")
    i = 0
    while count is None or i < count:
        writer.write(frames[(seq_base + i) % RING], seq=seq_base + i)
        i += 1
    if hold is not None:
        hold.wait(60)  # type: ignore[attr-defined]
    if close:
        writer.close()
    else:
        os._exit(0)  # leave the segment behind like a crash


def _busy_reader(name: str, conn: object) -> None:
    """Reader child: reads as fast as it can until told to report."""
    reader = ShmReader(name)
    reader.read_latest(timeout=30)
    conn.send("reading")  # type: ignore[attr-defined]
    while not conn.poll():  # type: ignore[attr-defined]
        try:
            reader.read_latest(timeout=0.01)
        except ShmTimeout:
            pass
    conn.recv()  # type: ignore[attr-defined]
    conn.send("ready")  # type: ignore[attr-defined]
    px, info = reader.read_latest(timeout=30)
    conn.send((info.frame_index, reader.frames_skipped, _intact(px, info)))  # type: ignore[attr-defined]


def _sink_child(name: str, count: int, hold: object) -> None:
    with SharedMemorySink(name, width=32, height=16) as sink:
        for i in range(count):
            px = np.zeros((16, 32, 4), np.uint8)
            px[..., 0], px[..., 1], px[..., 2], px[..., 3] = 10, 20, 30 + i, 255  # B G R A
            sink.send(Frame(px, PixelFormat.BGRA, seq=1000 + i, timestamp_ns=5 + i))
        hold.wait(60)  # type: ignore[attr-defined]


def _remove(name: str) -> None:
    try:
        shm = proto._open_untracked(name, create=False)
    except FileNotFoundError:
        return
    proto._unlink(shm)
    shm.close()


def _odd_slots(name: str) -> int:
    """How many slots a dead writer left mid-frame (odd sequence)."""
    seg = proto._Segment(proto._open_untracked(name, create=False), name)
    try:
        slots, header, slot_size = int(seg.h32[9]), int(seg.h32[3]), int(seg.h64[5])
        seqs = [struct.unpack_from("<Q", seg.shm.buf, header + k * slot_size)[0] for k in range(slots)]
        return sum(seq & 1 for seq in seqs)
    finally:
        seg.close()


@pytest.fixture
def name() -> Iterator[str]:
    stream = f"sdbt_{secrets.token_hex(5)}"
    yield stream
    _remove(stream)


def _start(target: object, *args: object) -> mp.process.BaseProcess:
    proc = SPAWN.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


# --- protocol -------------------------------------------------------------------------------


def test_cross_process_write_and_read(name: str) -> None:
    hold = SPAWN.Event()
    proc = _start(_write_frames, name, 64, 48, 5, 100, hold, True)
    try:
        reader = ShmReader(name)
        px, info = reader.read_latest(timeout=30)
        while info.frame_index < 5:
            px, info = reader.read_latest(timeout=10)
        assert px.shape == (48, 64, 4) and _intact(px, info)
        assert (info.seq, info.width, info.height, info.pixel_format) == (104, 64, 48, "BGRA")
        assert info.generation == 1 and info.timestamp_ns > 0
        np.testing.assert_array_equal(px, _ring(64, 48)[104 % RING])
        with pytest.raises(ShmTimeout, match="no new frame"):  # never the same frame twice
            reader.read_latest(timeout=0.05)
        reader.close()
    finally:
        hold.set()
        proc.join(30)
    assert proc.exitcode == 0
    with pytest.raises(ShmTimeout, match="no live stream"):  # the writer unlinked on close
        ShmReader(name).read_latest(timeout=0.05)


def test_10000_frames_with_concurrent_reader_are_never_torn(name: str) -> None:
    total, hold = 10_000, SPAWN.Event()
    proc = _start(_write_frames, name, 128, 128, total, 0, hold, True)
    reader = ShmReader(name)
    torn = read = 0
    first = last = None
    try:
        while last is None or last.frame_index < total:
            px, info = reader.read_latest(timeout=30)
            torn += not _intact(px, info)
            assert last is None or info.frame_index > last.frame_index
            first, last, read = first or info, info, read + 1
    finally:
        hold.set()
        proc.join(30)
    assert torn == 0
    assert read == reader.frames_read > 1
    # Every published frame was either read or counted as skipped.
    assert reader.frames_read + reader.frames_skipped == last.frame_index - first.frame_index + 1
    assert last.seq == total - 1


@pytest.mark.skipif(sys.platform == "win32", reason="freezes the reader with SIGSTOP (POSIX only)")
def test_stopped_reader_never_slows_the_writer(name: str) -> None:
    frames = _ring(256, 256)
    writer = ShmWriter(name, 256, 256)
    writer.write(frames[0], seq=0)
    ours, theirs = SPAWN.Pipe()
    proc = _start(_busy_reader, name, theirs)
    try:
        assert ours.poll(60) and ours.recv() == "reading"
        for i in range(1, 300):  # the reader is now copying frames in its loop
            writer.write(frames[i % RING], seq=i)
        os.kill(proc.pid, signal.SIGSTOP)  # frozen wherever it was, possibly mid-copy
        start = writer.frames_written
        for i in range(start, start + 3000):
            writer.write(frames[i % RING], seq=i)
        assert writer.frames_written == start + 3000  # completed with the reader frozen
        os.kill(proc.pid, signal.SIGCONT)
        ours.send("report")
        assert ours.poll(30) and ours.recv() == "ready"
        writer.write(frames[writer.frames_written % RING], seq=writer.frames_written)
        assert ours.poll(30)
        index, skipped, intact = ours.recv()
        assert index >= start + 3000 and intact
        assert skipped >= 2999  # frames written while it was frozen were skipped, not queued
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.join(30)
        writer.close()


def test_writer_killed_mid_frame_never_yields_a_torn_frame(name: str) -> None:
    reader = ShmReader(name, reattach_s=0.05)
    torn = mid_frame = 0
    generations: set[int] = set()
    rounds = 8
    for _ in range(rounds):
        proc = _start(_write_frames, name, 256, 256, None, 0, None, False)
        newest_generation = max(generations, default=0)
        got = 0
        while got < 20:  # frames from this writer (a new generation)
            px, info = reader.read_latest(timeout=30)
            torn += not _intact(px, info)
            if info.generation > newest_generation:
                got += 1
                generations.add(info.generation)
        proc.kill()
        proc.join(30)
        mid_frame += _odd_slots(name) > 0  # the dead writer's slot headers, read raw
        while True:  # drain: at most the last complete frame, never a half-written one
            try:
                px, info = reader.read_latest(timeout=0.1)
            except ShmTimeout:
                break
            torn += not _intact(px, info)
    assert torn == 0
    assert len(generations) == rounds  # each restarted writer took over with a new generation
    assert reader.reattaches >= rounds - 1
    assert mid_frame >= 1  # at least one kill really landed inside a frame copy


def test_size_and_format_change_is_a_new_generation(name: str) -> None:
    reader = ShmReader(name)
    with pytest.raises(ShmTimeout, match="does not exist or is not live"):
        reader.open(timeout=0.02)  # no writer yet
    with ShmWriter(name, 64, 48) as writer:
        assert reader.open() == reader.open() == writer.layout
        writer.write(np.full((48, 64, 4), 1, np.uint8))
        px, info = reader.read_latest(timeout=5)
        assert px.shape == (48, 64, 4) and info.generation == 1
        writer.write(np.full((96, 128, 4), 2, np.uint8))  # larger: new segment under the name
        px, info = reader.read_latest(timeout=5)
        assert px.shape == (96, 128, 4) and info.generation == 2 and int(px[0, 0, 0]) == 2
        writer.write(np.full((16, 32, 4), 3, np.uint8))  # smaller: re-initialised in place
        px, info = reader.read_latest(timeout=5)
        assert px.shape == (16, 32, 4) and info.generation == 3 and int(px[0, 0, 0]) == 3
        assert writer.resize(32, 16, "RGB") == 4
        writer.write(np.full((16, 32, 3), 4, np.uint8))
        px, info = reader.read_latest(timeout=5)
        assert px.shape == (16, 32, 3) and info.pixel_format == "RGB" and info.generation == 4
    assert reader.reattaches == 3


def test_reader_reattaches_after_a_clean_writer_restart(name: str) -> None:
    reader = ShmReader(name, reattach_s=0.05)
    for seq_base in (100, 200):
        hold = SPAWN.Event()
        proc = _start(_write_frames, name, 32, 32, 3, seq_base, hold, True)
        px, info = reader.read_latest(timeout=30)
        while info.seq < seq_base + 2:  # up to this writer's last frame
            assert info.seq >= seq_base and _intact(px, info)
            px, info = reader.read_latest(timeout=30)
        hold.set()
        proc.join(30)
        with pytest.raises(ShmTimeout):
            reader.read_latest(timeout=0.1)
    assert reader.reattaches >= 1


def test_reader_finds_a_new_segment_when_the_name_was_replaced(name: str) -> None:
    # Writer 1 dies without retiring its segment and the name is removed (e.g. `rm /dev/shm/..`):
    # the reader's mapping still looks live, so only re-opening the name reveals writer 2.
    reader = ShmReader(name, reattach_s=0.05)
    proc = _start(_write_frames, name, 32, 32, 3, 100, None, False)
    px, info = reader.read_latest(timeout=30)
    proc.join(30)
    _remove(name)
    hold = SPAWN.Event()
    proc = _start(_write_frames, name, 32, 32, 3, 200, hold, True)
    try:
        px, info = reader.read_latest(timeout=30)
        while info.seq < 200:  # writer 1's remaining frames first, if any
            assert info.seq >= 100 and _intact(px, info)
            px, info = reader.read_latest(timeout=30)
        assert _intact(px, info) and reader.reattaches == 1
    finally:
        hold.set()
        proc.join(30)


@pytest.mark.parametrize("content,needle", [
    (b"NOTOURS!" + bytes(4088), "not an sdbridge stream"),
    (proto.MAGIC + struct.pack("<I", 99) + bytes(4084), "protocol version 99"),
    (bytes(64), "smaller than the 256-byte header"),
])
def test_foreign_segment_is_refused_and_never_written(name: str, content: bytes, needle: str) -> None:
    shm = proto._open_untracked(name, create=True, size=len(content))
    shm.buf[: len(content)] = content
    try:
        with pytest.raises(ShmProtocolError, match=needle) as info:
            ShmWriter(name, 8, 8)
        assert info.value.fix
        with pytest.raises(ShmProtocolError, match=needle):
            ShmReader(name).read_latest(timeout=0.1)
        with pytest.raises(ProtocolError, match=needle):
            SharedMemorySource(name).receive(0.1)
        with pytest.raises(ProtocolError, match=needle):
            SharedMemorySink(name).send(Frame(np.zeros((8, 8, 4), np.uint8), PixelFormat.BGRA))
        assert bytes(shm.buf[: len(content)]) == content
    finally:
        shm.close()


def test_inconsistent_header_is_a_clear_reader_error(name: str) -> None:
    with ShmWriter(name, 16, 16) as writer:
        writer.write(np.zeros((16, 16, 4), np.uint8))
        shm = proto._open_untracked(name, create=False)
        shm.buf[40:48] = struct.pack("<Q", 1 << 40)  # slot size far beyond the segment
        shm.close()
        with pytest.raises(ShmProtocolError, match="do not fit"):
            ShmReader(name).read_latest(timeout=0.1)


def test_resource_tracker_does_not_unlink_a_segment_another_process_created(name: str) -> None:
    frame = np.zeros((16, 16, 4), np.uint8)
    with ShmWriter(name, 16, 16) as writer:
        writer.write(frame, seq=1)
        code = ("import sys; from bridge.io.shm_protocol import ShmReader; r = ShmReader(sys.argv[1]); "
                "px, info = r.read_latest(20); r.close(); print(info.seq)")
        out = subprocess.run([sys.executable, "-c", code, name], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "1" and "leaked" not in out.stderr
        if sys.platform.startswith("linux"):
            assert os.path.exists(f"/dev/shm/{name}")
        writer.write(frame, seq=2)
        assert ShmReader(name).read_latest(timeout=5)[1].seq == 2


def test_client_module_is_standalone_without_torch(name: str, tmp_path: Path) -> None:
    shutil.copy(REPO / "bridge" / "io" / "shm_protocol.py", tmp_path / "shm_protocol.py")
    standalone = ("import json, sys; sys.path.insert(0, sys.argv[2]); import shm_protocol as p; "
                  "px, info = p.ShmReader(sys.argv[1]).read_latest(20); "
                  "print(json.dumps([info.seq, int(px.sum()), [m for m in ('torch', 'diffusers', 'bridge') "
                  "if m in sys.modules]]))")
    packaged = ("import json, sys; from bridge.io import shm_protocol; "
                "print(json.dumps([m for m in ('torch', 'diffusers') if m in sys.modules]))")
    with ShmWriter(name, 8, 4, "RGB") as writer:
        writer.write(np.full((4, 8, 3), 2, np.uint8), seq=7)
        out = subprocess.run([sys.executable, "-c", standalone, name, str(tmp_path)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [7, 4 * 8 * 3 * 2, []]
    out = subprocess.run([sys.executable, "-c", packaged], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 31, "with space"])
def test_unportable_names_are_refused(bad: str) -> None:
    with pytest.raises(proto.ShmFormatError, match="not portable"):
        ShmWriter(bad, 8, 8)
    with pytest.raises(ConfigError, match="name"):
        SharedMemorySource(bad)


def test_writer_rejects_wrong_pixels(name: str) -> None:
    with ShmWriter(name, 8, 8) as writer:
        with pytest.raises(proto.ShmFormatError, match="uint8 H×W×4"):
            writer.write(np.zeros((8, 8, 3), np.uint8))
        with pytest.raises(proto.ShmFormatError, match="uint8"):
            writer.write(np.zeros((8, 8, 4), np.float32))


# --- adapters -------------------------------------------------------------------------------


def test_sink_to_source_across_processes(name: str) -> None:
    hold = SPAWN.Event()
    proc = _start(_sink_child, name, 3, hold)
    try:
        with SharedMemorySource(name, pixel_format="RGB") as source:
            frame = source.receive(30)
            while frame.seq < 1002:
                frame = source.receive(10)
            assert frame.pixel_format is PixelFormat.RGB and frame.pixels.shape == (16, 32, 3)
            np.testing.assert_array_equal(frame.pixels[0, 0], [32, 20, 10])
            assert frame.source == f"shm:{name}"
            assert source.last_info is not None and source.last_info.timestamp_ns == 7
    finally:
        hold.set()
        proc.join(30)


def test_source_timeout_is_frame_timeout(name: str) -> None:
    with SharedMemorySource(name) as source:
        with pytest.raises(FrameTimeout, match="no live stream") as info:
            source.receive(0.05)
    assert info.value.fix


def test_registry_builds_shm_transports(name: str) -> None:
    assert is_available("shm").available
    sink = create_sink("shm", name=name, pixel_format="BGRA")
    source = create_source("shm", name=name)
    with sink, source:
        sink.send(Frame(np.full((4, 6, 3), 9, np.uint8), PixelFormat.RGB, seq=3))
        frame = source.receive(5)
        assert frame.pixel_format is PixelFormat.BGRA and frame.seq == 3
        np.testing.assert_array_equal(frame.pixels[0, 0], [9, 9, 9, 255])
        sink.send(Frame(np.zeros((4, 6, 2), np.uint8), PixelFormat.UYVY, seq=4))  # converted
        assert source.receive(5).seq == 4 and sink.generation == 1


def test_bench_transport_measures_between_processes() -> None:
    from bridge.bench import transport

    result = transport.measure_shm(64, 64, 12)
    assert set(result) >= {"p50_ms", "p95_ms", "fps", "memcpy_ms", "shm_p50_over_memcpy"}
    assert result["latency_samples"] >= 1 and result["fps"] > 0
    assert 0 < result["p50_ms"] <= result["p95_ms"]
    assert result["shm_p50_over_memcpy"] == pytest.approx(result["p50_ms"] / result["memcpy_ms"])


def test_a_writer_that_was_taken_over_stops_writing(name: str) -> None:
    first = ShmWriter(name, 8, 8)
    first.write(np.zeros((8, 8, 4), np.uint8))
    with ShmWriter(name, 8, 8) as second:  # takes the stream over in place, generation 2
        assert second.generation == 2
        with pytest.raises(ShmProtocolError, match="another writer took over"):
            first.write(np.ones((8, 8, 4), np.uint8))
        with pytest.raises(ShmProtocolError, match="another writer took over"):
            first.write(np.ones((4, 4, 4), np.uint8))  # not even a resize
        first.close()  # must neither retire nor unlink the second writer's stream
        second.write(np.full((8, 8, 4), 5, np.uint8), seq=9)
        px, info = ShmReader(name).read_latest(timeout=5)
        assert info.seq == 9 and info.generation == 2 and int(px[0, 0, 0]) == 5


def test_a_blank_segment_is_not_ready_rather_than_foreign(name: str) -> None:
    # What a reader sees between the writer's create and its first header write.
    shm = proto._open_untracked(name, create=True, size=4096)
    try:
        with pytest.raises(ShmTimeout, match="header stayed all zeros"):
            ShmReader(name).read_latest(timeout=0.05)
        with pytest.raises(ShmProtocolError, match="not an sdbridge stream"):
            ShmWriter(name, 8, 8)  # a writer still never writes into it
        assert bytes(shm.buf) == bytes(4096)
    finally:
        shm.close()
