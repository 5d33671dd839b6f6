"""Graph clean-up before TensorRT (and ONNX Runtime) sees an exported model.

The TorchScript exporter leaves shape arithmetic (Shape→Gather→Unsqueeze→Concat chains),
constant sub-graphs and dead nodes that slow TensorRT's parser and builder and sometimes
defeat its layer fusions. Steps:

1. polygraphy ``fold_constants`` (ONNX Runtime evaluates every constant sub-graph, shapes
   folded too), with ONNX shape inference before and after;
2. onnx-graphsurgeon ``cleanup()`` (drops now-dead nodes and initializers) + ``toposort()``;
3. a final shape inference so every intermediate tensor carries its (symbolic) shape.

External data is kept: a model loaded from ``x.onnx`` + ``x.onnx.data`` is saved the same way
(one data file) when it is above protobuf's 2 GB limit.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from bridge.errors import ModelError
from bridge.pipeline.backends.onnx_export import PROTOBUF_LIMIT, save_onnx, tensor_bytes

log = logging.getLogger(__name__)

# Folding a constant larger than this would duplicate weights (e.g. a transposed copy of a big
# matrix) and grow the file for no TensorRT gain; TensorRT folds such transposes itself.
FOLD_SIZE_LIMIT = 512 * 1024**2


def _infer_shapes(model: Any, path_hint: Path) -> Any:
    import onnx

    if tensor_bytes(model) > PROTOBUF_LIMIT:
        # In-memory inference serialises the model: impossible above 2 GB. Use the path variant.
        tmp = path_hint.with_name(path_hint.name + ".shapes.onnx")
        save_onnx(model, tmp)
        onnx.shape_inference.infer_shapes_path(str(tmp), str(tmp))
        model = onnx.load(str(tmp), load_external_data=True)
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".data").unlink(missing_ok=True)
        return model
    return onnx.shape_inference.infer_shapes(model)


def cleanup_model(model: Any, *, workdir: Path) -> Any:
    """Fold constants, clean up, toposort, infer shapes; returns a new ModelProto."""
    import onnx_graphsurgeon as gs
    import onnxruntime
    from polygraphy.backend.onnx import fold_constants

    # Folding runs ONNX Runtime on sub-graphs; its optimiser warnings are noise here.
    onnxruntime.set_default_logger_severity(3)
    before = len(model.graph.node)
    model = _infer_shapes(model, workdir / "tmp.onnx")
    from polygraphy.logger import G_LOGGER

    # ONNX Runtime's symbolic shape inference resolves the Shape->Gather chains of the dynamic
    # H/W axes (tiny UNet: 1258 -> 555 nodes; 627 without it). Partitioned folding costs ~10×
    # the time for no extra folds on diffusers graphs, so it is off.
    with G_LOGGER.verbosity(G_LOGGER.WARNING):  # polygraphy prints per-pass INFO to stdout
        model = fold_constants(model, num_passes=None, do_shape_inference=True, fold_shapes=True,
                               partitioning=None, error_ok=True, size_threshold=FOLD_SIZE_LIMIT,
                               allow_onnxruntime_shape_inference=True)
    graph = gs.import_onnx(model)
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    model = _infer_shapes(model, workdir / "tmp.onnx")
    log.info("ONNX clean-up: %d -> %d nodes", before, len(model.graph.node))
    return model


def cleanup_onnx(src: Path, dst: Path, *, external_threshold: int = PROTOBUF_LIMIT) -> dict[str, int]:
    """Clean ``src`` (with its external data, if any) into ``dst``; returns node counts."""
    import onnx

    started = time.perf_counter()
    try:
        model = onnx.load(str(src), load_external_data=True)
        before = len(model.graph.node)
        cleaned = cleanup_model(model, workdir=dst.parent)
        save_onnx(cleaned, dst, external_threshold=external_threshold)
    except (ValueError, RuntimeError, OSError, onnx.checker.ValidationError) as exc:
        raise ModelError(f"ONNX clean-up of {src} failed: {exc}",
                         fix="run `sdbridge engines clean --all` and rebuild; report it if it persists") from exc
    log.info("cleaned %s in %.1fs", src.name, time.perf_counter() - started)
    return {"nodes_before": before, "nodes_after": len(cleaned.graph.node)}


PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def onnx_runtime_versions(opset: int) -> dict[str, Any]:
    """Everything that can change the exported/cleaned graph (part of the cache key)."""
    import onnx
    import onnxruntime
    import polygraphy
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "ort": onnxruntime.__version__,
            "polygraphy": polygraphy.__version__, "opset": opset, "exporter": "torchscript"}


def onnx_key(components: Any, module: str, *, batch: int, hw_range: tuple[int, int], precision: str,
             opset: int | None = None) -> dict[str, Any]:
    """Cache key of the cleaned ONNX artefact (TensorRT engine keys include its digest)."""
    from bridge.pipeline.backends import onnx_export
    from bridge.pipeline.backends.engine_cache import artefact_key

    return artefact_key(components, module, artefact="onnx", batch=batch, hw_range=hw_range,
                        precision=precision, runtime=onnx_runtime_versions(opset or onnx_export.OPSET))


def prepare_onnx(components: Any, module: str, *, batch: int, hw_range: tuple[int, int],
                 precision: str = "fp32", cache: Any = None, opset: int | None = None,
                 external_threshold: int = PROTOBUF_LIMIT) -> Any:
    """Exported + cleaned ONNX for one module, from the cache or built into it.

    Returns the ``CacheEntry``; its ``meta["spec"]`` holds the input/output names and shapes.
    Only the cleaned graph is kept: the raw export is an intermediate (it would double the
    disk use of a 3.4 GB SD UNet for nothing).
    """
    import torch

    from bridge.pipeline.backends import onnx_export
    from bridge.pipeline.backends.engine_cache import EngineCache

    if precision not in PRECISION_DTYPES:
        from bridge.errors import ConfigError, Problem

        raise ConfigError(Problem("precision", precision, "not an ONNX export precision",
                                  f"one of {', '.join(PRECISION_DTYPES)}"))
    cache = cache or EngineCache()
    opset = opset or onnx_export.OPSET
    cache.check_path_length(onnx_export.ONNX_FILE + ".data")
    key = onnx_key(components, module, batch=batch, hw_range=hw_range, precision=precision, opset=opset)
    dtype = getattr(torch, PRECISION_DTYPES[precision])

    def build(tmp: Path) -> dict[str, Any]:
        started = time.perf_counter()
        raw = tmp / "r"
        spec = onnx_export.export_onnx(components, module, raw, batch=batch, hw_range=hw_range,
                                       dtype=dtype, opset=opset, external_threshold=external_threshold)
        exported = time.perf_counter()
        nodes = cleanup_onnx(raw / onnx_export.ONNX_FILE, tmp / onnx_export.ONNX_FILE,
                             external_threshold=external_threshold)
        import shutil

        shutil.rmtree(raw)
        return {"spec": spec.to_json(), "export_s": round(exported - started, 3),
                "cleanup_s": round(time.perf_counter() - exported, 3), **nodes}

    return cache.get_or_build(key, build)
