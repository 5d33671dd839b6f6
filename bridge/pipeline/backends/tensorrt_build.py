"""Build TensorRT engines from the cleaned ONNX artefacts (TensorRT 10+ Python API).

One engine per module (UNet, VAE encoder, VAE decoder) with ONE optimisation profile whose
min/max cover the configured height/width range (opt = the configured size), so changing the
resolution inside the range needs no rebuild; batch is fixed per configuration.

Precision. TensorRT 10.12 deprecated weakly-typed networks and TensorRT 11 removed the
``BuilderFlag.FP16/BF16/FP8`` precision hints. The default here (``typing="strong"``) exports
the ONNX graph in the target dtype and builds a STRONGLY_TYPED network: same result on 10.x and
11.x. ``typing="weak"`` (TensorRT 10.x only) exports fp32 and sets the FP16 / BF16 builder
flags instead. FP8 needs explicit Q/DQ quantisation in the graph (NVIDIA ModelOpt), which our
exporter does not produce, so it is refused with that explanation rather than silently
building fp16.

The timing cache is persisted per (TensorRT version, GPU, precision) in the engine cache and
shared by every build; a tqdm bar per builder phase (IProgressMonitor) and a build-time
estimate (from past builds on this GPU, else a rule of thumb) are shown.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from bridge.errors import ConfigError, ModelError, PipelineError, Problem, RuntimeMissingError
from bridge.pipeline.backends.engine_cache import CacheEntry, EngineCache, artefact_key, atomic_write_bytes, key_digest
from bridge.pipeline.backends.onnx_export import ONNX_FILE

log = logging.getLogger(__name__)

ENGINE_FILE = "engine.plan"
PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
TYPINGS = ("strong", "weak")
TRT_HINT = ("pip install 'sdbridge[tensorrt]' on a machine with an NVIDIA GPU, its driver and the "
            "CUDA build of torch (install/install.sh --cuda); or use acceleration onnxruntime / none")
# Rule of thumb when this GPU has no build history: ~4 min per GB of ONNX weights without a
# warm timing cache (SD 1.5 UNet fp16 ≈ 1.7 GB → ~7 min on an RTX 3090), ~3× faster warm.
_COLD_S_PER_GB = 240.0
_WARM_FACTOR = 0.35
_MIN_ESTIMATE_S = 10.0


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or one RuntimeMissingError with the install hint."""
    try:
        import tensorrt as trt
    except ImportError as exc:  # also covers missing libnvinfer shared libraries
        raise RuntimeMissingError(f"TensorRT is not installed or cannot load ({exc})", fix=TRT_HINT) from exc
    return trt


def require_cuda() -> Any:
    import torch

    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no usable CUDA GPU/driver"
        raise RuntimeMissingError(f"TensorRT needs a CUDA GPU ({why})", fix=TRT_HINT)
    return torch


def trt_versions(device: Any) -> dict[str, Any]:
    """TensorRT version and GPU compute capability: an engine runs only where both match."""
    trt = import_tensorrt()
    torch = require_cuda()
    major, minor = torch.cuda.get_device_capability(device)
    return {"tensorrt": trt.__version__, "sm": f"{major}.{minor}", "cuda": torch.version.cuda}


def check_precision(precision: str, typing: str) -> None:
    problems = []
    if precision not in PRECISIONS:
        problems.append(Problem("precision", precision, "unknown precision", f"one of {', '.join(PRECISIONS)}"))
    if typing not in TYPINGS:
        problems.append(Problem("typing", typing, "unknown network typing", "strong or weak"))
    if precision == "fp8":
        problems.append(Problem("precision", precision,
                                "FP8 needs Q/DQ nodes from explicit quantisation (NVIDIA ModelOpt); "
                                "the FP8 builder flag alone builds nothing in FP8", "use fp16 or bf16"))
    if problems:
        raise ConfigError(problems, context="TensorRT build")


def onnx_precision(precision: str, typing: str) -> str:
    """dtype the ONNX graph is exported in: the target one for strong typing, fp32 for weak."""
    return precision if typing == "strong" else "fp32"


def profile_shapes(spec: Mapping[str, Any], opt_hw: tuple[int, int], vae_scale: int
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) per input: named pixel/latent axes span the range, the rest is fixed."""
    opt = {"height": opt_hw[0], "width": opt_hw[1],
           "latent_height": opt_hw[0] // vae_scale, "latent_width": opt_hw[1] // vae_scale}
    shapes = {}
    for t in spec["inputs"]:
        lo, mid, hi = [], [], []
        for axis in t["shape"]:
            if isinstance(axis, int):
                lo.append(axis), mid.append(axis), hi.append(axis)
            else:
                a, b = spec["dims"][axis]
                lo.append(a), mid.append(min(max(opt[axis], a), b)), hi.append(b)
        shapes[t["name"]] = (tuple(lo), tuple(mid), tuple(hi))
    return shapes


# -- build time estimate -------------------------------------------------------------------
def _history_path(cache: EngineCache) -> Path:
    return cache.root / "build_history.json"


def estimate_build_seconds(cache: EngineCache, onnx_bytes: int, sm: str, warm: bool) -> float:
    """Seconds per GB measured on this GPU before (median), else the rule of thumb."""
    try:
        history = json.loads(_history_path(cache).read_text("utf-8"))
    except (OSError, ValueError):
        history = []
    rates = [h["s_per_gb"] for h in history if h.get("sm") == sm and h.get("warm") == warm]
    rate = statistics.median(rates) if rates else _COLD_S_PER_GB * (_WARM_FACTOR if warm else 1.0)
    return max(_MIN_ESTIMATE_S, rate * onnx_bytes / 1024**3)


def _record_build(cache: EngineCache, onnx_bytes: int, seconds: float, sm: str, warm: bool) -> None:
    try:
        history = json.loads(_history_path(cache).read_text("utf-8"))
    except (OSError, ValueError):
        history = []
    gb = max(onnx_bytes / 1024**3, 1e-3)
    history = (history + [{"sm": sm, "warm": warm, "s_per_gb": seconds / gb, "at": time.time()}])[-50:]
    atomic_write_bytes(_history_path(cache), json.dumps(history).encode())


# -- progress ------------------------------------------------------------------------------
def make_progress_monitor(trt: Any) -> Any:
    """An ``IProgressMonitor`` showing one tqdm bar per builder phase on stderr."""
    from tqdm import tqdm

    class TqdmProgressMonitor(trt.IProgressMonitor):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, Any] = {}
            self._lock = threading.Lock()  # TensorRT may call from several threads

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, leave=False,
                                              position=len(self._bars), file=sys.stderr)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return TqdmProgressMonitor()


# -- build ---------------------------------------------------------------------------------
def _parse(trt: Any, builder: Any, onnx_path: Path, typing: str, logger: Any) -> tuple[Any, Any]:
    flags = 0
    if typing == "strong":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so external weights next to the graph are found.
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT could not parse {onnx_path.name}: {errors}",
                         fix="run `sdbridge engines clean --all` and rebuild; report it if it persists")
    return network, parser


def _precision_flags(trt: Any, config: Any, precision: str, typing: str) -> None:
    if typing == "strong" or precision == "fp32":
        return  # strongly typed: precision comes from the graph's dtypes
    flag = {"fp16": "FP16", "bf16": "BF16"}[precision]
    if not hasattr(trt.BuilderFlag, flag):
        raise ConfigError(Problem("typing", typing,
                                  f"TensorRT {trt.__version__} has no BuilderFlag.{flag} (removed in 11.x)",
                                  "use typing strong (the default)"))
    config.set_flag(getattr(trt.BuilderFlag, flag))


def build_engine(onnx_path: Path, engine_path: Path, spec: Mapping[str, Any], *, precision: str,
                 typing: str, opt_hw: tuple[int, int], vae_scale: int, timing_cache: Path,
                 progress: bool = True, workspace_gb: float | None = None,
                 optimization_level: int = 3) -> dict[str, Any]:
    """Parse ``onnx_path``, build, write ``engine_path`` and update the timing cache."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, onnx_path, typing, logger)
    config = builder.create_builder_config()
    _precision_flags(trt, config, precision, typing)
    config.builder_optimization_level = optimization_level
    if workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 1024**3))
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(spec, opt_hw, vae_scale)
    for name, (lo, mid, hi) in shapes.items():
        profile.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = make_progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor  # must outlive the build: kept in this frame
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise PipelineError(f"TensorRT failed to build {spec['module']} (see the TensorRT log above)",
                            fix="free GPU memory, try a smaller hw_range, or use acceleration onnxruntime")
    engine_path.write_bytes(memoryview(serialized))
    atomic_write_bytes(timing_cache, bytes(memoryview(cache.serialize())))
    return {"build_s": round(seconds, 1), "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
            "warm_timing_cache": bool(cache_bytes)}


def ensure_engine(components: Any, module: str, *, batch: int, hw_range: tuple[int, int],
                  opt_hw: tuple[int, int], precision: str = "fp16", typing: str = "strong",
                  cache: EngineCache | None = None, progress: bool = True) -> tuple[CacheEntry, Mapping[str, Any]]:
    """The engine for one module, from the cache or built (ONNX artefact first). Returns the
    engine entry and the ONNX I/O spec. A cached engine is used without touching its ONNX
    artefact (its key holds the ONNX key's digest)."""
    from bridge.pipeline.backends.onnx_cleanup import onnx_key, prepare_onnx

    check_precision(precision, typing)
    cache = cache or EngineCache()
    versions = trt_versions(components.device)
    export_args = dict(batch=batch, hw_range=hw_range, precision=onnx_precision(precision, typing))
    runtime = {**versions, "onnx": key_digest(onnx_key(components, module, **export_args)),
               "typing": typing, "opt_hw": list(opt_hw)}
    key = artefact_key(components, module, artefact="trt", batch=batch, hw_range=hw_range,
                       precision=precision, runtime=runtime)
    cached = cache.lookup(key)
    if cached is not None:
        return cached, cached.meta["spec"]
    onnx_entry = prepare_onnx(components, module, cache=cache, **export_args)
    spec = onnx_entry.meta["spec"]
    timing = cache.timing_cache_path({"tensorrt": versions["tensorrt"], "sm": versions["sm"],
                                      "precision": precision, "typing": typing})

    def build(tmp: Path) -> dict[str, Any]:
        onnx_bytes = onnx_entry.size_bytes
        warm = timing.is_file()
        estimate = estimate_build_seconds(cache, onnx_bytes, versions["sm"], warm)
        about = f"{estimate:.0f} s" if estimate < 90 else f"{estimate / 60:.0f} min"
        log.warning("building TensorRT engine for %s (batch %d, %d..%d px, %s): about %s; "
                    "done once per configuration, then cached", module, batch, *hw_range, precision, about)
        meta = build_engine(onnx_entry.file(ONNX_FILE), tmp / ENGINE_FILE, spec, precision=precision,
                            typing=typing, opt_hw=opt_hw, vae_scale=components.vae_scale_factor,
                            timing_cache=timing, progress=progress)
        _record_build(cache, onnx_bytes, meta["build_s"], versions["sm"], warm)
        return {**meta, "spec": spec, "estimate_s": round(estimate, 1)}

    return cache.get_or_build(key, build), spec
