"""`sdbridge demo`: run the StreamDiffusion pipeline over a moving test pattern and write PNGs.

Needs nothing but this package: the default model is the built-in random-weight ``tiny`` (its
pictures are noise-like by design; pass --model with a real model id for real images).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bridge.errors import ConfigError, Problem

DEFAULT_FRAMES = 30
DEFAULT_OUT = "sdbridge-out"
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
                        help="torch CPU threads (default 0: torch's default); 1 is steadier on a "
                             "machine busy with other work")


def apply_threads(threads: int) -> None:
    if threads < 0:
        raise ConfigError(Problem("threads", threads, "must be >= 0", "use 0 for torch's default"))
    if threads:
        import torch

        torch.set_num_threads(threads)


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the pipeline on a moving test pattern, write PNGs",
                          description=__doc__)
    add_model_arguments(demo)
    demo.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                      help="frames to process (default %(default)s)")
    demo.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                      help="output folder for PNGs (default ./%(default)s)")
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


def to_rgb8(image: Any) -> Any:
    """3×H×W tensor in [0, 1] -> H×W×3 uint8 numpy."""
    import numpy as np
    import torch

    rgb = image.float().permute(1, 2, 0).mul(255.0).round().to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(rgb)


def run(args: argparse.Namespace) -> int:
    if args.frames < 1:
        raise ConfigError(Problem("frames", args.frames, "must be >= 1", "use e.g. 30"))
    apply_threads(args.threads)
    from PIL import Image
    from tqdm import tqdm

    from bridge.io.test_pattern import TestPatternSource
    from bridge.pipeline.models import load_components
    from bridge.pipeline.stream_batch import StreamBatch

    params = pipeline_params(args.width, args.height, args.steps, prompt=args.prompt,
                             cfg_type=args.cfg_type)
    components = load_components(model_spec(args), progress=not args.json)
    pipe = StreamBatch(components, params)
    source = TestPatternSource(args.width, args.height, fps=0, pixel_format="RGB", name="demo")
    args.out.mkdir(parents=True, exist_ok=True)
    first_s, steady_s, written = 0.0, 0.0, []
    for index in tqdm(range(args.frames), desc="demo", unit="frame", file=sys.stderr,
                      disable=args.json):
        frame = source.receive(timeout=1.0)
        image = to_tensor(frame.pixels, components.device, components.dtype)
        start = time.perf_counter()
        rgb = to_rgb8(pipe.process(image)[0])
        elapsed = time.perf_counter() - start
        if index == 0:
            first_s = elapsed  # includes the warm-up of the latent buffer
        else:
            steady_s += elapsed
        path = args.out / f"frame_{index:05d}.png"
        Image.fromarray(rgb).save(path)
        written.append(str(path))
    steady = args.frames - 1
    fps = steady / steady_s if steady and steady_s > 0 else 1.0 / max(first_s, 1e-9)
    summary = {"ok": True, "model": args.model, "frames": args.frames, "width": args.width,
               "height": args.height, "steps": args.steps, "cfg_type": args.cfg_type,
               "fps": round(fps, 3), "first_frame_ms": round(first_s * 1e3, 1),
               "out": str(args.out), "files": len(written)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.frames} frames {args.width}x{args.height}, {args.steps} steps, model "
              f"{args.model}: {fps:.2f} fps (pipeline, after a {first_s * 1e3:.0f} ms first frame "
              f"with warm-up)")
        print(f"wrote {len(written)} PNGs to {args.out}/")
    return 0
