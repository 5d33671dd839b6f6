"""Thin wrapper over SpoutGL (Windows only). No policy here.

SpoutGL shares OpenGL textures between processes; ``receiveImage``/``sendImage`` copy through
CPU memory and need a current OpenGL context, which ``createOpenGL()`` makes (a hidden window
owned by the calling thread). So a Receiver/Sender must be created and used on one thread.

Import this module only on Windows: ``import SpoutGL`` happens at import time on purpose, so a
missing package surfaces in ``bridge.io.spout.availability()`` as the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SpoutGL  # noqa: F401 - Windows only; import errors become the availability reason

log = logging.getLogger(__name__)

# OpenGL pixel-format enums (GL_RGBA etc.); fixed by the OpenGL spec.
GL_RGBA = 0x1908
GL_RGB = 0x1907
GL_BGRA_EXT = 0x80E1
GL_BGR_EXT = 0x80E0


@dataclass(frozen=True)
class ReceiveStatus:
    received: bool  # a sender is connected and the call succeeded
    updated: bool  # the sender's size/format changed: reallocate before the next copy
    frame_new: bool  # the sender produced a frame since the last call
    width: int
    height: int


class Receiver:
    """A SpoutGL receiver bound to ``sender_name`` ("" = the active sender)."""

    def __init__(self, sender_name: str) -> None:
        self._rx = SpoutGL.SpoutReceiver()
        self._rx.createOpenGL()
        if sender_name:
            self._rx.setReceiverName(sender_name)

    def receive(self, buffer: np.ndarray | None, gl_format: int, flip: bool) -> ReceiveStatus:
        """One receive call. With ``buffer=None`` it only connects / refreshes the sender size."""
        try:
            ok = bool(self._rx.receiveImage(buffer, gl_format, flip, 0))
        except BufferError:  # sender grew since our last look: caller reallocates
            return ReceiveStatus(True, True, False, self._rx.getSenderWidth(), self._rx.getSenderHeight())
        return ReceiveStatus(ok, bool(self._rx.isUpdated()), bool(self._rx.isFrameNew()),
                             int(self._rx.getSenderWidth()), int(self._rx.getSenderHeight()))

    def wait_frame_sync(self, sender_name: str, timeout_ms: int) -> bool:
        return bool(self._rx.waitFrameSync(sender_name, timeout_ms))

    def close(self) -> None:
        self._rx.releaseReceiver()
        self._rx.closeOpenGL()


class Sender:
    """A SpoutGL sender called ``name``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tx = SpoutGL.SpoutSender()
        self._tx.createOpenGL()
        self._tx.setSenderName(name)

    def send(self, pixels: np.ndarray, gl_format: int, flip: bool) -> bool:
        height, width = pixels.shape[:2]
        ok = bool(self._tx.sendImage(pixels, width, height, gl_format, flip, 0))
        if ok:
            self._tx.setFrameSync(self._name)  # wakes receivers blocked in waitFrameSync
        return ok

    def close(self) -> None:
        self._tx.releaseSender()
        self._tx.closeOpenGL()


def sender_names() -> list[str]:
    """Names of the Spout senders running on this machine."""
    rx = SpoutGL.SpoutReceiver()
    try:
        return [str(name) for name in rx.getSenderList()]
    finally:
        rx.releaseReceiver()
