"""Engine cache: keys, atomic publication, corruption detection, path lengths, clean."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.pipeline.backends import engine_cache
from bridge.pipeline.backends.engine_cache import (
    MANIFEST,
    MAX_PATH_CHARS,
    EngineCache,
    artefact_key,
    atomic_write_bytes,
    cache_root,
    key_digest,
)
from bridge.pipeline.tiny import build_tiny_components

ONNX_RT = {"torch": "2.13.0", "onnx": "1.23.2", "ort": "1.31.1", "opset": 17}
TRT_RT = {"tensorrt": "10.13.0", "sm": "8.9", "cuda": "12.8", "onnx": "abc", "typing": "strong"}


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_components()


@pytest.fixture(scope="module")
def tiny_taesd():
    return build_tiny_components(tiny_vae=True)


def _key(c, module="unet", **over):
    args = dict(artefact="trt", batch=2, hw_range=(256, 1024), precision="fp16", runtime=TRT_RT, loras=None)
    args.update(over)
    return artefact_key(c, module, **args)


def test_key_changes_with_every_field(tiny, tiny_taesd) -> None:
    base = key_digest(_key(tiny))
    assert key_digest(_key(tiny)) == base  # stable
    other_model = build_tiny_components(seed=1)
    variants = {
        "model identity": _key(other_model),
        "lora id": _key(tiny, loras=[("lcm-lora-sdv1-5", 1.0)]),
        "batch": _key(tiny, batch=4),
        "hw range": _key(tiny, hw_range=(256, 768)),
        "precision": _key(tiny, precision="bf16"),
        "tensorrt version": _key(tiny, runtime={**TRT_RT, "tensorrt": "10.14.1"}),
        "compute capability": _key(tiny, runtime={**TRT_RT, "sm": "12.0"}),
        "onnx runtime version": _key(tiny, artefact="onnx", runtime={**ONNX_RT, "ort": "1.22.0"}),
        "artefact kind": _key(tiny, artefact="onnx", runtime=ONNX_RT),
        "module": _key(tiny, module="vae_decoder"),
    }
    digests = {name: key_digest(k) for name, k in variants.items()}
    assert base not in digests.values()
    assert len(set(digests.values())) == len(digests)
    # LoRA scale matters, not only the id; order of LoRAs does not.
    a = _key(tiny, loras=[("x", 1.0), ("y", 0.5)])
    assert key_digest(a) != key_digest(_key(tiny, loras=[("x", 0.8), ("y", 0.5)]))
    assert key_digest(a) == key_digest(_key(tiny, loras={"y": 0.5, "x": 1.0}))
    # Tiny VAE changes the VAE keys; LoRAs do not touch them.
    assert key_digest(_key(tiny, module="vae_decoder")) != key_digest(_key(tiny_taesd, module="vae_decoder"))
    assert _key(tiny_taesd, module="vae_decoder")["tiny_vae"] is True
    assert key_digest(_key(tiny, module="vae_decoder")) == \
        key_digest(_key(tiny, module="vae_decoder", loras=[("x", 1.0)]))


def test_key_uses_weights_hash_without_loader_identity(tiny) -> None:
    from dataclasses import replace

    anonymous = replace(tiny, identity={})
    key = _key(anonymous)
    assert len(key["model"]["identity"]["weights"]) == 32
    changed = replace(build_tiny_components(seed=3), identity={})
    assert key_digest(_key(changed)) != key_digest(key)


def _writer(payload: bytes, calls: list[int]):
    def build(tmp: Path) -> dict:
        calls.append(1)
        (tmp / "engine.plan").write_bytes(payload)
        (tmp / "model.onnx").write_bytes(b"graph")
        return {"note": "built"}
    return build


def test_build_once_then_reuse(tmp_path) -> None:
    cache, calls = EngineCache(tmp_path), []
    key = {"k": 1}
    first = cache.get_or_build(key, _writer(b"x" * 1000, calls))
    second = cache.get_or_build(key, _writer(b"y" * 1000, calls))
    assert calls == [1]
    assert second.path == first.path and second.file("engine.plan").read_bytes() == b"x" * 1000
    manifest = json.loads((first.path / MANIFEST).read_text())
    assert manifest["key"] == key and manifest["meta"] == {"note": "built"}
    assert set(manifest["files"]) == {"engine.plan", "model.onnx"}
    assert len(manifest["files"]["engine.plan"]["sha256"]) == 64


def test_failed_build_publishes_nothing(tmp_path) -> None:
    cache = EngineCache(tmp_path)

    def broken(tmp: Path) -> None:
        (tmp / "engine.plan").write_bytes(b"half")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError):
        cache.get_or_build({"k": 2}, broken)
    assert cache.lookup({"k": 2}) is None
    assert not cache.entry_dir({"k": 2}).exists()
    assert list((tmp_path / ".tmp").iterdir()) == []  # temp directory removed


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "delete_file", "foreign_manifest", "no_manifest"])
def test_damaged_entry_detected_and_rebuilt(tmp_path, damage, caplog) -> None:
    cache, calls = EngineCache(tmp_path), []
    key = {"k": 3}
    entry = cache.get_or_build(key, _writer(b"0123456789" * 100, calls))
    plan = entry.file("engine.plan")
    if damage == "truncate":
        plan.write_bytes(plan.read_bytes()[:500])
    elif damage == "flip_byte":  # same size, rewritten later (newer mtime)
        data = bytearray(plan.read_bytes())
        data[10] ^= 0xFF
        plan.write_bytes(bytes(data))
        os.utime(plan, ns=(time.time_ns(), plan.stat().st_mtime_ns + 10**9))
    elif damage == "delete_file":
        plan.unlink()
    elif damage == "foreign_manifest":
        manifest = json.loads((entry.path / MANIFEST).read_text())
        manifest["key"] = {"k": "other"}
        (entry.path / MANIFEST).write_text(json.dumps(manifest))
    else:
        (entry.path / MANIFEST).unlink()
    with caplog.at_level("WARNING"):
        rebuilt = cache.get_or_build(key, _writer(b"0123456789" * 100, calls))
    assert calls == [1, 1]
    assert "invalid" in caplog.text
    assert rebuilt.file("engine.plan").read_bytes() == b"0123456789" * 100
    assert cache.lookup(key) is not None


def test_silent_bit_rot_needs_full_verification(tmp_path) -> None:
    # Same size AND same mtime (bit rot, a copy tool preserving times): the default stamp check
    # trusts the last checksum; verify="full" re-hashes and catches it.
    cache = EngineCache(tmp_path)
    entry = cache.get_or_build({"k": 5}, _writer(b"abcdefghij" * 100, []))
    plan = entry.file("engine.plan")
    before = plan.stat()
    data = bytearray(plan.read_bytes())
    data[3] ^= 0x01
    plan.write_bytes(bytes(data))
    os.utime(plan, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cache.lookup({"k": 5}) is not None
    assert cache.lookup({"k": 5}, verify="full") is None
    assert not entry.path.exists()  # removed, will be rebuilt


def test_stamp_avoids_rehashing_unchanged_files(tmp_path, monkeypatch) -> None:
    cache = EngineCache(tmp_path)
    cache.get_or_build({"k": 6}, _writer(b"x" * 100, []))
    hashed = []
    monkeypatch.setattr(engine_cache, "file_sha256", lambda path: hashed.append(path) or "")
    assert cache.lookup({"k": 6}) is not None
    assert hashed == []
    with pytest.raises(ConfigError):
        cache.lookup({"k": 6}, verify="sometimes")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch) -> None:
    target = tmp_path / "timing.cache"
    atomic_write_bytes(target, b"old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(engine_cache.os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["timing.cache"]


def test_concurrent_publisher_loses_gracefully(tmp_path) -> None:
    # Another process published the same key while we were building: keep theirs.
    cache, calls = EngineCache(tmp_path), []
    key = {"k": 4}

    def racing(tmp: Path) -> None:
        EngineCache(tmp_path).get_or_build(key, _writer(b"theirs", []))
        _writer(b"ours", calls)(tmp)

    entry = cache.get_or_build(key, racing)
    assert entry.file("engine.plan").read_bytes() == b"theirs"
    assert cache.lookup(key) is not None


def test_paths_stay_short(tmp_path, monkeypatch) -> None:
    # A typical Windows profile path: every cache file path stays far below the limit.
    windows_like = "C:/Users/someone.with.a.long.name/AppData/Local/sdbridge"
    root = Path(windows_like) / "engines"
    longest = root / ("f" * 16) / "model.onnx.data"
    assert len(str(longest)) < MAX_PATH_CHARS
    cache = EngineCache(tmp_path)
    entry = cache.get_or_build({"a": "b" * 500}, _writer(b"z", []))  # long keys do not lengthen paths
    assert len(str(entry.file("engine.plan"))) - len(str(tmp_path)) <= len("/0123456789abcdef/model.onnx.data")
    with pytest.raises(ConfigError) as info:
        EngineCache(Path("/x" * 100)).check_path_length("model.onnx.data")
    assert info.value.fields == ["SDBRIDGE_HOME"]


def test_cache_root_from_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SDBRIDGE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "engines"
    monkeypatch.delenv("SDBRIDGE_HOME")
    assert cache_root() == Path(os.path.expanduser("~")) / ".cache" / "sdbridge" / "engines"


def test_clean_older_than_and_all(tmp_path) -> None:
    cache = EngineCache(tmp_path)
    old = cache.get_or_build({"k": "old"}, _writer(b"1", []))
    new = cache.get_or_build({"k": "new"}, _writer(b"2", []))
    manifest = json.loads((old.path / MANIFEST).read_text())
    manifest["created"] = time.time() - 10 * 86400
    (old.path / MANIFEST).write_text(json.dumps(manifest))
    removed = cache.clean(older_than_s=86400)
    assert [e.digest for e in removed] == [old.digest]
    assert [e.digest for e in cache.entries()] == [new.digest]
    assert [e.digest for e in cache.clean()] == [new.digest]
    assert cache.entries() == []
