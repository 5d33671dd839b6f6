"""`sdbridge demo` and `sdbridge bench pipeline` through the real CLI entry, at 64x64."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from bridge.cli import main
from bridge.commands.demo import t_index_for_steps
from bridge.errors import ConfigError


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory: pytest.TempPathFactory):
    """Private $SDBRIDGE_HOME; torch's thread count restored (the commands take --threads 1)."""
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDBRIDGE_HOME", str(tmp_path_factory.mktemp("sdbridge-home")))
        yield
    torch.set_num_threads(threads)


def test_demo_writes_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["demo", "--frames", "3", "--width", "64", "--height", "72", "--out", str(out),
                 "--threads", "1", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["ok"] and summary["files"] == 3 and summary["fps"] > 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    images = [Image.open(f) for f in files]
    assert all(im.size == (64, 72) and im.mode == "RGB" for im in images)
    # The pattern moves, so consecutive outputs differ.
    assert images[1].tobytes() != images[2].tobytes()


def test_demo_human_output_and_bad_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--frames", "1", "--width", "64", "--height", "64", "--steps", "1",
                 "--threads", "1", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "fps" in text and "wrote 1 PNGs" in text
    assert main(["demo", "--frames", "1", "--width", "70", "--height", "64", "--out",
                 str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "width" in err and "70" in err and not (tmp_path / "bad").exists()


def test_t_index_for_steps() -> None:
    assert t_index_for_steps(1) == [45] and t_index_for_steps(2) == [32, 45]
    assert t_index_for_steps(4) == [0, 16, 32, 45]
    for n in (5, 8, 50):
        steps = t_index_for_steps(n)
        assert len(steps) == n and steps == sorted(set(steps)) and 0 <= steps[0] and steps[-1] <= 49
    with pytest.raises(ConfigError):
        t_index_for_steps(0)


def test_bench_pipeline_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "pipeline", "--width", "64", "--height", "64", "--steps", "2",
                 "--frames", "1", "--threads", "1", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (result["model"], result["width"], result["height"], result["steps"]) == ("tiny", 64, 64, 2)
    for key in ("fps_stream_batch", "fps_sequential", "stream_batch_speedup", "unet_ms_per_frame",
                "fps_diffusers_img2img", "speedup_vs_diffusers"):
        assert result[key] > 0, key
    assert 0.0 <= result["overhead_fraction"] < 1.0
    assert result["stream_batch_speedup"] == pytest.approx(
        result["fps_stream_batch"] / result["fps_sequential"], rel=0.02)
    # UNet rows per frame as the guidance types define them (n = 2, F = 1).
    assert result["rows_per_frame"] == {"none": 2, "full": 4, "self": 2, "initialize": 3}
    assert set(result["fps_by_cfg"]) == {"none", "full", "self", "initialize"}
    assert all(v > 0 for v in result["fps_by_cfg"].values())
    assert result["diffusers_unet_calls_per_frame"] == 2  # same steps as ours


def test_bench_pipeline_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "pipeline", "--frames", "0", "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "invalid_config" and "frames" in error["message"]
    assert main(["bench", "pipeline", "--acceleration", "onnxruntime", "--cfg-type", "initialize",
                 "--json"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert "cfg_type='initialize'" in error["message"]


def test_demo_sdxl_family_with_tiny_vae(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The SDXL conditioning path and the tiny autoencoder, end to end through the CLI."""
    code = main(["demo", "--model", "tiny-sdxl", "--tiny-vae", "tiny", "--cfg-type", "full",
                 "--frames", "2", "--width", "64", "--height", "64", "--threads", "1",
                 "--out", str(tmp_path), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["model"] == "tiny-sdxl" and summary["files"] == 2
    assert all(Image.open(f).size == (64, 64) for f in tmp_path.glob("*.png"))
