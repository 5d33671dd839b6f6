"""The daemon: source thread -> latest slot -> inference thread (pre -> pipeline -> post) ->
one bounded queue and one thread per sink, plus the control plane (DESIGN.md §1).

The inference thread owns the pipeline: it applies coalesced live changes between frames
(``LiveState.take_pending``, last writer wins), so a prompt change shows in the next processed
frame. Builds (first load, rebuild-requiring changes, preset loads, recovery after a pipeline
error) run on a builder thread; meanwhile every input still produces an output in the configured
``fallback_output`` (passthrough | last | black), and the state says ``loading`` / ``rebuilding``.
The daemon implements the control plane's ``ControlTarget`` protocol.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from bridge.config import Preset, load_preset, preflight
from bridge.errors import RebuildRequired, SdbridgeError
from bridge.frame import Frame, PixelFormat, now_ns
from bridge.params import needs_rebuild
from bridge.runtime.pipelines import FramePipeline, PipelineFactory, stream_batch_factory
from bridge.runtime.sink_threads import SinkWorker
from bridge.runtime.slots import LatestSlot
from bridge.runtime.stages import PostProcessor, PreProcessor
from bridge.runtime.state import LiveState, StateListener
from bridge.runtime.stats import Stats, gpu_memory
from bridge.runtime.workers import (
    SinkFactory, SourceFactory, SourceWorker, default_sink_factory, default_source_factory,
)

log = logging.getLogger(__name__)

IDLE_AFTER_S = 0.5  # no input for this long: the source is considered gone
IDLE_FALLBACK_PERIOD_S = 0.1  # while it is gone, sinks still get a fallback frame at 10 Hz
ERROR_BACKOFF_S = (0.5, 30.0)  # first and largest delay before rebuilding after failures


def _stack_of(thread: threading.Thread) -> str:
    """Where a thread is stuck, for the shutdown log."""
    import sys
    import traceback

    frame = sys._current_frames().get(thread.ident or -1)  # noqa: SLF001 - diagnostics only
    return "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"


class _Build:
    """One pipeline build on a daemon thread (a model load cannot be interrupted; at shutdown
    the process must not wait for it)."""

    def __init__(self, factory: PipelineFactory, preset: Preset, params: dict[str, Any]) -> None:
        self.preset, self.params = preset, params
        self.result: FramePipeline | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, args=(factory,), name="sdbridge-build",
                         daemon=True).start()

    def _run(self, factory: PipelineFactory) -> None:
        try:
            self.result = factory(self.preset, self.params)
        except BaseException as exc:  # handed to the inference thread, which reports it
            self.error = exc
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


class Daemon:
    """Wires a validated preset into running threads. ``start`` builds the pipeline first (a
    model that cannot load fails here, with its error); ``stop`` returns within a few seconds."""

    def __init__(self, preset: Preset, *, pipeline_factory: PipelineFactory = stream_batch_factory,
                 source_factory: SourceFactory = default_source_factory,
                 sink_factory: SinkFactory = default_sink_factory, output_depth: int = 2,
                 stats_window_s: float = 5.0) -> None:
        self.preset = preset
        self.state = LiveState(preset.params)
        self.stats = Stats(window_s=stats_window_s)
        self._factory = pipeline_factory
        self._slot: LatestSlot[Frame] = LatestSlot()
        self.source = SourceWorker(preset.source, self._slot, self.stats, self.state,
                                   factory=source_factory)
        # One queue of ``output_depth`` per sink: a slow sink drops its own frames only.
        self.sinks = SinkWorker(preset.sinks, self.stats, self.state, depth=output_depth,
                                factory=sink_factory, control=self)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._pipeline: FramePipeline | None = None
        self._built: dict[str, Any] = dict(preset.params)
        self._build: _Build | None = None
        self._rebuild_requested = threading.Event()
        self._retry_at = 0.0
        self._error_delay = ERROR_BACKOFF_S[0]
        self._pre = self._make_pre(preset.params, torch.device("cpu"))
        self._post = PostProcessor(preset.output_format)
        self._stages_dirty = False
        self._last_input: torch.Tensor | None = None
        self._last_output: torch.Tensor | None = None
        self._last_emit = 0.0
        self._last_seq = 0
        self._batch: list[Frame] = []

    # ---------------------------------------------------------------- lifecycle
    def start(self, cancel: threading.Event | None = None) -> bool:
        """Build the pipeline (blocking), open sinks, then start the threads. Returns False
        when ``cancel`` was set during the build (a signal at start-up)."""
        self.state.set_status("loading")
        build = self._build = _Build(self._factory, self.preset, self.state.params())
        while not build.wait(0.1):
            if cancel is not None and cancel.is_set():
                self._stopped.set()
                return False
        self._build = None
        if build.error is not None:
            self.state.set_status("error")
            raise build.error
        self._install(build)
        self.sinks.open_all()
        self.sinks.start()
        self._thread = threading.Thread(target=self._run, name="sdbridge-inference", daemon=True)
        self._thread.start()
        self.source.start()
        return True

    def stop(self, timeout: float = 4.0) -> None:
        """Stop reading, finish the frame in flight, flush and close sinks. Idempotent."""
        if self._stopped.is_set():
            return
        deadline = time.monotonic() + timeout
        self.state.set_status("stopping")
        self._stopping.set()
        self.source.stop(max(0.1, min(1.5, deadline - time.monotonic())))
        self._slot.close()
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic() - 0.5))
            if self._thread.is_alive():
                log.error("inference thread still busy at shutdown:\n%s", _stack_of(self._thread))
        self.sinks.stop(max(0.1, deadline - time.monotonic()))
        if self._pipeline is not None:
            self._pipeline.close()
        self._stopped.set()
        self.state.set_status("stopped")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        """A thread is still inside model code (a call or a load) that cannot be interrupted."""
        build = self._build
        return self.running or (build is not None and not build.done())

    # ----------------------------------------------------------- ControlTarget
    def get_state(self) -> dict[str, Any]:
        return self.state.snapshot()

    def set(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        return self.state.submit(changes)

    def pause(self) -> dict[str, Any]:
        return self.state.pause()

    def resume(self) -> dict[str, Any]:
        return self.state.resume()

    def add_state_listener(self, listener: StateListener) -> Callable[[], None]:
        return self.state.add_listener(listener)

    def get_stats(self) -> dict[str, Any]:
        pipeline = self._pipeline
        state = self.state.snapshot()
        return self.stats.snapshot({
            "status": state["status"], "paused": state["paused"], "state_version": state["version"],
            "last_error": state["last_error"], "source_connected": self.source.connected,
            "pipeline": dict(pipeline.description) if pipeline is not None else None,
            "gpu_memory": gpu_memory(),
        })

    def load_preset(self, path: str) -> dict[str, Any]:
        """Validate the whole preset first (nothing changes on error), then switch: parameters
        through the live state, source/sinks reopened, model rebuilt if it differs."""
        preset = load_preset(Path(path).expanduser())
        preflight(preset)
        with self._lock:
            old, self.preset = self.preset, preset
            if preset.source != old.source:
                self.source.reconfigure(preset.source)
            if preset.sinks != old.sinks:
                self.sinks.reconfigure(preset.sinks)
            if (preset.fit, preset.output_format) != (old.fit, old.output_format):
                self._stages_dirty = True
            model_changed = preset.model != old.model
        result = self.state.replace(preset.params)
        if model_changed:
            self._rebuild_requested.set()
        log.info("preset %s loaded%s", path, " (model changes: rebuilding)" if model_changed else "")
        return {**result, "preset": str(path), "rebuild": model_changed or bool(result["pending_rebuild"])}

    # --------------------------------------------------------- inference thread
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception as exc:  # a bug here must not silence the output: report, go on
                log.exception("inference loop error")
                self.stats.count("loop_errors")
                self.state.set_error(exc, where="daemon")
                time.sleep(0.05)

    def _step(self) -> None:
        frame = self._slot.get(0.05)
        # Changes are taken after the frame arrived: anything accepted before it was received
        # applies to it (a prompt change shows in the next processed frame).
        self._poll_build()
        self._apply_changes()
        if self._stages_dirty:
            self._stages_dirty = False
            self._pre = self._make_pre(self._built, self._pre.device)
            self._post = PostProcessor(self.preset.output_format)
        if frame is None:
            if not self._slot.closed:
                self._idle_fallback()
            return
        self._batch.append(frame)
        size = self._pipeline.frame_buffer_size if self._pipeline is not None else 1
        if len(self._batch) >= size:
            frames, self._batch = self._batch, []
            self._process(frames)

    def _process(self, frames: list[Frame]) -> None:
        t0 = now_ns()
        images = self._pre(frames)
        t1 = now_ns()
        self.stats.stage("pre", t1 - t0)
        self._last_input = images[-1:]
        self._last_seq = frames[-1].seq
        pipeline = self._pipeline
        if self.state.paused:
            out = self._fallback(images, "last")  # paused: a freeze frame, no model work
        elif pipeline is None:
            out = self._fallback(images)
        else:
            out = self._run_pipeline(pipeline, images)
        t2 = now_ns()
        frames_out = self._post(out, frames)
        self.stats.stage("post", now_ns() - t2)
        self._emit(frames_out)

    def _run_pipeline(self, pipeline: FramePipeline, images: torch.Tensor) -> torch.Tensor:
        start = now_ns()
        try:
            skipped_before = pipeline.skipped_frames
            txt2img = self._built.get("mode") == "txt2img"
            result = pipeline.process(None if txt2img else images)
            self.stats.stage("pipeline", now_ns() - start)
            self.stats.processed(images.shape[0], pipeline.skipped_frames - skipped_before)
        except Exception as exc:  # any model failure: fallback output now, rebuild, go on
            log.exception("pipeline failed; sending %s frames and rebuilding",
                          self.preset.fallback_output)
            self.stats.count("pipeline_errors")
            self.state.set_error(exc, where="pipeline")
            self.state.set_status("error")  # "rebuilding" once the retry starts
            self._discard_pipeline()
            self._retry_at = time.monotonic() + self._error_delay
            self._error_delay = min(ERROR_BACKOFF_S[1], self._error_delay * 2)
            return self._fallback(images)
        if not pipeline.ready:  # warm-up: outputs would come from an empty latent buffer
            self.stats.count("warmup_frames", images.shape[0])
            return self._fallback(images)
        self._error_delay = ERROR_BACKOFF_S[0]
        self._last_output = result[-1:].detach()
        return result

    def _fallback(self, images: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        mode = mode or self.preset.fallback_output
        self.stats.count("fallback_frames", images.shape[0])
        if mode == "last" and self._last_output is not None \
                and self._last_output.shape[1:] == images.shape[1:]:
            return self._last_output.expand_as(images)
        if mode == "black":
            return torch.zeros_like(images)
        return images  # passthrough (and "last" before any output existed)

    def _idle_fallback(self) -> None:
        """Source gone: keep the sinks fed so receivers see a live stream, not a frozen one."""
        idle = (now_ns() - (self.source.last_frame_ns or 0)) / 1e9
        if idle < IDLE_AFTER_S or time.monotonic() - self._last_emit < IDLE_FALLBACK_PERIOD_S:
            return
        base = self._last_input
        if base is None:
            base = torch.zeros((1, 3, self._pre.height, self._pre.width), device=self._pre.device)
        images = self._fallback(base)
        # Same seq as the last real input (it is that frame again, or black/last output);
        # transports that number their writes (shm frame_index) still show a live stream.
        placeholder = Frame(np.zeros((1, 1, 3), np.uint8), PixelFormat.RGB, seq=self._last_seq,
                            timestamp_ns=now_ns(), source="fallback")
        self._emit(self._post(images, [placeholder]))

    def _emit(self, frames: list[Frame]) -> None:
        self._last_emit = time.monotonic()
        self.sinks.put(frames)

    # ----------------------------------------------------------- changes, builds
    def _apply_changes(self) -> None:
        changes = self.state.take_pending()
        if self._rebuild_requested.is_set():
            self._rebuild_requested.clear()
            self._start_build()
            return
        if changes and self._pipeline is None and self._build is None:
            self._retry_at = 0.0  # waiting out an error: new parameters may fix it, try now
        if not changes or self._pipeline is None:
            return  # while building, the build's completion reconciles with the state
        self._update(changes)

    def _update(self, changes: Mapping[str, Any]) -> None:
        """Live changes into the running pipeline, or a rebuild when they cannot be live."""
        assert self._pipeline is not None
        if needs_rebuild(self._built, changes):
            self._start_build()
            return
        try:
            self._pipeline.update(changes)
        except RebuildRequired:
            self._start_build()
            return
        except SdbridgeError as exc:
            log.warning("live change rejected by the pipeline: %s", exc)
            self.state.set_error(exc, where="update")
            return
        self._built.update(changes)

    def _start_build(self) -> None:
        if self._build is not None:
            self._rebuild_requested.set()  # build again once the current one finishes
            return
        self._discard_pipeline()
        self.state.set_status("rebuilding")
        self._build = _Build(self._factory, self.preset, self.state.params())

    def _discard_pipeline(self) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            try:
                pipeline.close()
            except Exception:
                log.exception("closing the old pipeline failed")

    def _poll_build(self) -> None:
        build = self._build
        if build is None:
            if self._pipeline is None and time.monotonic() >= self._retry_at:
                self._start_build()
            return
        if not build.done():
            return
        self._build = None
        if build.error is not None:
            log.error("pipeline build failed: %s", build.error)
            self.stats.count("build_failures")
            self.state.set_error(build.error, where="build")
            self.state.set_status("error")
            self._retry_at = time.monotonic() + self._error_delay
            self._error_delay = min(ERROR_BACKOFF_S[1], self._error_delay * 2)
            return
        self._install(build)
        self.stats.count("rebuilds")
        self._reconcile(build.params)

    def _install(self, build: _Build) -> None:
        assert build.result is not None
        self._pipeline = build.result
        self._built = dict(build.params)
        self._pre = self._make_pre(build.params, build.result.device)
        self._post = PostProcessor(self.preset.output_format)
        self.state.rebuild_done(build.params)
        self.state.set_status("running")

    def _reconcile(self, built: Mapping[str, Any]) -> None:
        """Apply changes that arrived while the pipeline was being built."""
        self.state.take_pending()
        wanted = self.state.params()
        diff = {k: v for k, v in wanted.items() if built.get(k) != v}
        if diff:
            self._update(diff)

    def _make_pre(self, params: Mapping[str, Any], device: torch.device) -> PreProcessor:
        return PreProcessor(int(params["width"]), int(params["height"]), self.preset.fit, device)
