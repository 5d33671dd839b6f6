"""The built-in tiny model: builds in memory, deterministic, real tokenizer, right shapes."""

from __future__ import annotations

import pytest
import torch

from bridge.errors import ConfigError, ModelError
from bridge.pipeline.tiny import MIN_TOKENIZER_SIZE, WORDS, build_tiny_components, check_tokenizer


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_components(seed=0)


@pytest.fixture(scope="module")
def tiny_sdxl():
    return build_tiny_components(family="sdxl", tiny_vae=True, seed=0)


def _ids(tokenizer, text: str) -> torch.Tensor:
    return tokenizer([text], padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt").input_ids


def test_tokenizer_is_real(tiny) -> None:
    tok = tiny.tokenizer
    assert len(tok) >= MIN_TOKENIZER_SIZE
    pieces = tok.tokenize("A photo of a cat and a dog")
    assert pieces == ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "and</w>", "a</w>", "dog</w>"]
    # Every listed word is one known token, never the unknown token.
    for word in WORDS:
        (piece,) = tok.tokenize(word)
        assert tok.convert_tokens_to_ids(piece) != tok.unk_token_id or piece == tok.unk_token
    # Words outside the list still tokenize through the byte alphabet, without unknowns.
    ids = tok("zebra xylophone").input_ids
    assert tok.unk_token_id not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True) == "zebra xylophone"
    assert tiny.text_encoder.config.vocab_size == len(tok)


def test_short_tokenizer_is_refused() -> None:
    class Short:
        def __len__(self) -> int:
            return 3

    with pytest.raises(ModelError, match="only 3 tokens"):
        check_tokenizer(Short())


def test_deterministic_from_seed(tiny) -> None:
    again = build_tiny_components(seed=0)
    other = build_tiny_components(seed=1)
    for a, b in zip(tiny.unet.parameters(), again.unet.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(tiny.unet.parameters(), other.unet.parameters()))
    state = torch.random.get_rng_state()
    build_tiny_components(seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_unet_and_vae_shapes(tiny) -> None:
    assert tiny.vae_scale_factor == 8 and tiny.latent_channels == 4
    hidden = tiny.text_encoder(_ids(tiny.tokenizer, "a photo of a cat")).last_hidden_state
    assert hidden.shape == (1, 77, 32)
    with torch.no_grad():
        eps = tiny.unet(torch.randn(2, 4, 8, 8), torch.tensor([999, 499]),
                        encoder_hidden_states=hidden.repeat(2, 1, 1)).sample
        assert eps.shape == (2, 4, 8, 8) and torch.isfinite(eps).all()
        image = torch.rand(1, 3, 64, 64) * 2 - 1
        latents = tiny.vae.encode(image).latent_dist.mode()
        assert latents.shape == (1, 4, 8, 8)
        assert tiny.vae.decode(latents).sample.shape == (1, 3, 64, 64)
    assert tiny.scheduler.config.num_train_timesteps == 1000


def test_sdxl_family_conditioning(tiny_sdxl) -> None:
    c = tiny_sdxl
    assert c.family == "sdxl" and c.text_encoder_2 is not None and len(c.tokenizer_2) >= 100
    ids = _ids(c.tokenizer, "a photo of a dog")
    with torch.no_grad():
        h1 = c.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        out2 = c.text_encoder_2(ids, output_hidden_states=True)
        context = torch.cat([h1, out2.hidden_states[-2]], dim=-1)
        assert context.shape[-1] == c.unet.config.cross_attention_dim
        time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
        eps = c.unet(torch.randn(1, 4, 8, 8), torch.tensor([999]), encoder_hidden_states=context,
                     added_cond_kwargs={"text_embeds": out2.text_embeds, "time_ids": time_ids}).sample
        assert eps.shape == (1, 4, 8, 8)
        # Tiny autoencoder (TAESD layout): 64x64 <-> 8x8 latents.
        latents = c.vae.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latents
        assert latents.shape == (1, 4, 8, 8)
        assert c.vae.decode(latents).sample.shape == (1, 3, 64, 64)


def test_bad_arguments_named() -> None:
    with pytest.raises(ConfigError) as info:
        build_tiny_components(family="flux", step_kind="euler")
    assert info.value.fields == ["family", "step_kind"]
