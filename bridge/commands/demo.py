"""`sdbridge demo`: the daemon on the embedded default preset — moving test pattern -> model
-> shared memory (stream ``sdbridge-demo``) + numbered PNGs — for ``--frames`` frames, or until
Ctrl-C with ``--frames 0`` (control socket on, so ``sdbridge ctl set prompt=...`` works).

Needs nothing but this package: the default model is the built-in random-weight ``tiny`` (its
pictures are noise-like by design; pass --model with a real model id for real images).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bridge.errors import ConfigError, PipelineError, Problem

DEFAULT_FRAMES = 30
DEFAULT_OUT = "sdbridge-out"
DEFAULT_SHM = "sdbridge-demo"
# StreamDiffusion's usual 4-step img2img indices; fewer steps keep the last (least-noisy) ones.
FOUR_STEPS = (0, 16, 32, 45)


def t_index_for_steps(steps: int) -> list[int]:
    """An ascending t_index_list with ``steps`` entries in the 50-step LCM schedule."""
    if not 1 <= steps <= 50:
        raise ConfigError(Problem("steps", steps, "must be in 1..50", "use 1-4 for LCM/turbo models"))
    if steps <= len(FOUR_STEPS):
        return list(FOUR_STEPS[len(FOUR_STEPS) - steps:])
    return [round(i * 49 / (steps - 1)) for i in range(steps)]  # spacing >= 1: strictly ascending


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model options shared by `demo` and `bench pipeline`."""
    parser.add_argument("--model", default="tiny",
                        help="model id (HF cache), diffusers folder, .safetensors file, or tiny "
                             "(default %(default)s)")
    parser.add_argument("--lcm-lora", default=None, metavar="ID", help="LCM-LoRA to fuse into the UNet")
    parser.add_argument("--tiny-vae", default=None, metavar="ID",
                        help="tiny autoencoder (TAESD) id, or tiny for the built-in one")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--width", type=int, default=512, help="frame width (default %(default)s)")
    parser.add_argument("--height", type=int, default=512, help="frame height (default %(default)s)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads, 0 = torch's default (default %(default)s); 1 is "
                             "steadier on a machine busy with other work")


def apply_threads(threads: int) -> None:
    if threads < 0:
        raise ConfigError(Problem("threads", threads, "must be >= 0", "use 0 for torch's default"))
    if threads:
        import torch

        torch.set_num_threads(threads)


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the daemon on a moving test pattern: shared memory + PNGs",
                          description=__doc__)
    add_model_arguments(demo)
    demo.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                      help="frames to write, then stop (default %(default)s); 0 = serve until "
                           "Ctrl-C with the control socket on (no PNGs)")
    demo.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                      help="output folder for PNGs (default ./%(default)s)")
    demo.add_argument("--shm-name", default=DEFAULT_SHM,
                      help="shared-memory stream the frames are also published to (default %(default)s)")
    demo.add_argument("--prompt", default="a photo of a cat, cyberpunk neon style")
    demo.add_argument("--steps", type=int, default=2, help="denoising steps n (default %(default)s)")
    demo.add_argument("--cfg-type", default="self", choices=("none", "full", "self", "initialize"))
    demo.add_argument("--json", action="store_true", help="print a JSON summary")
    demo.set_defaults(func=run)


def model_spec(args: argparse.Namespace) -> Any:
    from bridge.pipeline.models import ModelSpec

    return ModelSpec(args.model, lcm_lora=args.lcm_lora, tiny_vae=args.tiny_vae,
                     device=args.device, dtype=args.dtype)


def pipeline_params(width: int, height: int, steps: int, **changes: Any) -> dict[str, Any]:
    """A full validated parameter dict (defaults + the given changes)."""
    from bridge.params import default_params, validate_changes

    return {**default_params(),
            **validate_changes({"width": width, "height": height,
                                "t_index_list": t_index_for_steps(steps), **changes})}


def to_tensor(rgb: Any, device: Any, dtype: Any) -> Any:
    """H×W×3 uint8 RGB -> 1×3×H×W tensor in [0, 1]."""
    import torch

    return torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].to(dtype).div_(255.0)


def demo_preset(args: argparse.Namespace) -> Any:
    """The embedded default preset with this command's flags applied, validated all at once."""
    from bridge.config import DEFAULT_PRESET, validate_preset

    raw = dict(DEFAULT_PRESET)
    raw["model"] = {"id": args.model, "lcm_lora": args.lcm_lora, "tiny_vae": args.tiny_vae,
                    "device": args.device, "dtype": args.dtype, "threads": args.threads}
    raw.update(width=args.width, height=args.height, prompt=args.prompt, cfg_type=args.cfg_type,
               t_index_list=t_index_for_steps(args.steps), output_format="RGB")
    raw["source"] = {"kind": "test_pattern", "width": args.width, "height": args.height, "fps": 30}
    sinks: list[dict[str, Any]] = [{"kind": "shm", "name": args.shm_name, "pixel_format": "BGRA"}]
    if args.frames:
        sinks.append({"kind": "png", "path": str(args.out), "digits": 5})
    raw["sink"] = sinks
    raw["control"] = {"enabled": args.frames == 0}
    return validate_preset(raw)


class _FrameBudget:
    """Wraps the PNG sink: passes the first ``limit`` processed frames (not fallback frames),
    records when they left, and signals when the budget is spent."""

    def __init__(self, sink: Any, limit: int, progress: Any) -> None:
        self.sink, self.limit, self.progress = sink, limit, progress
        self.times: list[float] = []
        self.done = threading.Event()

    def open(self) -> None:
        self.sink.open()

    def close(self) -> None:
        self.sink.close()

    def send(self, frame: Any) -> None:
        if len(self.times) >= self.limit or frame.source == "fallback":
            return
        self.sink.send(frame)
        self.times.append(time.perf_counter())
        self.progress.update(1)
        if len(self.times) >= self.limit:
            self.done.set()


def run(args: argparse.Namespace) -> int:
    if args.frames < 0:
        raise ConfigError(Problem("frames", args.frames, "must be >= 0",
                                  "use e.g. 30, or 0 to serve until Ctrl-C"))
    preset = demo_preset(args)  # every problem reported before anything loads or is created
    from bridge.config import preflight

    preflight(preset)
    apply_threads(args.threads)
    if args.frames == 0:
        from bridge.commands.serve import serve

        print(f"serving the demo: shared memory {args.shm_name!r}, control on "
              f"{preset.control.command_endpoint}; Ctrl-C to stop", file=sys.stderr)
        return serve(preset)
    return _run_frames(args, preset)


def _run_frames(args: argparse.Namespace, preset: Any) -> int:
    from tqdm import tqdm

    from bridge.runtime.daemon import Daemon
    from bridge.runtime.pipelines import stream_batch_factory
    from bridge.runtime.workers import default_sink_factory

    progress = tqdm(total=args.frames, desc="demo", unit="frame", file=sys.stderr,
                    disable=args.json)
    budget: list[_FrameBudget] = []

    def sinks(config: Any) -> Any:
        sink = default_sink_factory(config)
        if config.kind != "png":
            return sink
        budget.append(_FrameBudget(sink, args.frames, progress))
        return budget[-1]

    factory = lambda p, params: stream_batch_factory(p, params, progress=not args.json)  # noqa: E731
    daemon = Daemon(preset, pipeline_factory=factory, sink_factory=sinks)
    try:
        daemon.start()
        started = time.perf_counter()
        while not budget[0].done.wait(0.2):
            if not daemon.running:
                raise PipelineError("the demo daemon stopped unexpectedly",
                                    fix="run with -v to see its log")
    finally:
        daemon.stop()
        progress.close()
    times = budget[0].times
    first_s = times[0] - started
    fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] \
        else 1.0 / max(first_s, 1e-9)
    summary = {"ok": True, "model": args.model, "frames": args.frames, "width": args.width,
               "height": args.height, "steps": args.steps, "cfg_type": args.cfg_type,
               "fps": round(fps, 3), "first_frame_ms": round(first_s * 1e3, 1),
               "out": str(args.out), "files": len(times), "shm": args.shm_name}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.frames} frames {args.width}x{args.height}, {args.steps} steps, model "
              f"{args.model}: {fps:.2f} fps through the daemon (first frame after "
              f"{first_s * 1e3:.0f} ms, including warm-up)")
        print(f"wrote {len(times)} PNGs to {args.out}/ (also published to shared memory "
              f"{args.shm_name!r})")
    return 0
