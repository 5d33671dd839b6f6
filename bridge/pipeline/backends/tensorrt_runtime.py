"""Run TensorRT engines on torch CUDA tensors (TensorRT 10+ tensor API).

- I/O by tensor name (``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode``), shapes
  by ``set_input_shape``, addresses by ``set_tensor_address``, launch by ``execute_async_v3``
  on torch's current CUDA stream: no host copies, no per-frame ``synchronize``.
- Input/output buffers are allocated once per input shape and reused (a resolution change
  allocates a new set once). Inputs are copied into them (device to device) so addresses stay
  fixed, which is what makes optional CUDA graph capture valid.
- Outputs are returned as a clone: the pipeline modifies outputs in place and keeps the last
  frame for similarity-filter skips, so handing out the engine's own buffer would corrupt it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from bridge.errors import ConfigError, PipelineError, Problem
from bridge.pipeline.backends.base import Backend
from bridge.pipeline.backends.tensorrt_build import ENGINE_FILE, ensure_engine, import_tensorrt, require_cuda
from bridge.pipeline.components import Components

log = logging.getLogger(__name__)


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    for name, tdt in (("bf16", torch.bfloat16), ("int64", torch.int64)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = tdt
    if dtype not in table:
        raise PipelineError(f"engine tensor dtype {dtype} has no torch equivalent",
                            fix="rebuild the engine with precision fp16 or fp32")
    return table[dtype]


class TrtRunner:
    """One deserialised engine + execution context; torch CUDA tensors in, out."""

    def __init__(self, engine_path: Path, device: Any, *, cuda_graph: bool = False) -> None:
        trt = import_tensorrt()
        torch = require_cuda()
        self.torch = torch
        self.device = torch.device(device)
        self.cuda_graph = cuda_graph
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise PipelineError(f"TensorRT could not load {engine_path} (built by another "
                                    "TensorRT version or GPU?)",
                                    fix="run `sdbridge engines clean --all` and rebuild")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self._buffers: dict[tuple, dict[str, Any]] = {}
        self._graphs: dict[tuple, Any] = {}
        self._active: tuple | None = None

    def _bind(self, feed: Mapping[str, Any]) -> tuple[tuple, dict[str, Any]]:
        key = tuple(tuple(feed[n].shape) for n in self.inputs)
        buffers = self._buffers.get(key)
        if buffers is None:
            buffers = self._allocate(key)
        if self._active != key:
            for name in self.inputs:
                self.context.set_input_shape(name, tuple(buffers[name].shape))
            for name, buf in buffers.items():
                self.context.set_tensor_address(name, buf.data_ptr())
            self._active = key
        return key, buffers

    def _allocate(self, key: tuple) -> dict[str, Any]:
        buffers = {}
        for name, shape in zip(self.inputs, key, strict=True):
            if not self.context.set_input_shape(name, shape):
                raise ConfigError(Problem(name, list(shape), "outside the engine's optimisation profile",
                                          "use a size inside the engine's hw_range or rebuild it"))
            buffers[name] = self.torch.empty(shape, dtype=self.dtypes[name], device=self.device)
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise PipelineError(f"output {name} shape {shape} unresolved", fix="rebuild the engine")
            buffers[name] = self.torch.empty(shape, dtype=self.dtypes[name], device=self.device)
        self._buffers[key] = buffers
        self._active = None  # addresses must be rebound for the new buffers
        log.debug("allocated TensorRT buffers for %s", key)
        return buffers

    def __call__(self, feed: Mapping[str, Any]) -> Any:
        key, buffers = self._bind(feed)
        for name in self.inputs:
            buffers[name].copy_(feed[name], non_blocking=True)
        stream = self.torch.cuda.current_stream(self.device)
        graph = self._graphs.get(key)
        if graph is not None:
            graph.replay()
        else:
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise PipelineError("TensorRT execution failed (see the TensorRT log)",
                                    fix="check GPU memory; rebuild the engine if it persists")
            if self.cuda_graph:
                self._capture(key)  # after one normal run: TensorRT needs it before capture
        return buffers[self.outputs[0]].clone()

    def _capture(self, key: tuple) -> None:
        torch = self.torch
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                # Inside the context the current stream is the capture stream.
                self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        except RuntimeError as exc:
            log.warning("CUDA graph capture failed for %s (%s); running without a graph", key, exc)
            self.cuda_graph = False
            return
        self._graphs[key] = graph


def tensorrt_backend(components: Components, *, rows: int | None = None, frames: int | None = None,
                     hw_range: tuple[int, int] | None = None, opt_hw: tuple[int, int] | None = None,
                     precision: str = "fp16", typing: str = "strong", cache: Any = None,
                     cuda_graph: bool = False, progress: bool = True) -> Backend:
    """Engines for UNet / VAE encoder / decoder (built into the cache if needed), loaded."""
    from bridge.pipeline.backends.engine_cache import EngineCache
    from bridge.pipeline.backends.onnxruntime_backend import ModuleAdapter, Runner, module_batches

    import_tensorrt()
    torch = require_cuda()
    if components.device.type != "cuda":
        raise ConfigError(Problem("model.device", str(components.device), "TensorRT runs on CUDA",
                                  "set model.device to cuda (or auto)"))
    cache = cache or EngineCache()
    def factory(module: str, batch: int, hw_range: tuple[int, int]) -> tuple[Runner, Mapping[str, Any]]:
        mid = ((hw_range[0] + hw_range[1]) // 2 // 64) * 64
        entry, spec = ensure_engine(components, module, batch=batch, hw_range=hw_range,
                                    opt_hw=opt_hw or (mid, mid),
                                    precision=precision, typing=typing, cache=cache, progress=progress)
        return TrtRunner(entry.file(ENGINE_FILE), components.device, cuda_graph=cuda_graph), spec

    batches = None if rows is None or frames is None else module_batches(rows, frames)
    adapter = ModuleAdapter(components, factory, hw_range, batches)
    log.info("tensorrt backend on %s (%s, rows %s, frames %s, sizes %s px, cuda graph %s)",
             torch.cuda.get_device_name(components.device), precision, rows, frames,
             hw_range or "from the first frame", cuda_graph)
    return adapter.backend("tensorrt")
