"""On-disk cache for exported ONNX graphs and TensorRT engines.

Layout (short, hash-named directories so Windows paths stay far below 200 characters)::

    $SDBRIDGE_HOME/engines/            (default ~/.cache/sdbridge/engines)
        3f2a9c0e1b7d4a55/              one entry = sha256(key)[:16]
            manifest.json              the full key, file sizes and sha256 checksums
            verified.json              (size, mtime) of each file when its checksum last matched
            model.onnx  model.onnx.data  engine.plan ...
        timing/<hash>.cache            TensorRT timing caches (shared between builds)
        .tmp/                          entries being built (never read)

An entry is built in ``.tmp/`` and published with one ``os.replace`` of the whole directory,
so a reader sees either nothing or a complete entry. A reader trusts an entry only when the
manifest's key equals the requested key and every file matches its recorded size and
checksum; otherwise the entry is removed and rebuilt (truncated copy, disk error, manual edit,
a different TensorRT version writing the same directory…). A file whose size and mtime are
unchanged since its last successful checksum is not hashed again (``verify="full"`` forces it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from bridge.errors import ConfigError, PipelineError, Problem

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VERIFIED = "verified.json"  # (size, mtime) of each file when its checksum last matched
VERIFY_MODES = ("stamp", "full", "size")
CACHE_FORMAT = 1  # bump when the layout or the meaning of a key field changes
MAX_PATH_CHARS = 200
_DIGEST_CHARS = 16
_CHUNK = 1 << 20


def cache_root() -> Path:
    """``$SDBRIDGE_HOME/engines``, default ``~/.cache/sdbridge/engines``."""
    home = os.environ.get("SDBRIDGE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "sdbridge")
    return Path(home) / "engines"


def canonical_json(value: Any) -> str:
    """Stable JSON used for hashing: sorted keys, no whitespace, tuples as lists."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def key_digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(dict(key)).encode()).hexdigest()[:_DIGEST_CHARS]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory + ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    key: dict[str, Any]
    files: dict[str, dict[str, Any]]
    created: float
    meta: dict[str, Any]

    @property
    def digest(self) -> str:
        return self.path.name

    @property
    def size_bytes(self) -> int:
        return sum(int(f["size"]) for f in self.files.values())

    def file(self, name: str) -> Path:
        if name not in self.files:
            raise PipelineError(f"cache entry {self.path} has no file {name!r}",
                                fix="run `sdbridge engines clean --all` and rebuild")
        return self.path / name


class EngineCache:
    """Content-addressed store; ``get_or_build`` is the only way entries are created."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root()

    # -- paths ---------------------------------------------------------------------------
    def entry_dir(self, key: Mapping[str, Any]) -> Path:
        return self.root / key_digest(key)

    def timing_cache_path(self, key: Mapping[str, Any]) -> Path:
        return self.root / "timing" / f"{key_digest(key)}.cache"

    def check_path_length(self, longest_file: str) -> None:
        sample = self.root / ("0" * _DIGEST_CHARS) / longest_file
        if len(str(sample)) >= MAX_PATH_CHARS:
            raise ConfigError(Problem(
                "SDBRIDGE_HOME", str(self.root.parent),
                f"cache paths would be {len(str(sample))} characters (Windows limit ~{MAX_PATH_CHARS})",
                "set SDBRIDGE_HOME to a shorter directory, e.g. C:\\sdbridge"))

    # -- reading -------------------------------------------------------------------------
    def lookup(self, key: Mapping[str, Any], *, verify: str = "stamp") -> CacheEntry | None:
        """The valid entry for ``key``, or None. Invalid entries are removed (and logged).

        ``verify``: ``full`` checksums every file; ``stamp`` (default) checksums a file only when
        its size or mtime differs from the last successful check (hashing a 1.7 GB engine plus
        its 3.4 GB ONNX on every start would cost seconds); ``size`` only compares sizes.
        """
        path = self.entry_dir(key)
        if not path.exists():
            return None
        problem = self._validate(path, dict(key), verify=verify)
        if problem is None:
            return self._read_entry(path)
        log.warning("engine cache entry %s is invalid (%s); removing it and rebuilding", path, problem)
        self._discard(path)
        return None

    def _validate(self, path: Path, key: dict[str, Any], *, verify: str) -> str | None:
        if verify not in VERIFY_MODES:
            raise ConfigError(Problem("verify", verify, "unknown mode", f"one of {', '.join(VERIFY_MODES)}"))
        try:
            manifest = json.loads((path / MANIFEST).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            return f"manifest unreadable: {exc}"
        if canonical_json(manifest.get("key")) != canonical_json(key):
            return "manifest key does not match the requested key"
        stamps = self._read_stamps(path) if verify == "stamp" else {}
        fresh = {}
        for name, info in manifest.get("files", {}).items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            stat = file.stat()
            if stat.st_size != int(info["size"]):
                return f"{name} is {stat.st_size} bytes, manifest says {info['size']} (truncated?)"
            stamp = [stat.st_size, stat.st_mtime_ns]
            if verify == "size" or stamps.get(name) == stamp:
                fresh[name] = stamp
                continue
            if file_sha256(file) != info["sha256"]:
                return f"{name} checksum mismatch (corrupted)"
            fresh[name] = stamp
        if verify != "size" and fresh != stamps:
            try:
                atomic_write_bytes(path / VERIFIED, json.dumps(fresh).encode())
            except OSError as exc:  # read-only cache: still valid, just checked again next time
                log.debug("could not record verification in %s: %s", path, exc)
        return None

    @staticmethod
    def _read_stamps(path: Path) -> dict[str, Any]:
        try:
            return dict(json.loads((path / VERIFIED).read_text("utf-8")))
        except (OSError, ValueError, TypeError):
            return {}

    def _read_entry(self, path: Path) -> CacheEntry:
        manifest = json.loads((path / MANIFEST).read_text("utf-8"))
        return CacheEntry(path=path, key=manifest["key"], files=manifest["files"],
                          created=float(manifest.get("created", 0.0)), meta=manifest.get("meta", {}))

    def entries(self) -> list[CacheEntry]:
        """Every entry with a readable manifest (not checksummed: listing must be quick)."""
        found = []
        if not self.root.is_dir():
            return found
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and len(path.name) == _DIGEST_CHARS and (path / MANIFEST).is_file():
                try:
                    found.append(self._read_entry(path))
                except (OSError, ValueError, KeyError) as exc:
                    log.warning("unreadable cache manifest in %s: %s", path, exc)
        return found

    # -- writing -------------------------------------------------------------------------
    def get_or_build(self, key: Mapping[str, Any], build: Callable[[Path], dict[str, Any] | None],
                     *, verify: str = "stamp") -> CacheEntry:
        """Return the valid entry for ``key``; otherwise call ``build(tmp_dir)`` to fill a temp
        directory (it may return extra metadata for the manifest) and publish it atomically."""
        key = dict(key)
        entry = self.lookup(key, verify=verify)
        if entry is not None:
            return entry
        tmp = self.root / ".tmp" / f"{key_digest(key)}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            meta = build(tmp) or {}
            self._write_manifest(tmp, key, meta)
            return self._publish(tmp, key, verify=verify)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _write_manifest(self, tmp: Path, key: dict[str, Any], meta: dict[str, Any]) -> None:
        files, stamps = {}, {}
        for file in sorted(tmp.iterdir()):
            if not file.is_file() or file.name in (MANIFEST, VERIFIED):
                continue
            stat = file.stat()
            files[file.name] = {"size": stat.st_size, "sha256": file_sha256(file)}
            stamps[file.name] = [stat.st_size, stat.st_mtime_ns]  # a rename keeps mtimes
        if not files:
            raise PipelineError(f"building cache entry {key_digest(key)} produced no files",
                                fix="see the log above for the export/build error")
        manifest = {"format": CACHE_FORMAT, "key": key, "files": files, "created": time.time(),
                    "meta": meta}
        atomic_write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True,
                                                      default=_json_default).encode())
        atomic_write_bytes(tmp / VERIFIED, json.dumps(stamps).encode())

    def _publish(self, tmp: Path, key: dict[str, Any], *, verify: str) -> CacheEntry:
        final = self.entry_dir(key)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process published the same key first (directory exists): use theirs if valid.
            entry = self.lookup(key, verify=verify)
            if entry is not None:
                return entry
            self._discard(final)
            os.replace(tmp, final)
        return self._read_entry(final)

    def _discard(self, path: Path) -> None:
        """Move aside first (one rename) so no reader sees a half-deleted entry, then delete."""
        trash = self.root / ".tmp" / f"trash-{path.name}-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def remove(self, entry: CacheEntry) -> None:
        self._discard(entry.path)

    def clean(self, *, older_than_s: float | None = None) -> list[CacheEntry]:
        """Remove all entries (or those created more than ``older_than_s`` ago) and stale temp
        directories; returns the removed entries."""
        now = time.time()
        removed = [e for e in self.entries() if older_than_s is None or now - e.created > older_than_s]
        for entry in removed:
            self.remove(entry)
        tmp_root = self.root / ".tmp"
        if older_than_s is None and tmp_root.is_dir():
            shutil.rmtree(tmp_root, ignore_errors=True)
        if older_than_s is None and (self.root / "timing").is_dir():
            shutil.rmtree(self.root / "timing", ignore_errors=True)
        return removed


# -- keys ----------------------------------------------------------------------------------
def _config_digest(module: Any) -> str:
    config = getattr(module, "config", None)
    # Private entries (``_use_default_values`` is a list in set order, ``_name_or_path`` a
    # local path) differ between identical models: leave them out.
    data = ({k: v for k, v in dict(config).items() if not k.startswith("_")}
            if config is not None else {"class": type(module).__name__})
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]


def weights_digest(module: Any) -> str:
    """sha256 over every parameter/buffer (name, dtype, shape, bytes). Only used when the model
    loader gave no identity: hashing a 3 GB UNet takes seconds."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def normalise_loras(loras: Any) -> list[list[Any]]:
    """[[id, scale], ...] sorted by id, from a list of pairs or a {id: scale} mapping."""
    if not loras:
        return []
    pairs = loras.items() if isinstance(loras, Mapping) else loras
    return sorted([str(lid), round(float(scale), 6)] for lid, scale in pairs)


def is_tiny_vae(components: Any) -> bool:
    return type(components.vae).__name__ == "AutoencoderTiny"


def module_identity(components: Any, module: str) -> dict[str, Any]:
    """What decides the weights of one exported module: the loader's identity (weights hash,
    LoRA ids…) when given, else a hash of the weights; plus the module's config."""
    target = components.unet if module == "unet" else components.vae
    identity = {k: v for k, v in dict(components.identity or {}).items() if k != "loras"}
    if not identity:
        identity = {"weights": weights_digest(target)}
    return {"model_id": components.model_id, "family": components.family,
            "identity": identity, "config": _config_digest(target), "class": type(target).__name__}


def artefact_key(components: Any, module: str, *, artefact: str, batch: int,
                 hw_range: tuple[int, int], precision: str, runtime: Mapping[str, Any],
                 loras: Any = None) -> dict[str, Any]:
    """The full cache key of one artefact (``onnx`` or ``trt``) of one module.

    LoRA ids and scales only enter UNet keys (the VAE does not change with them).
    """
    if loras is None:
        loras = (components.identity or {}).get("loras")
    return {
        "format": CACHE_FORMAT, "artefact": artefact, "module": module,
        "model": module_identity(components, module),
        "loras": normalise_loras(loras) if module == "unet" else [],
        "tiny_vae": is_tiny_vae(components), "batch": int(batch),
        "hw_range": [int(hw_range[0]), int(hw_range[1])], "precision": precision,
        **dict(runtime),  # flat: `sdbridge doctor` reads key["tensorrt"]
    }
