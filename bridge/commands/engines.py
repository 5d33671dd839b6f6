"""`sdbridge engines build|list|clean`: the accelerated-backend artefact cache.

For ``tensorrt`` the artefacts are engines (plus the ONNX graphs they are built from); for
``onnxruntime`` they are the exported and cleaned ONNX graphs. Both live in
``$SDBRIDGE_HOME/engines`` (default ~/.cache/sdbridge/engines). Building ahead of time avoids
a long first start of ``sdbridge serve``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

from bridge.errors import ConfigError, Problem

BUILD_ACCELERATIONS = ("onnxruntime", "tensorrt")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub: argparse._SubParsersAction) -> None:
    engines = sub.add_parser("engines", help="build, list or clean ONNX / TensorRT engines",
                             description=__doc__)
    actions = engines.add_subparsers(dest="action", metavar="ACTION", required=True)

    build = actions.add_parser("build", help="export (and for tensorrt build) everything a preset needs")
    build.add_argument("--preset", help="preset YAML; the flags below override it")
    build.add_argument("--model", help="model id or path (default tiny)")
    build.add_argument("--tiny-vae", help="tiny autoencoder id/path, or tiny")
    build.add_argument("--steps", type=int, help="denoising steps n (len(t_index_list))")
    build.add_argument("--cfg-type", choices=("none", "full", "self", "initialize"))
    build.add_argument("--frames", type=int, help="frame_buffer_size F")
    build.add_argument("--width", type=int)
    build.add_argument("--height", type=int)
    build.add_argument("--acceleration", choices=BUILD_ACCELERATIONS)
    build.add_argument("--min-size", type=int, help="smallest height/width, multiple of 64 (default 256, "
                       "or less to cover --height/--width; serve uses the same default)")
    build.add_argument("--max-size", type=int, help="largest height/width, multiple of 64 (default 1024, "
                       "or more to cover --height/--width)")
    build.add_argument("--precision", choices=("fp32", "fp16", "bf16"),
                       help="default: fp16 for tensorrt, fp32 for onnxruntime on CPU")
    build.add_argument("--device", choices=("auto", "cpu", "cuda"), help="model device")
    build.add_argument("--json", action="store_true", help="print JSON")
    build.set_defaults(func=_build)

    lister = actions.add_parser("list", help="cached artefacts")
    lister.add_argument("--json", action="store_true", help="print JSON")
    lister.set_defaults(func=_list)

    clean = actions.add_parser("clean", help="delete cached artefacts")
    which = clean.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="everything, including timing caches")
    which.add_argument("--older-than", metavar="AGE", help="entries older than AGE (e.g. 30d, 12h, 90m)")
    clean.add_argument("--json", action="store_true", help="print JSON")
    clean.set_defaults(func=_clean)


def parse_age(text: str) -> float:
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ConfigError(Problem("--older-than", text, "not a duration", "e.g. 30d, 12h, 90m or 3600"))
    return float(match.group(1)) * _UNITS[match.group(2)]


def build_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Preset values (if any) overridden by flags; validated like a preset."""
    from bridge.config import ModelConfig, load_preset

    preset = load_preset(args.preset) if args.preset else None
    model = preset.model if preset else ModelConfig()
    params = dict(preset.params) if preset else {}
    overrides = {"id": args.model, "tiny_vae": args.tiny_vae, "device": args.device}
    model = ModelConfig(**{**model.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    n = args.steps or len(params.get("t_index_list", [32, 45]))
    settings = {
        "model": model, "acceleration": args.acceleration or model.acceleration,
        "cfg_type": args.cfg_type or params.get("cfg_type", "self"), "n": n,
        "frames": args.frames or params.get("frame_buffer_size", 1),
        "height": args.height or params.get("height", 512), "width": args.width or params.get("width", 512),
        "precision": args.precision,
    }
    from bridge.pipeline.backends import default_hw_range

    lo, hi = default_hw_range(settings["height"], settings["width"])
    settings["hw_range"] = (args.min_size or lo, args.max_size or hi)
    if settings["acceleration"] not in BUILD_ACCELERATIONS:
        raise ConfigError(Problem("acceleration", settings["acceleration"], "nothing to build for it",
                                  "pass --acceleration onnxruntime or tensorrt (or set it in the preset)"))
    return settings


def _build(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bridge.pipeline.backends.engine_cache import EngineCache
    from bridge.pipeline.backends.onnx_cleanup import prepare_onnx
    from bridge.pipeline.backends.onnx_export import check_hw_range, check_size_in_range
    from bridge.pipeline.backends.onnxruntime_backend import module_batches
    from bridge.pipeline.guidance import unet_rows
    from bridge.pipeline.models import load_components
    from bridge.runtime.pipelines import resolve_model_spec

    s = build_settings(args)
    hw_range = check_hw_range(s["hw_range"])
    check_size_in_range(s["height"], s["width"], hw_range)
    rows = unet_rows(s["cfg_type"], s["n"], s["frames"])
    accel = s["acceleration"]
    if accel == "tensorrt":  # fail before loading weights
        from bridge.pipeline.backends.tensorrt_build import import_tensorrt, require_cuda

        import_tensorrt()
        require_cuda()
    components = load_components(resolve_model_spec(s["model"]), progress=not args.json)
    cache = EngineCache()
    results = []
    started_all = time.time()
    for module, batch in tqdm(module_batches(rows, s["frames"]).items(), desc=f"{accel} artefacts",
                              unit="module", file=sys.stderr, disable=args.json):
        started = time.time()
        if accel == "onnxruntime":
            precision = s["precision"] or ("fp16" if components.device.type == "cuda" else "fp32")
            entry = prepare_onnx(components, module, batch=batch, hw_range=hw_range,
                                 precision=precision, cache=cache)
        else:
            from bridge.pipeline.backends.tensorrt_build import ensure_engine

            entry, _ = ensure_engine(components, module, batch=batch, hw_range=hw_range,
                                     opt_hw=(s["height"], s["width"]), precision=s["precision"] or "fp16",
                                     cache=cache, progress=not args.json)
        results.append({"module": module, "batch": batch, "digest": entry.digest, "path": str(entry.path),
                        "built": entry.created >= started, "seconds": round(time.time() - started, 2),
                        "size_bytes": entry.size_bytes})
    out = {"ok": True, "acceleration": accel, "model": s["model"].id, "rows": rows, "frames": s["frames"],
           "hw_range": list(hw_range), "cache": str(cache.root), "seconds": round(time.time() - started_all, 2),
           "artefacts": results}
    if args.json:
        print(json.dumps(out))
    else:
        for r in results:
            state = "built" if r["built"] else "cached"
            print(f"{r['module']:<12} batch {r['batch']:<3} {state:<6} {r['seconds']:>8.1f}s  {r['path']}")
    return 0


def describe(entry: Any) -> dict[str, Any]:
    key = entry.key
    return {"digest": entry.digest, "artefact": key.get("artefact"), "module": key.get("module"),
            "model": (key.get("model") or {}).get("model_id"), "batch": key.get("batch"),
            "hw_range": key.get("hw_range"), "precision": key.get("precision"),
            "tiny_vae": key.get("tiny_vae"), "loras": key.get("loras"),
            "tensorrt": key.get("tensorrt"), "sm": key.get("sm"), "ort": key.get("ort"),
            "size_bytes": entry.size_bytes, "created": entry.created, "path": str(entry.path)}


def _list(args: argparse.Namespace) -> int:
    from bridge.pipeline.backends.engine_cache import EngineCache

    cache = EngineCache()
    rows = [describe(e) for e in cache.entries()]
    if args.json:
        print(json.dumps({"ok": True, "cache": str(cache.root), "entries": rows}))
        return 0
    print(f"cache: {cache.root} ({len(rows)} entries)")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"]))
        extra = f" trt {r['tensorrt']} sm {r['sm']}" if r["tensorrt"] else ""
        print(f"{r['digest']}  {r['artefact']:<4} {r['module']:<12} {r['model']!s:<24} batch {r['batch']:<3} "
              f"{r['hw_range'][0]}..{r['hw_range'][1]} {r['precision']:<4} {r['size_bytes'] / 1e6:8.1f} MB "
              f"{when}{extra}")
    return 0


def _clean(args: argparse.Namespace) -> int:
    from bridge.pipeline.backends.engine_cache import EngineCache

    cache = EngineCache()
    age = None if args.all else parse_age(args.older_than)
    removed = cache.clean(older_than_s=age)
    freed = sum(e.size_bytes for e in removed)
    if args.json:
        print(json.dumps({"ok": True, "removed": [e.digest for e in removed], "freed_bytes": freed}))
    else:
        print(f"removed {len(removed)} entries ({freed / 1e6:.1f} MB) from {cache.root}")
    return 0
