"""Prompt embedding cache and blending, SDXL conditioning, seed noise cache and blending."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bridge.errors import ModelError
from bridge.pipeline.prompts import (NoiseCache, PromptEncoder, sdxl_time_ids, seed_noise,
                                     stack_rows, weighted_items)
from bridge.pipeline.tiny import build_tiny_components

CPU, F32 = torch.device("cpu"), torch.float32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tiny_sd):
    return tiny_sd


@pytest.fixture(scope="module")
def tiny_sdxl():
    return build_tiny_components(family="sdxl", seed=0)


class CallCounter:
    def __init__(self, module: torch.nn.Module) -> None:
        self.rows: list[int] = []
        self._hook = module.register_forward_hook(
            lambda mod, args, out: self.rows.append(args[0].shape[0]))

    def close(self) -> None:
        self._hook.remove()


def test_cache_encodes_only_new_texts(tiny) -> None:
    enc = PromptEncoder(tiny, CPU, F32)
    calls = CallCounter(tiny.text_encoder)
    try:
        first = enc.get(["a photo of a cat", "ugly"])
        assert calls.rows == [2]
        second = enc.get(["ugly", "a photo of a dog", "a photo of a dog"])
        assert calls.rows == [2, 1] and enc.encoded_texts == 3
        assert second["ugly"] is first["ugly"]
        enc.get(["a photo of a cat", "ugly", "a photo of a dog"])
        assert calls.rows == [2, 1]
    finally:
        calls.close()


def test_embedding_is_the_text_encoder_output(tiny) -> None:
    enc = PromptEncoder(tiny, CPU, F32)
    emb = enc.get(["a red fish"])["a red fish"]
    ids = tiny.tokenizer(["a red fish"], padding="max_length", max_length=77,
                         return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = tiny.text_encoder(ids)[0]
    assert emb.hidden.shape == (1, 77, 32) and emb.pooled is None
    torch.testing.assert_close(emb.hidden, expected)
    other = enc.get(["a blue sky"])["a blue sky"]
    assert (emb.hidden - other.hidden).abs().max() > 1e-3


def test_lru_bound(tiny) -> None:
    enc = PromptEncoder(tiny, CPU, F32, cache_size=2)
    enc.get(["cat"])
    enc.get(["dog"])
    enc.get(["cat"])  # refreshes cat: dog is now the oldest
    enc.get(["bird"])
    assert enc.encoded_texts == 3
    enc.get(["cat"])
    assert enc.encoded_texts == 3
    enc.get(["dog"])  # evicted, encoded again
    assert enc.encoded_texts == 4 and len(enc._cache) == 2


def test_weighted_blend_in_embedding_space(tiny) -> None:
    enc = PromptEncoder(tiny, CPU, F32)
    blended, table = enc.blend([["cat", 1.0], ["dog", 2.0], ["cat", 1.0]], extra=["ugly"])
    assert set(table) == {"cat", "dog", "ugly"} and enc.encoded_texts == 3
    expected = 0.5 * table["cat"].hidden + 0.5 * table["dog"].hidden
    torch.testing.assert_close(blended.hidden, expected)
    single, _ = enc.blend("cat")
    assert torch.equal(single.hidden, table["cat"].hidden)
    assert weighted_items([["a", 0.0], ["b", 1.0]]) == [("b", 1.0)]


def test_sdxl_conditioning(tiny_sdxl) -> None:
    enc = PromptEncoder(tiny_sdxl, CPU, F32)
    calls = CallCounter(tiny_sdxl.text_encoder_2)
    try:
        table = enc.get(["a cat", "a dog"])
    finally:
        calls.close()
    assert calls.rows == [2]
    cat = table["a cat"]
    assert cat.hidden.shape == (1, 77, 64) and cat.pooled.shape == (1, 32)
    ids = tiny_sdxl.tokenizer(["a cat"], padding="max_length", max_length=77,
                              return_tensors="pt").input_ids
    with torch.inference_mode():
        out1 = tiny_sdxl.text_encoder(ids, output_hidden_states=True)
        out2 = tiny_sdxl.text_encoder_2(ids, output_hidden_states=True)
    torch.testing.assert_close(cat.hidden, torch.cat([out1.hidden_states[-2],
                                                      out2.hidden_states[-2]], -1))
    torch.testing.assert_close(cat.pooled, out2.text_embeds)
    blended, _ = enc.blend([["a cat", 1.0], ["a dog", 1.0]])
    torch.testing.assert_close(blended.pooled, (cat.pooled + table["a dog"].pooled) / 2)
    time_ids = sdxl_time_ids(64, 128, CPU, F32)
    assert time_ids.tolist() == [[64.0, 128.0, 0.0, 0.0, 64.0, 128.0]]
    hidden, added = stack_rows([(cat, 3), (table["a dog"], 2)], time_ids)
    assert hidden.shape == (5, 77, 64) and added["text_embeds"].shape == (5, 32)
    assert added["time_ids"].shape == (5, 6)
    assert torch.equal(hidden[3], table["a dog"].hidden[0])


def test_sdxl_without_second_encoder_is_an_error(tiny_sdxl) -> None:
    with pytest.raises(ModelError, match="text_encoder_2"):
        PromptEncoder(replace(tiny_sdxl, text_encoder_2=None), CPU, F32)


def test_empty_tokenizer_is_refused(tiny) -> None:
    class Empty:
        def __len__(self) -> int:
            return 3

    with pytest.raises(ModelError) as info:
        PromptEncoder(replace(tiny, tokenizer=Empty()), CPU, F32)
    assert "tokenizer has only 3 tokens" in str(info.value) and "sdbridge models pull" in str(
        info.value)


def test_seed_noise_is_fixed_and_cached() -> None:
    a, b = seed_noise(3, (2, 4, 8, 8), CPU, F32), seed_noise(3, (2, 4, 8, 8), CPU, F32)
    assert torch.equal(a, b) and not torch.equal(a, seed_noise(4, (2, 4, 8, 8), CPU, F32))
    cache = NoiseCache((2, 4, 8, 8), CPU, F32, cache_size=2)
    assert cache.get(3) is cache.get(3) and cache.generated == 1
    assert torch.equal(cache.get(3), a)
    assert seed_noise(3, (2, 4, 8, 8), CPU, torch.float16).dtype == torch.float16


def test_seed_blend_keeps_unit_variance() -> None:
    cache = NoiseCache((8, 4, 32, 32), CPU, F32)
    blend = cache.blend([[1, 1.0], [2, 3.0], [5, 2.0]])
    norm = (1 + 9 + 4) ** 0.5
    expected = (cache.get(1) + 3 * cache.get(2) + 2 * cache.get(5)) / norm
    torch.testing.assert_close(blend, expected)
    assert blend.std().item() == pytest.approx(1.0, abs=0.03)
    assert blend.mean().item() == pytest.approx(0.0, abs=0.03)
    assert torch.equal(cache.blend([[7, 2.0]]), cache.get(7))
    assert torch.equal(cache.blend([[7, 1.0], [7, 1.0]]), cache.get(7))  # same seed merges
    half = NoiseCache((8, 4, 32, 32), CPU, torch.bfloat16).blend([[1, 1.0], [2, 1.0]])
    assert half.dtype == torch.bfloat16
