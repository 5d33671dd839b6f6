"""Backend running the exported UNet / VAE graphs in ONNX Runtime sessions.

Uses the same cleaned ONNX artefacts (and cache) as the TensorRT path, so this backend is also
how every artefact TensorRT consumes gets verified on a machine without a GPU.

Execution provider is chosen explicitly and checked after the session is created: ONNX
Runtime silently falls back to the CPU provider when the CUDA one fails to load, which would
turn a 30 fps setup into a 0.3 fps one without a word. Here that is an error.

Tensors stay torch tensors: inputs and outputs are bound by pointer with ``io_binding`` (no
numpy round trip; on CUDA no host copy).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from bridge.errors import ConfigError, PipelineError, Problem, RuntimeMissingError
from bridge.pipeline.backends.base import Backend
from bridge.pipeline.backends.onnx_export import ONNX_FILE, check_size_in_range
from bridge.pipeline.components import Components

log = logging.getLogger(__name__)

Runner = Callable[[dict[str, torch.Tensor]], torch.Tensor]
Factory = Callable[[str, int, tuple[int, int]], tuple[Runner, Mapping[str, Any]]]

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}
ORT_GPU_HINT = "pip install onnxruntime-gpu (and a CUDA-capable NVIDIA driver), or use provider 'cpu'"
_NP_DTYPES = {torch.float32: "float32", torch.float16: "float16"}  # ORT CPU has no bf16 kernels


def _resolve_shape(shape: list[Any], dims: dict[str, int], scale: int) -> tuple[int, ...]:
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
        elif d in dims:
            out.append(dims[d])
        elif d.startswith("latent_") and d.removeprefix("latent_") in dims:
            out.append(dims[d.removeprefix("latent_")] // scale)
        elif f"latent_{d}" in dims:
            out.append(dims[f"latent_{d}"] * scale)
        else:
            raise PipelineError(f"cannot resolve output axis {d!r}", fix="rebuild the ONNX artefacts")
    return tuple(out)


def output_shape(spec: Mapping[str, Any], feed: Mapping[str, torch.Tensor], scale: int) -> tuple[int, ...]:
    """Shape of the single output, from the named axes of the inputs (VAE scale relates
    pixel and latent axes)."""
    dims: dict[str, int] = {}
    for t in spec["inputs"]:
        for axis, size in zip(t["shape"], feed[t["name"]].shape, strict=True):
            if isinstance(axis, str):
                dims[axis] = int(size)
    return _resolve_shape(spec["outputs"][0]["shape"], dims, scale)


@dataclass
class ProviderChoice:
    name: str  # cpu | cuda | tensorrt
    device: torch.device
    options: dict[str, Any]


def choose_provider(device: torch.device, provider: str | None = None,
                    trt_cache_dir: Path | None = None) -> ProviderChoice:
    """Provider for ``device`` (or the one asked for); missing → RuntimeMissingError."""
    import onnxruntime as ort

    name = provider or ("cuda" if device.type == "cuda" else "cpu")
    if name not in PROVIDERS:
        raise ConfigError(Problem("ort_provider", name, "unknown ONNX Runtime provider",
                                  f"one of {', '.join(PROVIDERS)}"))
    if PROVIDERS[name] not in ort.get_available_providers():
        raise RuntimeMissingError(
            f"ONNX Runtime provider {PROVIDERS[name]} is not available "
            f"(installed: {', '.join(ort.get_available_providers())})", fix=ORT_GPU_HINT)
    if name != "cpu" and device.type != "cuda":
        raise ConfigError(Problem("ort_provider", name, "needs the model on a CUDA device",
                                  "load the model with device cuda, or use provider cpu"))
    if name == "cpu" and device.type != "cpu":
        raise ConfigError(Problem("ort_provider", name, f"model is on {device}",
                                  "use provider cuda for a CUDA model"))
    options: dict[str, Any] = {}
    if name in ("cuda", "tensorrt"):
        # Run on torch's stream: inputs written by torch are ready in stream order and outputs
        # are ready for torch without a device-wide synchronize.
        options["device_id"] = device.index or 0
        options["user_compute_stream"] = str(torch.cuda.current_stream(device).cuda_stream)
    if name == "tensorrt":
        options |= {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(trt_cache_dir or Path.cwd())}
    return ProviderChoice(name, device, options)


class OrtRunner:
    """One ONNX Runtime session; torch tensors in, a fresh torch tensor out."""

    def __init__(self, path: Path, spec: Mapping[str, Any], choice: ProviderChoice, vae_scale: int,
                 threads: int = 0) -> None:
        import onnxruntime as ort

        self.spec = spec
        self.choice = choice
        self.vae_scale = vae_scale
        self.dtype = getattr(torch, spec["outputs"][0]["dtype"])
        self.input_dtypes = {t["name"]: getattr(torch, t["dtype"]) for t in spec["inputs"]}
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Same thread count as torch (the user's --threads), and no spin-waiting: three sessions
        # (plus torch for text/pre/post) share the cores, and idle ORT pools spinning at 100%
        # slowed everything else in the process ~6x in `bench pipeline` on 2 cores.
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        name = PROVIDERS[choice.name]
        providers: list[Any] = [(name, choice.options)] if choice.options else [name]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise PipelineError(f"ONNX Runtime could not load {path}: {exc}",
                                fix="run `sdbridge engines clean --all` and rebuild") from exc
        active = self.session.get_providers()[0]
        if active != PROVIDERS[choice.name]:
            raise RuntimeMissingError(f"ONNX Runtime fell back to {active} instead of {PROVIDERS[choice.name]}",
                                      fix=ORT_GPU_HINT)
        self.output_name = spec["outputs"][0]["name"]
        self._dev_type = "cuda" if choice.device.type == "cuda" else "cpu"
        self._dev_id = choice.device.index or 0

    def __call__(self, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        import numpy as np

        binding = self.session.io_binding()
        keep = []  # inputs must stay alive until the run returns
        for name, dtype in self.input_dtypes.items():
            t = feed[name].to(device=self.choice.device, dtype=dtype).contiguous()
            keep.append(t)
            binding.bind_input(name, self._dev_type, self._dev_id, np.dtype(_NP_DTYPES[dtype]),
                               tuple(t.shape), t.data_ptr())
        out = torch.empty(output_shape(self.spec, feed, self.vae_scale), dtype=self.dtype,
                          device=self.choice.device)
        binding.bind_output(self.output_name, self._dev_type, self._dev_id,
                            np.dtype(_NP_DTYPES[self.dtype]), tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out


class ModuleAdapter:
    """Turns named-tensor runners into the Backend callables: checks batch and size against
    what was built, broadcasts timestep / embeddings to the row count, restores the caller's
    dtype. Shared by the ONNX Runtime and TensorRT backends.

    ``factory(module, batch, hw_range) -> (runner, spec)`` builds (or loads from the cache) one
    module. With ``batches`` (and ``hw_range``) given every module is built now; without, each
    is built on its first call for the batch that call has, and a missing ``hw_range`` becomes
    the default range around the first call's size (a caller that knows neither still works, at
    the price of a stall on the first frame, logged).
    """

    def __init__(self, components: Components, factory: Factory, hw_range: tuple[int, int] | None,
                 batches: Mapping[str, int] | None = None) -> None:
        self.factory = factory
        self.runners: dict[str, Runner] = {}
        self.specs: dict[str, Mapping[str, Any]] = {}
        self.hw_range = hw_range
        self.family = components.family
        self.vae_scale = components.vae_scale_factor
        self.multiple = self.vae_scale * 2 ** (len(components.unet.config.block_out_channels) - 1)
        if batches and hw_range is None:
            raise ConfigError(Problem("hw_range", None, "needed to build before the first frame",
                                      "pass hw_range or the pipeline height/width"))
        for module, batch in (batches or {}).items():
            self._build(module, batch)

    def _build(self, module: str, batch: int) -> None:
        assert self.hw_range is not None  # set by __init__ or the first _check_size
        self.runners[module], self.specs[module] = self.factory(module, batch, self.hw_range)

    def _check_size(self, height: int, width: int) -> None:
        if self.hw_range is None:
            from bridge.pipeline.backends import default_hw_range

            self.hw_range = default_hw_range(height, width)
        check_size_in_range(height, width, self.hw_range)
        bad = [Problem(n, v, f"must be a multiple of {self.multiple} for the exported UNet",
                       f"round to a multiple of {self.multiple}")
               for n, v in (("height", height), ("width", width)) if v % self.multiple]
        if bad:
            raise ConfigError(bad, context="accelerated backend")

    def _check_batch(self, module: str, got: int) -> int:
        if module not in self.specs:
            log.warning("building %s for batch %d on its first call (pass the pipeline params to "
                        "create_backend to build before the first frame)", module, got)
            self._build(module, got)
        rows = int(self.specs[module]["batch"])
        if got != rows:
            raise PipelineError(f"{module} was built for batch {rows}, got {got}",
                                fix="rebuild the backend for this cfg_type / steps / frame_buffer_size")
        return rows

    @staticmethod
    def _rows(t: torch.Tensor, rows: int, name: str) -> torch.Tensor:
        if t.shape[0] == rows:
            return t
        if t.shape[0] == 1:
            return t.expand(rows, *t.shape[1:])
        raise PipelineError(f"{name} has {t.shape[0]} rows, the UNet was built for {rows}",
                            fix="pass one row or one per UNet row")

    def unet(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
             added_cond: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        f = self.vae_scale
        self._check_size(sample.shape[2] * f, sample.shape[3] * f)
        rows = self._check_batch("unet", sample.shape[0])
        t = torch.as_tensor(timestep, device=sample.device).to(torch.float32).reshape(-1)
        feed = {"sample": sample, "timestep": self._rows(t, rows, "timestep"),
                "encoder_hidden_states": self._rows(encoder_hidden_states, rows, "encoder_hidden_states")}
        if self.family == "sdxl":
            if not added_cond or "text_embeds" not in added_cond or "time_ids" not in added_cond:
                raise PipelineError("SDXL UNet needs added_cond with text_embeds and time_ids",
                                    fix="pass the pooled embeddings and time ids")
            feed["text_embeds"] = self._rows(added_cond["text_embeds"], rows, "text_embeds")
            feed["time_ids"] = self._rows(added_cond["time_ids"], rows, "time_ids")
        return self.runners["unet"](feed).to(sample.dtype)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check_size(images.shape[2], images.shape[3])
        self._check_batch("vae_encoder", images.shape[0])
        return self.runners["vae_encoder"]({"images": images}).to(images.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_size(latents.shape[2] * self.vae_scale, latents.shape[3] * self.vae_scale)
        self._check_batch("vae_decoder", latents.shape[0])
        return self.runners["vae_decoder"]({"latents": latents}).to(latents.dtype)

    def backend(self, name: str) -> Backend:
        return Backend(name=name, unet=self.unet, encode=self.encode, decode=self.decode)


def module_batches(rows: int, frames: int) -> dict[str, int]:
    return {"unet": rows, "vae_encoder": frames, "vae_decoder": frames}


def onnxruntime_backend(components: Components, *, rows: int | None = None, frames: int | None = None,
                        hw_range: tuple[int, int] | None = None, precision: str | None = None,
                        provider: str | None = None, cache: Any = None, threads: int = 0) -> Backend:
    """Export/clean (or reuse from the cache) the three graphs and open one session each.
    ``rows``/``frames``/``hw_range`` None: built on first call (see ModuleAdapter)."""
    from bridge.pipeline.backends.engine_cache import EngineCache
    from bridge.pipeline.backends.onnx_cleanup import prepare_onnx

    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise RuntimeMissingError("onnxruntime is not installed",
                                  fix="pip install 'sdbridge[onnx]'") from exc
    cache = cache or EngineCache()
    device = components.device
    choice = choose_provider(device, provider, trt_cache_dir=cache.root / "ort-trt")
    precision = precision or ("fp16" if device.type == "cuda" else "fp32")

    def factory(module: str, batch: int, hw_range: tuple[int, int]) -> tuple[Runner, Mapping[str, Any]]:
        entry = prepare_onnx(components, module, batch=batch, hw_range=hw_range, precision=precision,
                             cache=cache)
        spec = entry.meta["spec"]
        return OrtRunner(entry.file(ONNX_FILE), spec, choice, components.vae_scale_factor, threads), spec

    batches = None if rows is None or frames is None else module_batches(rows, frames)
    adapter = ModuleAdapter(components, factory, hw_range, batches)
    log.info("onnxruntime backend (%s, %s, rows %s, frames %s, sizes %s px)", choice.name, precision,
             rows, frames, hw_range or "from the first frame")
    return adapter.backend(f"onnxruntime-{choice.name}")
