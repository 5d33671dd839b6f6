"""Export the UNet and the VAE encoder/decoder to ONNX with dynamic height/width.

What is traced is exactly ``UNetModule`` / ``VaeEncoderModule`` / ``VaeDecoderModule`` from
``base.py``, so every backend computes the same function as the torch one.

- Batch is static per configuration (UNet rows from the cfg type, VAE = frames F): TensorRT
  builds faster and tighter kernels for a fixed batch, and a batch change rebuilds anyway.
- Height/width are dynamic (axes named below) so any size inside the configured range
  (default 256–1024, multiples of 64) runs without a rebuild.
- The legacy TorchScript exporter (``dynamo=False``) is used: with torch 2.13 it traces the
  diffusers UNet (sd and sdxl) and both VAEs to graphs matching torch within 1e-5 at every
  size in the range (tests/test_onnx_export.py). The default dynamo exporter needs
  ``onnxscript``, which our extras do not install; it was not tried.
- Models above 2 GB (protobuf's limit) are saved with ALL weights in one external file
  ``<name>.data`` next to the graph (TensorRT's parser and ONNX Runtime both read it).
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bridge.errors import ConfigError, ModelError, Problem
from bridge.pipeline.backends.base import UNetModule, VaeDecoderModule, VaeEncoderModule
from bridge.pipeline.components import Components

log = logging.getLogger(__name__)

OPSET = 17
MODULES = ("unet", "vae_encoder", "vae_decoder")
DEFAULT_HW_RANGE = (256, 1024)
HW_MULTIPLE = 64
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # leave headroom for the graph itself
ONNX_FILE = "model.onnx"
TEXT_LEN = 77


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output: name, dtype name and shape (ints or axis names)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class ExportSpec:
    module: str
    batch: int
    hw_range: tuple[int, int]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: dict[str, tuple[int, int]] = field(default_factory=dict)  # axis name -> (min, max)

    def to_json(self) -> dict[str, Any]:
        return {"module": self.module, "batch": self.batch, "hw_range": list(self.hw_range),
                "inputs": [t.__dict__ | {"shape": list(t.shape)} for t in self.inputs],
                "outputs": [t.__dict__ | {"shape": list(t.shape)} for t in self.outputs],
                "dims": {k: list(v) for k, v in self.dims.items()}}


def check_hw_range(hw_range: tuple[int, int], multiple: int = HW_MULTIPLE) -> tuple[int, int]:
    lo, hi = (int(v) for v in hw_range)
    problems = []
    if lo <= 0 or hi < lo:
        problems.append(Problem("hw_range", hw_range, "needs 0 < min <= max", "e.g. [256, 1024]"))
    for value in (lo, hi):
        if value % multiple:
            problems.append(Problem("hw_range", hw_range, f"{value} is not a multiple of {multiple}",
                                    f"round to a multiple of {multiple}"))
    if problems:
        raise ConfigError(problems, context="ONNX export")
    return lo, hi


def check_size_in_range(height: int, width: int, hw_range: tuple[int, int]) -> None:
    lo, hi = hw_range
    problems = [Problem(name, value, f"outside the engine range {lo}..{hi}",
                        f"use {lo}..{hi} or rebuild with a wider hw_range")
                for name, value in (("height", height), ("width", width)) if not lo <= value <= hi]
    if problems:
        raise ConfigError(problems, context="accelerated backend")


def text_shape(components: Components) -> tuple[int, int]:
    """(sequence length, width) of the encoder_hidden_states the UNet receives."""
    length = int(getattr(components.tokenizer, "model_max_length", TEXT_LEN) or TEXT_LEN)
    if length > 1024:  # "no limit" sentinel of some tokenizers
        length = TEXT_LEN
    return length, int(components.unet.config.cross_attention_dim)


def sdxl_dims(components: Components) -> tuple[int, int]:
    """(pooled text embeds width, number of time ids) for the SDXL ``text_time`` conditioning."""
    cfg = components.unet.config
    n_ids = 6
    return int(cfg.projection_class_embeddings_input_dim) - n_ids * int(cfg.addition_time_embed_dim), n_ids


def export_spec(components: Components, module: str, batch: int,
                hw_range: tuple[int, int] = DEFAULT_HW_RANGE, dtype: torch.dtype = torch.float32) -> ExportSpec:
    if module not in MODULES:
        raise ConfigError(Problem("module", module, "unknown module", f"one of {', '.join(MODULES)}"))
    lo, hi = check_hw_range(hw_range)
    f = components.vae_scale_factor
    dt = str(dtype).removeprefix("torch.")
    c = int(components.vae.config.latent_channels)
    if module == "unet":
        length, width = text_shape(components)
        ins = [TensorSpec("sample", dt, (batch, components.latent_channels, "latent_height", "latent_width")),
               TensorSpec("timestep", "float32", (batch,)),
               TensorSpec("encoder_hidden_states", dt, (batch, length, width))]
        if components.family == "sdxl":
            pooled, n_ids = sdxl_dims(components)
            ins += [TensorSpec("text_embeds", dt, (batch, pooled)), TensorSpec("time_ids", dt, (batch, n_ids))]
        outs = [TensorSpec("noise_pred", dt, (batch, int(components.unet.config.out_channels),
                                               "latent_height", "latent_width"))]
        dims = {"latent_height": (lo // f, hi // f), "latent_width": (lo // f, hi // f)}
    elif module == "vae_encoder":
        ins = [TensorSpec("images", dt, (batch, 3, "height", "width"))]
        outs = [TensorSpec("latents", dt, (batch, c, "latent_height", "latent_width"))]
        dims = {"height": (lo, hi), "width": (lo, hi)}
    else:
        ins = [TensorSpec("latents", dt, (batch, c, "latent_height", "latent_width"))]
        outs = [TensorSpec("images", dt, (batch, 3, "height", "width"))]
        dims = {"latent_height": (lo // f, hi // f), "latent_width": (lo // f, hi // f)}
    return ExportSpec(module, batch, (lo, hi), tuple(ins), tuple(outs), dims)


def torch_module(components: Components, module: str) -> torch.nn.Module:
    if module == "unet":
        return UNetModule(components.unet)
    if module == "vae_encoder":
        return VaeEncoderModule(components.vae)
    return VaeDecoderModule(components.vae)


def example_inputs(spec: ExportSpec, components: Components, height: int, width: int,
                   device: torch.device | str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs matching ``spec`` at the given *pixel* size (also used by the tests)."""
    f = components.vae_scale_factor
    sizes = {"height": height, "width": width, "latent_height": height // f, "latent_width": width // f}
    gen = torch.Generator().manual_seed(seed)
    feed = {}
    for t in spec.inputs:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in t.shape)
        dtype = getattr(torch, t.dtype)
        if t.name == "timestep":
            value = torch.linspace(999, 1, shape[0]).round()
        elif t.name == "images":
            value = torch.rand(shape, generator=gen) * 2 - 1
        elif t.name == "time_ids":
            value = torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32).repeat(shape[0], 1)
        else:
            value = torch.randn(shape, generator=gen)
        feed[t.name] = value.to(device=device, dtype=dtype)
    return feed


def _dynamic_axes(spec: ExportSpec) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for t in spec.inputs + spec.outputs:
        named = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
        if t.name == "encoder_hidden_states":
            named[1] = "text_len"  # a longer prompt window (e.g. 154 tokens) needs no re-export
        if named:
            axes[t.name] = named
    return axes


def export_onnx(components: Components, module: str, out_dir: Path, *, batch: int,
                hw_range: tuple[int, int] = DEFAULT_HW_RANGE, dtype: torch.dtype | None = None,
                opset: int = OPSET, external_threshold: int = PROTOBUF_LIMIT) -> ExportSpec:
    """Trace ``module`` into ``out_dir/model.onnx`` (+ ``model.onnx.data`` when large)."""
    if opset < 17:
        raise ConfigError(Problem("opset", opset, "LayerNorm/GroupNorm need opset >= 17", "use 17 or newer"))
    dtype = dtype or components.dtype
    spec = export_spec(components, module, batch, hw_range, dtype)
    net = torch_module(components, module)
    if components.dtype != dtype:
        net = copy.deepcopy(net).to(dtype)  # never change the caller's live components
    net.eval()
    lo = spec.hw_range[0]
    feed = example_inputs(spec, components, lo, lo, device=components.device)
    scratch = out_dir / "x"  # short: >2 GB exports write one file per weight, named after it
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # Tracer warnings are about Python branches on shapes that are constant for us
            # (channel asserts, the "upsample size" check that needs multiples of 8 latents).
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)  # "constant folding not applied" notes
            torch.onnx.export(
                net, tuple(feed.values()), str(scratch / ONNX_FILE), dynamo=False,
                input_names=list(feed), output_names=[t.name for t in spec.outputs],
                dynamic_axes=_dynamic_axes(spec), opset_version=opset, do_constant_folding=True)
        import onnx

        model = onnx.load(str(scratch / ONNX_FILE), load_external_data=True)
        save_onnx(model, out_dir / ONNX_FILE, external_threshold=external_threshold)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelError(f"ONNX export of {module} failed: {exc}",
                         fix="run with -vv and report the traceback; acceleration 'none' still works") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("exported %s (batch %d, %d..%d px) in %.1fs", module, batch, *spec.hw_range,
             time.perf_counter() - started)
    return spec


def tensor_bytes(model: Any) -> int:
    """Bytes of all initializers (works for models above protobuf's 2 GB limit)."""
    total = 0
    for init in model.graph.initializer:
        total += len(init.raw_data) if init.raw_data else init.ByteSize()
    return total


def save_onnx(model: Any, path: Path, *, external_threshold: int = PROTOBUF_LIMIT) -> None:
    """Save inline when small; else with every tensor in ONE ``<file>.data`` next to it."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if tensor_bytes(model) <= external_threshold:
        onnx.save_model(model, str(path))
        return
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)


def external_data_files(path: Path) -> list[Path]:
    """The external data files a saved model references (empty when all inline)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    names = {ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}
    return sorted(path.parent / n for n in names)
