"""The built-in ``tiny`` model: random-weight diffusers components built in memory.

Small enough to build in well under a second and to run 64×64 (even 512×512) frames on a CPU,
yet shaped like the real thing: UNet with cross-attention, a 4-block AutoencoderKL (scale factor
8, 4 latent channels), an optional AutoencoderTiny (TAESD layout, scale factor 8), a 2-layer CLIP
text encoder and a real byte-level BPE CLIP tokenizer written from a vocabulary generated here.
``family="sdxl"`` adds the second text encoder and the ``text_time`` UNet conditioning.

Weights are deterministic from ``seed`` (the global torch RNG is left untouched).
"""

from __future__ import annotations

import json
import logging
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from bridge.errors import ConfigError, ModelError, Problem
from bridge.pipeline.components import Components

log = logging.getLogger(__name__)

MIN_TOKENIZER_SIZE = 100
HIDDEN = 32  # text encoder width (= UNet cross-attention width per encoder)
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
# Words that become single tokens; everything else still tokenizes through the byte alphabet.
WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "in", "on", "with", "and", "by", "at", "photo", "picture", "painting",
    "portrait", "drawing", "cat", "dog", "bird", "fish", "horse", "person", "man", "woman", "face",
    "city", "street", "forest", "mountain", "sea", "ocean", "sky", "night", "day", "sun", "moon",
    "neon", "cyberpunk", "watercolor", "oil", "sketch", "anime", "style", "colorful", "dark",
    "bright", "red", "green", "blue", "yellow", "black", "white", "gold", "fire", "water", "light",
    "glow", "abstract", "pattern", "high", "quality", "detailed", "blurry", "low", "ugly", "bad",
    "art", "digital", "vivid", "render", "cinematic", "lighting", "beautiful", "landscape", "flowers",
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte→printable-character table (every byte gets one character)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _bpe(word: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Standard BPE: repeatedly merge the lowest-ranked adjacent pair."""
    while len(word) > 1:
        pairs = [(ranks.get((word[i], word[i + 1]), 1 << 30), i) for i in range(len(word) - 1)]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        pair = (word[i], word[i + 1])
        merged: list[str] = []
        j = 0
        while j < len(word):
            if j < len(word) - 1 and (word[j], word[j + 1]) == pair:
                merged.append(word[j] + word[j + 1])
                j += 2
            else:
                merged.append(word[j])
                j += 1
        word = merged
    return word


def tiny_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-layout vocabulary: 256 byte chars, the same with ``</w>``, merges, then BOS/EOS.

    Merges are added word by word after simulating BPE with the merges so far, so every word in
    WORDS ends up as exactly one token whatever merges other words introduced.
    """
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in WORDS:
        start = list(word[:-1]) + [word[-1] + "</w>"]
        pieces = _bpe(start, ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            tokens.append(pair[0] + pair[1])
            pieces = _bpe(start, ranks)  # a merge applies to every occurrence ("vivid")
    tokens += [_BOS, _EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def write_tokenizer_files(folder: Path) -> Path:
    """Write vocab.json + merges.txt (the slow-tokenizer file pair CLIPTokenizer reads)."""
    vocab, merges = tiny_vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def check_tokenizer(tokenizer: object, field: str = "tokenizer") -> None:
    """Offline transformers can hand back an empty tokenizer without complaint: refuse it."""
    size = len(tokenizer)  # type: ignore[arg-type]
    if size < MIN_TOKENIZER_SIZE:
        raise ModelError(
            f"{field} has only {size} tokens (need >= {MIN_TOKENIZER_SIZE}); its vocabulary files "
            "are missing or were not found offline",
            fix="re-download the model with `sdbridge models pull <id>` or rebuild the tiny model "
                "with `sdbridge models build-tiny`")


@lru_cache(maxsize=1)
def _tokenizer_dir() -> Path:
    import atexit
    import shutil

    folder = Path(tempfile.mkdtemp(prefix="sdbridge-tiny-tok-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return write_tokenizer_files(folder)


def build_tokenizer() -> object:
    from transformers import CLIPTokenizer

    # Read back through from_pretrained: the same file path real checkpoints take.
    tokenizer = CLIPTokenizer.from_pretrained(
        str(_tokenizer_dir()), unk_token=_EOS, bos_token=_BOS, eos_token=_EOS, pad_token=_EOS,
        model_max_length=77)
    check_tokenizer(tokenizer)
    return tokenizer


def _text_config(vocab_size: int, eos_id: int, bos_id: int) -> object:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=HIDDEN,
        hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=bos_id, eos_token_id=eos_id,
        pad_token_id=eos_id)


def _unet(family: str) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    common = dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=32)
    if family == "sdxl":
        # Pooled text embeds (HIDDEN) + 6 size/crop ids × addition_time_embed_dim.
        return UNet2DConditionModel(
            **common, cross_attention_dim=2 * HIDDEN, attention_head_dim=(2, 4),
            use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=HIDDEN + 6 * 8)
    return UNet2DConditionModel(**common, cross_attention_dim=HIDDEN, attention_head_dim=8)


def _vae() -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
        block_out_channels=(8, 16, 32, 32), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def _tiny_vae() -> torch.nn.Module:
    from diffusers import AutoencoderTiny

    return AutoencoderTiny(
        in_channels=3, out_channels=3, latent_channels=4,
        encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))


def _scheduler() -> object:
    from diffusers import LCMScheduler

    # SD 1.5 / SDXL betas; the pipeline builds its own 50-step LCM schedule from them.
    return LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        num_train_timesteps=1000, original_inference_steps=50,
                        timestep_spacing="leading", steps_offset=1, set_alpha_to_one=True,
                        clip_sample=False)


def build_tiny_components(*, family: str = "sd", tiny_vae: bool = False, seed: int = 0,
                          step_kind: str = "lcm") -> Components:
    """Random-weight components, identical for identical arguments."""
    problems = []
    if family not in ("sd", "sdxl"):
        problems.append(Problem("family", family, "unknown model family", "use sd or sdxl"))
    if step_kind not in ("lcm", "turbo"):
        problems.append(Problem("step_kind", step_kind, "unknown step kind", "use lcm or turbo"))
    if problems:
        raise ConfigError(problems, context="tiny model")
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tokenizer()
    config = _text_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _unet(family)
        vae = _tiny_vae() if tiny_vae else _vae()
        text_encoder = CLIPTextModel(config)
        text_encoder_2 = CLIPTextModelWithProjection(config) if family == "sdxl" else None
    for module in (unet, vae, text_encoder, text_encoder_2):
        if module is not None:
            module.eval().requires_grad_(False)
    return Components(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=_scheduler(), family=family, step_kind=step_kind,  # type: ignore[arg-type]
        text_encoder_2=text_encoder_2, tokenizer_2=build_tokenizer() if family == "sdxl" else None,
        model_id="tiny" if family == "sd" else "tiny-sdxl",
        identity={"model": "tiny", "family": family, "tiny_vae": tiny_vae, "seed": seed,
                  "step_kind": step_kind})


# --- the on-disk copy that `load_components("tiny")` reads back through from_pretrained -------

TINY_FORMAT_VERSION = 2  # bump when the layout above changes: stale cache copies get rebuilt
TINY_IDS = {"tiny": "sd", "tiny-sdxl": "sdxl"}


def sdbridge_home() -> Path:
    """``$SDBRIDGE_HOME`` or ``~/.cache/sdbridge``: our own cache (tiny models, engines)."""
    import os

    return Path(os.environ.get("SDBRIDGE_HOME") or Path.home() / ".cache" / "sdbridge")


def tiny_model_dir(model_id: str = "tiny") -> Path:
    return sdbridge_home() / "models" / model_id


def tiny_is_current(folder: Path) -> bool:
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return index.get("_sdbridge_tiny_version") == TINY_FORMAT_VERSION


def save_tiny(model_id: str = "tiny", *, force: bool = False, seed: int = 0) -> Path:
    """Write the tiny model as a diffusers folder (plus ``vae_tiny/``) once, atomically.

    Built in a temporary sibling folder and renamed into place, so a reader never sees half a
    model and two processes racing both end up with one complete copy.
    """
    import os
    import shutil

    if model_id not in TINY_IDS:
        raise ConfigError(Problem("model", model_id, "not a built-in tiny model",
                                  f"use one of {', '.join(TINY_IDS)}"))
    final = tiny_model_dir(model_id)
    if tiny_is_current(final) and not force:
        return final
    family = TINY_IDS[model_id]
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_id}-", dir=final.parent))
    try:
        comps = build_tiny_components(family=family, seed=seed)
        parts = {"unet": comps.unet, "vae": comps.vae, "text_encoder": comps.text_encoder,
                 "tokenizer": comps.tokenizer, "scheduler": comps.scheduler}
        if family == "sdxl":
            parts |= {"text_encoder_2": comps.text_encoder_2, "tokenizer_2": comps.tokenizer_2}
        for name, part in parts.items():
            part.save_pretrained(str(tmp / name))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            _tiny_vae().save_pretrained(str(tmp / "vae_tiny"))
        _write_model_index(tmp, parts, family)
        if tiny_is_current(final) and not force:
            return final  # another process finished first while we were building
        old = final.with_name(f".{model_id}-old-{os.getpid()}")
        try:  # stale or forced copy: move it aside first (each rename is atomic)
            os.rename(final, old)
        except FileNotFoundError:
            pass
        try:
            os.rename(tmp, final)
        except OSError:
            if not tiny_is_current(final):  # a racing writer put something broken there
                raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("tiny model %s saved to %s", model_id, final)
    return final


def _write_model_index(folder: Path, parts: dict[str, object], family: str) -> None:
    libraries = {"tokenizer": "transformers", "tokenizer_2": "transformers",
                 "text_encoder": "transformers", "text_encoder_2": "transformers"}
    index: dict[str, object] = {
        "_class_name": "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline",
        "_sdbridge_tiny_version": TINY_FORMAT_VERSION,
    }
    for name, part in parts.items():
        index[name] = [libraries.get(name, "diffusers"), type(part).__name__]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
