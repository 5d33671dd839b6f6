"""Load model components from local disk or the Hugging Face cache — never from the network.

``load_components(ModelSpec(...))`` accepts a diffusers folder, a single-file ``.safetensors``
checkpoint, a Hugging Face repo id already in the local cache, or the built-in ``tiny`` /
``tiny-sdxl`` (saved once to ``$SDBRIDGE_HOME/models`` and read back through the same
from_pretrained path). Options: an LCM-LoRA fused into the UNet, a tiny autoencoder (TAESD).
Anything missing raises one ``WeightsNotFoundError`` naming ``sdbridge models pull <id>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.errors import ConfigError, ModelError, Problem, RuntimeMissingError, WeightsNotFoundError
from bridge.pipeline.components import Components
from bridge.pipeline.tiny import TINY_IDS, check_tokenizer, save_tiny

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda", "mps")
STEP_KINDS = ("auto", "lcm", "turbo")
FAMILIES = ("auto", "sd", "sdxl")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SMALL_FILE = 64 << 20  # content-hash files below this size; larger ones by size + mtime


@dataclass(frozen=True)
class ModelSpec:
    id_or_path: str = "tiny"
    lcm_lora: str | None = None  # LoRA repo id / folder / .safetensors fused into the UNet
    lcm_lora_scale: float = 1.0
    tiny_vae: str | None = None  # AutoencoderTiny repo id / folder; "tiny" = the built-in one
    dtype: str = "float32"
    device: str = "cpu"
    step_kind: str = "auto"  # auto: "turbo" if the id says so, else "lcm"
    family: str = "auto"  # auto: from the folder (text_encoder_2 / text_time UNet => sdxl)
    single_file_config: str | None = None  # diffusers folder / repo id giving single-file configs

    def problems(self) -> list[Problem]:
        found: list[Problem] = []
        if not self.id_or_path.strip():
            found.append(Problem("model", self.id_or_path, "empty model id",
                                 "give a Hugging Face id, a folder, a .safetensors file or tiny"))
        for name, value, allowed in (("dtype", self.dtype, DTYPES), ("device", self.device, DEVICES),
                                     ("step_kind", self.step_kind, STEP_KINDS),
                                     ("family", self.family, FAMILIES)):
            if value not in allowed:
                found.append(Problem(name, value, "unknown value", f"use one of {', '.join(allowed)}"))
        if not 0.0 <= self.lcm_lora_scale <= 2.0:
            found.append(Problem("lcm_lora_scale", self.lcm_lora_scale, "out of range",
                                 "use a value in 0..2 (1.0 is the usual)"))
        return found

    def resolved_step_kind(self) -> str:
        if self.step_kind != "auto":
            return self.step_kind
        return "turbo" if "turbo" in self.id_or_path.lower() else "lcm"


def pull_hint(model_id: str) -> str:
    return f"download it once (needs internet) with `sdbridge models pull {model_id}`"


# --- device / dtype -------------------------------------------------------------------------


def resolve_device_dtype(spec: ModelSpec) -> tuple[Any, Any]:
    """Check the requested device exists in this torch build before anything is loaded."""
    import torch

    if spec.device == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else \
            f"torch built for CUDA {torch.version.cuda} but no usable GPU/driver"
        raise RuntimeMissingError(
            f"device='cuda' requested but CUDA is not available ({build}, torch {torch.__version__})",
            fix="run install/install.sh --cuda on a machine with an NVIDIA GPU, or use --device cpu")
    if spec.device == "mps" and not torch.backends.mps.is_available():
        raise RuntimeMissingError("device='mps' requested but Metal (MPS) is not available here",
                                  fix="MPS needs Apple silicon with macOS 12.3+; use --device cpu")
    if spec.device == "cpu" and spec.dtype == "float16":
        raise ConfigError(Problem("dtype", "float16", "half precision is not usable on CPU "
                                  "(missing kernels, very slow)", "use float32 or bfloat16 on cpu"))
    return torch.device(spec.device), getattr(torch, spec.dtype)


# --- resolving an id to a local folder / file ------------------------------------------------


def resolve_local(model_id: str, *, what: str = "model") -> Path:
    """A folder or file on disk for ``model_id``; hub ids only from the local HF cache."""
    if model_id in TINY_IDS:
        return save_tiny(model_id)
    path = Path(model_id).expanduser()
    if path.exists():
        return path
    if not _HF_ID.match(model_id):
        raise WeightsNotFoundError(
            f"{what} {model_id!r}: no such file or folder, and it is not a Hugging Face id (owner/name)",
            fix=f"check the path, or give a Hugging Face id and {pull_hint('<owner/name>')}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        raise WeightsNotFoundError(
            f"{what} {model_id!r} is not on disk or in the Hugging Face cache "
            "(sdbridge never downloads at run time)", fix=pull_hint(model_id)) from exc


def _variant(folder: Path) -> str | None:
    """Use the fp16 variant files only when the full-precision ones were not downloaded."""
    if any(folder.glob("*.fp16.safetensors")) and not any(
            p for p in folder.glob("*.safetensors") if ".fp16." not in p.name):
        return "fp16"
    return None


# --- loading ----------------------------------------------------------------------------------


def load_components(spec: ModelSpec, progress: bool = True) -> Components:
    """Everything the pipeline needs, on ``spec.device`` in ``spec.dtype``, in eval mode."""
    problems = spec.problems()
    if problems:
        raise ConfigError(problems, context="model")
    device, dtype = resolve_device_dtype(spec)
    source = resolve_local(spec.id_or_path)
    if source.is_file():
        parts, files = _load_single_file(source, spec, dtype)
    elif (source / "model_index.json").exists() or (source / "unet").is_dir():
        parts, files = _load_folder(source, dtype, progress, spec.id_or_path)
    else:
        raise ModelError(f"model {spec.id_or_path!r} at {source} is not a diffusers pipeline folder "
                         "(no model_index.json or unet/)",
                         fix="point at the folder holding model_index.json, or a .safetensors file")
    family = _family(parts, spec)
    for field in ("tokenizer", "tokenizer_2"):
        if parts.get(field) is not None:
            check_tokenizer(parts[field], field)
    loras: list[list[Any]] = []
    if spec.lcm_lora:
        # Content hash in the id: the same path with other weights must not hit old engines.
        lora_hash = _hash_files(_fuse_lora(parts, family, spec))
        loras = [[f"{spec.lcm_lora}@{lora_hash}", spec.lcm_lora_scale]]
    vae_hash = None
    if spec.tiny_vae:
        parts["vae"], vae_files = _load_tiny_vae(spec.tiny_vae, dtype)
        vae_hash = _hash_files(vae_files)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if parts.get(name) is not None:
            # Already in dtype (torch_dtype at load); a second cast makes diffusers warn.
            parts[name] = parts[name].to(device=device).eval().requires_grad_(False)
    # Shape shared with the engine cache (backends/engine_cache.py): base weights hash, and
    # LoRAs as [[id, scale]] (they only key UNet artefacts).
    identity = {"model": spec.id_or_path, "weights": _hash_files(files), "family": family,
                "dtype": spec.dtype, "loras": loras, "tiny_vae": spec.tiny_vae,
                "tiny_vae_weights": vae_hash}
    log.info("loaded %s (%s, %s, %s) on %s", spec.id_or_path, family, spec.resolved_step_kind(),
             spec.dtype, device)
    return Components(unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"],
                      tokenizer=parts["tokenizer"], scheduler=parts["scheduler"], family=family,
                      step_kind=spec.resolved_step_kind(),  # type: ignore[arg-type]
                      text_encoder_2=parts.get("text_encoder_2"),
                      tokenizer_2=parts.get("tokenizer_2"), model_id=spec.id_or_path,
                      identity=identity)


def _load_folder(folder: Path, dtype: Any, progress: bool,
                 model_id: str) -> tuple[dict[str, Any], list[Path]]:
    import diffusers
    import transformers
    from tqdm import tqdm

    names = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
    if (folder / "text_encoder_2").is_dir():
        names += ["text_encoder_2", "tokenizer_2"]
    classes = {"unet": diffusers.UNet2DConditionModel, "text_encoder": transformers.CLIPTextModel,
               "text_encoder_2": transformers.CLIPTextModelWithProjection,
               "tokenizer": transformers.CLIPTokenizer, "tokenizer_2": transformers.CLIPTokenizer,
               "scheduler": diffusers.LCMScheduler, "vae": _vae_class(folder / "vae")}
    # One bar of ours per part; the libraries' own per-file bars would nest inside it.
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    parts: dict[str, Any] = {}
    for name in tqdm(names, desc="loading model", unit="part", disable=not progress):
        sub = folder / name
        if not sub.is_dir():
            raise WeightsNotFoundError(f"model folder {folder} has no {name}/ part",
                                       fix=f"re-download the whole model: {pull_hint(model_id)}")
        kwargs: dict[str, Any] = {"local_files_only": True}
        if name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            kwargs["torch_dtype"] = dtype
            if _variant(sub):
                kwargs["variant"] = _variant(sub)
        try:
            parts[name] = classes[name].from_pretrained(str(sub), **kwargs)
        except (OSError, ValueError, EnvironmentError) as exc:
            raise WeightsNotFoundError(f"could not load {name} from {sub}: {exc}",
                                       fix=f"the download looks incomplete; {pull_hint(model_id)}"
                                       ) from exc
    files = [p for n in names for p in sorted((folder / n).rglob("*")) if p.is_file()]
    return parts, files


def _vae_class(folder: Path) -> Any:
    import diffusers

    try:
        name = json.loads((folder / "config.json").read_text(encoding="utf-8"))["_class_name"]
    except (OSError, ValueError, KeyError):
        return diffusers.AutoencoderKL
    allowed = {"AutoencoderKL": diffusers.AutoencoderKL, "AutoencoderTiny": diffusers.AutoencoderTiny}
    if name not in allowed:
        raise ModelError(f"vae class {name!r} in {folder} is not supported",
                         fix="use a model with an AutoencoderKL or AutoencoderTiny VAE")
    return allowed[name]


def _load_single_file(path: Path, spec: ModelSpec, dtype: Any) -> tuple[dict[str, Any], list[Path]]:
    """Original-layout checkpoint; diffusers maps it using configs from disk / the HF cache."""
    if path.suffix not in (".safetensors",):
        raise ModelError(f"model file {path} is not a .safetensors checkpoint",
                         fix="convert it to .safetensors (pickled .ckpt files are not loaded)")
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as exc:  # safetensors raises its own SafetensorError for corrupt headers
        raise ModelError(f"{path} is not a readable safetensors file: {exc}",
                         fix="re-download the checkpoint") from exc
    is_xl = any(k.startswith("conditioner.embedders.1.") for k in keys)
    if spec.family != "auto" and (spec.family == "sdxl") != is_xl:
        raise ConfigError(Problem("family", spec.family, f"{path.name} looks like "
                                  f"{'sdxl' if is_xl else 'sd'}", "use --family auto"))
    pipe_class = StableDiffusionXLPipeline if is_xl else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"torch_dtype": dtype, "local_files_only": True}
    if spec.single_file_config:
        kwargs["config"] = str(resolve_local(spec.single_file_config, what="single-file config"))
    try:
        pipe = pipe_class.from_single_file(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        base = "stabilityai/stable-diffusion-xl-base-1.0" if is_xl else \
            "stable-diffusion-v1-5/stable-diffusion-v1-5"
        raise WeightsNotFoundError(
            f"cannot map single-file checkpoint {path.name}: the base model's diffusers configs "
            f"are not on disk ({exc})",
            fix=f"fetch the configs of the base repo named above once, e.g. `sdbridge models pull "
                f"{base} --configs-only`, or pass single_file_config=<diffusers folder>") from exc
    parts = {name: getattr(pipe, name, None) for name in
             ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")}
    from diffusers import LCMScheduler

    parts["scheduler"] = LCMScheduler.from_config(pipe.scheduler.config)
    return parts, [path]


def _family(parts: dict[str, Any], spec: ModelSpec) -> str:
    detected = "sdxl" if parts.get("text_encoder_2") is not None or \
        getattr(parts["unet"].config, "addition_embed_type", None) == "text_time" else "sd"
    if spec.family not in ("auto", detected):
        raise ConfigError(Problem("family", spec.family, f"model {spec.id_or_path!r} is {detected}",
                                  "use --family auto or the matching family"))
    return detected


def _fuse_lora(parts: dict[str, Any], family: str, spec: ModelSpec) -> list[Path]:
    """Fuse the LoRA into the UNet weights (no per-call LoRA cost), then drop the adapter."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    assert spec.lcm_lora is not None
    source = resolve_local(spec.lcm_lora, what="LCM-LoRA")
    if family == "sdxl":
        pipe: Any = StableDiffusionXLPipeline(
            vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
            tokenizer=parts["tokenizer"], tokenizer_2=parts["tokenizer_2"], unet=parts["unet"],
            scheduler=parts["scheduler"])
    else:
        pipe = StableDiffusionPipeline(
            vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
            unet=parts["unet"], scheduler=parts["scheduler"], safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
    location = {"pretrained_model_name_or_path_or_dict": str(source.parent if source.is_file() else source)}
    if source.is_file():
        location["weight_name"] = source.name
    try:
        pipe.load_lora_weights(**location, adapter_name="lcm", local_files_only=True)
        pipe.fuse_lora(lora_scale=spec.lcm_lora_scale, adapter_names=["lcm"])
        pipe.unload_lora_weights()
    except (OSError, ValueError, KeyError, IndexError, TypeError, RuntimeError) as exc:
        raise ModelError(f"LCM-LoRA {spec.lcm_lora!r} does not fit model {spec.id_or_path!r}: {exc}",
                         fix="use the LCM-LoRA for this family (latent-consistency/lcm-lora-sdv1-5 "
                             "or latent-consistency/lcm-lora-sdxl)") from exc
    parts["unet"] = pipe.unet
    return [source] if source.is_file() else sorted(p for p in source.rglob("*.safetensors"))


def _load_tiny_vae(vae_id: str, dtype: Any) -> tuple[Any, list[Path]]:
    from diffusers import AutoencoderTiny

    folder = save_tiny("tiny") / "vae_tiny" if vae_id == "tiny" else resolve_local(vae_id, what="tiny VAE")
    try:
        vae = AutoencoderTiny.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(f"could not load tiny VAE {vae_id!r} from {folder}: {exc}",
                                   fix=pull_hint(vae_id)) from exc
    return vae, sorted(p for p in folder.rglob("*") if p.is_file())


def _hash_files(files: list[Path]) -> str:
    """Cheap, stable weights identity: small files by content, big ones by size + mtime."""
    digest = hashlib.sha256()
    for path in sorted(set(files)):
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0".encode())
        if stat.st_size <= _SMALL_FILE:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        else:
            digest.update(str(stat.st_mtime_ns).encode())
    return digest.hexdigest()[:16]
