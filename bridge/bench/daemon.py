"""daemon: latency the daemon adds (identity pipeline, shm -> daemon -> shm across processes).

For each size, `sdbridge serve --identity` runs in a child process reading shared-memory stream
A and writing stream B. This process writes numbered frames into A at a steady rate, recording
the write time of each; a reader thread takes frames from B and matches them by ``seq``.
``added_latency_ms`` is write-into-A to readable-from-B (the daemon's shm read, pre-processing,
post-processing and shm write; the pipeline is the identity); ``direct_shm_ms`` is the same
measurement for a bare A -> reader hop, the transport's own share. Frames the daemon dropped
(newest-wins) are counted, not timed.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_SIZES = ("512x512", "1920x1080")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), metavar="WxH",
                        help="frame sizes (default: 512x512 1920x1080)")
    parser.add_argument("--frames", type=int, default=120, help="timed frames per size")
    parser.add_argument("--warmup", type=int, default=20, help="frames before timing starts")
    parser.add_argument("--fps", type=float, default=30.0, help="input frame rate")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bridge.errors import ConfigError, Problem

    sizes = []
    for text in args.sizes:
        try:
            width, height = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise ConfigError(Problem("--sizes", text, "must be WIDTHxHEIGHT", "e.g. 512x512")) from None
        sizes.append((width, height))
    if args.frames < 10 or args.fps <= 0:
        raise ConfigError(Problem("--frames/--fps", (args.frames, args.fps),
                                  "need at least 10 frames and a positive rate", "e.g. --frames 120"))
    added: dict[str, Any] = {}
    direct: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    for width, height in sizes:
        key = f"{width}x{height}"
        direct[key] = _summary(_measure(width, height, args, through_daemon=None))
        with _DaemonProcess(width, height) as daemon:
            added[key] = _summary(_measure(width, height, args, through_daemon=daemon))
            stages[key] = daemon.stage_latency()
    return {"added_latency_ms": added, "direct_shm_ms": direct, "daemon_stage_p50_ms": stages,
            "fps": args.fps, "frames": args.frames, "pipeline": "identity"}


def _summary(samples: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    values = np.asarray(samples["latencies_ms"], dtype=np.float64)
    if not values.size:
        return {"p50": None, "p95": None, "received": 0, "dropped": samples["dropped"]}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3),
            "received": int(values.size), "dropped": samples["dropped"]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _DaemonProcess:
    """`sdbridge serve --identity` between two fresh shm streams, control on free ports."""

    def __init__(self, width: int, height: int) -> None:
        import secrets

        import yaml

        tag = secrets.token_hex(3)
        self.name_in, self.name_out = f"sdb-bench-in-{tag}", f"sdb-bench-out-{tag}"
        self.command = f"tcp://127.0.0.1:{_free_port()}"
        preset = {
            "version": 1, "model": {"id": "tiny", "device": "cpu", "dtype": "float32"},
            "width": width, "height": height, "fit": "stretch", "output_format": "BGRA",
            "source": {"kind": "shm", "name": self.name_in},
            "sink": [{"kind": "shm", "name": self.name_out}],
            "control": {"command_endpoint": self.command,
                        "event_endpoint": f"tcp://127.0.0.1:{_free_port()}"},
        }
        self._dir = tempfile.TemporaryDirectory(prefix="sdbridge-bench-")
        self.preset_path = Path(self._dir.name) / "bench.yaml"
        self.preset_path.write_text(yaml.safe_dump(preset), encoding="utf-8")
        self._log = open(Path(self._dir.name) / "serve.log", "wb")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "_DaemonProcess":
        from bridge.control.client import ControlClient, ControlTimeout
        from bridge.errors import PipelineError

        self.proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve", "--identity",
                                      "--preset", str(self.preset_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        with ControlClient(self.command, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise PipelineError(f"bench daemon exited with {self.proc.returncode}",
                                        fix=f"see {self._log.name}")
                try:
                    client.ping()
                    return self
                except ControlTimeout:
                    continue
        raise PipelineError("bench daemon did not start within 60 s", fix=f"see {self._log.name}")

    def stage_latency(self) -> dict[str, Any]:
        from bridge.control.client import ControlClient

        with ControlClient(self.command, timeout=5.0) as client:
            latency = client.get_stats()["latency_ms"]
        return {stage: values["p50"] for stage, values in latency.items()}

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._dir.cleanup()


def _measure(width: int, height: int, args: argparse.Namespace,
             through_daemon: _DaemonProcess | None) -> dict[str, Any]:
    """Write frames into the input stream; time them out of the output stream by seq."""
    import secrets

    from bridge.frame import Frame, PixelFormat, now_ns
    from bridge.io.shared_memory import SharedMemorySink, SharedMemorySource
    from bridge.io.test_pattern import render_rgb, to_pixel_format

    name_in = through_daemon.name_in if through_daemon else f"sdb-bench-direct-{secrets.token_hex(3)}"
    name_out = through_daemon.name_out if through_daemon else name_in
    total = args.warmup + args.frames
    written: dict[int, int] = {}
    latencies: list[float] = []
    seen: set[int] = set()
    done = threading.Event()
    pattern = to_pixel_format(render_rgb(width, height, 0), PixelFormat.BGRA)

    def read() -> None:
        reader = SharedMemorySource(name_out)
        try:
            while not done.is_set():
                try:
                    frame = reader.receive(0.2)
                except Exception:  # noqa: BLE001 - stream not there yet / no new frame
                    continue
                arrived = now_ns()
                sent = written.get(frame.seq)
                if sent is not None and frame.seq >= args.warmup and frame.seq not in seen:
                    seen.add(frame.seq)  # fallback frames repeat a seq: time each frame once
                    latencies.append((arrived - sent) / 1e6)
                if frame.seq >= total - 1:
                    return
        finally:
            reader.close()

    writer = SharedMemorySink(name_in)
    reader_thread = threading.Thread(target=read, daemon=True)
    with writer:
        writer.send(Frame(pattern, PixelFormat.BGRA, seq=0))  # create the stream first
        reader_thread.start()
        time.sleep(1.0 if through_daemon else 0.2)  # the daemon's reader attaches
        period = 1.0 / args.fps
        start = time.monotonic()
        for seq in range(1, total):
            time.sleep(max(0.0, start + seq * period - time.monotonic()))
            written[seq] = now_ns()
            writer.send(Frame(pattern, PixelFormat.BGRA, seq=seq, timestamp_ns=written[seq]))
        reader_thread.join(5.0)
        done.set()
        reader_thread.join(2.0)
    timed = args.frames
    return {"latencies_ms": latencies, "dropped": max(0, timed - len(latencies))}
