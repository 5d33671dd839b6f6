"""sdbridge shared-memory frame protocol, version 1 — one file, standard library + numpy only.

Copy this file into TouchDesigner, a test or any Python app (or ``from bridge.io import
shm_protocol``); the specification is docs/shared-memory.md. One named segment per stream:

    [header 256 B][slot 0][slot 1]...[slot N-1]     slot = [slot header 64 B][pixels]

Single writer, many readers, no locks. Each slot is a seqlock: the writer makes the slot's
sequence odd, copies the pixels, makes it even again, then publishes the frame index in the
header. A reader copies the newest slot and keeps the copy only if the slot's sequence was even
and unchanged around the copy, so it never returns a torn frame and never blocks the writer.

Memory ordering: a seqlock needs "odd seq -> data -> even seq" stores to become visible in that
order. x86-64 keeps stores ordered (TSO) and glibc's memcpy fences its non-temporal stores; ARM
does not, so every ordering point calls ``_Fence.__call__``: release then re-acquire a
process-private lock. CPython locks are built on atomic read-modify-write operations with
release/acquire semantics (futex/semaphore on POSIX, SRW locks on Windows) and a release followed by
an acquire orders every earlier access before every later one. 64-bit header fields are aligned
and written with single numpy scalar stores, which are single-copy atomic on 64-bit CPUs.

Python < 3.13: ``multiprocessing.shared_memory`` registers every segment it *opens* with the
resource tracker, which unlinks it when the opening process exits — even if another process
created it. This module never registers (``track=False`` on 3.13+, a scoped patch before) and
unlinks only the segment its own writer owns.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"SDBSHMEM"
VERSION = 1
HEADER_SIZE = 256
SLOT_HEADER_SIZE = 64
ALIGN = 64
MIN_SLOTS = 3
REPLACE_WAIT_S = 1.0  # Windows: how long a growing writer waits for readers to release the old name
STATE_INITIALISING, STATE_LIVE, STATE_RETIRED = 0, 1, 2
# name -> (wire code, bytes per pixel)
PIXEL_FORMATS: dict[str, tuple[int, int]] = {
    "BGRA": (1, 4), "RGBA": (2, 4), "BGRX": (3, 4), "RGBX": (4, 4), "RGB": (5, 3), "BGR": (6, 3),
    "UYVY": (7, 2),
}
_FORMAT_BY_CODE = {code: name for name, (code, _) in PIXEL_FORMATS.items()}

# Header field positions: byte offset // 4 for u32 fields, // 8 for u64 fields.
_VERSION, _HEADER_SIZE, _STATE, _FORMAT, _WIDTH, _HEIGHT, _STRIDE, _SLOTS = 2, 3, 4, 5, 6, 7, 8, 9
_SLOT_SIZE, _FRAME_BYTES, _GENERATION, _INSTANCE, _WRITER_SEQ, _WRITER_PID = 5, 6, 7, 8, 9, 10
# Slot header fields (u64 index).
_S_SEQ, _S_INDEX, _S_TIMESTAMP, _S_FRAME_SEQ = 0, 1, 2, 3

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,29}")


class ShmError(Exception):
    """Base error; ``fix`` says what to do."""

    def __init__(self, message: str, fix: str = "") -> None:
        self.message, self.fix = message, fix
        super().__init__(f"{message} (fix: {fix})" if fix else message)


class ShmProtocolError(ShmError):
    """The segment is not a compatible sdbridge stream (magic, version, layout)."""


class ShmTimeout(ShmError):
    """No new frame within the timeout."""


class ShmFormatError(ShmError, ValueError):
    """Bad argument: stream name, size, pixel format or pixel array."""


@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    pixel_format: str
    stride: int
    frame_bytes: int
    slot_count: int
    slot_size: int

    @property
    def bytes_per_pixel(self) -> int:
        return PIXEL_FORMATS[self.pixel_format][1]

    @property
    def total_size(self) -> int:
        return HEADER_SIZE + self.slot_count * self.slot_size

    @classmethod
    def build(cls, width: int, height: int, pixel_format: str, slots: int, capacity: int = 0) -> "Layout":
        fmt = check_pixel_format(pixel_format)
        for field, value in (("width", width), ("height", height)):
            if not isinstance(value, (int, np.integer)) or not 0 < value <= 16384:
                raise ShmFormatError(f"{field}={value!r} is out of range", fix="use 1..16384 pixels")
        width, height = int(width), int(height)
        if fmt == "UYVY" and width % 2:
            raise ShmFormatError(f"width={width}: UYVY needs an even width", fix="crop or pad to even width")
        if not isinstance(slots, int) or not MIN_SLOTS <= slots <= 64:
            raise ShmFormatError(f"slots={slots!r} is out of range", fix=f"use {MIN_SLOTS}..64 slots")
        stride = width * PIXEL_FORMATS[fmt][1]
        frame_bytes = stride * height
        data = -(-max(frame_bytes, capacity) // ALIGN) * ALIGN
        return cls(width, height, fmt, stride, frame_bytes, slots, SLOT_HEADER_SIZE + data)


@dataclass(frozen=True)
class FrameInfo:
    width: int
    height: int
    pixel_format: str
    seq: int  # the application's frame number, as given to ShmWriter.write
    timestamp_ns: int  # as given to write (sdbridge: time.monotonic_ns() when the write began)
    frame_index: int  # writer sequence: 1 for the first frame of this writer instance
    generation: int
    skipped: int  # newer-than-last-read frames this reader never saw


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ShmFormatError(
            f"stream name {name!r} is not portable",
            fix="use 1-30 characters from A-Z a-z 0-9 _ . - (macOS limits POSIX names to 30)")
    return name


def check_pixel_format(pixel_format: str) -> str:
    fmt = str(getattr(pixel_format, "value", pixel_format))
    if fmt not in PIXEL_FORMATS:
        raise ShmFormatError(f"pixel_format={pixel_format!r} is not supported",
                             fix=f"use one of: {', '.join(PIXEL_FORMATS)}")
    return fmt


class _Fence:
    """Full memory barrier from the standard library: release then re-acquire a private lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def __call__(self) -> None:
        self._lock.release()
        self._lock.acquire()


# --- segment handling (never registered with the resource tracker) ---------------------------

_TRACKER_PATCH = threading.Lock()


def _open_untracked(name: str, create: bool, size: int = 0) -> shared_memory.SharedMemory:
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, create=create, size=size, track=False)
    if os.name == "nt":  # no resource tracker on Windows
        return shared_memory.SharedMemory(name=name, create=create, size=size)
    from multiprocessing import resource_tracker

    with _TRACKER_PATCH:  # SharedMemory looks register() up on the module at call time
        original = resource_tracker.register
        resource_tracker.register = lambda *args, **kwargs: None
        try:
            return shared_memory.SharedMemory(name=name, create=create, size=size)
        finally:
            resource_tracker.register = original


def _unlink(shm: shared_memory.SharedMemory) -> None:
    """Remove the name (POSIX). Windows frees a mapping when its last handle closes."""
    if os.name == "nt":
        return
    if sys.version_info >= (3, 13):
        shm.unlink()
        return
    import _posixshmem  # what SharedMemory.unlink() calls, minus the tracker message

    _posixshmem.shm_unlink(shm._name)  # noqa: SLF001 - the POSIX name with its leading slash


class _Segment:
    """Numpy views over one mapped segment; ``layout`` is None until the header is parsed."""

    def __init__(self, shm: shared_memory.SharedMemory, name: str) -> None:
        self.shm, self.name = shm, name
        if shm.size < HEADER_SIZE:
            self.close()
            raise ShmProtocolError(
                f"segment {name!r} is {shm.size} bytes, smaller than the {HEADER_SIZE}-byte header",
                fix="it is not an sdbridge stream: choose another name or delete that segment")
        self.h32 = np.ndarray((HEADER_SIZE // 4,), "<u4", shm.buf, 0)
        self.h64 = np.ndarray((HEADER_SIZE // 8,), "<u8", shm.buf, 0)
        self.layout: Layout | None = None
        self.slot_hdr: np.ndarray | None = None
        self.slot_img: list[np.ndarray] = []

    def check_magic(self) -> None:
        magic = bytes(self.shm.buf[:8])
        if magic != MAGIC:
            self.close()
            raise ShmProtocolError(
                f"segment {self.name!r} is not an sdbridge stream (magic {magic!r}, expected {MAGIC!r})",
                fix="choose another stream name, or delete the foreign segment if it is stale")
        version = int(self.h32[_VERSION])
        if version != VERSION:
            self.close()
            raise ShmProtocolError(
                f"segment {self.name!r} uses protocol version {version}, this code speaks {VERSION}",
                fix="use the same sdbridge version on both sides (copy the matching shm_protocol.py)")

    def map_slots(self, layout: Layout, header_size: int = HEADER_SIZE) -> None:
        buf, bpp = self.shm.buf, layout.bytes_per_pixel
        self.slot_hdr = np.ndarray((layout.slot_count, SLOT_HEADER_SIZE // 8), "<u8", buf, header_size,
                                   strides=(layout.slot_size, 8))
        self.slot_img = []
        for k in range(layout.slot_count):
            start = header_size + k * layout.slot_size + SLOT_HEADER_SIZE
            rows = np.ndarray((layout.height, layout.stride), np.uint8, buf, start)
            self.slot_img.append(rows[:, : layout.width * bpp].reshape(layout.height, layout.width, bpp))
        self.layout = layout

    def close(self) -> None:
        # Views must go before the mmap can close (BufferError otherwise).
        self.h32 = self.h64 = self.slot_hdr = None  # type: ignore[assignment]
        self.slot_img = []
        try:
            self.shm.close()
        except BufferError:  # a caller still holds a view: the mapping goes when it is collected
            log.debug("shared memory %s still exported; left to the garbage collector", self.name)


# --- writer ---------------------------------------------------------------------------------


class ShmWriter:
    """Publishes frames to the stream ``name``; owns (creates, and on close unlinks) the segment.

    A segment already under ``name`` that is ours (magic + version) is taken over: in place with
    a new generation when it is large enough (readers keep their mapping), otherwise retired,
    unlinked and recreated. A foreign segment is never written to. One thread per writer.
    """

    def __init__(self, name: str, width: int, height: int, pixel_format: str = "BGRA",
                 slots: int = 3, capacity_bytes: int = 0) -> None:
        self.name = check_name(name)
        self._slots, self._capacity = slots, int(capacity_bytes)
        self._fence = _Fence()
        self._seg: _Segment | None = None
        self._generation = 0
        self._instance = 0
        self._written = 0
        self._slot_seq: list[int] = []
        self._setup(Layout.build(width, height, pixel_format, slots, self._capacity))
        atexit.register(self.close)

    @property
    def layout(self) -> Layout:
        return self._live().layout  # type: ignore[return-value]

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def frames_written(self) -> int:
        return self._written

    def write(self, pixels: np.ndarray, timestamp_ns: int | None = None, seq: int | None = None) -> int:
        """Copy one H×W×C uint8 frame into the next slot; returns its frame index.

        A different width/height than the stream's is a size change: a new generation.
        """
        ts = time.monotonic_ns() if timestamp_ns is None else int(timestamp_ns)
        if ts < 0 or (seq is not None and not 0 <= int(seq) < 2**64):
            raise ShmFormatError(f"timestamp_ns={ts} / seq={seq} must be unsigned 64-bit integers",
                                 fix="pass non-negative integers")
        seg = self._owned()
        layout = seg.layout
        assert layout is not None and seg.slot_hdr is not None
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3 \
                or pixels.shape[2] != layout.bytes_per_pixel:
            raise ShmFormatError(
                f"pixels must be uint8 H×W×{layout.bytes_per_pixel} for {layout.pixel_format}, got "
                f"{getattr(pixels, 'dtype', type(pixels).__name__)} {getattr(pixels, 'shape', None)}",
                fix="pass np.ascontiguousarray(img, dtype=np.uint8) in the stream's pixel format")
        if pixels.shape[:2] != (layout.height, layout.width):
            self.resize(int(pixels.shape[1]), int(pixels.shape[0]))
            return self.write(pixels, ts, seq)
        index = self._written + 1
        k = self._written % layout.slot_count
        odd = self._slot_seq[k] + 1
        hdr = seg.slot_hdr[k]
        hdr[_S_SEQ] = odd
        self._fence()
        np.copyto(seg.slot_img[k], pixels)
        hdr[_S_INDEX] = index
        hdr[_S_TIMESTAMP] = ts
        hdr[_S_FRAME_SEQ] = index if seq is None else int(seq)
        self._fence()
        hdr[_S_SEQ] = odd + 1
        self._fence()
        seg.h64[_WRITER_SEQ] = index
        self._slot_seq[k], self._written = odd + 1, index
        return index

    def resize(self, width: int, height: int, pixel_format: str | None = None) -> int:
        """Change size/format: a new header generation. Returns the new generation."""
        fmt = self._owned().layout.pixel_format if pixel_format is None else pixel_format  # type: ignore[union-attr]
        self._setup(Layout.build(width, height, fmt, self._slots, self._capacity))
        return self._generation

    def close(self) -> None:
        """Mark the stream retired and unlink it (only if it is still this writer's segment)."""
        atexit.unregister(self.close)
        seg, self._seg = self._seg, None
        if seg is None:
            return
        if int(seg.h64[_INSTANCE]) == self._instance:
            seg.h32[_STATE] = STATE_RETIRED
            self._fence()
            if self._name_points_to_us():
                _unlink(seg.shm)
        seg.close()

    def __enter__(self) -> "ShmWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> _Segment:
        if self._seg is None:
            raise ShmError(f"writer for {self.name!r} is closed", fix="create a new ShmWriter")
        return self._seg

    def _owned(self) -> _Segment:
        seg = self._live()
        if int(seg.h64[_INSTANCE]) != self._instance:
            raise ShmProtocolError(f"another writer took over stream {self.name!r}",
                                   fix="run exactly one writer per stream name")
        return seg

    def _setup(self, layout: Layout) -> None:
        seg, self._seg = self._seg, None
        if seg is None:
            seg = self._create_or_take_over(layout)
        elif seg.shm.size < layout.total_size:  # grow: retire + recreate under the same name
            self._retire(seg)
            seg = self._replace(layout)
        self._init_header(seg, layout)
        self._seg = seg

    def _create_or_take_over(self, layout: Layout) -> _Segment:
        try:
            return self._create(layout)
        except FileExistsError:
            pass  # the name exists: inspect it below
        try:
            seg = _Segment(_open_untracked(self.name, create=False), self.name)
        except FileNotFoundError:  # vanished meanwhile
            return self._create(layout)
        seg.check_magic()  # foreign or other version: raises, nothing written
        self._generation = int(seg.h64[_GENERATION])
        log.info("taking over existing stream %r (generation %d)", self.name, self._generation)
        if seg.shm.size >= layout.total_size:
            return seg
        self._retire(seg)
        return self._replace(layout)

    def _replace(self, layout: Layout) -> _Segment:
        # POSIX: the name is already unlinked. Windows has no unlink: the name lives while any
        # reader maps the retired segment; sdbridge readers drop it at their next poll.
        deadline = time.monotonic() + (REPLACE_WAIT_S if os.name == "nt" else 0.0)
        while True:
            try:
                return self._create(layout)
            except FileExistsError:
                if time.monotonic() >= deadline:
                    raise ShmProtocolError(
                        f"stream {self.name!r} exists and could not be replaced by a larger segment",
                        fix="close every reader of it first, or give the writer capacity_bytes up front"
                    ) from None
                time.sleep(0.01)

    def _create(self, layout: Layout) -> _Segment:
        shm = _open_untracked(self.name, create=True, size=layout.total_size)
        seg = _Segment(shm, self.name)
        seg.h32[_STATE] = STATE_INITIALISING
        seg.h32[_VERSION] = VERSION
        self._fence()
        shm.buf[:8] = MAGIC  # last: a reader that sees the magic sees the version
        return seg

    def _retire(self, seg: _Segment) -> None:
        seg.h32[_STATE] = STATE_RETIRED
        self._fence()
        _unlink(seg.shm)
        seg.close()

    def _init_header(self, seg: _Segment, layout: Layout) -> None:
        """(Re)initialise in place: state INITIALISING fences readers off until LIVE."""
        h32, h64 = seg.h32, seg.h64
        h32[_STATE] = STATE_INITIALISING
        self._fence()
        self._generation += 1
        self._instance = secrets.randbits(63) | 1
        h32[_HEADER_SIZE], h32[_FORMAT] = HEADER_SIZE, PIXEL_FORMATS[layout.pixel_format][0]
        h32[_WIDTH], h32[_HEIGHT], h32[_STRIDE] = layout.width, layout.height, layout.stride
        h32[_SLOTS] = layout.slot_count
        h64[_SLOT_SIZE], h64[_FRAME_BYTES] = layout.slot_size, layout.frame_bytes
        h64[_GENERATION], h64[_INSTANCE] = self._generation, self._instance
        h64[_WRITER_SEQ], h64[_WRITER_PID] = 0, os.getpid()
        seg.map_slots(layout)
        assert seg.slot_hdr is not None
        seg.slot_hdr[:] = 0
        self._slot_seq = [0] * layout.slot_count
        self._written = 0
        self._fence()
        h32[_STATE] = STATE_LIVE
        self._fence()

    def _name_points_to_us(self) -> bool:
        try:
            probe = _Segment(_open_untracked(self.name, create=False), self.name)
        except (FileNotFoundError, ShmProtocolError):
            return False
        try:
            return bytes(probe.shm.buf[:8]) == MAGIC and int(probe.h64[_INSTANCE]) == self._instance
        finally:
            probe.close()


# --- reader ---------------------------------------------------------------------------------

_RETRY = object()  # the slot changed under the copy (or the writer lapped us): read again


class ShmReader:
    """Returns the newest complete frame of stream ``name``; never writes to the segment.

    Attaches lazily (the writer may start later) and re-attaches when the writer restarts,
    resizes or retires the stream: on a state/instance change in its mapping, and by re-opening
    the name after ``reattach_s`` without a new frame. One thread per reader.
    """

    def __init__(self, name: str, poll_max_s: float = 0.0005, reattach_s: float = 0.25) -> None:
        self.name = check_name(name)
        self._poll_max, self._reattach_s = poll_max_s, reattach_s
        self._fence = _Fence()
        self._seg: _Segment | None = None
        self._instance = self._generation = self._last_index = 0
        self._last_progress = self._next_attach = 0.0
        self._blank = False
        self.frames_read = self.frames_skipped = self.torn_retries = self.reattaches = 0

    @property
    def layout(self) -> Layout | None:
        return self._seg.layout if self._seg is not None else None

    @property
    def generation(self) -> int:
        return self._generation

    def open(self, timeout: float = 0.0) -> Layout:
        """Attach now, waiting up to ``timeout`` seconds for the stream to appear."""
        deadline = time.monotonic() + timeout
        while self._seg is None and not self._attach(force=True):
            if time.monotonic() >= deadline:
                raise ShmTimeout(f"stream {self.name!r} does not exist or is not live",
                                 fix="start its writer, or check the stream name")
            time.sleep(0.005)
        assert self._seg is not None and self._seg.layout is not None
        return self._seg.layout

    def read_latest(self, timeout: float = 1.0, out: np.ndarray | None = None) -> tuple[np.ndarray, FrameInfo]:
        """Copy of the newest frame not returned before; waits up to ``timeout`` seconds.

        ``out`` is filled and returned when its shape matches the frame, else a new array is.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        poll, retries = 0.0, 0
        while True:
            got = None
            if self._seg is None:
                self._attach(force=False)
            if self._seg is not None:
                got = self._read_once(out)
                if isinstance(got, tuple):
                    return got
                if got is None:
                    self._check_identity()
            now = time.monotonic()
            if now >= deadline:
                raise self._timeout(timeout)
            if got is _RETRY and retries < 4:
                retries += 1
                continue
            retries = 0
            time.sleep(min(poll, deadline - now))
            poll = min(max(poll * 2, 20e-6), self._poll_max)

    def close(self) -> None:
        if self._seg is not None:
            self._seg.close()
            self._seg = None

    def __enter__(self) -> "ShmReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _timeout(self, timeout: float) -> ShmTimeout:
        if self._seg is None and self._blank:
            return ShmTimeout(f"stream {self.name!r} exists but its header stayed all zeros for {timeout:.3f}s",
                              fix="if no sdbridge writer is starting, it is not an sdbridge stream: "
                                  "choose another name")
        if self._seg is None:
            return ShmTimeout(f"no live stream {self.name!r} within {timeout:.3f}s",
                              fix="start its writer, or check the stream name")
        return ShmTimeout(f"no new frame on stream {self.name!r} within {timeout:.3f}s",
                          fix="check that the writer is still sending")

    def _read_once(self, out: np.ndarray | None) -> object:
        seg = self._seg
        assert seg is not None and seg.layout is not None and seg.slot_hdr is not None
        h32, h64, layout = seg.h32, seg.h64, seg.layout
        if int(h32[_STATE]) != STATE_LIVE or int(h64[_INSTANCE]) != self._instance:
            self.close()  # retired, re-initialised or taken over: attach again by name
            return None
        newest = int(h64[_WRITER_SEQ])
        if newest == 0 or newest == self._last_index:
            return None
        k = (newest - 1) % layout.slot_count
        hdr = seg.slot_hdr[k]
        before = int(hdr[_S_SEQ])
        if before & 1:
            self.torn_retries += 1
            return _RETRY
        self._fence()
        shape = (layout.height, layout.width, layout.bytes_per_pixel)
        dst = out if out is not None and out.shape == shape and out.dtype == np.uint8 else np.empty(shape, np.uint8)
        np.copyto(dst, seg.slot_img[k])
        index, stamp, frame_seq = int(hdr[_S_INDEX]), int(hdr[_S_TIMESTAMP]), int(hdr[_S_FRAME_SEQ])
        self._fence()
        if (int(hdr[_S_SEQ]) != before or index != newest or int(h32[_STATE]) != STATE_LIVE
                or int(h64[_INSTANCE]) != self._instance):
            self.torn_retries += 1
            return _RETRY
        skipped = newest - self._last_index - 1 if self._last_index else 0
        self._last_index = newest
        self.frames_read += 1
        self.frames_skipped += skipped
        self._last_progress = time.monotonic()
        info = FrameInfo(layout.width, layout.height, layout.pixel_format, frame_seq, stamp, index,
                         self._generation, skipped)
        return dst, info

    def _check_identity(self) -> None:
        """No progress for a while: has a new writer put a new segment under the name?"""
        now = time.monotonic()
        if now - self._last_progress >= self._reattach_s:
            self._last_progress = now
            self._attach(force=True)

    def _attach(self, force: bool) -> bool:
        now = time.monotonic()
        if not force and now < self._next_attach:
            return False
        self._next_attach = now + 0.01
        try:
            seg = _Segment(_open_untracked(self.name, create=False), self.name)
        except FileNotFoundError:
            return False
        magic = bytes(seg.shm.buf[:8])
        self._blank = magic == bytes(8) or (magic == MAGIC and int(seg.h32[_VERSION]) == 0)
        if self._blank:  # created a moment ago, the writer has not written its header yet
            seg.close()
            return False
        seg.check_magic()
        parsed = self._parse_header(seg)
        if parsed is None or (self._seg is not None and parsed[2] == self._instance):
            seg.close()  # not live yet / retired, or the very segment we already hold
            return False
        layout, header_size, instance, generation = parsed
        seg.map_slots(layout, header_size)
        had = self._seg is not None or self._instance != 0
        self.close()
        self._seg, self._instance, self._generation = seg, instance, generation
        self._last_index, self._last_progress = 0, now
        self.reattaches += int(had)
        log.debug("attached to %r generation %d (%s)", self.name, generation, layout)
        return True

    def _parse_header(self, seg: _Segment) -> tuple[Layout, int, int, int] | None:
        """A consistent header snapshot (state LIVE and identical before/after), validated."""
        h32, h64 = seg.h32, seg.h64
        state, instance, generation = int(h32[_STATE]), int(h64[_INSTANCE]), int(h64[_GENERATION])
        if state != STATE_LIVE:
            return None
        self._fence()
        header_size, code, width, height, stride, slots = (int(h32[i]) for i in (
            _HEADER_SIZE, _FORMAT, _WIDTH, _HEIGHT, _STRIDE, _SLOTS))
        slot_size, frame_bytes = int(h64[_SLOT_SIZE]), int(h64[_FRAME_BYTES])
        self._fence()
        if (int(h32[_STATE]), int(h64[_INSTANCE]), int(h64[_GENERATION])) != (state, instance, generation):
            return None  # the writer is re-initialising: try again later
        fmt = _FORMAT_BY_CODE.get(code)
        bpp = PIXEL_FORMATS[fmt][1] if fmt else 0
        problems = [text for bad, text in (
            (fmt is None, f"pixel format code {code} is unknown"),
            (header_size < HEADER_SIZE or header_size % 8, f"header size {header_size}"),
            (width == 0 or height == 0, f"size {width}x{height}"),
            (stride < width * bpp, f"stride {stride} < width {width} x {bpp} bytes"),
            (frame_bytes != stride * height, f"frame bytes {frame_bytes} != stride x height"),
            (slots == 0, "no slots"),
            (slot_size % 8 or slot_size < SLOT_HEADER_SIZE + frame_bytes, f"slot size {slot_size}"),
            (header_size + slots * slot_size > seg.shm.size,
             f"{slots} slots of {slot_size} bytes do not fit in {seg.shm.size} bytes"),
        ) if bad]
        if problems:
            seg.close()
            raise ShmProtocolError(f"stream {self.name!r} has an invalid header: {'; '.join(problems)}",
                                   fix="the writer does not follow docs/shared-memory.md version 1")
        assert fmt is not None
        return Layout(width, height, fmt, stride, frame_bytes, slots, slot_size), header_size, instance, generation
