"""TensorRT path. Here (no GPU, no TensorRT): the missing-runtime error and explicit fallback,
the pure parts (profiles, precision rules, build-time estimate), and the build flow driven
through a recording stand-in for the ``tensorrt`` module (our calls, order and files — not
TensorRT itself). The real build + run is the ``gpu`` test at the end."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from bridge.errors import ConfigError, RuntimeMissingError
from bridge.params import default_params
from bridge.pipeline.backends import create_backend
from bridge.pipeline.backends import tensorrt_build as tb
from bridge.pipeline.backends.engine_cache import EngineCache
from bridge.pipeline.backends.onnx_export import export_spec
from bridge.pipeline.tiny import build_tiny_components


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_components()


def _params(**over) -> dict:
    return default_params() | {"width": 64, "height": 64, "t_index_list": [20, 35], "cfg_type": "self"} | over


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError


def test_missing_tensorrt_is_one_clear_error(tiny, no_tensorrt) -> None:
    with pytest.raises(RuntimeMissingError) as info:
        create_backend(tiny, "tensorrt", params=_params())
    assert info.value.code == "runtime_missing"
    assert "pip install 'sdbridge[tensorrt]'" in info.value.fix
    assert "GPU" in info.value.fix


def test_fallback_only_when_asked_and_loudly(tiny, no_tensorrt, caplog) -> None:
    with caplog.at_level("WARNING"):
        backend = create_backend(tiny, "tensorrt", params=_params(), fallback="torch")
    assert backend.name == "torch"
    assert "FALLBACK" in caplog.text and "tensorrt" in caplog.text
    with pytest.raises(ConfigError) as info:
        create_backend(tiny, "tensorrt", params=_params(), fallback="cpu-please")
    assert info.value.fields == ["fallback"]


def test_no_cuda_is_the_same_error(monkeypatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the no-CUDA path cannot be exercised")
    with pytest.raises(RuntimeMissingError) as info:
        tb.require_cuda()
    assert "sdbridge[tensorrt]" in info.value.fix


def test_precision_rules() -> None:
    tb.check_precision("fp16", "strong")
    tb.check_precision("bf16", "weak")
    with pytest.raises(ConfigError, match="Q/DQ"):
        tb.check_precision("fp8", "strong")
    with pytest.raises(ConfigError) as info:
        tb.check_precision("int3", "medium")
    assert info.value.fields == ["precision", "typing"]
    assert tb.onnx_precision("fp16", "strong") == "fp16"
    assert tb.onnx_precision("fp16", "weak") == "fp32"


def test_one_profile_spans_the_size_range(tiny) -> None:
    spec = export_spec(tiny, "unet", 4, (256, 1024)).to_json()
    shapes = tb.profile_shapes(spec, (512, 768), tiny.vae_scale_factor)
    assert shapes["sample"] == ((4, 4, 32, 32), (4, 4, 64, 96), (4, 4, 128, 128))
    assert shapes["timestep"] == ((4,), (4,), (4,))
    assert shapes["encoder_hidden_states"][0] == shapes["encoder_hidden_states"][2] == (4, 77, 32)
    dec = tb.profile_shapes(export_spec(tiny, "vae_encoder", 1, (256, 1024)).to_json(), (2000, 100), 8)
    assert dec["images"] == ((1, 3, 256, 256), (1, 3, 1024, 256), (1, 3, 1024, 1024))  # opt clamped


def test_build_time_estimate_learns_from_history(tmp_path) -> None:
    cache = EngineCache(tmp_path)
    cold = tb.estimate_build_seconds(cache, 2 * 1024**3, "8.9", warm=False)
    assert cold == pytest.approx(480.0)
    assert tb.estimate_build_seconds(cache, 2 * 1024**3, "8.9", warm=True) < cold
    tb._record_build(cache, 1024**3, 100.0, "8.9", warm=False)
    assert tb.estimate_build_seconds(cache, 2 * 1024**3, "8.9", warm=False) == pytest.approx(200.0)
    assert tb.estimate_build_seconds(cache, 2 * 1024**3, "7.5", warm=False) == pytest.approx(480.0)


# -- the build flow against a recording stand-in of the tensorrt module ---------------------
def _recording_tensorrt(calls: list, *, has_fp16_flag: bool = True) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0"

    class Logger:
        WARNING = 2

        def __init__(self, level): calls.append(("logger", level))

    class IProgressMonitor:
        def __init__(self): calls.append(("monitor.__init__",))

    class Network:
        def __init__(self, flags): self.flags = flags

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger): self.network = network

        def parse_from_file(self, path):
            calls.append(("parse_from_file", Path(path).name, Path(path).is_file()))
            return Path(path).is_file()

    class Profile:
        def set_shape(self, name, lo, opt, hi): calls.append(("set_shape", name, lo, opt, hi))

    class TimingCache:
        def __init__(self, data): self.data = data

        def serialize(self): return self.data + b"+run"

    class Config:
        progress_monitor = None

        def set_flag(self, flag): calls.append(("set_flag", flag))

        def set_memory_pool_limit(self, pool, size): calls.append(("pool", pool, size))

        def add_optimization_profile(self, profile): calls.append(("add_optimization_profile",))

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch): calls.append(("set_timing_cache", ignore_mismatch))

    class Builder:
        def __init__(self, logger): pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self): return Config()

        def create_optimization_profile(self): return Profile()

        def build_serialized_network(self, network, config):
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 3)
                for step in range(3):
                    assert monitor.step_complete("Building engine", step) is True
                monitor.phase_finish("Building engine")
            calls.append(("build_serialized_network", network.flags))
            return b"PLAN" * 8

    flags = {"FP16": "FP16", "BF16": "BF16"} if has_fp16_flag else {}
    trt.Logger, trt.IProgressMonitor, trt.OnnxParser, trt.Builder = Logger, IProgressMonitor, OnnxParser, Builder
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    return trt


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", _recording_tensorrt(calls))
    monkeypatch.setattr(tb, "trt_versions", lambda device: {"tensorrt": "10.99.0", "sm": "8.9", "cuda": "12.8"})
    return calls, EngineCache(tmp_path)


def test_ensure_engine_builds_once_with_profile_and_timing_cache(tiny, recorded, capsys) -> None:
    calls, cache = recorded
    entry, spec = tb.ensure_engine(tiny, "vae_decoder", batch=1, hw_range=(64, 128), opt_hw=(64, 64),
                                   precision="fp32", cache=cache, progress=True)
    names = [c[0] for c in calls]
    assert ("create_network", 1 << 1) in calls  # STRONGLY_TYPED
    assert ("parse_from_file", "model.onnx", True) in calls  # the cached, cleaned ONNX
    assert ("set_shape", "latents", (1, 4, 8, 8), (1, 4, 8, 8), (1, 4, 16, 16)) in calls
    assert names.count("add_optimization_profile") == 1
    assert ("create_timing_cache", b"") in calls and ("set_timing_cache", False) in calls
    assert "set_flag" not in names  # strongly typed: precision comes from the graph
    assert entry.file(tb.ENGINE_FILE).read_bytes() == b"PLAN" * 8
    assert entry.key["tensorrt"] == "10.99.0" and entry.key["sm"] == "8.9" and entry.key["artefact"] == "trt"
    assert entry.meta["spec"]["module"] == "vae_decoder" and entry.meta["estimate_s"] >= 10
    assert "Building engine" in capsys.readouterr().err  # tqdm bar on stderr
    timing = cache.timing_cache_path({"tensorrt": "10.99.0", "sm": "8.9", "precision": "fp32", "typing": "strong"})
    assert timing.read_bytes() == b"+run"
    # Second time: from the cache, no build; a second build elsewhere reuses the timing cache.
    calls.clear()
    again, _ = tb.ensure_engine(tiny, "vae_decoder", batch=1, hw_range=(64, 128), opt_hw=(64, 64),
                                precision="fp32", cache=cache, progress=False)
    assert again.path == entry.path and calls == []
    # A cached engine does not need its ONNX artefact any more (not even re-hashed).
    for onnx_entry in [e for e in cache.entries() if e.key["artefact"] == "onnx"]:
        cache.remove(onnx_entry)
    third, _ = tb.ensure_engine(tiny, "vae_decoder", batch=1, hw_range=(64, 128), opt_hw=(64, 64),
                                precision="fp32", cache=cache, progress=False)
    assert third.path == entry.path and calls == []
    tb.ensure_engine(tiny, "vae_decoder", batch=2, hw_range=(64, 128), opt_hw=(64, 64),
                     precision="fp32", cache=cache, progress=False)
    assert ("create_timing_cache", b"+run") in calls
    assert timing.read_bytes() == b"+run+run"


def test_weak_typing_sets_flag_and_is_refused_without_it(tiny, recorded, monkeypatch, tmp_path) -> None:
    calls, cache = recorded
    onnx_dir = tmp_path / "onnx"
    from bridge.pipeline.backends.onnx_export import export_onnx

    spec = export_onnx(tiny, "vae_encoder", onnx_dir, batch=1, hw_range=(64, 128)).to_json()
    kwargs = dict(precision="fp16", typing="weak", opt_hw=(64, 64), vae_scale=8,
                  timing_cache=tmp_path / "t.cache", progress=False)
    tb.build_engine(onnx_dir / "model.onnx", tmp_path / "e.plan", spec, **kwargs)
    assert ("set_flag", "FP16") in calls and ("create_network", 0) in calls
    monkeypatch.setitem(sys.modules, "tensorrt", _recording_tensorrt([], has_fp16_flag=False))
    with pytest.raises(ConfigError, match="removed in 11"):
        tb.build_engine(onnx_dir / "model.onnx", tmp_path / "e2.plan", spec, **kwargs)


# -- real TensorRT -----------------------------------------------------------------------------
def _real_tensorrt_or_skip() -> None:
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("TensorRT is not installed (pip install 'sdbridge[tensorrt]' on a CUDA machine)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: TensorRT engines cannot be built or run here")


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_pipeline_matches_torch(tmp_path, cuda_graph) -> None:
    _real_tensorrt_or_skip()
    from bridge.pipeline.stream_batch import StreamBatch

    components = build_tiny_components()
    for module in (components.unet, components.vae, components.text_encoder):
        module.to("cuda", torch.float16)
    params = _params()
    backend = create_backend(components, "tensorrt", params=params, hw_range=(64, 128),
                             cache=EngineCache(tmp_path), cuda_graph=cuda_graph, progress=False)
    reference, accelerated = StreamBatch(components, params), StreamBatch(components, params, backend=backend)
    gen = torch.Generator().manual_seed(0)
    for size in ((64, 64), (64, 64), (128, 64)):
        if size != (64, 64):
            params = _params(height=size[0], width=size[1])
            reference = StreamBatch(components, params)
            accelerated = StreamBatch(components, params, backend=backend)
        images = torch.rand(1, 3, *size, generator=gen).to("cuda", torch.float16)
        want, got = reference.process(images), accelerated.process(images)
        assert (want.float() - got.float()).abs().max() < 2e-2  # fp16 kernels differ from torch's
