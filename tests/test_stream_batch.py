"""StreamBatch end to end on the tiny random-weight model (CPU, float32, 64×64)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from bridge.errors import ConfigError, FrameFormatError, RebuildRequired
from bridge.params import default_params
from bridge.pipeline.backends.base import Backend
from bridge.pipeline.backends.torch_backend import torch_backend
from bridge.pipeline.guidance import unet_rows
from bridge.pipeline.schedule import alphas_cumprod_from_config
from bridge.pipeline.sequential import SequentialDenoiser
from bridge.pipeline.stream_batch import StreamBatch
from bridge.pipeline.tiny import build_tiny_components

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tiny_sd):
    return tiny_sd


def params(**changes: Any) -> dict[str, Any]:
    p = default_params()
    p.update(width=SIZE, height=SIZE, negative_prompt="ugly blurry")
    p.update(changes)
    return p


def images(count: int, frames: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(frames, 3, SIZE, SIZE, generator=g) for _ in range(count)]


class Counting:
    """Backend wrapper counting calls and UNet rows (optionally replacing the UNet)."""

    def __init__(self, inner: Backend, unet: Any = None) -> None:
        self.inner = inner
        self.unet_rows: list[int] = []
        self.encodes = 0
        self.decoded: list[torch.Tensor] = []
        self._unet = unet or inner.unet
        self.backend = Backend("counting", self.unet, self.encode, self.decode)

    def unet(self, sample, timestep, hidden, added=None):
        self.unet_rows.append(sample.shape[0])
        assert timestep.shape[0] == sample.shape[0] == hidden.shape[0]
        return self._unet(sample, timestep, hidden, added)

    def encode(self, x):
        self.encodes += 1
        return self.inner.encode(x)

    def decode(self, z):
        self.decoded.append(z.clone())
        return self.inner.decode(z)


def run_equality(components, n_list: list[int], frames: int, **extra: Any) -> None:
    """After warm-up, stream output k equals the sequential result of input k − (n − 1).

    Compared twice: decoded images and the latents handed to the decoder (the latter stay
    sensitive even where a random-weight decoder saturates)."""
    p = params(t_index_list=n_list, frame_buffer_size=frames, **extra)
    s_count = Counting(torch_backend(components))
    q_count = Counting(torch_backend(components))
    stream = StreamBatch(components, p, s_count.backend)
    seq = SequentialDenoiser(components, p, q_count.backend)
    n = len(n_list)
    inputs = images(n + 1, frames, seed=len(n_list) * 10 + frames)
    txt = p.get("mode") == "txt2img"
    outs = [stream.process(None if txt else x) for x in inputs]
    # n + 1 calls: outputs come from inputs 0 (warm-up and first) and 1.
    refs = [seq.process(None if txt else x) for x in inputs[:2]]
    ref_latents = [torch.cat(q_count.decoded[i * frames:(i + 1) * frames]) for i in range(2)]
    assert stream.ready and len(s_count.decoded) == len(outs)
    for k, out in enumerate(outs):
        src = max(0, k - (n - 1))  # before warm-up ends, the primed first input
        assert out.shape == (frames, 3, SIZE, SIZE) and torch.isfinite(out).all()
        torch.testing.assert_close(out, refs[src], atol=1e-4, rtol=0)
        torch.testing.assert_close(s_count.decoded[k], ref_latents[src], atol=1e-4, rtol=0)
    if not txt:
        # The comparison can fail: a different input gives a clearly different result.
        assert (ref_latents[1] - ref_latents[0]).abs().max() > 1e-2


@pytest.mark.parametrize("frames", [1, 2])
@pytest.mark.parametrize("n_list", [[30], [20, 40], [5, 18, 32, 45]])
def test_stream_equals_sequential(tiny, n_list: list[int], frames: int) -> None:
    run_equality(tiny, n_list, frames, cfg_type="none")


@pytest.mark.parametrize("cfg_type", ["self", "initialize", "full"])
def test_stream_equals_sequential_with_guidance(tiny, cfg_type: str) -> None:
    run_equality(tiny, [10, 30, 45], 2, cfg_type=cfg_type, guidance_scale=1.8, delta=0.7)


def test_txt2img_equals_sequential_and_is_stable(tiny) -> None:
    run_equality(tiny, [0, 25], 2, mode="txt2img", cfg_type="self")
    counting = Counting(torch_backend(tiny))
    sb = StreamBatch(tiny, params(mode="txt2img", t_index_list=[0, 25]), counting.backend)
    first, second = sb.process(None), sb.process(None)
    assert counting.encodes == 0 and torch.equal(first, second)  # fixed seed noise: stable
    sb.update({"seed": 5})
    sb.process(None)
    assert not torch.allclose(sb.process(None), first)
    # The similarity filter looks at input frames only: txt2img never skips.
    ssf = StreamBatch(tiny, params(mode="txt2img", t_index_list=[30], similarity_filter=True,
                                   similarity_threshold=0.5))
    static = images(1, 1)[0]
    for _ in range(3):
        ssf.process(static)
        assert not ssf.last_skipped


def test_turbo_single_step_equals_sequential() -> None:
    turbo = build_tiny_components(seed=0, step_kind="turbo")
    run_equality(turbo, [0], 1, cfg_type="none")


def test_frames_in_a_group_are_independent(tiny) -> None:
    """F = 2: a frame's output depends on its own input only, never on its neighbour's."""
    p = params(t_index_list=[15, 40], frame_buffer_size=2, cfg_type="self")
    a, b = StreamBatch(tiny, p), StreamBatch(tiny, p)
    other = images(4, 1, seed=8)
    for x, y in zip(images(4, 2, seed=3), other):
        out_a, out_b = a.process(x), b.process(torch.cat([x[:1], y]))
    torch.testing.assert_close(out_a[0], out_b[0], atol=1e-4, rtol=0)
    assert (out_a[1] - out_b[1]).abs().max() > 1e-3


def _oracle(components, latents: torch.Tensor, steps: int):
    """A UNet returning the exact noise in each row, given the clean latents per frame."""
    alphas = alphas_cumprod_from_config(components.scheduler.config)

    def unet(sample, timestep, hidden, added=None):
        abar = alphas[timestep.long()].float().view(-1, 1, 1, 1)
        z = latents.repeat(steps, 1, 1, 1)  # row i·F + f holds frame f
        return (sample - abar.sqrt() * z) / (1 - abar).sqrt()
    return unet


@pytest.mark.parametrize("step_kind,atol", [("turbo", 1e-5), ("lcm", 1e-4)])
def test_oracle_unet_returns_the_encoded_latent(step_kind: str, atol: float) -> None:
    components = replace(build_tiny_components(seed=0), step_kind=step_kind)
    inner = torch_backend(components)
    frames = 2
    x = images(1, frames, seed=9)[0]
    with torch.inference_mode():
        latents = inner.encode(x * 2 - 1)
    steps = [10, 30, 45]
    counting = Counting(inner, unet=_oracle(components, latents, len(steps)))
    sb = StreamBatch(components, params(t_index_list=steps, frame_buffer_size=frames,
                                        cfg_type="none"), counting.backend)
    for _ in range(3):
        sb.process(x)
        torch.testing.assert_close(counting.decoded[-1], latents, atol=atol, rtol=0)


@pytest.mark.parametrize("cfg_type", ["none", "self", "initialize", "full"])
def test_unet_rows_per_frame(tiny, cfg_type: str) -> None:
    n, frames = 3, 2
    counting = Counting(torch_backend(tiny))
    sb = StreamBatch(tiny, params(t_index_list=[10, 30, 45], frame_buffer_size=frames,
                                  cfg_type=cfg_type), counting.backend)
    expected = {"none": n * frames, "self": n * frames, "initialize": n * frames + frames,
                "full": 2 * n * frames}[cfg_type]
    assert sb.unet_batch == unet_rows(cfg_type, n, frames) == expected
    xs = images(4, frames)
    sb.process(xs[0])  # warm-up primes the buffer: n calls, one encode, one decode
    assert counting.unet_rows == [expected] * n and counting.encodes == 1
    for x in xs[1:]:
        before = len(counting.unet_rows)
        sb.process(x)
        assert counting.unet_rows[before:] == [expected]  # exactly one UNet call per group
    assert counting.encodes == 4 and len(counting.decoded) == 4
    assert sb.frames_processed == 4 * frames and sb.unet_calls == n + 3


def test_similarity_filter_skips_without_network_calls(tiny) -> None:
    counting = Counting(torch_backend(tiny))
    sb = StreamBatch(tiny, params(t_index_list=[20, 40], similarity_filter=True,
                                  similarity_threshold=0.9, similarity_max_skip=3),
                     counting.backend)
    static = images(1, 1, seed=4)[0]
    first = sb.process(static)
    calls = (len(counting.unet_rows), counting.encodes, len(counting.decoded))
    skipped = []
    for _ in range(8):
        out = sb.process(static)
        skipped.append(sb.last_skipped)
        if sb.last_skipped:
            assert out is first or out is sb._last_output
    # cos = 1 → always skip, but never more than 3 in a row.
    assert skipped == [True, True, True, False, True, True, True, False]
    assert (len(counting.unet_rows), counting.encodes, len(counting.decoded)) == tuple(
        c + 2 for c in calls)  # only the two processed frames touched UNet and VAE
    assert sb.frames_skipped == 6 and sb.frames_processed == 3
    # A changing input is never skipped.
    for x in images(6, 1, seed=5):
        sb.process(x)
        assert not sb.last_skipped


def test_live_change_passes_the_filter(tiny) -> None:
    sb = StreamBatch(tiny, params(t_index_list=[20, 40], similarity_filter=True,
                                  similarity_threshold=0.5, similarity_max_skip=100))
    static = images(1, 1, seed=4)[0]
    sb.process(static)
    sb.process(static)
    assert sb.last_skipped
    sb.update({"prompt": "a painting of a dog"})
    for _ in range(2):  # n = 2 calls until the new prompt reached every block
        sb.process(static)
        assert not sb.last_skipped
    sb.process(static)
    assert sb.last_skipped


def test_prompt_change_mid_stream(tiny) -> None:
    encoder_calls: list[int] = []
    hook = tiny.text_encoder.register_forward_hook(
        lambda mod, args, out: encoder_calls.append(args[0].shape[0]))
    try:
        p = params(t_index_list=[20, 40], cfg_type="full", prompt="a photo of a cat",
                   guidance_scale=2.0)
        sb = StreamBatch(tiny, p)
        assert encoder_calls == [2]  # prompt and negative prompt in one batch
        negative = sb.negative.hidden.clone()
        xs = images(1, 1, seed=6) * 6
        for x in xs[:2]:
            sb.process(x)
        sb.update({"prompt": "a painting of a dog"})
        assert encoder_calls == [2, 1]  # only the new prompt; negative came from the cache
        assert torch.equal(sb.negative.hidden, negative)  # negative survives the change
        rows = sb.rows
        assert torch.equal(sb._hidden[rows:], negative.expand(rows, -1, -1))
        assert torch.equal(sb._hidden[:rows], sb.cond.hidden.expand(rows, -1, -1))
        outs = [sb.process(x) for x in xs[2:4]]
        assert all(torch.isfinite(o).all() for o in outs)
        # n calls after the change the output is what the new prompt gives from scratch.
        fresh = SequentialDenoiser(tiny, {**p, "prompt": "a painting of a dog"})
        torch.testing.assert_close(outs[-1], fresh.process(xs[0]), atol=1e-4, rtol=0)
        old = SequentialDenoiser(tiny, p).process(xs[0])
        assert (outs[-1] - old).abs().max() > 1e-4
        calls_before = len(encoder_calls)
        sb.update({"prompt": "a photo of a cat"})  # back to a cached prompt: no encoding
        sb.update({"prompt": [["a photo of a cat", 1.0], ["a painting of a dog", 3.0]]})
        assert len(encoder_calls) == calls_before
        a = sb.prompts.get(["a photo of a cat"])["a photo of a cat"].hidden
        d = sb.prompts.get(["a painting of a dog"])["a painting of a dog"].hidden
        torch.testing.assert_close(sb.cond.hidden, 0.25 * a + 0.75 * d)
        sb.update({"negative_prompt": "dark"})
        assert encoder_calls[-1] == 1 and not torch.equal(sb.negative.hidden, negative)
        assert torch.isfinite(sb.process(xs[0])).all()
    finally:
        hook.remove()


@pytest.mark.parametrize("field,value", [
    ("t_index_list", [40, 20]), ("t_index_list", [10, 50]), ("width", 100), ("height", 60),
    ("cfg_type", "classic"), ("guidance_scale", -1.0)])
def test_bad_params_one_error_nothing_built(tiny, field: str, value: Any) -> None:
    calls: list[int] = []
    hook = tiny.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    unet_hook = tiny.unet.register_forward_hook(lambda *a: calls.append(2))
    try:
        with pytest.raises(ConfigError) as info:
            StreamBatch(tiny, params(**{field: value}))
        assert info.value.fields == [field]
        assert repr(value) in str(info.value)
        assert calls == []  # rejected before touching any network
    finally:
        hook.remove()
        unet_hook.remove()


def test_size_must_match_vae_scale_factor() -> None:
    # A VAE with a scale factor of 16 rejects 72 (a multiple of 8 but not of 16).
    components = build_tiny_components(seed=0)
    components.vae.config.block_out_channels = (8, 16, 32, 32, 32)  # factor 16 as reported
    with pytest.raises(ConfigError) as info:
        StreamBatch(components, params(width=72))
    assert info.value.fields == ["width"] and "72" in str(info.value) and "16" in str(info.value)


def test_live_update_rules(tiny) -> None:
    p = params(t_index_list=[20, 40], cfg_type="self")
    sb = StreamBatch(tiny, p)
    before = dict(sb.params)
    for change, field in [({"cfg_type": "full"}, "cfg_type"),
                          ({"frame_buffer_size": 2}, "frame_buffer_size"),
                          ({"width": 128}, "width"), ({"mode": "txt2img"}, "mode"),
                          ({"t_index_list": [10, 20, 30]}, "t_index_list"),
                          ({"prompt": "a dog", "cfg_type": "none"}, "cfg_type")]:
        with pytest.raises(RebuildRequired) as info:
            sb.update(change)
        assert info.value.fields == [field]
    with pytest.raises(ConfigError) as bad:
        sb.update({"guidance_scale": -2, "delta": 1.5})
    assert bad.value.fields == ["guidance_scale"]
    assert sb.params == before  # nothing applied from any rejected change
    assert sb.prompts.encoded_texts == 1
    x = images(1, 1)[0]
    reference = StreamBatch(tiny, p)
    torch.testing.assert_close(sb.process(x), reference.process(x))
    sb.update({"t_index_list": [15, 45], "guidance_scale": 1.5, "delta": 0.5, "seed": 9,
               "similarity_threshold": 0.95, "similarity_max_skip": 2})
    assert sb.coeffs.t_index_list == (15, 45) and sb.ssf.max_skip == 2
    fresh = SequentialDenoiser(tiny, {**p, "t_index_list": [15, 45], "guidance_scale": 1.5,
                                      "delta": 0.5, "seed": 9})
    for _ in range(2):
        out = sb.process(x)
    torch.testing.assert_close(out, fresh.process(x), atol=1e-4, rtol=0)


def test_weighted_seed_changes_noise(tiny) -> None:
    sb = StreamBatch(tiny, params(t_index_list=[30]))
    sb.update({"seed": [[1, 1.0], [2, 1.0]]})
    n1, n2 = sb.noise_cache.get(1), sb.noise_cache.get(2)
    torch.testing.assert_close(sb.noise, (n1 + n2) / 2 ** 0.5)


def test_bad_images(tiny) -> None:
    sb = StreamBatch(tiny, params(t_index_list=[30], frame_buffer_size=2))
    for bad in (None, torch.rand(1, 3, SIZE, SIZE), torch.zeros(2, 3, SIZE, SIZE,
                                                                dtype=torch.uint8)):
        with pytest.raises(FrameFormatError) as info:
            sb.process(bad)
        assert "(2, 3, 64, 64)" in str(info.value)
    assert not sb.ready and sb.unet_calls == 0


@pytest.mark.parametrize("dtype,vae_dtype", [(torch.bfloat16, torch.bfloat16),
                                             (torch.float16, torch.float16),
                                             (torch.bfloat16, torch.float32)])
def test_low_precision_runs(dtype: torch.dtype, vae_dtype: torch.dtype) -> None:
    components = build_tiny_components(seed=0)
    for module in (components.unet, components.text_encoder):
        module.to(dtype)
    components.vae.to(vae_dtype)
    p = params(t_index_list=[20, 40], cfg_type="initialize")
    sb = StreamBatch(components, p)
    x = images(1, 1)[0]
    out = sb.process(x)
    assert out.dtype == vae_dtype and out.shape == (1, 3, SIZE, SIZE)
    assert torch.isfinite(out.float()).all()
    assert sb.coeffs.p.dtype == dtype and sb.noise.dtype == dtype
    assert torch.isfinite(SequentialDenoiser(components, p).process(x).float()).all()


def test_sdxl_and_tiny_vae_equal_sequential() -> None:
    sdxl = build_tiny_components(family="sdxl", tiny_vae=True, seed=0)
    run_equality(sdxl, [20, 40], 2, cfg_type="full", guidance_scale=1.5)
