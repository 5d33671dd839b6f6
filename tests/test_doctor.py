"""`sdbridge doctor`: pure checks on synthetic facts, and one real run on this machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.commands import doctor as d
from bridge.commands.doctor import FAIL, GIB, INFO, OK, WARN, EngineFacts, Gpu, ModelFacts, \
    PackageFacts, TorchFacts

GPU = Gpu("NVIDIA GeForce RTX 4090", 24 * GIB, driver="560.35.03")
SMALL_GPU = Gpu("NVIDIA GeForce GTX 1650", 4 * GIB, driver="560.35.03")
CUDA_OK = TorchFacts("2.13.0+cu128", "12.8", True, (Gpu(GPU.name, GPU.memory_bytes, capability="8.9"),))
CPU_TORCH = TorchFacts("2.13.0+cpu", None, False)
CUDA_BROKEN = TorchFacts("2.13.0+cu128", "12.8", False, error="CUDA driver initialization failed")


def test_python_version() -> None:
    assert d.check_python((3, 11, 7), "/x/python").status == OK
    old = d.check_python((3, 9, 18), "/x/python")
    assert old.status == FAIL and "3.9.18" in old.detail and "3.10" in old.fix


def test_torch_missing_points_at_the_installer_for_this_os() -> None:
    missing = TorchFacts(error="ModuleNotFoundError: No module named 'torch'")
    linux = d.check_torch(missing, (), "Linux")
    assert linux.status == FAIL and "No module named 'torch'" in linux.detail
    assert linux.fix == "run install/install.sh (it installs the right torch build)"
    assert "install\\install.ps1" in d.check_torch(missing, (), "Windows").fix


def test_cpu_torch_on_a_gpu_machine_is_a_failure_with_the_cuda_flag() -> None:
    linux = d.check_torch(CPU_TORCH, (GPU,), "Linux")
    assert linux.status == FAIL and GPU.name in linux.detail
    assert linux.fix.startswith("run install/install.sh --cuda")
    assert "install\\install.ps1 -Cuda" in d.check_torch(CPU_TORCH, (GPU,), "Windows").fix
    assert d.check_torch(CPU_TORCH, (), "Linux").status == WARN  # no GPU: CPU is all there is
    assert d.check_torch(CUDA_OK, (GPU,), "Linux").status == OK


def test_cuda_verdicts() -> None:
    assert d.check_cuda(CUDA_OK, (GPU,), "", "Linux").status == OK
    assert d.check_cuda(CPU_TORCH, (), "nvidia-smi not found", "Linux").status == INFO
    assert d.check_cuda(CPU_TORCH, (GPU,), "", "Linux").status == WARN
    no_driver = d.check_cuda(CUDA_BROKEN, (), "nvidia-smi not found", "Linux")
    assert no_driver.status == FAIL and ">= 525.60.13" in no_driver.fix and "--cpu" in no_driver.fix
    old = d.check_cuda(CUDA_BROKEN, (Gpu("GPU", 8 * GIB, driver="470.82.01"),), "", "Windows")
    assert old.status == FAIL and "470.82.01" in old.detail and ">= 527.41" in old.fix
    other = d.check_cuda(CUDA_BROKEN, (GPU,), "", "Linux")
    assert other.status == FAIL and "CUDA driver initialization failed" in other.detail


def test_min_driver_table() -> None:
    assert d.min_driver("12.8", "Linux") == "525.60.13"
    assert d.min_driver("13.0", "Windows") == "580.88"
    assert d.min_driver("99.1", "Linux") == "" and d.min_driver("weird", "Linux") == ""


def test_gpu_memory() -> None:
    ok = d.check_gpu(CUDA_OK, (GPU,))
    assert ok.status == OK and "24.0 GiB" in ok.detail and "sm 8.9" in ok.detail
    small = d.check_gpu(TorchFacts("2", "12.8", False), (SMALL_GPU,))  # falls back to nvidia-smi
    assert small.status == WARN and "4.0 GiB" in small.detail and "float16" in small.fix
    assert d.check_gpu(CPU_TORCH, ()).status == INFO


def test_tensorrt_and_onnxruntime() -> None:
    assert d.check_tensorrt(PackageFacts("10.9.0"), CUDA_OK, "Linux").status == OK
    missing = d.check_tensorrt(PackageFacts(error="No module named 'tensorrt'"), CUDA_OK, "Linux")
    assert missing.status == WARN and missing.fix == "run install/install.sh --extras tensorrt"
    win = d.check_tensorrt(PackageFacts(error="x"), CUDA_OK, "Windows")
    assert win.fix == "run install\\install.ps1 -Extras tensorrt"
    assert d.check_tensorrt(PackageFacts(error="x"), CPU_TORCH, "Linux").status == INFO
    assert d.check_tensorrt(PackageFacts("10.9.0"), CPU_TORCH, "Linux").status == WARN
    cpu_only = d.check_onnxruntime(PackageFacts("1.20", extra=("CPUExecutionProvider",)), CUDA_OK, "Linux")
    assert cpu_only.status == WARN and "onnxruntime-gpu" in cpu_only.fix
    gpu = d.check_onnxruntime(PackageFacts("1.20", extra=("CUDAExecutionProvider",
                                                           "CPUExecutionProvider")), CUDA_OK, "Linux")
    assert gpu.status == OK and "CUDAExecutionProvider" in gpu.detail
    assert d.check_onnxruntime(PackageFacts(error="x"), CPU_TORCH, "Linux").status == INFO


def test_transports() -> None:
    assert d.check_transport("ndi", True, "", "Linux").status == OK
    ndi = d.check_transport("ndi", False, "libndi.so.6 not found", "Linux")
    assert ndi.status == WARN and "libndi.so.6" in ndi.detail and "--extras ndi" in ndi.fix
    assert d.check_transport("spout", False, "Windows only", "Linux").status == INFO
    assert d.check_transport("spout", False, "Spout is Windows-only", "Linux").detail == "Spout is Windows-only"
    assert d.check_transport("spout", False, "no SpoutGL", "Darwin").detail == "Windows only (no SpoutGL)"
    spout = d.check_transport("spout", False, "SpoutGL not installed", "Windows")
    assert spout.status == WARN and "-Extras spout" in spout.fix


def test_models_and_engines() -> None:
    have = ModelFacts("stabilityai/sd-turbo", ("a.yaml",), path="/hf/sd-turbo")
    lack = ModelFacts("madebyollin/taesd", ("a.yaml", "b.yaml"), error="not cached",
                      fix="`sdbridge models pull madebyollin/taesd`")
    assert d.check_models([have]).status == OK
    check = d.check_models([have, lack])
    assert check.status == WARN and "1/2" in check.detail
    assert "madebyollin/taesd (for a.yaml, b.yaml): `sdbridge models pull madebyollin/taesd`" in check.fix
    assert d.check_engines(EngineFacts(0, 0, "/c")).status == INFO
    assert d.check_engines(EngineFacts(2, 3 * GIB, "/c")).status == OK
    stale = d.check_engines(EngineFacts(2, GIB, "/c", stale=("abc",)))
    assert stale.status == WARN and "sdbridge engines clean" in stale.fix


def test_parse_nvidia_smi() -> None:
    text = "NVIDIA GeForce RTX 4090, 560.35.03, 24564\nNVIDIA RTX A2000, 12GB, 560.35.03, 12282\n\n"
    gpus = d.parse_nvidia_smi(text)
    assert gpus == (Gpu("NVIDIA GeForce RTX 4090", 24564 << 20, driver="560.35.03"),
                    Gpu("NVIDIA RTX A2000, 12GB", 12282 << 20, driver="560.35.03"))
    assert d.parse_nvidia_smi("No devices were found") == ()


def test_report_lists_fixes_and_counts() -> None:
    checks = [d.Check("torch", FAIL, "no torch", "run install/install.sh"),
              d.Check("models", WARN, "missing", "pull a\npull b"), d.Check("python", OK, "3.11")]
    text = d.format_report(checks)
    assert "[fail] torch" in text and "fix: run install/install.sh" in text
    assert "fix: pull a" in text and "\n" + " " * 20 + "pull b" in text
    assert text.endswith("1 problem(s), 1 warning(s)")


def test_models_of_the_shipped_and_extra_presets(tmp_path: Path) -> None:
    preset = tmp_path / "mine.yaml"
    preset.write_text("version: 1\nmodel: {id: someone/not-cached-model}\n"
                      "source: {kind: test_pattern}\nsink: {kind: 'null'}\n")
    models = d.gather_models([preset])
    assert [m.model_id for m in models] == ["someone/not-cached-model"]
    assert models[0].used_by == ("mine.yaml",) and not models[0].path
    assert "sdbridge models pull someone/not-cached-model" in models[0].fix
    assert d.gather_models([Path("presets/cpu-demo.yaml")]) == []  # tiny model: nothing to pull


def test_real_run_on_this_machine_json() -> None:
    out = subprocess.run([sys.executable, "-m", "bridge", "doctor", "--json"], capture_output=True,
                         text=True, timeout=120, check=False)
    report = json.loads(out.stdout)
    names = [c["name"] for c in report["checks"]]
    assert names == ["python", "torch", "cuda", "gpu", "tensorrt", "onnxruntime", "ndi", "spout",
                     "models", "engines"]
    assert out.returncode == (0 if report["ok"] else 1)
    by_name = {c["name"]: c for c in report["checks"]}
    import torch

    assert torch.__version__ in by_name["torch"]["detail"]
    assert all(c["status"] in (OK, INFO, WARN, FAIL) for c in report["checks"])
    for check in report["checks"]:
        if check["status"] in (WARN, FAIL):
            assert check["fix"], f"{check['name']} has a problem but no fix"


@pytest.mark.parametrize("argv", [["doctor", "--help"]])
def test_doctor_is_registered(argv: list[str]) -> None:
    from bridge.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 0
