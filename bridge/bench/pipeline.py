"""Pipeline speed: stream batch vs sequential vs diffusers img2img, per guidance type.

Every figure comes from one process on one set of components: the stream batch
(``StreamBatch``), the same steps run one by one (``SequentialDenoiser``) and diffusers'
``AutoPipelineForImage2Image`` built from the same components with the same timesteps and size.
UNet, VAE and text-encoder calls are timed by wrapping the backend callables (and hooking the
text encoders), so ``overhead_fraction`` is the share of frame time spent outside them.
Inputs are test-pattern frames prepared up front (not timed); each runner's first frames are
warm-up and not timed. Runners are timed frame by frame in turn and every figure is a median
over frames, so a busy machine skews them alike.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bridge.commands.demo import (add_model_arguments, apply_threads, model_spec, pipeline_params,
                                  t_index_for_steps, to_tensor)
from bridge.errors import ConfigError, Problem

log = logging.getLogger(__name__)

CFG_TYPES = ("none", "full", "self", "initialize")
WARMUP_CALLS = 1  # the first call primes the latent buffer (n−1 extra UNet calls) and allocators


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    # torch's default threads (0), like a user's run: on an idle 2-core machine 2 threads were
    # 2x faster than 1. On a busy machine --threads 1 gives steadier ratios (warned below).
    parser.add_argument("--steps", type=int, default=4, help="denoising steps n (default %(default)s)")
    parser.add_argument("--frames", type=int, default=4,
                        help="timed frames per measurement (default %(default)s)")
    parser.add_argument("--cfg-type", default="self", choices=CFG_TYPES,
                        help="guidance for the main stream-batch/sequential figures (default %(default)s)")
    parser.add_argument("--acceleration", default="none",
                        choices=("none", "compile", "onnxruntime", "tensorrt"),
                        help="backend for the sdbridge runs (diffusers always runs eager torch)")


@dataclass
class Probe:
    """Running totals that the wrapped backend callables and the module hooks add to."""

    unet: float = 0.0
    encode: float = 0.0
    decode: float = 0.0
    text: float = 0.0
    unet_rows: int = 0  # rows through the backend's UNet
    unet_forwards: int = 0  # forwards of the UNet module itself (diffusers calls it directly)
    _text_start: list[float] = field(default_factory=list)

    def snapshot(self) -> tuple[float, float, float, float, int, int]:
        return (self.unet, self.encode, self.decode, self.text, self.unet_rows, self.unet_forwards)


@dataclass(frozen=True)
class Sample:
    """One timed frame of one runner: wall time and what the model calls took inside it."""

    total: float
    unet: float
    encode: float
    decode: float
    text: float
    unet_rows: int
    unet_forwards: int

    @property
    def overhead(self) -> float:
        return max(0.0, self.total - self.unet - self.encode - self.decode - self.text) / self.total


def _sync_fn(device: Any) -> Callable[[], None]:
    import torch

    # Asynchronous devices: wait for the work so each timer holds its own call's time.
    if device.type == "cuda":
        return torch.cuda.synchronize
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def timed_backend(backend: Any, probe: Probe, sync: Callable[[], None]) -> Any:
    """The same Backend with each callable's wall time (and UNet rows) added to ``probe``."""
    from bridge.pipeline.backends.base import Backend

    def unet(sample: Any, timestep: Any, encoder_hidden_states: Any, added_cond: Any = None) -> Any:
        start = time.perf_counter()
        out = backend.unet(sample, timestep, encoder_hidden_states, added_cond)
        sync()
        probe.unet += time.perf_counter() - start
        probe.unet_rows += int(sample.shape[0])
        return out

    def wrap(fn: Callable[[Any], Any], slot: str) -> Callable[[Any], Any]:
        def call(x: Any) -> Any:
            start = time.perf_counter()
            out = fn(x)
            sync()
            setattr(probe, slot, getattr(probe, slot) + time.perf_counter() - start)
            return out
        return call

    return Backend(name=backend.name, unet=unet, encode=wrap(backend.encode, "encode"),
                   decode=wrap(backend.decode, "decode"))


def hook_modules(components: Any, probe: Probe, sync: Callable[[], None]) -> list[Any]:
    """Time text-encoder forwards (cached prompts: usually 0 per frame); count UNet forwards."""
    handles = []
    for encoder in (components.text_encoder, components.text_encoder_2):
        if encoder is None:
            continue

        def before(module: Any, args: Any) -> None:
            probe._text_start.append(time.perf_counter())

        def after(module: Any, args: Any, output: Any) -> None:
            sync()
            probe.text += time.perf_counter() - probe._text_start.pop()

        handles += [encoder.register_forward_pre_hook(before), encoder.register_forward_hook(after)]

    def count(module: Any, args: Any, output: Any) -> None:
        probe.unet_forwards += 1

    handles.append(components.unet.register_forward_hook(count))
    return handles


def timed_call(process: Callable[[Any], Any], image: Any, probe: Probe,
               sync: Callable[[], None]) -> Sample:
    before = probe.snapshot()
    start = time.perf_counter()
    process(image)
    sync()
    total = time.perf_counter() - start
    deltas = [b - a for a, b in zip(before, probe.snapshot())]
    return Sample(total, deltas[0], deltas[1], deltas[2], deltas[3], int(deltas[4]), int(deltas[5]))


def run_interleaved(runners: dict[str, Callable[[Any], Any]], inputs: list[Any], probe: Probe,
                    sync: Callable[[], None], progress: Any = None) -> dict[str, list[Sample]]:
    """Warm every runner up, then time them frame by frame in turn, so load changes on a
    shared machine hit all of them alike instead of whichever happened to run then."""
    for image in inputs[:WARMUP_CALLS]:
        for process in runners.values():
            process(image)
            if progress is not None:
                progress.update()
    samples: dict[str, list[Sample]] = {name: [] for name in runners}
    for image in inputs[WARMUP_CALLS:]:
        for name, process in runners.items():
            samples[name].append(timed_call(process, image, probe, sync))
            if progress is not None:
                progress.update()
    return samples


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _diffusers_img2img(components: Any, steps: list[int], prompt: Any,
                       seed: int = 0) -> Callable[[Any], Any]:
    """diffusers AutoPipelineForImage2Image on the same modules, same timesteps, no CFG."""
    import torch
    from diffusers import AutoPipelineForImage2Image, StableDiffusionPipeline, StableDiffusionXLPipeline

    parts = dict(vae=components.vae, text_encoder=components.text_encoder,
                 tokenizer=components.tokenizer, unet=components.unet, scheduler=components.scheduler)
    if components.family == "sdxl":
        base: Any = StableDiffusionXLPipeline(text_encoder_2=components.text_encoder_2,
                                              tokenizer_2=components.tokenizer_2, **parts)
    else:
        base = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe = AutoPipelineForImage2Image.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    # Our τ = 999 − 20·k over the 50-step LCM schedule; strength 1 keeps all of them.
    timesteps = [999 - 20 * k for k in steps]
    generator = torch.Generator(device="cpu")

    def process(image: Any) -> Any:
        generator.manual_seed(seed)
        with torch.inference_mode():
            return pipe(prompt=prompt, image=image, timesteps=timesteps, strength=1.0,
                        guidance_scale=1.0, output_type="pt", generator=generator).images
    return process


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.frames < 1:
        raise ConfigError(Problem("frames", args.frames, "must be >= 1", "use e.g. 4"))
    if args.acceleration != "none" and args.cfg_type == "initialize":
        # Sequential initialize runs 2 UNet rows at step 0 and 1 after: static-batch graphs can't.
        raise ConfigError(Problem("cfg_type", "initialize", "the sequential baseline changes its "
                                  "UNet batch between steps, which accelerated (static-batch) "
                                  "backends cannot run", "use --cfg-type self, none or full with "
                                  "--acceleration (fps_by_cfg still measures initialize)"))
    import torch
    from tqdm import tqdm

    from bridge.io.test_pattern import render_rgb
    from bridge.pipeline.models import load_components
    from bridge.pipeline.sequential import SequentialDenoiser
    from bridge.pipeline.stream_batch import StreamBatch

    apply_threads(args.threads)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if busy > (os.cpu_count() or 1) and torch.get_num_threads() > 1:
        log.warning("machine busy (load %.1f on %d CPUs): multi-threaded torch will be slow and "
                    "noisy; --threads 1 gives steadier figures", busy, os.cpu_count())
    t_index = t_index_for_steps(args.steps)
    base = pipeline_params(args.width, args.height, args.steps, cfg_type=args.cfg_type)
    components = load_components(model_spec(args), progress=not args.json)
    device, dtype = components.device, components.dtype
    sync = _sync_fn(device)
    inputs = [to_tensor(render_rgb(args.width, args.height, i), device, dtype)
              for i in range(args.frames + WARMUP_CALLS)]
    probe = Probe()
    handles = hook_modules(components, probe, sync)

    def backend_for(params: dict[str, Any], sequential: bool = False) -> Any:
        if args.acceleration == "none":
            from bridge.pipeline.backends.torch_backend import torch_backend
            raw = torch_backend(components)
        else:
            from bridge.pipeline.backends import create_backend
            # The sequential baseline calls the UNet one frame, one step at a time.
            shape = dict(cfg_type=params["cfg_type"], n=1, frames=1, height=args.height,
                         width=args.width) if sequential else dict(params=params)
            raw = create_backend(components, args.acceleration, progress=not args.json, **shape)
        return timed_backend(raw, probe, sync)

    try:
        runners: dict[str, Callable[[Any], Any]] = {}
        for cfg in [args.cfg_type] + [c for c in CFG_TYPES if c != args.cfg_type]:
            params = {**base, "cfg_type": cfg}
            runners[cfg] = StreamBatch(components, params, backend_for(params)).process
        runners["sequential"] = SequentialDenoiser(
            components, base, backend_for(base, sequential=True)).process
        runners["diffusers"] = _diffusers_img2img(components, t_index, base["prompt"])
        with tqdm(total=len(runners) * len(inputs), desc="bench pipeline", unit="frame",
                  disable=args.json) as bar:
            samples = run_interleaved(runners, inputs, probe, sync, bar)
    finally:
        for handle in handles:
            handle.remove()
    frame_s = {name: median([x.total for x in runs]) for name, runs in samples.items()}
    main = samples[args.cfg_type]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "model": args.model, "width": args.width, "height": args.height, "steps": args.steps,
        "t_index_list": t_index, "cfg_type": args.cfg_type, "frames": args.frames,
        "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "acceleration": args.acceleration, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average_1m": load,
        "fps_stream_batch": round(1.0 / frame_s[args.cfg_type], 3),
        "fps_sequential": round(1.0 / frame_s["sequential"], 3),
        "stream_batch_speedup": round(frame_s["sequential"] / frame_s[args.cfg_type], 3),
        "unet_ms_per_frame": round(median([x.unet for x in main]) * 1e3, 2),
        "vae_encode_ms_per_frame": round(median([x.encode for x in main]) * 1e3, 2),
        "vae_decode_ms_per_frame": round(median([x.decode for x in main]) * 1e3, 2),
        "text_encoder_ms_per_frame": round(median([x.text for x in main]) * 1e3, 3),
        "overhead_fraction": round(median([x.overhead for x in main]), 4),
        "rows_per_frame": {cfg: samples[cfg][0].unet_rows for cfg in CFG_TYPES},
        "fps_by_cfg": {cfg: round(1.0 / frame_s[cfg], 3) for cfg in CFG_TYPES},
        "fps_diffusers_img2img": round(1.0 / frame_s["diffusers"], 3),
        "speedup_vs_diffusers": round(frame_s["diffusers"] / frame_s[args.cfg_type], 3),
        "diffusers_unet_calls_per_frame": samples["diffusers"][0].unet_forwards,
        "diffusers_guidance_scale": 1.0,
    }
