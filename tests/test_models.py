"""Model loading: tiny round trip, HF-cache ids, LoRA fusing, tiny VAE, and every error path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bridge.errors import ConfigError, ModelError, RuntimeMissingError, WeightsNotFoundError
from bridge.pipeline.models import ModelSpec, load_components
from bridge.pipeline.tiny import build_tiny_components, save_tiny, tiny_model_dir


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory: pytest.TempPathFactory):
    """A private $SDBRIDGE_HOME and an empty private Hugging Face cache."""
    import huggingface_hub.constants as hf_constants

    root = tmp_path_factory.mktemp("sdbridge-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDBRIDGE_HOME", str(root))
        mp.setattr(hf_constants, "HF_HUB_CACHE", str(root / "hf-hub"))
        yield root


@pytest.fixture(scope="module")
def tiny():
    return load_components(ModelSpec("tiny"), progress=False)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_tiny_saved_once_and_loaded_back(home: Path, tiny) -> None:
    folder = tiny_model_dir("tiny")
    assert folder.parent.parent == home and (folder / "model_index.json").exists()
    assert {p.name for p in folder.iterdir()} >= {"unet", "vae", "vae_tiny", "text_encoder",
                                                  "tokenizer", "scheduler"}
    built = build_tiny_components(seed=0)
    assert _same_weights(tiny.unet, built.unet) and _same_weights(tiny.vae, built.vae)
    assert _same_weights(tiny.text_encoder, built.text_encoder)
    assert len(tiny.tokenizer) == len(built.tokenizer) >= 100
    assert tiny.tokenizer.tokenize("a photo of a cat") == built.tokenizer.tokenize("a photo of a cat")
    assert (tiny.family, tiny.step_kind, tiny.model_id) == ("sd", "lcm", "tiny")
    assert not tiny.unet.training and not next(tiny.unet.parameters()).requires_grad
    stamp = (folder / "unet" / "config.json").stat().st_mtime_ns
    assert save_tiny("tiny") == folder  # current copy is reused, not rewritten
    assert (folder / "unet" / "config.json").stat().st_mtime_ns == stamp


def test_stale_tiny_copy_is_rebuilt(home: Path) -> None:
    folder = save_tiny("tiny-sdxl")
    index = json.loads((folder / "model_index.json").read_text())
    index["_sdbridge_tiny_version"] = -1
    (folder / "model_index.json").write_text(json.dumps(index))
    save_tiny("tiny-sdxl")
    assert json.loads((folder / "model_index.json").read_text())["_sdbridge_tiny_version"] >= 1
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_identity_is_stable_and_distinguishes(tiny) -> None:
    again = load_components(ModelSpec("tiny"), progress=False)
    assert again.identity == tiny.identity and len(tiny.identity["weights"]) == 16
    with_vae = load_components(ModelSpec("tiny", tiny_vae="tiny"), progress=False)
    assert with_vae.identity["tiny_vae_weights"] and with_vae.identity != tiny.identity
    assert type(with_vae.vae).__name__ == "AutoencoderTiny" and with_vae.vae_scale_factor == 8
    xl = load_components(ModelSpec("tiny-sdxl", family="sdxl", dtype="bfloat16"), progress=False)
    assert xl.family == "sdxl" and xl.text_encoder_2 is not None and len(xl.tokenizer_2) >= 100
    assert xl.dtype == torch.bfloat16 and xl.identity["weights"] != tiny.identity["weights"]


def test_step_kind_auto_from_id() -> None:
    assert ModelSpec("stabilityai/sd-turbo").resolved_step_kind() == "turbo"
    assert ModelSpec("stabilityai/SDXL-Turbo").resolved_step_kind() == "turbo"
    assert ModelSpec("runwayml/stable-diffusion-v1-5").resolved_step_kind() == "lcm"
    assert ModelSpec("tiny", step_kind="turbo").resolved_step_kind() == "turbo"


@pytest.fixture(scope="module")
def hub_copy(home: Path, tiny) -> str:
    """The tiny model laid out as a Hugging Face cache entry (refs/main -> snapshots/<commit>)."""
    repo = home / "hf-hub" / "models--sdbridge-test--tiny-copy"
    commit = "0" * 40
    shutil.copytree(tiny_model_dir("tiny"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return "sdbridge-test/tiny-copy"


def test_hub_id_resolved_from_local_cache_only(hub_copy: str, tiny) -> None:
    loaded = load_components(ModelSpec("sdbridge-test/tiny-copy", step_kind="auto"), progress=False)
    assert _same_weights(loaded.unet, tiny.unet) and loaded.model_id == "sdbridge-test/tiny-copy"


def test_missing_weights_name_the_pull_command(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="sdbridge models pull sdbridge-test/not-cached"):
        load_components(ModelSpec("sdbridge-test/not-cached"), progress=False)
    with pytest.raises(WeightsNotFoundError, match="sdbridge models pull") as info:
        load_components(ModelSpec(str(tmp_path / "no-such-model")), progress=False)
    assert "no-such-model" in str(info.value) and info.value.code == "weights_not_found"
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir("tiny"), broken)
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(WeightsNotFoundError, match="no text_encoder/ part") as missing:
        load_components(ModelSpec(str(broken)), progress=False)
    assert f"sdbridge models pull {broken}" in str(missing.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a diffusers pipeline folder"):
        load_components(ModelSpec(str(tmp_path / "empty")), progress=False)


def test_empty_tokenizer_is_refused(tmp_path: Path) -> None:
    """What offline transformers returns when the vocabulary files are missing."""
    broken = tmp_path / "notok"
    shutil.copytree(tiny_model_dir("tiny"), broken)
    (broken / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"tokenizer has only \d+ tokens"):
        load_components(ModelSpec(str(broken)), progress=False)


def test_device_and_dtype_errors() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the missing-CUDA error cannot happen here")
    with pytest.raises(RuntimeMissingError, match="install.sh --cuda") as info:
        load_components(ModelSpec("tiny", device="cuda"), progress=False)
    assert "device='cuda'" in str(info.value) and info.value.code == "runtime_missing"
    with pytest.raises(ConfigError) as bad:
        load_components(ModelSpec("tiny", dtype="float16"), progress=False)
    assert bad.value.fields == ["dtype"]
    with pytest.raises(ConfigError) as many:
        load_components(ModelSpec("tiny", dtype="fp8", device="tpu", lcm_lora_scale=9.0), progress=False)
    assert many.value.fields == ["dtype", "device", "lcm_lora_scale"]
    with pytest.raises(ConfigError, match="is sd"):
        load_components(ModelSpec("tiny", family="sdxl"), progress=False)


def test_lcm_lora_is_fused(tmp_path: Path, tiny) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    donor = build_tiny_components(seed=0).unet
    donor.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(donor))
    StableDiffusionPipeline.save_lora_weights(str(tmp_path / "lora"), unet_lora_layers=layers)
    fused = load_components(ModelSpec("tiny", lcm_lora=str(tmp_path / "lora")), progress=False)
    names = [n for n, _ in fused.unet.named_parameters()]
    assert names == [n for n, _ in tiny.unet.named_parameters()]  # adapter gone, only fused weights
    changed = [n for (n, a), (_, b) in zip(fused.unet.named_parameters(), tiny.unet.named_parameters())
               if not torch.equal(a, b)]
    assert changed and all(".attn" in n for n in changed)
    ((lora_id, scale),) = fused.identity["loras"]
    assert lora_id.startswith(str(tmp_path / "lora") + "@") and scale == 1.0
    assert fused.identity["weights"] == tiny.identity["weights"]  # base weights; LoRA keyed apart
    from bridge.pipeline.backends.engine_cache import artefact_key

    keys = [artefact_key(c, "unet", artefact="onnx", batch=2, hw_range=(256, 512),
                         precision="fp32", runtime={}) for c in (tiny, fused)]
    assert keys[0] != keys[1] and keys[1]["loras"] == [[lora_id, 1.0]]
    half = load_components(ModelSpec("tiny", lcm_lora=str(tmp_path / "lora"), lcm_lora_scale=0.5),
                           progress=False)
    assert half.identity != fused.identity
    assert not _same_weights(half.unet, fused.unet)


def test_lora_for_wrong_model_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    from safetensors.torch import save_file

    save_file({"unet.nonsense.lora.down.weight": torch.zeros(2, 2)},
              str(tmp_path / "bad" / "pytorch_lora_weights.safetensors"))
    with pytest.raises(ModelError):
        load_components(ModelSpec("tiny", lcm_lora=str(tmp_path / "bad")), progress=False)


def test_single_file_that_is_not_safetensors(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a .safetensors checkpoint"):
        load_components(ModelSpec(str(ckpt)), progress=False)
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="not a readable safetensors"):
        load_components(ModelSpec(str(junk)), progress=False)


# --- the `sdbridge models` command ------------------------------------------------------------


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    from bridge.cli import main

    code = main(list(argv))
    return code, json.loads(capsys.readouterr().out)


def test_models_list_shows_cache_and_tiny(capsys, hub_copy: str, tiny) -> None:
    code, out = _cli_json(capsys, "models", "list", "--json")
    assert code == 0 and out["ok"]
    rows = {row["id"]: row for row in out["models"]}
    assert rows[hub_copy]["kind"] == "pipeline" and rows[hub_copy]["size_bytes"] > 100_000
    assert rows["tiny"]["kind"] == "built-in" and rows["tiny"]["size_bytes"] > 100_000
    assert "tiny-sdxl" in rows


def test_models_build_tiny(capsys, home: Path) -> None:
    code, out = _cli_json(capsys, "models", "build-tiny", "--json")
    assert code == 0 and [row["id"] for row in out["models"]] == ["tiny", "tiny-sdxl"]
    for row in out["models"]:
        assert (Path(row["path"]) / "model_index.json").exists()


def test_models_pull_offline_is_one_clear_error(capsys, monkeypatch) -> None:
    """No hub access here: the real download path must fail with a fix, not a traceback."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    code, out = _cli_json(capsys, "models", "pull", "sdbridge-test/not-there", "--json")
    assert code == 2 and out["ok"] is False
    assert out["error"]["code"] == "model_error" and "sdbridge-test/not-there" in out["error"]["message"]
    assert "fix:" in out["error"]["message"]


def test_models_pull_plan() -> None:
    from bridge.cli import build_parser
    from bridge.commands.models import plan_pull

    args = build_parser().parse_args(["models", "pull", "stabilityai/sd-turbo", "--lcm-lora", "--tiny-vae"])
    plan = plan_pull(args)
    assert [repo for repo, _ in plan] == ["stabilityai/sd-turbo", "latent-consistency/lcm-lora-sdv1-5",
                                          "madebyollin/taesd"]
    patterns = plan[0][1]["allow_patterns"]
    assert "unet/diffusion_pytorch_model.safetensors" in patterns and "model_index.json" in patterns
    assert not any(p.endswith((".bin", ".ckpt")) for p in patterns)
    xl = plan_pull(build_parser().parse_args(["models", "pull", "stabilityai/sdxl-turbo", "--variant",
                                              "fp16", "--tiny-vae"]))
    assert xl[1][0] == "madebyollin/taesdxl"
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in xl[0][1]["allow_patterns"]
    configs = plan_pull(build_parser().parse_args(["models", "pull", "owner/base", "--configs-only"]))
    assert configs[0][1]["allow_patterns"] and not any(
        p.endswith(".safetensors") for p in configs[0][1]["allow_patterns"])


def test_racing_tiny_builders_keep_one_complete_copy(tmp_path: Path, monkeypatch) -> None:
    """Another process finishing its copy while we build: ours is dropped, theirs stays."""
    import bridge.pipeline.tiny as tiny_module

    monkeypatch.setenv("SDBRIDGE_HOME", str(tmp_path))
    real_build = tiny_module.build_tiny_components
    calls: list[Path] = []
    nested, inodes = [], []

    def build_while_another_finishes(**kwargs):
        if not nested:  # the "other process": a complete save lands while we are still building
            nested.append(True)
            calls.append(tiny_module.save_tiny("tiny"))
            inodes.append(calls[0].stat().st_ino)
        return real_build(**kwargs)

    monkeypatch.setattr(tiny_module, "build_tiny_components", build_while_another_finishes)
    stamp_file = tmp_path / "models" / "tiny" / "unet" / "config.json"
    folder = tiny_module.save_tiny("tiny")
    assert calls == [folder] and stamp_file.exists()
    assert folder.stat().st_ino == inodes[0]  # the first complete copy was not replaced
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny"]  # no temp left
    loaded = load_components(ModelSpec("tiny"), progress=False)
    assert len(loaded.tokenizer) >= 100
