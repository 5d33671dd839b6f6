"""Pipeline speed: stream batch vs sequential vs diffusers img2img, per guidance type.

Every figure comes from one process on one set of components: the stream batch
(``StreamBatch``), the same steps run one by one (``SequentialDenoiser``) and diffusers'
``AutoPipelineForImage2Image`` built from the same components with the same timesteps and size.
UNet, VAE and text-encoder calls are timed by wrapping the backend callables (and hooking the
text encoders), so ``overhead_fraction`` is the share of frame time spent outside them.
Inputs are test-pattern frames prepared up front (not timed); the first frames of every run are
warm-up and not timed either.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bridge.commands.demo import (add_model_arguments, apply_threads, model_spec, pipeline_params,
                                  t_index_for_steps, to_tensor)
from bridge.errors import ConfigError, Problem

log = logging.getLogger(__name__)

CFG_TYPES = ("none", "full", "self", "initialize")
WARMUP_CALLS = 2  # first call primes the latent buffer; one more settles allocators/caches


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=4, help="denoising steps n (default %(default)s)")
    parser.add_argument("--frames", type=int, default=6,
                        help="timed frames per measurement (default %(default)s)")
    parser.add_argument("--cfg-type", default="self", choices=CFG_TYPES,
                        help="guidance for the main stream-batch/sequential figures (default %(default)s)")
    parser.add_argument("--acceleration", default="none",
                        choices=("none", "compile", "onnxruntime", "tensorrt"),
                        help="backend for the sdbridge runs (diffusers always runs eager torch)")


@dataclass
class Timers:
    """Seconds spent inside model calls, and UNet rows processed."""

    unet: float = 0.0
    encode: float = 0.0
    decode: float = 0.0
    text: float = 0.0
    unet_rows: int = 0
    unet_calls: int = 0
    _text_start: list[float] = field(default_factory=list)

    def reset(self) -> None:
        self.unet = self.encode = self.decode = self.text = 0.0
        self.unet_rows = self.unet_calls = 0

    @property
    def model_time(self) -> float:
        return self.unet + self.encode + self.decode + self.text


def _sync_fn(device: Any) -> Callable[[], None]:
    import torch

    # Asynchronous devices: wait for the work so each timer holds its own call's time.
    if device.type == "cuda":
        return torch.cuda.synchronize
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def timed_backend(backend: Any, timers: Timers, sync: Callable[[], None]) -> Any:
    """The same Backend with each callable's wall time (and UNet rows) accumulated in timers."""
    from bridge.pipeline.backends.base import Backend

    def unet(sample: Any, timestep: Any, encoder_hidden_states: Any, added_cond: Any = None) -> Any:
        start = time.perf_counter()
        out = backend.unet(sample, timestep, encoder_hidden_states, added_cond)
        sync()
        timers.unet += time.perf_counter() - start
        timers.unet_rows += int(sample.shape[0])
        timers.unet_calls += 1
        return out

    def wrap(fn: Callable[[Any], Any], slot: str) -> Callable[[Any], Any]:
        def call(x: Any) -> Any:
            start = time.perf_counter()
            out = fn(x)
            sync()
            setattr(timers, slot, getattr(timers, slot) + time.perf_counter() - start)
            return out
        return call

    return Backend(name=backend.name, unet=unet, encode=wrap(backend.encode, "encode"),
                   decode=wrap(backend.decode, "decode"))


def hook_text_encoders(components: Any, timers: Timers, sync: Callable[[], None]) -> list[Any]:
    """Time text-encoder forwards (prompt encoding is cached, so per frame this is usually 0)."""
    handles = []
    for encoder in (components.text_encoder, components.text_encoder_2):
        if encoder is None:
            continue

        def before(module: Any, args: Any) -> None:
            timers._text_start.append(time.perf_counter())

        def after(module: Any, args: Any, output: Any) -> None:
            sync()
            timers.text += time.perf_counter() - timers._text_start.pop()

        handles += [encoder.register_forward_pre_hook(before), encoder.register_forward_hook(after)]
    return handles


def _run_frames(process: Callable[[Any], Any], inputs: list[Any], timers: Timers,
                sync: Callable[[], None]) -> tuple[float, Timers]:
    """Seconds per frame over the timed inputs, and the model-call times within them."""
    for image in inputs[:WARMUP_CALLS]:
        process(image)
    sync()
    timers.reset()
    start = time.perf_counter()
    for image in inputs[WARMUP_CALLS:]:
        process(image)
    sync()
    frames = len(inputs) - WARMUP_CALLS
    return (time.perf_counter() - start) / frames, Timers(
        timers.unet / frames, timers.encode / frames, timers.decode / frames, timers.text / frames,
        timers.unet_rows // frames, timers.unet_calls // frames)


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
        raise ConfigError(Problem("frames", args.frames, "must be >= 1", "use e.g. 6"))
    import torch
    from tqdm import tqdm

    from bridge.io.test_pattern import render_rgb
    from bridge.pipeline.models import load_components
    from bridge.pipeline.sequential import SequentialDenoiser
    from bridge.pipeline.stream_batch import StreamBatch

    apply_threads(args.threads)
    t_index = t_index_for_steps(args.steps)
    base = pipeline_params(args.width, args.height, args.steps, cfg_type=args.cfg_type)
    components = load_components(model_spec(args), progress=not args.json)
    device, dtype = components.device, components.dtype
    sync = _sync_fn(device)
    inputs = [to_tensor(render_rgb(args.width, args.height, i), device, dtype)
              for i in range(args.frames + WARMUP_CALLS)]
    timers = Timers()
    handles = hook_text_encoders(components, timers, sync)

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
        return timed_backend(raw, timers, sync)

    order = [args.cfg_type] + [c for c in CFG_TYPES if c != args.cfg_type]
    jobs = 3 + len(order) - 1
    bar = tqdm(total=jobs, desc="bench pipeline", unit="run", disable=args.json)
    try:
        results: dict[str, tuple[float, Timers]] = {}
        for cfg in order:
            params = {**base, "cfg_type": cfg}
            pipe = StreamBatch(components, params, backend_for(params))
            results[cfg] = _run_frames(pipe.process, inputs, timers, sync)
            bar.update()
        sequential = SequentialDenoiser(components, base, backend_for(base, sequential=True))
        seq_s, _ = _run_frames(sequential.process, inputs, timers, sync)
        bar.update()
        # diffusers calls the UNet module itself: count its forwards to show the steps match.
        counter = components.unet.register_forward_hook(
            lambda module, args, output: setattr(timers, "unet_calls", timers.unet_calls + 1))
        try:
            diffusers_s, diffusers_calls = _run_frames(
                _diffusers_img2img(components, t_index, base["prompt"]), inputs, timers, sync)
        finally:
            counter.remove()
        bar.update()
    finally:
        bar.close()
        for handle in handles:
            handle.remove()
    frame_s, calls = results[args.cfg_type]
    fps_stream = 1.0 / frame_s
    return {
        "model": args.model, "width": args.width, "height": args.height, "steps": args.steps,
        "t_index_list": t_index, "cfg_type": args.cfg_type, "frames": args.frames,
        "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "acceleration": args.acceleration, "torch_threads": torch.get_num_threads(),
        "fps_stream_batch": round(fps_stream, 3),
        "fps_sequential": round(1.0 / seq_s, 3),
        "stream_batch_speedup": round(seq_s / frame_s, 3),
        "unet_ms_per_frame": round(calls.unet * 1e3, 2),
        "vae_encode_ms_per_frame": round(calls.encode * 1e3, 2),
        "vae_decode_ms_per_frame": round(calls.decode * 1e3, 2),
        "text_encoder_ms_per_frame": round(calls.text * 1e3, 3),
        "overhead_fraction": round(max(0.0, frame_s - calls.model_time) / frame_s, 4),
        "rows_per_frame": {cfg: results[cfg][1].unet_rows for cfg in CFG_TYPES},
        "fps_by_cfg": {cfg: round(1.0 / results[cfg][0], 3) for cfg in CFG_TYPES},
        "fps_diffusers_img2img": round(1.0 / diffusers_s, 3),
        "speedup_vs_diffusers": round(diffusers_s / frame_s, 3),
        "diffusers_unet_calls_per_frame": diffusers_calls.unet_calls,
        "diffusers_guidance_scale": 1.0,
    }
