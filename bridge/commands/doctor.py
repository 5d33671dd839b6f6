"""`sdbridge doctor [--json] [--preset FILE]`: what this machine can run, and the exact fix for
everything it cannot.

Two layers: ``gather_*`` functions probe the machine (imports, nvidia-smi, caches) and return
plain facts; ``check_*`` functions are pure (facts in, ``Check`` out) so every verdict and fix
text is tested without a GPU. Exit code 1 when any check fails, else 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OK, INFO, WARN, FAIL = "ok", "info", "warn", "fail"
INSTALL_UNIX, INSTALL_WIN = "install/install.sh", r"install\install.ps1"
GIB = 1 << 30
# Minimum NVIDIA driver per CUDA major version (CUDA minor-version compatibility), Linux / Windows.
MIN_DRIVER = {11: ("450.80.02", "452.39"), 12: ("525.60.13", "527.41"), 13: ("580.65.06", "580.88")}
MIN_GPU_MEMORY_GIB = 6  # sd-turbo / SD1.5 at 512 in fp16 with TensorRT; SDXL wants ~12


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | info | warn | fail
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int
    driver: str = ""
    capability: str = ""


@dataclass(frozen=True)
class TorchFacts:
    version: str = ""
    cuda_build: str | None = None  # torch.version.cuda, None for CPU builds
    cuda_available: bool = False
    gpus: tuple[Gpu, ...] = ()
    error: str = ""  # import failure or CUDA init failure, verbatim


@dataclass(frozen=True)
class PackageFacts:
    version: str = ""
    error: str = ""
    extra: tuple[str, ...] = ()  # e.g. ONNX Runtime providers


@dataclass(frozen=True)
class ModelFacts:
    model_id: str
    used_by: tuple[str, ...]
    path: str = ""
    error: str = ""
    fix: str = ""


@dataclass(frozen=True)
class EngineFacts:
    count: int = 0
    size_bytes: int = 0
    root: str = ""
    stale: tuple[str, ...] = ()  # digests built by another TensorRT version
    error: str = ""


@dataclass
class Facts:
    python: tuple[int, int, int]
    executable: str
    os_name: str  # platform.system(): Linux / Windows / Darwin
    torch: TorchFacts
    smi: tuple[Gpu, ...] = ()
    smi_error: str = ""
    tensorrt: PackageFacts = field(default_factory=PackageFacts)
    onnxruntime: PackageFacts = field(default_factory=PackageFacts)
    transports: dict[str, tuple[bool, str]] = field(default_factory=dict)
    models: list[ModelFacts] = field(default_factory=list)
    engines: EngineFacts = field(default_factory=EngineFacts)


# -- pure checks ---------------------------------------------------------------------------------

def installer(os_name: str) -> str:
    return INSTALL_WIN if os_name == "Windows" else INSTALL_UNIX


def _flag(os_name: str, name: str) -> str:
    """install.sh takes --cuda / --extras, install.ps1 takes -Cuda / -Extras."""
    return f"-{name.capitalize()}" if os_name == "Windows" else f"--{name}"


def check_python(version: tuple[int, int, int], executable: str) -> Check:
    text = ".".join(map(str, version))
    if version < (3, 10):
        return Check("python", FAIL, f"Python {text} ({executable}) is too old",
                     "install Python 3.10-3.12 and run the installer again")
    return Check("python", OK, f"Python {text} ({executable})")


def check_torch(t: TorchFacts, smi: tuple[Gpu, ...], os_name: str) -> Check:
    if not t.version:
        return Check("torch", FAIL, f"torch does not import: {t.error}",
                     f"run {installer(os_name)} (it installs the right torch build)")
    if t.cuda_build is None:
        if smi:
            return Check("torch", FAIL, f"torch {t.version} is a CPU-only build but this machine "
                         f"has an NVIDIA GPU ({smi[0].name})",
                         f"run {installer(os_name)} {_flag(os_name, 'cuda')} to install the CUDA build")
        return Check("torch", WARN, f"torch {t.version}, CPU-only build (no NVIDIA GPU found): "
                     "only the tiny cpu-demo preset runs at a usable rate",
                     "real-time models need an NVIDIA GPU; try `sdbridge serve --preset presets/cpu-demo.yaml`")
    return Check("torch", OK, f"torch {t.version}, CUDA {t.cuda_build} build")


def min_driver(cuda_build: str, os_name: str) -> str:
    """Minimum driver for a CUDA runtime version like "12.8" ("" when unknown)."""
    try:
        major = int(cuda_build.split(".")[0])
    except ValueError:
        return ""
    linux, windows = MIN_DRIVER.get(major, ("", ""))
    return windows if os_name == "Windows" else linux


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def check_cuda(t: TorchFacts, smi: tuple[Gpu, ...], smi_error: str, os_name: str) -> Check:
    driver = smi[0].driver if smi else ""
    if t.cuda_build is None:
        if smi:
            return Check("cuda", WARN, f"NVIDIA driver {driver} present, torch cannot use it (CPU build)",
                         f"run {installer(os_name)} {_flag(os_name, 'cuda')}")
        return Check("cuda", INFO, f"no NVIDIA GPU/driver ({smi_error or 'nvidia-smi found none'})")
    if t.cuda_available:
        return Check("cuda", OK, f"CUDA {t.cuda_build} runtime, driver {driver or 'unknown'}")
    need = min_driver(t.cuda_build, os_name)
    if not smi:
        return Check("cuda", FAIL, f"torch is built for CUDA {t.cuda_build} but no NVIDIA driver "
                     f"answers ({smi_error or 'nvidia-smi found no GPU'})",
                     f"install the NVIDIA driver{' >= ' + need if need else ''} so `nvidia-smi` "
                     f"works, or reinstall for CPU with {installer(os_name)} {_flag(os_name, 'cpu')}")
    if need and _version_tuple(driver) < _version_tuple(need):
        return Check("cuda", FAIL, f"driver {driver} is too old for CUDA {t.cuda_build}",
                     f"update the NVIDIA driver to >= {need} (https://www.nvidia.com/drivers)")
    return Check("cuda", FAIL, f"CUDA {t.cuda_build} does not initialise: {t.error or 'unknown error'}",
                 "reboot after a driver update; check `nvidia-smi`; close programs holding the GPU")


def check_gpu(t: TorchFacts, smi: tuple[Gpu, ...]) -> Check:
    gpus = t.gpus or smi
    if not gpus:
        return Check("gpu", INFO, "no NVIDIA GPU")
    text = "; ".join(f"{g.name} {g.memory_bytes / GIB:.1f} GiB"
                     + (f" (sm {g.capability})" if g.capability else "") for g in gpus)
    best = max(g.memory_bytes for g in gpus)
    if best < MIN_GPU_MEMORY_GIB * GIB:
        return Check("gpu", WARN, f"{text}: under {MIN_GPU_MEMORY_GIB} GiB",
                     "use sd-turbo at 512 with tiny_vae and dtype float16; avoid SDXL presets")
    return Check("gpu", OK, text)


def check_tensorrt(trt: PackageFacts, t: TorchFacts, os_name: str) -> Check:
    if trt.version:
        if not t.cuda_available:
            return Check("tensorrt", WARN, f"TensorRT {trt.version} installed but CUDA is not usable",
                         "fix the cuda check first; until then use acceleration: none")
        return Check("tensorrt", OK, f"TensorRT {trt.version}")
    fix = f"run {installer(os_name)} {_flag(os_name, 'extras')} tensorrt"
    if t.cuda_available:
        return Check("tensorrt", WARN, f"TensorRT not installed ({trt.error}): "
                     "presets with acceleration: tensorrt cannot run", fix)
    return Check("tensorrt", INFO, "TensorRT not installed (needs an NVIDIA GPU anyway)")


def check_onnxruntime(ort: PackageFacts, t: TorchFacts, os_name: str) -> Check:
    if not ort.version:
        return Check("onnxruntime", INFO, f"ONNX Runtime not installed ({ort.error})",
                     f"only for acceleration: onnxruntime: run {installer(os_name)} "
                     f"{_flag(os_name, 'extras')} onnx")
    providers = ", ".join(ort.extra) or "none"
    if t.cuda_available and "CUDAExecutionProvider" not in ort.extra:
        return Check("onnxruntime", WARN, f"ONNX Runtime {ort.version}, providers: {providers} "
                     "(no CUDA provider: ONNX runs on the CPU)",
                     "pip uninstall -y onnxruntime && pip install onnxruntime-gpu")
    return Check("onnxruntime", OK, f"ONNX Runtime {ort.version}, providers: {providers}")


def check_transport(kind: str, available: bool, reason: str, os_name: str) -> Check:
    if available:
        return Check(kind, OK, "available")
    if kind == "spout" and os_name != "Windows":
        return Check(kind, INFO, reason if "windows" in reason.lower() else f"Windows only ({reason})")
    fix = {"ndi": f"run {installer(os_name)} {_flag(os_name, 'extras')} ndi and install the NDI "
                  "runtime (NDI Tools from ndi.video) if the library is still not found",
           "spout": f"run {INSTALL_WIN} -Extras spout"}.get(kind, "see docs/transports.md")
    return Check(kind, WARN, f"not available: {reason}", fix)


def check_models(models: list[ModelFacts]) -> Check:
    if not models:
        return Check("models", INFO, "no preset names a downloadable model")
    missing = [m for m in models if not m.path]
    cached = [m for m in models if m.path]
    detail = f"{len(cached)}/{len(models)} preset models on disk"
    if cached:
        detail += ": " + ", ".join(m.model_id for m in cached)
    if not missing:
        return Check("models", OK, detail)
    lines = [f"{m.model_id} (for {', '.join(m.used_by)}): {m.fix or m.error}" for m in missing]
    return Check("models", WARN, detail + "; missing: " + ", ".join(m.model_id for m in missing),
                 "\n".join(lines))


def check_engines(e: EngineFacts) -> Check:
    if e.error:
        return Check("engines", WARN, f"engine cache at {e.root} unreadable: {e.error}",
                     "run `sdbridge engines clean --all`")
    detail = f"{e.count} cached engine(s), {e.size_bytes / GIB:.2f} GiB in {e.root}"
    if e.stale:
        return Check("engines", WARN, f"{detail}; {len(e.stale)} built by another TensorRT version",
                     "run `sdbridge engines clean` (they would be rebuilt on next use anyway)")
    return Check("engines", OK if e.count else INFO, detail)


def evaluate(f: Facts) -> list[Check]:
    checks = [check_python(f.python, f.executable), check_torch(f.torch, f.smi, f.os_name),
              check_cuda(f.torch, f.smi, f.smi_error, f.os_name), check_gpu(f.torch, f.smi),
              check_tensorrt(f.tensorrt, f.torch, f.os_name),
              check_onnxruntime(f.onnxruntime, f.torch, f.os_name)]
    checks += [check_transport(k, ok, why, f.os_name) for k, (ok, why) in sorted(f.transports.items())]
    checks += [check_models(f.models), check_engines(f.engines)]
    return checks


def parse_nvidia_smi(text: str) -> tuple[Gpu, ...]:
    """Rows of `--query-gpu=name,driver_version,memory.total --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.rsplit(",", 2)]
        if len(parts) == 3 and parts[2].isdigit():
            gpus.append(Gpu(name=parts[0], driver=parts[1], memory_bytes=int(parts[2]) << 20))
    return tuple(gpus)


# -- probes (touch the machine) ------------------------------------------------------------------

def gather_torch() -> TorchFacts:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure is the fact we report
        return TorchFacts(error=f"{type(exc).__name__}: {exc}")
    cuda_build = torch.version.cuda
    try:
        available = bool(torch.cuda.is_available())
        gpus = tuple(_torch_gpu(torch, i) for i in range(torch.cuda.device_count())) if available else ()
        error = ""
    except RuntimeError as exc:
        available, gpus, error = False, (), str(exc)
    return TorchFacts(torch.__version__, cuda_build, available, gpus, error)


def _torch_gpu(torch: Any, index: int) -> Gpu:
    props = torch.cuda.get_device_properties(index)
    return Gpu(props.name, int(props.total_memory), capability=f"{props.major}.{props.minor}")


def gather_smi() -> tuple[tuple[Gpu, ...], str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return (), "nvidia-smi not found"
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return (), f"nvidia-smi failed: {exc}"
    if out.returncode != 0:
        return (), f"nvidia-smi failed: {(out.stderr or out.stdout).strip()[:200]}"
    return parse_nvidia_smi(out.stdout), ""


def gather_package(module: str) -> PackageFacts:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken install is reported, not raised
        return PackageFacts(error=f"{type(exc).__name__}: {exc}")
    extra: tuple[str, ...] = ()
    if module == "onnxruntime":
        extra = tuple(mod.get_available_providers())
    return PackageFacts(version=str(getattr(mod, "__version__", "?")), extra=extra)


def gather_transports() -> dict[str, tuple[bool, str]]:
    from bridge.io import is_available

    return {kind: (s.available, s.reason) for kind in ("ndi", "spout")
            for s in [is_available(kind)]}


def preset_files(extra: list[str]) -> list[Path]:
    shipped = Path(__file__).resolve().parents[2] / "presets"
    files = sorted(shipped.glob("*.yaml")) if shipped.is_dir() else []
    return files + [Path(p) for p in extra]


def gather_models(presets: list[Path]) -> list[ModelFacts]:
    from bridge.config import load_preset
    from bridge.errors import SdbridgeError
    from bridge.pipeline.models import resolve_local
    from bridge.pipeline.tiny import TINY_IDS

    users: dict[str, list[str]] = {}
    for path in presets:
        preset = load_preset(path)  # a broken preset is an error the user must see
        for model_id in (preset.model.id, preset.model.tiny_vae, preset.model.lcm_lora):
            if model_id and model_id not in TINY_IDS and model_id != "tiny":
                users.setdefault(model_id, []).append(path.name)
    found = []
    for model_id, used_by in users.items():
        try:
            found.append(ModelFacts(model_id, tuple(used_by), path=str(resolve_local(model_id))))
        except SdbridgeError as exc:
            found.append(ModelFacts(model_id, tuple(used_by), error=exc.message, fix=exc.fix))
    return found


def gather_engines(trt_version: str) -> EngineFacts:
    from bridge.pipeline.backends.engine_cache import EngineCache

    cache = EngineCache()
    try:
        entries = cache.entries()
    except OSError as exc:
        return EngineFacts(root=str(cache.root), error=str(exc))
    stale = tuple(e.digest for e in entries
                  if trt_version and e.key.get("tensorrt") not in (None, trt_version))
    return EngineFacts(len(entries), sum(e.size_bytes for e in entries), str(cache.root), stale)


def gather(presets: list[Path]) -> Facts:
    smi, smi_error = gather_smi()
    trt = gather_package("tensorrt")
    return Facts(python=tuple(sys.version_info[:3]), executable=sys.executable,  # type: ignore[arg-type]
                 os_name=platform.system(), torch=gather_torch(), smi=smi, smi_error=smi_error,
                 tensorrt=trt, onnxruntime=gather_package("onnxruntime"),
                 transports=gather_transports(), models=gather_models(presets),
                 engines=gather_engines(trt.version))


# -- command -------------------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("doctor", help="check this machine: torch/CUDA/GPU, TensorRT, NDI, "
                                           "Spout, cached models and engines, with fixes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--preset", action="append", default=[], metavar="FILE",
                        help="also check the models of this preset (repeatable)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    checks = evaluate(gather(preset_files(args.preset)))
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}))
    else:
        print(format_report(checks))
    return 1 if failed else 0


def format_report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"[{c.status:>4}] {c.name:<{width}}  {c.detail}")
        pad = " " * (width + 9)
        for i, fix in enumerate(c.fix.splitlines()):
            lines.append(f"{pad}{'fix: ' if i == 0 else '     '}{fix}")
    bad = sum(c.status == FAIL for c in checks)
    warn = sum(c.status == WARN for c in checks)
    lines.append(f"{bad} problem(s), {warn} warning(s)" if bad or warn else "all good")
    return "\n".join(lines)
