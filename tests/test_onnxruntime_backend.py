"""The ONNX Runtime backend runs the real StreamBatch pipeline on the tiny model and gives the
torch backend's frames; artefacts come from (and go to) the engine cache."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest
import torch

from bridge.cli import main
from bridge.errors import ConfigError, PipelineError, RuntimeMissingError
from bridge.params import default_params
from bridge.pipeline.backends import create_backend, onnx_export
from bridge.pipeline.backends.engine_cache import EngineCache
from bridge.pipeline.backends.onnxruntime_backend import choose_provider
from bridge.pipeline.stream_batch import StreamBatch
from bridge.pipeline.tiny import build_tiny_components

HW_RANGE = (64, 128)  # explicit range for the error test; the others use the default (64..1024 here)
# (family, cfg_type, t_index_list, frames): UNet rows 3 (n·F+F), 4 (n·F with F=2), 2 (SDXL conditioning).
CONFIGS = [("sd", "initialize", [20, 35], 1), ("sd", "self", [25, 40], 2), ("sdxl", "self", [20, 35], 1)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> EngineCache:
    return EngineCache(tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def tiny() -> dict[str, object]:
    return {"sd": build_tiny_components(), "sdxl": build_tiny_components(family="sdxl")}


def _params(cfg_type: str, t_index_list: list[int], frames: int, size=(64, 64)) -> dict:
    return default_params() | {"cfg_type": cfg_type, "t_index_list": t_index_list, "frame_buffer_size": frames,
                               "height": size[0], "width": size[1], "negative_prompt": "blurry",
                               "prompt": "a neon city at night", "guidance_scale": 1.5, "delta": 0.8}


def _frames(count: int, frames: int, size=(64, 64)) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    base = torch.rand(frames, 3, *size, generator=gen)
    return [(base + 0.05 * i * torch.rand(frames, 3, *size, generator=gen)).clamp(0, 1) for i in range(count)]


def _compare(components, params, backend, size=(64, 64)) -> float:
    reference, accelerated = StreamBatch(components, params), StreamBatch(components, params, backend=backend)
    worst = 0.0
    for images in _frames(4, params["frame_buffer_size"], size):
        want, got = reference.process(images), accelerated.process(images)
        assert got.shape == want.shape == images.shape
        assert want.std() > 0.01  # a real picture, not a constant
        worst = max(worst, float((want - got).abs().max()))
    return worst


@pytest.fixture(scope="module")
def backends(tiny, cache) -> dict[tuple, object]:
    out = {}
    for family, cfg, steps, frames in CONFIGS:
        out[(family, cfg, frames)] = create_backend(tiny[family], "onnxruntime", params=_params(cfg, steps, frames),
                                                    cache=cache)
    return out


@pytest.mark.parametrize("family,cfg_type,t_index_list,frames", CONFIGS)
def test_pipeline_frames_equal_torch_backend(tiny, backends, family, cfg_type, t_index_list, frames) -> None:
    backend = backends[(family, cfg_type, frames)]
    assert backend.name == "onnxruntime-cpu"
    assert _compare(tiny[family], _params(cfg_type, t_index_list, frames), backend) < 1e-3


def test_resolution_change_needs_no_rebuild(tiny, backends, cache, monkeypatch) -> None:
    entries = {e.digest for e in cache.entries()}
    monkeypatch.setattr(onnx_export, "export_onnx", _no_export)
    params = _params("initialize", [20, 35], 1, size=(128, 64))
    assert _compare(tiny["sd"], params, backends[("sd", "initialize", 1)], size=(128, 64)) < 1e-3
    assert {e.digest for e in cache.entries()} == entries


def _no_export(*args, **kwargs):
    raise AssertionError("exported again although the cache holds the artefact")


def test_second_backend_comes_from_cache(tiny, backends, cache, monkeypatch) -> None:
    monkeypatch.setattr(onnx_export, "export_onnx", _no_export)
    again = create_backend(tiny["sd"], "onnxruntime", params=_params("self", [25, 40], 2), cache=cache)
    images = _frames(1, 2)[0]
    assert torch.equal(StreamBatch(tiny["sd"], _params("self", [25, 40], 2), backend=again).process(images),
                       StreamBatch(tiny["sd"], _params("self", [25, 40], 2),
                                   backend=backends[("sd", "self", 2)]).process(images))


def test_without_params_each_module_builds_on_first_call(tiny, backends, cache, caplog) -> None:
    # What a caller that knows nothing gets: batch and size range from the first calls, equal to
    # what the eager path derives from the params, so the same cache entries serve both.
    entries = sorted(e.digest for e in cache.entries())
    lazy = create_backend(tiny["sd"], "onnxruntime", cache=cache)
    with caplog.at_level("WARNING"):
        assert _compare(tiny["sd"], _params("initialize", [20, 35], 1), lazy) < 1e-3
    assert "on its first call" in caplog.text
    assert sorted(e.digest for e in cache.entries()) == entries
    assert {tuple(e.key["hw_range"]) for e in cache.entries()} == {(64, 1024)}


def test_wrong_batch_and_size_are_errors(tiny, backends) -> None:
    backend = backends[("sd", "initialize", 1)]  # UNet rows 3, VAE batch 1
    with pytest.raises(PipelineError, match="batch 3"):
        backend.unet(torch.zeros(2, 4, 8, 8), torch.tensor([999, 500]), torch.zeros(1, 77, 32))
    with pytest.raises(ConfigError) as info:
        backend.encode(torch.zeros(1, 3, 1088, 64))
    assert info.value.fields == ["height"]
    with pytest.raises(ConfigError, match="multiple of 16"):
        backend.decode(torch.zeros(1, 4, 9, 8))
    with pytest.raises(ConfigError) as info:
        create_backend(tiny["sd"], "onnxruntime", params=_params("self", [20], 1, size=(256, 64)), hw_range=HW_RANGE)
    assert info.value.fields == ["height"]


def test_gpu_provider_missing_is_an_error_not_a_fallback() -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu installed here: the missing-provider path cannot be exercised")
    with pytest.raises(RuntimeMissingError) as info:
        choose_provider(torch.device("cpu"), "cuda")
    assert "onnxruntime-gpu" in info.value.fix
    with pytest.raises(ConfigError):
        choose_provider(torch.device("cpu"), "directml")


PRESET = """
version: 1
model: {id: tiny, device: cpu, dtype: float32, acceleration: onnxruntime}
width: 64
height: 64
t_index_list: [30]
cfg_type: none
frame_buffer_size: 1
source: {kind: test_pattern}
sink: [{kind: "null"}]
"""


def test_engines_cli_builds_what_the_runtime_then_uses(tmp_path, monkeypatch, capsys) -> None:
    from bridge.config import load_preset
    from bridge.pipeline.models import load_components
    from bridge.runtime.pipelines import resolve_model_spec

    monkeypatch.setenv("SDBRIDGE_HOME", str(tmp_path))
    preset_file = tmp_path / "preset.yaml"
    preset_file.write_text(PRESET)
    assert main(["engines", "build", "--preset", str(preset_file), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert [a["module"] for a in built["artefacts"]] == ["unet", "vae_encoder", "vae_decoder"]
    assert all(a["built"] for a in built["artefacts"])
    assert built["rows"] == 1 and built["hw_range"] == [64, 1024]  # default range widened to 64 px
    assert main(["engines", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(e["digest"] for e in listed["entries"]) == sorted(a["digest"] for a in built["artefacts"])
    # The daemon's path: same preset -> same model, keys and size range -> nothing exported again.
    monkeypatch.setattr(onnx_export, "export_onnx", _no_export)
    preset = load_preset(preset_file)
    components = load_components(resolve_model_spec(preset.model), progress=False)
    backend = create_backend(components, preset.model.acceleration, params=preset.params)
    assert _compare(components, dict(preset.params), backend) < 1e-3
    assert main(["engines", "clean", "--all", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["removed"]) == 3
    assert EngineCache().entries() == []


def test_sessions_share_cores_politely(backends) -> None:
    # Spinning ORT pools starved torch ~6x in `bench pipeline` on 2 cores (docs/performance.md).
    adapter = backends[("sd", "initialize", 1)].unet.__self__
    for runner in adapter.runners.values():
        options = runner.session.get_session_options()
        assert options.intra_op_num_threads == torch.get_num_threads()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
