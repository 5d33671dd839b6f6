"""Prompt embeddings (cached, blended) and seed noise (cached, blended).

Only texts that are not in the LRU cache go through the text encoder(s), in one batched call.
Weighted prompts blend in embedding space: E = Σ wᵢEᵢ / Σ wᵢ (pooled SDXL embeds the same way).
Weighted seeds blend as N = Σ wᵢNᵢ / √(Σ wᵢ²) over distinct seeds, so the blend of independent
unit-variance noises keeps unit variance.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch

from bridge.errors import ModelError
from bridge.pipeline.components import Components

log = logging.getLogger(__name__)

MIN_TOKENIZER_SIZE = 100
PromptSpec = Union[str, Sequence[Sequence[Any]]]  # text or [[text, weight], ...]
SeedSpec = Union[int, Sequence[Sequence[Any]]]  # seed or [[seed, weight], ...]


@dataclass(frozen=True)
class Embedding:
    hidden: torch.Tensor  # (1, L, D) encoder_hidden_states
    pooled: torch.Tensor | None = None  # (1, P) SDXL text_embeds


def weighted_items(spec: Any) -> list[tuple[Any, float]]:
    """A single item or [[item, weight], ...] → [(item, weight)] with duplicates merged."""
    if isinstance(spec, (str, int)):
        return [(spec, 1.0)]
    merged: dict[Any, float] = {}
    for item, weight in spec:
        merged[item] = merged.get(item, 0.0) + float(weight)
    return [(item, w) for item, w in merged.items() if w > 0]


class _LRU(OrderedDict):
    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def get_fresh(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


class PromptEncoder:
    """Text → Embedding with an LRU cache; SDXL adds the second encoder and pooled embeds."""

    def __init__(self, components: Components, device: torch.device, dtype: torch.dtype,
                 cache_size: int = 64) -> None:
        self.components = components
        self.device, self.dtype = device, dtype
        self.sdxl = components.family == "sdxl"
        self._check_tokenizer(components.tokenizer, "tokenizer")
        if self.sdxl:
            if components.text_encoder_2 is None or components.tokenizer_2 is None:
                raise ModelError("an sdxl model needs text_encoder_2 and tokenizer_2",
                                 fix="load the full SDXL model folder")
            self._check_tokenizer(components.tokenizer_2, "tokenizer_2")
        self._cache: _LRU = _LRU(cache_size)
        self.encoded_texts = 0  # texts run through the encoder(s), for stats and tests

    @staticmethod
    def _check_tokenizer(tokenizer: Any, field: str) -> None:
        size = len(tokenizer)
        if size < MIN_TOKENIZER_SIZE:
            raise ModelError(f"{field} has only {size} tokens (need >= {MIN_TOKENIZER_SIZE})",
                             fix="the tokenizer files are missing; re-download the model with "
                                 "`sdbridge models pull <id>`")

    def get(self, texts: Sequence[str]) -> dict[str, Embedding]:
        """Embeddings for ``texts``; encodes the uncached ones in one batch."""
        found = {t: self._cache.get_fresh(t) for t in dict.fromkeys(texts)}
        missing = [t for t, e in found.items() if e is None]
        if missing:
            for text, emb in zip(missing, self._encode(missing)):
                self._cache.put(text, emb)
                found[text] = emb
        return found  # type: ignore[return-value]

    def blend(self, spec: PromptSpec, extra: Sequence[str] = ()) -> tuple[Embedding, dict]:
        """Weighted blend of ``spec``; ``extra`` texts are encoded in the same batch."""
        items = weighted_items(spec)
        table = self.get([t for t, _ in items] + list(extra))
        total = sum(w for _, w in items)
        hidden = sum(table[t].hidden * (w / total) for t, w in items)
        pooled = None
        if self.sdxl:
            pooled = sum(table[t].pooled * (w / total) for t, w in items)  # type: ignore[operator]
        return Embedding(hidden, pooled), table  # type: ignore[arg-type]

    def _tokens(self, tokenizer: Any, encoder: Any, texts: list[str]) -> torch.Tensor:
        length = min(int(tokenizer.model_max_length),
                     int(encoder.config.max_position_embeddings))
        ids = tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                        return_tensors="pt").input_ids
        return ids.to(next(encoder.parameters()).device)

    def _encode(self, texts: list[str]) -> list[Embedding]:
        c = self.components
        self.encoded_texts += len(texts)
        log.debug("encoding %d prompt(s)", len(texts))
        with torch.inference_mode():
            ids = self._tokens(c.tokenizer, c.text_encoder, texts)
            if not self.sdxl:
                hidden = c.text_encoder(ids)[0]
                pooled = None
            else:
                # SDXL: penultimate hidden states of both encoders side by side; pooled from #2.
                out1 = c.text_encoder(ids, output_hidden_states=True)
                ids2 = self._tokens(c.tokenizer_2, c.text_encoder_2, texts)
                out2 = c.text_encoder_2(ids2, output_hidden_states=True)
                hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
                pooled = out2[0].to(self.device, self.dtype)
            hidden = hidden.to(self.device, self.dtype)
        return [Embedding(hidden[i:i + 1].clone(),
                          None if pooled is None else pooled[i:i + 1].clone())
                for i in range(len(texts))]


def seed_noise(seed: int, shape: Sequence[int], device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise from a CPU generator: the same numbers on every device."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32).to(device, dtype)


class NoiseCache:
    """seed → fixed noise of one shape (B rows × latent), LRU-bounded."""

    def __init__(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype,
                 cache_size: int = 8) -> None:
        self.shape = tuple(shape)
        self.device, self.dtype = device, dtype
        self._cache: _LRU = _LRU(cache_size)
        self.generated = 0

    def get(self, seed: int) -> torch.Tensor:
        noise = self._cache.get_fresh(seed)
        if noise is None:
            noise = seed_noise(seed, self.shape, self.device, self.dtype)
            self._cache.put(seed, noise)
            self.generated += 1
        return noise

    def blend(self, spec: SeedSpec) -> torch.Tensor:
        """One seed: its noise as is. Several: Σ wᵢNᵢ / √(Σ wᵢ²) (variance stays 1)."""
        items = weighted_items(spec)
        if len(items) == 1:
            return self.get(items[0][0])
        norm = sum(w * w for _, w in items) ** 0.5
        # Accumulate in float32 at least, so fp16 blends do not lose the small weights.
        acc_dtype = torch.promote_types(self.dtype, torch.float32)
        out = torch.zeros(self.shape, device=self.device, dtype=acc_dtype)
        for seed, w in items:
            out.add_(self.get(seed), alpha=w / norm)
        return out.to(self.dtype)


def sdxl_time_ids(height: int, width: int, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    """SDXL micro-conditioning: original size, crop top-left (0, 0), target size → (1, 6)."""
    return torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)


def stack_rows(parts: Sequence[tuple[Embedding, int]], time_ids: torch.Tensor | None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """UNet conditioning for a row layout, e.g. [(cond, B), (negative, F)] → (hidden, added)."""
    hidden = torch.cat([e.hidden.expand(k, -1, -1) for e, k in parts if k]).contiguous()
    if time_ids is None:
        return hidden, None
    pooled = torch.cat([e.pooled.expand(k, -1) for e, k in parts if k])  # type: ignore[union-attr]
    return hidden, {"text_embeds": pooled.contiguous(),
                    "time_ids": time_ids.expand(hidden.shape[0], -1).contiguous()}
