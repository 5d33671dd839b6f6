"""File sources and sinks: static image, image folder, video file (PyAV); PNG sequence and
video file sinks. For working without a host app, for tests, and for recording output.

Sources are paced like a live input (``fps``; 0 = as fast as asked) with the same pure
schedule as the test pattern, and skip frames when the consumer is late. A source that runs
out (``loop: false``) raises ``FrameTimeout`` saying so and sets ``ended``.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from bridge.errors import ConfigError, FrameFormatError, FrameTimeout, Problem, RuntimeMissingError, TransportError
from bridge.frame import Frame, PixelFormat, now_ns
from bridge.frame_convert import convert
from bridge.io.base import Availability, FrameSink, FrameSource
from bridge.io.test_pattern import schedule_next

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SOURCE_FORMATS = ("BGRA", "RGBA", "BGRX", "RGBX", "RGB", "BGR", "UYVY")
VIDEO_HINT = "pip install 'sdbridge[video]' (PyAV)"


def availability() -> Availability:
    """Images need Pillow (a core dependency)."""
    try:
        import PIL  # noqa: F401
    except ImportError as exc:
        return Availability(False, f"cannot import Pillow: {exc}; pip install pillow")
    return Availability.yes()


def video_availability() -> Availability:
    """Video files need PyAV (the `video` extra) on top of Pillow."""
    images = availability()
    if not images.available:
        return images
    try:
        _import_av()
    except RuntimeMissingError as exc:
        return Availability(False, str(exc))
    return Availability.yes()


def natural_key(name: str) -> list[Any]:
    """Sort key putting ``img2`` before ``img10`` (digit runs compare as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def load_image(path: Path) -> np.ndarray:
    """An image file as RGBA uint8 H×W×4 (alpha 255 when the file has none)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.ascontiguousarray(np.asarray(img.convert("RGBA"), dtype=np.uint8))
    except (UnidentifiedImageError, OSError) as exc:
        raise FrameFormatError(f"cannot read image {str(path)!r}: {exc}",
                               fix=f"use a readable {'/'.join(IMAGE_SUFFIXES)} file") from exc


class _Pacer:
    """Live-like pacing on an injected clock (see ``test_pattern.schedule_next``)."""

    def __init__(self, fps: float, clock: Callable[[], int], sleep: Callable[[float], None]) -> None:
        self.fps, self._clock, self._sleep = fps, clock, sleep
        self._start: int | None = None
        self.last_index = -1

    def reset(self) -> None:
        self._start, self.last_index = None, -1

    def next_index(self, timeout: float, what: str) -> int:
        """Wait for the next frame slot and return its index (raises FrameTimeout if too far)."""
        if self._start is None:
            self._start = self._clock()
        index, due = schedule_next(self._start, self.last_index, self._clock(), self.fps)
        wait_s = (due - self._clock()) / 1e9
        if wait_s > timeout:
            if timeout > 0:
                self._sleep(timeout)
            raise FrameTimeout(f"{what}: next frame due in {wait_s:.3f}s, after the {timeout:.3f}s timeout",
                               fix="use a timeout longer than 1/fps")
        if wait_s > 0:
            self._sleep(wait_s)
        self.last_index = index
        return index


class _PacedFileSource(FrameSource):
    """Shared option checks, pacing and end-of-stream handling."""

    def __init__(self, path: str | os.PathLike[str], fps: float, pixel_format: str, loop: bool,
                 name: str | None, clock: Callable[[], int], sleep: Callable[[float], None]) -> None:
        self.path = Path(path).expanduser()
        if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not 0 <= fps <= 1000:
            raise ConfigError(Problem("source.fps", fps, "must be a number in 0..1000",
                                      "use 30, or 0 for as fast as asked"))
        if pixel_format not in SOURCE_FORMATS:
            raise ConfigError(Problem("source.pixel_format", pixel_format, "unknown pixel format",
                                      f"use one of: {', '.join(SOURCE_FORMATS)}"))
        self.fps, self.pixel_format, self.loop = float(fps), PixelFormat(pixel_format), loop
        self.name = name or self.path.name
        self.ended = False
        self._sleep = sleep
        self._pacer = _Pacer(self.fps, clock, sleep)

    def _end(self, timeout: float) -> FrameTimeout:
        self.ended = True
        if timeout > 0:
            self._sleep(timeout)  # a caller polling an ended source must not spin
        return FrameTimeout(f"{self.kind} source {str(self.path)!r} reached its end (loop: false)",
                            fix="set loop: true to repeat it")

    def _frame(self, rgba: np.ndarray, seq: int) -> Frame:
        pixels = convert(_even_width(rgba) if self.pixel_format is PixelFormat.UYVY else rgba,
                         PixelFormat.RGBA, self.pixel_format)
        return Frame(np.ascontiguousarray(pixels), self.pixel_format, seq=seq, timestamp_ns=now_ns(),
                     source=self.name)


class ImageSource(_PacedFileSource):
    """One image file, repeated at ``fps``."""

    kind = "image"

    def __init__(self, path: str, fps: float = 30.0, pixel_format: str = "BGRA", name: str | None = None,
                 *, clock: Callable[[], int] = now_ns, sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(path, fps, pixel_format, True, name, clock, sleep)
        if not self.path.is_file():
            raise ConfigError(Problem("source.path", str(path), "no such image file",
                                      "give the path of a .png/.jpg file"))
        self._pixels: np.ndarray | None = None

    def open(self) -> None:
        if self._pixels is None:
            rgba = load_image(self.path)
            self._pixels = self._frame(rgba, 0).pixels

    def close(self) -> None:
        self._pixels = None
        self._pacer.reset()

    def receive(self, timeout: float) -> Frame:
        self.open()
        assert self._pixels is not None
        index = self._pacer.next_index(timeout, f"image {self.name!r}")
        # A copy per frame: a consumer may keep or modify the frame it got.
        return Frame(self._pixels.copy(), self.pixel_format, seq=index, timestamp_ns=now_ns(), source=self.name)


class ImageFolderSource(_PacedFileSource):
    """Every image in a folder in natural name order (img2 before img10), looped by default."""

    kind = "folder"

    def __init__(self, path: str, fps: float = 30.0, loop: bool = True, pixel_format: str = "BGRA",
                 name: str | None = None, *, clock: Callable[[], int] = now_ns,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(path, fps, pixel_format, loop, name, clock, sleep)
        if not self.path.is_dir():
            raise ConfigError(Problem("source.path", str(path), "no such folder", "give a folder of images"))
        self.files = sorted((p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                            key=lambda p: natural_key(p.name))
        if not self.files:
            raise ConfigError(Problem("source.path", str(path), "folder has no images",
                                      f"add {'/'.join(IMAGE_SUFFIXES)} files"))

    def close(self) -> None:
        self._pacer.reset()
        self.ended = False

    def receive(self, timeout: float) -> Frame:
        if self.ended:
            raise self._end(timeout)
        index = self._pacer.next_index(timeout, f"folder {self.name!r}")
        if index >= len(self.files) and not self.loop:
            raise self._end(timeout)
        return self._frame(load_image(self.files[index % len(self.files)]), index)


class VideoFileSource(_PacedFileSource):
    """A video file decoded with PyAV; ``fps=None`` uses the file's own frame rate."""

    kind = "video"

    def __init__(self, path: str, fps: float | None = None, loop: bool = True, pixel_format: str = "BGRA",
                 name: str | None = None, *, clock: Callable[[], int] = now_ns,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        av = _import_av()
        if not Path(path).expanduser().is_file():
            raise ConfigError(Problem("source.path", str(path), "no such video file", "give a video file path"))
        rate = fps if fps is not None else _probe_rate(av, Path(path).expanduser())
        super().__init__(path, rate, pixel_format, loop, name, clock, sleep)
        self._container: Any = None
        self._frames: Iterator[Any] | None = None
        self._decoded = -1  # index (over all loops) of the last decoded frame
        self._lock = threading.Lock()  # close() from another thread must not free a decoding container

    def open(self) -> None:
        with self._lock:
            if self._container is None:
                self._open_container()

    def close(self) -> None:
        with self._lock:
            if self._container is not None:
                self._container.close()
            self._container, self._frames, self._decoded = None, None, -1
            self._pacer.reset()
            self.ended = False

    def receive(self, timeout: float) -> Frame:
        self.open()
        if self.ended:
            raise self._end(timeout)
        index = self._pacer.next_index(timeout, f"video {self.name!r}")
        with self._lock:
            if self._container is None:
                raise TransportError(f"video source {self.name!r} was closed", fix="open it again")
            picture = None
            while self._decoded < index:  # decode and drop frames the consumer was too late for
                picture = self._next_picture()
                if picture is None:
                    break
                self._decoded += 1
            if picture is None:
                self.ended = True
            else:
                rgba = np.ascontiguousarray(picture.to_ndarray(format="rgba"))
        if picture is None:
            raise self._end(timeout)
        return self._frame(rgba, index)

    def _open_container(self) -> None:
        av = _import_av()
        try:
            self._container = av.open(str(self.path))
            stream = self._container.streams.video[0]
        except (av.FFmpegError, IndexError) as exc:
            raise FrameFormatError(f"cannot decode video {str(self.path)!r}: {exc}",
                                   fix="use a file with a video stream FFmpeg can read") from exc
        stream.thread_type = "AUTO"
        self._frames = iter(self._container.decode(stream))

    def _next_picture(self) -> Any:
        assert self._frames is not None
        picture = next(self._frames, None)
        if picture is None and self.loop:
            self._container.close()
            self._open_container()  # reopening is more reliable than seeking across formats
            picture = next(self._frames, None)
            if picture is None:
                raise FrameFormatError(f"video {str(self.path)!r} has no frames", fix="use another file")
        return picture


class PngSequenceSink(FrameSink):
    """Writes numbered PNGs (``frame_000000.png``…) into ``path``; each file appears atomically."""

    kind = "png"

    def __init__(self, path: str, prefix: str = "frame_", start: int = 0, digits: int = 6,
                 compress_level: int = 1) -> None:
        if not isinstance(digits, int) or not 1 <= digits <= 12:
            raise ConfigError(Problem("sink.digits", digits, "must be an integer in 1..12", "use 6"))
        if not isinstance(compress_level, int) or not 0 <= compress_level <= 9:
            raise ConfigError(Problem("sink.compress_level", compress_level, "must be 0..9",
                                      "use 1 (fast) .. 9 (small)"))
        self.path, self.prefix, self.digits, self.compress_level = Path(path).expanduser(), prefix, digits, compress_level
        self.next_index = start
        self.written: list[Path] = []

    def open(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransportError(f"cannot create PNG folder {str(self.path)!r}: {exc}",
                                 fix="choose a writable path") from exc

    def send(self, frame: Frame) -> None:
        from PIL import Image

        self.open()
        has_alpha = frame.pixel_format in (PixelFormat.BGRA, PixelFormat.RGBA)
        mode = "RGBA" if has_alpha else "RGB"
        pixels = convert(frame.pixels, frame.pixel_format, PixelFormat(mode))
        target = self.path / f"{self.prefix}{self.next_index:0{self.digits}d}.png"
        partial = target.with_name(target.name + ".part")
        try:
            Image.fromarray(pixels, mode).save(partial, format="PNG", compress_level=self.compress_level)
            os.replace(partial, target)
        except OSError as exc:
            raise TransportError(f"cannot write {str(target)!r}: {exc}", fix="check disk space and permissions") from exc
        self.written.append(target)
        self.next_index += 1


class VideoFileSink(FrameSink):
    """Encodes frames into a video file with PyAV (default H.264 in MP4, yuv420p).

    The size is fixed by the first frame; odd sizes are padded by one pixel (yuv420p needs
    even sizes). ``close`` flushes the encoder: until then the file is incomplete.
    """

    kind = "video"

    def __init__(self, path: str, fps: float = 30.0, codec: str = "libx264", crf: int = 20,
                 encoder_pixel_format: str = "yuv420p") -> None:
        av = _import_av()
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 240:
            raise ConfigError(Problem("sink.fps", fps, "must be a number in (0, 240]", "use 30"))
        try:
            av.codec.Codec(codec, "w")
        except Exception as exc:  # PyAV raises UnknownCodecError / ValueError depending on version
            raise ConfigError(Problem("sink.codec", codec, f"PyAV has no such encoder ({exc})",
                                      "use libx264, mpeg4, libvpx-vp9 or ffv1")) from exc
        self.path, self.fps, self.codec, self.crf = Path(path).expanduser(), fps, codec, crf
        self.encoder_pixel_format = encoder_pixel_format
        self.frames_written = 0
        self._container: Any = None
        self._stream: Any = None

    def send(self, frame: Frame) -> None:
        av = _import_av()
        rgb = convert(frame.pixels, frame.pixel_format, PixelFormat.RGB)
        if self._stream is None:
            self._start(av, rgb.shape[1], rgb.shape[0])
        rgb = _pad_to(rgb, self._stream.width, self._stream.height)
        if rgb is None:
            raise FrameFormatError(
                f"video sink {str(self.path)!r} was started at {self._stream.width}x{self._stream.height}, "
                f"got a {frame.width}x{frame.height} frame", fix="keep the output size constant while recording")
        picture = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        picture.pts = self.frames_written
        for packet in self._stream.encode(picture):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):  # flush delayed frames
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container, self._stream = None, None

    def _start(self, av: Any, width: int, height: int) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(self.path), mode="w")
        except (OSError, av.FFmpegError) as exc:
            raise TransportError(f"cannot create video file {str(self.path)!r}: {exc}",
                                 fix="choose a writable path with a known extension (.mp4, .mkv, .webm)") from exc
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream(self.codec, rate=rate)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = self.encoder_pixel_format
        stream.codec_context.time_base = 1 / rate
        if self.codec in ("libx264", "h264"):
            stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        self._stream = stream


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise RuntimeMissingError(f"video files need PyAV: {exc}", fix=VIDEO_HINT) from exc
    return av


def _probe_rate(av: Any, path: Path) -> float:
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
    except (av.FFmpegError, IndexError) as exc:
        raise FrameFormatError(f"cannot read video {str(path)!r}: {exc}",
                               fix="use a file with a video stream FFmpeg can read") from exc
    if not rate:
        raise ConfigError(Problem("source.fps", None, f"{path.name} does not say its frame rate",
                                  "set fps: explicitly"))
    return float(rate)


def _even_width(rgba: np.ndarray) -> np.ndarray:
    """UYVY needs an even width: repeat the last column when it is odd."""
    return rgba if rgba.shape[1] % 2 == 0 else np.ascontiguousarray(np.concatenate([rgba, rgba[:, -1:]], axis=1))


def _pad_to(rgb: np.ndarray, width: int, height: int) -> np.ndarray | None:
    """Pad by edge replication up to (width, height) when at most one pixel short; else None."""
    dh, dw = height - rgb.shape[0], width - rgb.shape[1]
    if dh == dw == 0:
        return rgb
    if not (0 <= dh <= 1 and 0 <= dw <= 1):
        return None
    return np.ascontiguousarray(np.pad(rgb, ((0, dh), (0, dw), (0, 0)), mode="edge"))
