"""Backends: how the UNet and the VAE run. ``create_backend`` is the one entry point.

``acceleration``: ``none`` (eager torch) | ``compile`` (torch.compile) | ``onnxruntime`` |
``tensorrt``. The accelerated ones need the UNet row count and the frame count the pipeline
will use (exported with a static batch): pass ``params`` (the pipeline parameters) or
``cfg_type``/``n``/``frames``. Without them each module is built on its first call.

No silent fallback: a missing runtime raises ``RuntimeMissingError``; only an explicit
``fallback`` (``torch``/``none``/``compile``/``onnxruntime``) is used instead, with a warning.

``hw_range`` (min, max pixels, multiples of 64) is what the graphs/engines accept without a
rebuild; default 256–1024 widened to include the configured size (or, when no size is given,
the first frame's size).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from bridge.errors import ConfigError, Problem, RuntimeMissingError
from bridge.pipeline.backends.base import Backend
from bridge.pipeline.components import Components

log = logging.getLogger(__name__)

ACCELERATIONS = ("none", "compile", "onnxruntime", "tensorrt")
FALLBACKS = ("torch",) + ACCELERATIONS  # "torch" = "none"
DEFAULT_HW_RANGE = (256, 1024)


def _shape_args(params: Mapping[str, Any] | None, cfg_type: str | None, n: int | None,
                frames: int | None, height: int | None, width: int | None
                ) -> tuple[str | None, int | None, int | None, int | None, int | None]:
    if params is not None:
        cfg_type = cfg_type or params.get("cfg_type")
        n = n or (len(params["t_index_list"]) if params.get("t_index_list") else None)
        frames = frames or params.get("frame_buffer_size")
        height = height or params.get("height")
        width = width or params.get("width")
    return cfg_type, n, frames, height, width


def default_hw_range(height: int | None, width: int | None) -> tuple[int, int]:
    """256–1024, widened (to multiples of 64) so it always covers the configured size."""
    lo, hi = DEFAULT_HW_RANGE
    if height and width:
        lo = min(lo, max(64, min(height, width) // 64 * 64))
        hi = max(hi, -(-max(height, width) // 64) * 64)
    return lo, hi


def create_backend(components: Components, acceleration: str = "none", *,
                   params: Mapping[str, Any] | None = None, cfg_type: str | None = None,
                   n: int | None = None, frames: int | None = None, height: int | None = None,
                   width: int | None = None, hw_range: tuple[int, int] | None = None,
                   precision: str | None = None, fallback: str | None = None, progress: bool = True,
                   cache: Any = None, **options: Any) -> Backend:
    """Backend for ``acceleration``; see the module docstring. ``options`` go to the backend
    (onnxruntime: ``provider``, ``threads``; tensorrt: ``typing``, ``cuda_graph``, ``opt_hw``)."""
    problems = []
    if acceleration not in ACCELERATIONS:
        problems.append(Problem("acceleration", acceleration, "unknown acceleration",
                                f"one of {', '.join(ACCELERATIONS)}"))
    if fallback is not None and fallback not in FALLBACKS:
        problems.append(Problem("fallback", fallback, "unknown fallback", f"one of {', '.join(FALLBACKS)} or null"))
    if problems:
        raise ConfigError(problems, context="backend")
    try:
        return _create(components, acceleration, params=params, cfg_type=cfg_type, n=n, frames=frames,
                       height=height, width=width, hw_range=hw_range, precision=precision,
                       progress=progress, cache=cache, options=options)
    except RuntimeMissingError as exc:
        if fallback is None or fallback in (acceleration,) or (fallback == "torch" and acceleration == "none"):
            raise
        log.warning("ACCELERATION FALLBACK: %r is not available here (%s); running %r instead "
                    "because the configuration allows `fallback: %s`", acceleration, exc, fallback, fallback)
        target = "none" if fallback == "torch" else fallback
        return _create(components, target, params=params, cfg_type=cfg_type, n=n, frames=frames,
                       height=height, width=width, hw_range=hw_range, precision=precision,
                       progress=progress, cache=cache, options=options)


def _create(components: Components, acceleration: str, *, params: Mapping[str, Any] | None,
            cfg_type: str | None, n: int | None, frames: int | None, height: int | None,
            width: int | None, hw_range: tuple[int, int] | None, precision: str | None, progress: bool,
            cache: Any, options: Mapping[str, Any]) -> Backend:
    if acceleration in ("none", "compile"):
        from bridge.pipeline.backends.torch_backend import torch_backend

        return torch_backend(components, compile=acceleration == "compile")
    from bridge.pipeline.backends.onnx_export import check_hw_range, check_size_in_range
    from bridge.pipeline.guidance import unet_rows

    cfg_type, n, frames, height, width = _shape_args(params, cfg_type, n, frames, height, width)
    if hw_range is None and height and width:
        hw_range = default_hw_range(height, width)
    if hw_range is not None:  # else: the default range around the first frame's size
        hw_range = check_hw_range(hw_range)
        if height and width:
            check_size_in_range(height, width, hw_range)  # fail now, not on the first frame
    rows = unet_rows(cfg_type, n, frames) if cfg_type and n and frames else None
    if acceleration == "onnxruntime":
        from bridge.pipeline.backends.onnxruntime_backend import onnxruntime_backend

        return onnxruntime_backend(components, rows=rows, frames=frames, hw_range=hw_range,
                                   precision=precision, cache=cache, **options)
    from bridge.pipeline.backends.tensorrt_runtime import tensorrt_backend

    options = dict(options)
    opt_hw = options.pop("opt_hw", None) or ((height, width) if height and width else None)
    return tensorrt_backend(components, rows=rows, frames=frames, hw_range=hw_range, opt_hw=opt_hw,
                            precision=precision or "fp16", cache=cache, progress=progress, **options)
