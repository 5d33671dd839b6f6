"""Separate-process helpers for the daemon tests (run as scripts, print JSON lines).

    python tests/daemon_peer.py produce NAME FIRST_SEQ FPS SIZE
        write test-pattern frames into shared memory NAME until SIGTERM (then unlink it)
    python tests/daemon_peer.py flaky-serve PRESET FAIL_AT [--set k=v ...]
        `sdbridge serve` on PRESET with a pipeline that raises on its FAIL_AT-th frame
        (first build only), so the daemon's fallback and rebuild can be watched from outside
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def produce(name: str, first_seq: int, fps: float, size: int) -> None:
    from bridge.frame import Frame, PixelFormat
    from bridge.io.shared_memory import SharedMemorySink
    from bridge.io.test_pattern import render_rgb, to_pixel_format

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sink = SharedMemorySink(name)
    seq = first_seq
    with sink:
        while not stop.is_set():
            pixels = to_pixel_format(render_rgb(size, size, seq), PixelFormat.BGRA)
            sink.send(Frame(pixels, PixelFormat.BGRA, seq=seq))
            if seq == first_seq:
                print(json.dumps({"ready": True, "name": name}), flush=True)
            seq += 1
            stop.wait(1.0 / fps)
    print(json.dumps({"sent": seq - first_seq}), flush=True)


def flaky_serve(preset_path: str, fail_at: int, overrides: list[str]) -> int:
    import torch

    from bridge.commands.serve import serve
    from bridge.config import load_preset
    from bridge.errors import PipelineError
    from bridge.runtime.pipelines import IdentityPipeline

    builds = {"count": 0}

    class Flaky(IdentityPipeline):
        def __init__(self, broken: bool) -> None:
            super().__init__()
            self.broken, self.calls = broken, 0

        def process(self, images: torch.Tensor | None) -> torch.Tensor:
            self.calls += 1
            if self.broken and self.calls == fail_at:
                raise PipelineError("simulated CUDA error: an illegal memory access",
                                    fix="none: this is a test")
            return super().process(images)

    def factory(preset: Any, params: Any) -> Flaky:
        builds["count"] += 1
        return Flaky(broken=builds["count"] == 1)

    return serve(load_preset(preset_path, overrides), pipeline_factory=factory)


# ------------------------------------------------------------ used by the test modules
ROOT = Path(__file__).resolve().parent.parent
PEER = Path(__file__).resolve()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def segment_exists(name: str) -> bool:
    """Whether the POSIX shared-memory segment is still there (Linux: a file in /dev/shm)."""
    return Path("/dev/shm", name).exists()


class ServeProcess:
    """`sdbridge serve` (or a peer mode) in a child process with private ports and names."""

    def __init__(self, args: list[str], *, overrides: list[str] = (), log_path: Path) -> None:
        import subprocess

        self.command = f"tcp://127.0.0.1:{free_port()}"
        self.events = f"tcp://127.0.0.1:{free_port()}"
        sets = [f"control.command_endpoint={self.command}", f"control.event_endpoint={self.events}",
                *overrides]
        argv = [sys.executable, *args]
        for item in sets:
            argv += ["--set", item]
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        from bridge.control.client import ControlClient, ControlTimeout

        deadline = time.monotonic() + timeout
        with ControlClient(self.command, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    client.ping()
                    return
                except ControlTimeout:
                    continue
        raise AssertionError(f"serve did not answer ping within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> tuple[int | None, float]:
        """Send ``sig``; returns (exit code or None if still running, seconds it took)."""
        import subprocess

        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        elapsed = time.monotonic() - start
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        return code, elapsed


def read_frames(name: str, count: int, timeout: float = 60.0,
                accept: Any = lambda frame: True) -> list[Any]:
    """``count`` distinct output frames (by seq) accepted by ``accept`` from stream ``name``."""
    from bridge.io.shared_memory import SharedMemorySource

    frames: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    source = SharedMemorySource(name)
    try:
        while len(frames) < count and time.monotonic() < deadline:
            try:
                frame = source.receive(0.5)
            except Exception:  # noqa: BLE001 - stream not created yet / no new frame yet
                time.sleep(0.05)
                continue
            if accept(frame):
                frames[frame.seq] = frame
    finally:
        source.close()
    if len(frames) < count:
        raise AssertionError(f"only {len(frames)} of {count} frames from {name!r} in {timeout} s")
    return list(frames.values())


def main(argv: list[str]) -> int:
    if argv[0] == "produce":
        produce(argv[1], int(argv[2]), float(argv[3]), int(argv[4]))
        return 0
    if argv[0] == "flaky-serve":
        overrides = [a for a in argv[3:] if a != "--set"]
        return flaky_serve(argv[1], int(argv[2]), overrides)
    print(f"unknown mode {argv[0]!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
