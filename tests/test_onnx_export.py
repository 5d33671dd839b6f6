"""ONNX export of the tiny model: every graph matches PyTorch at two sizes inside the range,
the cleaned graph matches the raw one, external data is one file."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from bridge.errors import ConfigError
from bridge.pipeline.backends.onnx_cleanup import cleanup_onnx
from bridge.pipeline.backends.onnx_export import (
    ONNX_FILE,
    check_hw_range,
    example_inputs,
    export_onnx,
    external_data_files,
    torch_module,
)
from bridge.pipeline.tiny import build_tiny_components

HW_RANGE = (64, 128)
SIZES = ((64, 64), (128, 64))  # two resolutions inside the range, one non-square
# (variant, module, batch): UNet rows for n=2 steps, F=1 with cfg "full" (2n·F = 4) and "self" (n·F = 2).
CASES = [("sd", "unet", 2), ("sd", "vae_encoder", 1), ("sd", "vae_decoder", 2),
         ("sd-tiny-vae", "vae_encoder", 1), ("sd-tiny-vae", "vae_decoder", 1), ("sdxl", "unet", 4)]


@pytest.fixture(scope="module")
def components() -> dict[str, object]:
    return {"sd": build_tiny_components(), "sd-tiny-vae": build_tiny_components(tiny_vae=True),
            "sdxl": build_tiny_components(family="sdxl")}


@pytest.fixture(scope="module")
def exported(components, tmp_path_factory) -> dict[tuple[str, str], tuple[Path, Path, object]]:
    """(variant, module) -> (raw model path, cleaned model path, spec)."""
    out = {}
    for variant, module, batch in CASES:
        folder = tmp_path_factory.mktemp(f"{variant}-{module}")
        spec = export_onnx(components[variant], module, folder / "raw", batch=batch, hw_range=HW_RANGE)
        raw = folder / "raw" / ONNX_FILE
        clean = folder / "clean" / ONNX_FILE
        if variant == "sd":  # clean-up is graph-generic: the sd graphs cover it (keeps this fast)
            cleanup_onnx(raw, clean)
        out[(variant, module)] = (raw, clean, spec)
    return out


@functools.cache
def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(path: Path, feed: dict[str, torch.Tensor]) -> np.ndarray:
    return _session(path).run(None, {k: v.numpy() for k, v in feed.items()})[0]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("variant,module,batch", CASES)
@pytest.mark.parametrize("size", SIZES)
def test_export_matches_torch(components, exported, variant, module, batch, size) -> None:
    raw, _, spec = exported[(variant, module)]
    c = components[variant]
    feed = example_inputs(spec, c, *size, seed=sum(size))
    with torch.no_grad():
        ref = torch_module(c, module)(*feed.values()).numpy()
    out = _run(raw, feed)
    assert out.shape == ref.shape
    assert out.shape[0] == batch
    assert _rel(out, ref) < 1e-4


@pytest.mark.parametrize("variant,module,batch", [c for c in CASES if c[0] == "sd"])
@pytest.mark.parametrize("size", SIZES)
def test_cleaned_graph_matches_raw(components, exported, variant, module, batch, size) -> None:
    raw, clean, spec = exported[(variant, module)]
    feed = example_inputs(spec, components[variant], *size, seed=7)
    assert _rel(_run(clean, feed), _run(raw, feed)) < 1e-5


def test_cleanup_shrinks_and_sorts_the_unet(exported) -> None:
    raw, clean, _ = exported[("sd", "unet")]
    raw_model, clean_model = onnx.load(str(raw)), onnx.load(str(clean))
    assert len(clean_model.graph.node) < len(raw_model.graph.node)
    onnx.checker.check_model(clean_model)
    # Toposorted: every node input is produced earlier (or is a graph input / initializer).
    known = {i.name for i in clean_model.graph.input} | {i.name for i in clean_model.graph.initializer} | {""}
    for node in clean_model.graph.node:
        assert set(node.input) <= known, node.name
        known |= set(node.output)


def test_graph_has_static_batch_and_named_dynamic_sizes(exported) -> None:
    model = onnx.load(str(exported[("sd", "unet")][1]))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["sample"] == [2, 4, "latent_height", "latent_width"]
    assert dims["timestep"] == [2]
    assert dims["encoder_hidden_states"][0] == 2
    assert model.opset_import[0].version >= 17
    model = onnx.load(str(exported[("sdxl", "unet")][0]))
    names = [i.name for i in model.graph.input]
    assert names == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]


def test_large_model_saved_with_one_external_data_file(components, tmp_path) -> None:
    # The 2 GB threshold lowered to 0 so the tiny model takes the large-model path.
    c = components["sd"]
    spec = export_onnx(c, "vae_decoder", tmp_path / "raw", batch=1, hw_range=HW_RANGE, external_threshold=0)
    raw = tmp_path / "raw" / ONNX_FILE
    assert external_data_files(raw) == [tmp_path / "raw" / "model.onnx.data"]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["model.onnx", "model.onnx.data"]
    clean = tmp_path / "clean" / ONNX_FILE
    cleanup_onnx(raw, clean, external_threshold=0)
    assert external_data_files(clean) == [tmp_path / "clean" / "model.onnx.data"]
    assert raw.stat().st_size < 100_000  # weights really are outside the graph file
    feed = example_inputs(spec, c, 128, 64)
    with torch.no_grad():
        ref = torch_module(c, "vae_decoder")(*feed.values()).numpy()
    assert _rel(_run(clean, feed), ref) < 1e-4


def test_hw_range_must_be_multiples_of_64() -> None:
    with pytest.raises(ConfigError) as info:
        check_hw_range((100, 1024))
    assert info.value.fields == ["hw_range"]
    with pytest.raises(ConfigError):
        check_hw_range((512, 256))
    assert check_hw_range((256, 1024)) == (256, 1024)


def test_opset_below_17_refused(components, tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        export_onnx(components["sd"], "vae_decoder", tmp_path, batch=1, hw_range=HW_RANGE, opset=16)
    assert "opset" in str(info.value)
