"""Thin wrapper over the ndi-python binding (import name ``NDIlib``). No policy here.

It turns the binding's capsules and frame objects into small typed handles and plain numpy
arrays, maps "cannot import / cannot initialise" to ``RuntimeMissingError`` with the reason,
and makes sure every captured frame is freed back to NDI. Name matching, reconnecting and
timeouts live in ``bridge.io.ndi``.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from bridge.errors import RuntimeMissingError

log = logging.getLogger(__name__)

_lock = threading.Lock()
_lib: ModuleType | None = None
_load_error: str | None = None

INSTALL_HINT = "pip install 'sdbridge[ndi]' (ndi-python ships the NDI runtime for Linux, Windows and macOS)"


def _import() -> ModuleType:
    """Import NDIlib and initialise the runtime once per process; remember the failure reason."""
    global _lib, _load_error
    with _lock:
        if _lib is not None:
            return _lib
        if _load_error is not None:
            raise RuntimeMissingError(_load_error, fix=INSTALL_HINT)
        try:
            lib = importlib.import_module("NDIlib")
        except ImportError as exc:  # package missing, or libndi.so / a dependency not loadable
            _load_error = f"cannot import NDIlib (ndi-python): {exc}"
            raise RuntimeMissingError(_load_error, fix=INSTALL_HINT) from exc
        if not lib.initialize():
            supported = lib.is_supported_CPU() if hasattr(lib, "is_supported_CPU") else "unknown"
            _load_error = f"NDIlib.initialize() failed (CPU supported by NDI: {supported})"
            raise RuntimeMissingError(_load_error, fix="NDI needs an x86-64 CPU with SSE4.2 or ARM64")
        _lib = lib
        log.debug("NDI runtime %s initialised", lib.version())
        return lib


def lib() -> ModuleType:
    """The initialised NDIlib module (raises RuntimeMissingError with the reason)."""
    return _import()


def runtime_version() -> str:
    return str(lib().version())


# ----------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class SourceInfo:
    name: str  # full NDI name, "MACHINE (sender name)"
    url: str  # "ip:port", may be empty


class Finder:
    """An NDI finder. ``extra_ips`` is a comma-separated list of hosts to ask directly (no mDNS)."""

    def __init__(self, extra_ips: str | None = None, show_local_sources: bool = True,
                 groups: str | None = None) -> None:
        ndi = lib()
        settings = ndi.FindCreate()
        settings.show_local_sources = show_local_sources
        if extra_ips:
            settings.extra_ips = extra_ips
        if groups:
            settings.groups = groups
        self._handle: Any = ndi.find_create_v2(settings)
        if self._handle is None:
            raise RuntimeMissingError("NDIlib.find_create_v2 returned no finder",
                                      fix="check that the NDI runtime can open network sockets")

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` for the source list to change; True when it changed."""
        return bool(lib().find_wait_for_sources(self._handle, max(0, int(timeout_s * 1000))))

    def sources(self) -> list[SourceInfo]:
        found = lib().find_get_current_sources(self._handle)
        return [SourceInfo(str(s.ndi_name), str(s.url_address or "")) for s in found]

    def close(self) -> None:
        if self._handle is not None:
            lib().find_destroy(self._handle)
            self._handle = None


# ----------------------------------------------------------------------------- receiving


@dataclass(frozen=True)
class VideoCapture:
    pixels: np.ndarray  # H×W×C copy, C-contiguous, owned by Python
    fourcc: str  # "BGRA", "BGRX", "RGBA", "RGBX", "UYVY"…
    frame_rate: tuple[int, int]
    timecode: int
    timestamp: int
    metadata: str


class Receiver:
    """An NDI receiver delivering BGRX/BGRA frames (RGBX/RGBA when ``rgb_order``)."""

    def __init__(self, receiver_name: str | None = None, rgb_order: bool = False,
                 highest_bandwidth: bool = True) -> None:
        ndi = lib()
        settings = ndi.RecvCreateV3()
        settings.color_format = (ndi.RECV_COLOR_FORMAT_RGBX_RGBA if rgb_order
                                 else ndi.RECV_COLOR_FORMAT_BGRX_BGRA)
        settings.bandwidth = ndi.RECV_BANDWIDTH_HIGHEST if highest_bandwidth else ndi.RECV_BANDWIDTH_LOWEST
        settings.allow_video_fields = False  # progressive frames only: no field interleaving to undo
        if receiver_name:
            settings.ndi_recv_name = receiver_name
        self._handle: Any = ndi.recv_create_v3(settings)
        if self._handle is None:
            raise RuntimeMissingError("NDIlib.recv_create_v3 returned no receiver",
                                      fix="check that the NDI runtime can open network sockets")

    def connect(self, source: SourceInfo) -> None:
        ndi = lib()
        ndi.recv_connect(self._handle, ndi.Source(source.name, source.url or None))

    def connections(self) -> int:
        return int(lib().recv_get_no_connections(self._handle))

    def capture_video(self, timeout_s: float) -> VideoCapture | str:
        """One capture call: a copied video frame, or the name of what came instead
        ("none", "status_change", "source_change", "error", "metadata", "audio")."""
        ndi = lib()
        kind, video, audio, meta = ndi.recv_capture_v2(
            self._handle, max(0, int(timeout_s * 1000)), True, False, False)
        if kind == ndi.FRAME_TYPE_VIDEO:
            try:
                return VideoCapture(
                    pixels=np.array(video.data, dtype=np.uint8, order="C", copy=True),
                    fourcc=_fourcc_name(video.FourCC),
                    frame_rate=(int(video.frame_rate_N), int(video.frame_rate_D)),
                    timecode=int(video.timecode), timestamp=int(video.timestamp),
                    metadata=str(video.metadata or ""),
                )
            finally:
                ndi.recv_free_video_v2(self._handle, video)
        if kind == ndi.FRAME_TYPE_AUDIO:
            ndi.recv_free_audio_v2(self._handle, audio)
            return "audio"
        if kind == ndi.FRAME_TYPE_METADATA:
            ndi.recv_free_metadata(self._handle, meta)
            return "metadata"
        return _frame_type_name(kind)

    def close(self) -> None:
        if self._handle is not None:
            lib().recv_destroy(self._handle)
            self._handle = None


# ----------------------------------------------------------------------------- sending


class Sender:
    """A named NDI sender. ``send_video`` keeps nothing alive: with ``use_async`` the caller must
    keep ``pixels`` untouched until the next ``send_video`` call (NDI reads it in the background)."""

    def __init__(self, name: str, groups: str | None = None, clock_video: bool = False) -> None:
        ndi = lib()
        settings = ndi.SendCreate()
        settings.ndi_name = name
        if groups:
            settings.groups = groups
        settings.clock_video = clock_video
        settings.clock_audio = False
        self._handle: Any = ndi.send_create(settings)
        if self._handle is None:
            raise RuntimeMissingError(f"NDIlib.send_create returned no sender for {name!r}",
                                      fix="check that the NDI runtime can open network sockets")
        self._frame = ndi.VideoFrameV2()
        self.has_async = hasattr(ndi, "send_send_video_async_v2")

    def send_video(self, pixels: np.ndarray, fourcc: str, frame_rate: tuple[int, int],
                   metadata: str = "", use_async: bool = True) -> None:
        ndi = lib()
        frame = self._frame
        frame.data = pixels  # sets xres/yres/line stride from the array
        frame.FourCC = getattr(ndi, f"FOURCC_VIDEO_TYPE_{fourcc}")
        frame.frame_rate_N, frame.frame_rate_D = frame_rate
        frame.picture_aspect_ratio = 0.0  # 0 = square pixels (width / height)
        frame.frame_format_type = ndi.FRAME_FORMAT_TYPE_PROGRESSIVE
        frame.timecode = ndi.SEND_TIMECODE_SYNTHESIZE
        frame.metadata = metadata
        if use_async and self.has_async:
            ndi.send_send_video_async_v2(self._handle, frame)
        else:
            ndi.send_send_video_v2(self._handle, frame)

    def connections(self, timeout_s: float = 0.0) -> int:
        return int(lib().send_get_no_connections(self._handle, max(0, int(timeout_s * 1000))))

    def source_name(self) -> str:
        return str(lib().send_get_source_name(self._handle).ndi_name)

    def close(self) -> None:
        if self._handle is not None:
            # send_destroy waits for an outstanding async frame before returning.
            lib().send_destroy(self._handle)
            self._handle = None


def _fourcc_name(fourcc: Any) -> str:
    return str(getattr(fourcc, "name", fourcc)).replace("FOURCC_VIDEO_TYPE_", "")


def _frame_type_name(kind: Any) -> str:
    return str(getattr(kind, "name", kind)).replace("FRAME_TYPE_", "").lower()
