"""`sdbridge models list|pull|build-tiny`: what is on disk, and the one command that downloads.

At run time sdbridge only reads local folders and the Hugging Face cache; `models pull` is where
weights come from (Hugging Face Hub, needs internet and, for gated repos, `HF_TOKEN`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bridge.errors import ModelError

LCM_LORA = {"sd": "latent-consistency/lcm-lora-sdv1-5", "sdxl": "latent-consistency/lcm-lora-sdxl"}
TINY_VAE = {"sd": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list, download or build models", description=__doc__)
    actions = models.add_subparsers(dest="action", metavar="ACTION", required=True)

    lister = actions.add_parser("list", help="models in the Hugging Face cache and built-in ones")
    lister.add_argument("--json", action="store_true", help="print JSON")
    lister.set_defaults(func=_list)

    pull = actions.add_parser("pull", help="download a model into the Hugging Face cache")
    pull.add_argument("model_id", help="Hugging Face id (owner/name), or tiny / tiny-sdxl")
    pull.add_argument("--file", help="download only this single-file checkpoint from the repo")
    pull.add_argument("--variant", choices=("fp16",), help="fetch the fp16 weight files (smaller)")
    pull.add_argument("--configs-only", action="store_true",
                      help="configs and tokenizers only (what single-file checkpoints need)")
    pull.add_argument("--lcm-lora", nargs="?", const="auto", metavar="ID",
                      help="also fetch an LCM-LoRA (default: the one for the model's family)")
    pull.add_argument("--tiny-vae", nargs="?", const="auto", metavar="ID",
                      help="also fetch a tiny autoencoder (default: TAESD for the model's family)")
    pull.add_argument("--json", action="store_true", help="print JSON")
    pull.set_defaults(func=_pull)

    build = actions.add_parser("build-tiny", help="(re)build the built-in random-weight tiny models")
    build.add_argument("--force", action="store_true", help="rebuild even if a current copy exists")
    build.add_argument("--json", action="store_true", help="print JSON")
    build.set_defaults(func=_build_tiny)


# --- pull -------------------------------------------------------------------------------------


CONFIG_PATTERNS = ["model_index.json", "*/config.json", "scheduler/*.json", "tokenizer*/*"]


def pipeline_patterns(variant: str | None) -> list[str]:
    """Configs, tokenizers and one set of safetensors weights: no .bin/.ckpt/onnx duplicates."""
    v = f".{variant}" if variant else ""
    return [*CONFIG_PATTERNS, f"unet/diffusion_pytorch_model{v}.safetensors",
            f"vae/diffusion_pytorch_model{v}.safetensors", f"unet/diffusion_pytorch_model{v}.safetensors.index.json",
            f"unet/diffusion_pytorch_model{v}-*.safetensors",
            f"text_encoder*/model{v}.safetensors", f"text_encoder*/model{v}.safetensors.index.json",
            f"text_encoder*/model{v}-*.safetensors"]


def guess_family(model_id: str) -> str:
    return "sdxl" if "xl" in model_id.lower() else "sd"


def plan_pull(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """(repo id, snapshot_download kwargs) for everything the command line asks for."""
    family = guess_family(args.model_id)
    if args.configs_only:
        plan = [(args.model_id, {"allow_patterns": CONFIG_PATTERNS})]
    elif args.file:
        plan = [(args.model_id, {"allow_patterns": [args.file, "*.json"]})]
    else:
        plan = [(args.model_id, {"allow_patterns": pipeline_patterns(args.variant)})]
    if args.lcm_lora:
        lora = LCM_LORA[family] if args.lcm_lora == "auto" else args.lcm_lora
        plan.append((lora, {"allow_patterns": ["*.safetensors", "*.json"]}))
    if args.tiny_vae:
        vae = TINY_VAE[family] if args.tiny_vae == "auto" else args.tiny_vae
        plan.append((vae, {"allow_patterns": ["config.json", "diffusion_pytorch_model.safetensors"]}))
    return plan


def download(repo_id: str, **kwargs: Any) -> Path:
    """snapshot_download with every hub failure mapped to one ModelError that says what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf_errors

    try:
        return Path(snapshot_download(repo_id, **kwargs))
    except hf_errors.GatedRepoError as exc:
        raise ModelError(f"{repo_id!r} is gated: accept its licence on huggingface.co first",
                         fix="accept the licence on the model page, then set HF_TOKEN") from exc
    except hf_errors.RepositoryNotFoundError as exc:
        raise ModelError(f"no Hugging Face model {repo_id!r} (or it is private)",
                         fix="check the id spelling, or set HF_TOKEN for a private repo") from exc
    except (hf_errors.OfflineModeIsEnabled, hf_errors.LocalEntryNotFoundError) as exc:
        raise ModelError(f"cannot download {repo_id!r}: offline (HF_HUB_OFFLINE is set or the hub "
                         f"is unreachable): {exc}",
                         fix="unset HF_HUB_OFFLINE / connect to the internet and run the pull again"
                         ) from exc
    except (hf_errors.HfHubHTTPError, OSError) as exc:
        raise ModelError(f"download of {repo_id!r} failed: {exc}",
                         fix="check the network and free disk space, then run the pull again"
                         ) from exc


def _pull(args: argparse.Namespace) -> int:
    from bridge.pipeline.tiny import TINY_IDS, save_tiny

    if args.model_id in TINY_IDS:
        path = save_tiny(args.model_id)
        return _report(args, [{"id": args.model_id, "path": str(path)}])
    done = []
    for repo_id, kwargs in plan_pull(args):
        print(f"pulling {repo_id} ...", file=sys.stderr)
        path = download(repo_id, **kwargs)
        done.append({"id": repo_id, "path": str(path), "size_bytes": _size(path)})
    return _report(args, done)


def _report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> int:
    if args.json:
        print(json.dumps({"ok": True, "models": rows}))
    else:
        for row in rows:
            print(f"{row['id']}: {row['path']}")
    return 0


# --- list -------------------------------------------------------------------------------------


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _kind(files: set[str]) -> str | None:
    """What a cached repo looks like to us; None when it is nothing we can load."""
    if "model_index.json" in files:
        has_unet = any(f.startswith("unet/") and f.endswith(".safetensors") for f in files)
        return "pipeline" if has_unet else "pipeline-configs"
    top = {f for f in files if "/" not in f}
    if any("lora" in f and f.endswith(".safetensors") for f in top):
        return "lora"
    if "config.json" in top and "diffusion_pytorch_model.safetensors" in top:
        return "vae"
    if any(f.endswith(".safetensors") for f in top):
        return "single-file"
    return None


def cached_models() -> list[dict[str, Any]]:
    """Diffusers-looking repos in the HF cache, plus our built-in tiny models."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    from bridge.pipeline.tiny import TINY_IDS, tiny_is_current, tiny_model_dir

    rows: list[dict[str, Any]] = []
    try:
        repos = scan_cache_dir(constants.HF_HUB_CACHE).repos
    except CacheNotFound:
        repos = frozenset()
    for repo in sorted(repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        files = {str(f.file_path.relative_to(rev.snapshot_path)) for rev in repo.revisions
                 for f in rev.files}
        kind = _kind(files)
        if kind:
            rows.append({"id": repo.repo_id, "kind": kind, "size_bytes": repo.size_on_disk,
                         "path": str(repo.repo_path)})
    for model_id in TINY_IDS:
        folder = tiny_model_dir(model_id)
        built = tiny_is_current(folder)
        rows.append({"id": model_id, "kind": "built-in" if built else "built-in (built on first use)",
                     "size_bytes": _size(folder) if built else 0, "path": str(folder)})
    return rows


def _list(args: argparse.Namespace) -> int:
    rows = cached_models()
    if args.json:
        print(json.dumps({"ok": True, "models": rows}))
        return 0
    width = max(len(r["id"]) for r in rows)
    for row in rows:
        print(f"{row['id']:<{width}}  {row['kind']:<29}  {row['size_bytes'] / 1e6:9.1f} MB  {row['path']}")
    return 0


def _build_tiny(args: argparse.Namespace) -> int:
    from bridge.pipeline.tiny import TINY_IDS, save_tiny

    rows = [{"id": model_id, "path": str(save_tiny(model_id, force=args.force))} for model_id in TINY_IDS]
    return _report(args, rows)
