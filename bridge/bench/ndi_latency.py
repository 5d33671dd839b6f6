"""NDI loopback latency between two processes (used by ``sdbridge bench transport``).

A child process runs an ``NDISink`` sending the test pattern at ``fps``; every frame carries its
send time (monotonic ns, a system-wide clock) in the NDI per-frame metadata. This process runs an
``NDISource`` and measures receive time − send time: compression, loopback network,
decompression and the copy out of NDI's buffer, as a real sdbridge user sees it.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import uuid

import numpy as np

from bridge.errors import SdbridgeError, TransportError, TransportUnavailableError
from bridge.frame import Frame, PixelFormat, now_ns

log = logging.getLogger(__name__)

WARMUP_FRAMES = 5  # the first frames include connection set-up


def measure(width: int = 512, height: int = 512, frames: int = 60, fps: float = 30.0,
            timeout: float = 60.0) -> dict[str, float]:
    """Latency percentiles in milliseconds: ``{"p50_ms": ..., "p95_ms": ...}``."""
    from bridge.io import ndi

    status = ndi.availability()
    if not status.available:
        raise TransportUnavailableError(f"NDI is not available: {status.reason}",
                                        fix="pip install 'sdbridge[ndi]'")
    name = f"sdbridge-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    total = frames + WARMUP_FRAMES
    cmd = [sys.executable, "-m", "bridge.bench.ndi_latency", "--peer-send", name,
           str(width), str(height), str(fps), str(timeout)]
    peer = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latencies: list[float] = []
    try:
        with ndi.NDISource(name, timeout=min(15.0, timeout)) as source:
            deadline = time.monotonic() + timeout
            while len(latencies) < total and time.monotonic() < deadline:
                frame = source.receive(timeout=5.0)
                sent = ndi.parse_metadata(source.last_metadata).get("sent_ns")
                if sent is None:
                    raise TransportError("NDI frame arrived without the sender's timestamp metadata",
                                         fix="another sender is using the benchmark's name; retry")
                latencies.append((frame.timestamp_ns - sent) / 1e6)
    except SdbridgeError as exc:
        if peer.poll() is not None:  # the sending process died: its stderr says why
            raise TransportError(f"NDI bench: the sending process exited ({peer.returncode}): "
                                 f"{(peer.stderr.read() if peer.stderr else '').strip()[-500:]}",
                                 fix="run `sdbridge probe` to check NDI") from exc
        raise
    finally:
        if peer.stdin:
            peer.stdin.close()  # tells the peer to stop
        try:
            peer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer.wait()
    measured = np.array(latencies[WARMUP_FRAMES:])
    if measured.size < frames:
        raise TransportError(f"NDI bench: only {measured.size} of {frames} frames arrived in {timeout:g}s",
                             fix="check CPU load; run with fewer frames")
    return {"p50_ms": float(np.percentile(measured, 50)), "p95_ms": float(np.percentile(measured, 95))}


def _peer_send(name: str, width: int, height: int, fps: float, seconds: float) -> None:
    """Child process: send the pattern at ``fps`` until stdin closes or ``seconds`` pass."""
    import threading

    from bridge.io.ndi import NDISink
    from bridge.io.test_pattern import render_rgb, to_pixel_format

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    patterns = [to_pixel_format(render_rgb(width, height, i), PixelFormat.BGRA) for i in range(8)]
    period_ns = int(1e9 / fps)
    with NDISink(name, frame_rate=fps) as sink:
        start = now_ns()
        i = 0
        while not stop.is_set() and now_ns() - start < seconds * 1e9:
            due = start + i * period_ns
            wait_ns = due - now_ns()
            if wait_ns > 0:
                stop.wait(wait_ns / 1e9)
            sink.send(Frame(patterns[i % len(patterns)], PixelFormat.BGRA, seq=i, timestamp_ns=now_ns()))
            i += 1


def _main(argv: list[str]) -> int:
    """Entry point of the sending peer process (``measure`` starts it)."""
    parser = argparse.ArgumentParser(description="NDI latency benchmark: sending peer")
    parser.add_argument("--peer-send", nargs=5, required=True, metavar=("NAME", "W", "H", "FPS", "SECONDS"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="ndi-latency peer: %(message)s")
    name, width, height, fps, seconds = args.peer_send
    try:
        _peer_send(name, int(width), int(height), float(fps), float(seconds))
    except SdbridgeError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
