"""Shared-memory (and NDI loopback) frame latency and frames/s between two processes.

Per size (BGRA): this process writes with ``ShmWriter``, a spawned process reads with
``ShmReader`` (default polling, as the daemon uses it).

* latency: the writer stamps ``time.monotonic_ns()`` (system-wide) just before ``write``; the
  reader subtracts it from its clock after its copy is done. Covers the writer's copy, the
  reader's poll wait and the reader's copy. Writes are paced so every frame can be read.
* fps: the writer writes as fast as it can for 0.5 s; distinct frames the reader got per second
  in that window (``writer_fps``: frames written per second).
* memcpy_ms: one ``np.copyto`` of the same bytes in this process (median): the floor, since the
  shared-memory path is two copies plus a poll.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

SIZES: tuple[tuple[int, int], ...] = ((512, 512), (1024, 1024), (1920, 1080))
_PHASE2 = 1 << 40  # seq offset of throughput frames
_STOP = (1 << 62) - 1
THROUGHPUT_S = 0.5  # flat-out writing window per size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=120,
                        help="frames per size for latency and for throughput (default 120)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    frames = int(args.frames)
    if frames < 10:
        from bridge.errors import ConfigError, Problem

        raise ConfigError(Problem("--frames", frames, "too few for percentiles", "use 10 or more"))
    shm: dict[str, Any] = {}
    for width, height in tqdm(SIZES, desc="bench transport (shm)", unit="size", file=sys.stderr):
        shm[f"{width}x{height}"] = measure_shm(width, height, frames)
    return {"shm": shm, "ndi": _measure_ndi(frames), "frames": frames}


def measure_shm(width: int, height: int, frames: int) -> dict[str, float]:
    import multiprocessing as mp

    import numpy as np

    from bridge.errors import TransportError
    from bridge.io.shm_protocol import ShmWriter

    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 4), dtype=np.uint8)
    memcpy_ms = _memcpy_ms(pixels)
    name = f"sdb_bench_{secrets.token_hex(4)}"
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    with ShmWriter(name, width, height, "BGRA") as writer:
        reader = ctx.Process(target=_reader_main, args=(name, theirs), daemon=True)
        reader.start()
        try:
            if not ours.poll(60):
                raise TransportError("benchmark reader process did not start within 60 s",
                                     fix="check free memory and CPU load, then retry")
            ours.recv()
            # Pace latency frames well above one copy so each can be read before the next.
            interval = max(0.004, 6 * memcpy_ms / 1000)
            for i in range(frames):
                writer.write(pixels, timestamp_ns=time.monotonic_ns(), seq=i)
                time.sleep(interval)
            start_ns = time.monotonic_ns()
            end_ns, written = start_ns + int(THROUGHPUT_S * 1e9), 0
            while time.monotonic_ns() < end_ns:
                writer.write(pixels, timestamp_ns=time.monotonic_ns(), seq=_PHASE2 + written)
                written += 1
            window_s = (time.monotonic_ns() - start_ns) / 1e9
            time.sleep(0.05)
            writer.write(pixels, seq=_STOP)
            if not ours.poll(60):
                raise TransportError("benchmark reader process did not report within 60 s",
                                     fix="check free memory and CPU load, then retry")
            latencies, got_ns = ours.recv()
        finally:
            reader.join(10)
            if reader.is_alive():
                reader.kill()
    lat = np.array(latencies, dtype=np.float64)
    p50 = float(np.percentile(lat, 50))
    return {
        "p50_ms": p50,
        "p95_ms": float(np.percentile(lat, 95)),
        "fps": sum(start_ns <= t <= end_ns for t in got_ns) / window_s,
        "memcpy_ms": memcpy_ms,
        "shm_p50_over_memcpy": p50 / memcpy_ms,
        "writer_fps": written / window_s,
        "latency_samples": float(len(lat)),
    }


def _memcpy_ms(pixels: Any) -> float:
    import numpy as np

    dst = np.empty_like(pixels)
    samples = []
    for _ in range(25):
        start = time.perf_counter_ns()
        np.copyto(dst, pixels)
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.median(samples[3:]))


def _reader_main(name: str, conn: Any) -> None:
    """Child process: read until the stop frame; report latencies and throughput."""
    import numpy as np

    from bridge.io.shm_protocol import ShmReader

    reader = ShmReader(name)
    layout = reader.open(timeout=30)
    out = np.empty((layout.height, layout.width, layout.bytes_per_pixel), np.uint8)
    conn.send("ready")
    latencies: list[float] = []
    got_ns: list[int] = []
    while True:
        _, info = reader.read_latest(timeout=30, out=out)
        now = time.monotonic_ns()
        if info.seq == _STOP:
            break
        if info.seq < _PHASE2:
            latencies.append((now - info.timestamp_ns) / 1e6)
        else:
            got_ns.append(now)
    conn.send((latencies, got_ns))
    reader.close()


def _measure_ndi(frames: int) -> dict[str, Any]:
    try:
        from bridge.bench import ndi_latency
    except ImportError as exc:
        return {"available": False, "reason": f"bridge.bench.ndi_latency cannot be imported: {exc}"}
    from bridge.errors import SdbridgeError
    from bridge.io import is_available

    status = is_available("ndi")
    if not status.available:
        return {"available": False, "reason": status.reason}
    try:
        return {"512x512": ndi_latency.measure(512, 512, min(frames, 60), timeout=30.0)}
    except SdbridgeError as exc:
        log.warning("NDI loopback measurement failed: %s", exc)
        return {"available": False, "reason": f"NDI measurement failed: {exc}"}
