"""The daemon in-process: real shared memory in and out, identity and parameter-revealing
pipelines, live changes between frames, rebuilds, pause, preset loads, clean stop."""

from __future__ import annotations

import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from bridge.config import DEFAULT_PRESET, validate_preset
from bridge.errors import ConfigError, FrameTimeout
from bridge.frame import Frame, PixelFormat
from bridge.io.shared_memory import SharedMemorySink, SharedMemorySource
from bridge.io.test_pattern import render_rgb, to_pixel_format
from bridge.runtime.daemon import Daemon
from bridge.runtime.pipelines import IdentityPipeline, identity_factory
from runtime_helpers import CaptureSink, QueueSource, wait_until


def _name(tag: str) -> str:
    return f"sdbt-{tag}-{secrets.token_hex(3)}"


def _preset(**changes: Any):
    raw = dict(DEFAULT_PRESET, control={"enabled": False}, **changes)
    return validate_preset(raw)


class GuidancePipeline(IdentityPipeline):
    """Output is a flat image whose value is guidance_scale / 20: shows the parameters a
    frame was processed with. Counts builds through the factory below."""

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(int(params["frame_buffer_size"]))
        self.params = dict(params)

    def process(self, images: torch.Tensor | None) -> torch.Tensor:
        assert images is not None
        return torch.full_like(images, self.params["guidance_scale"] / 20.0)


def _manual_daemon(factory=None, **preset_changes: Any):
    source, sink = QueueSource(), CaptureSink()
    preset = _preset(output_format="RGB", **preset_changes)
    daemon = Daemon(preset, pipeline_factory=factory or (lambda p, params: GuidancePipeline(params)),
                    source_factory=lambda cfg: source, sink_factory=lambda cfg: sink)
    assert daemon.start()
    return daemon, source, sink


def _value(frame: Frame) -> int:
    return int(frame.pixels[0, 0, 0])


def test_identity_shm_to_shm_keeps_pixels_and_seq():
    name_in, name_out = _name("in"), _name("out")
    writer = SharedMemorySink(name_in)
    writer.open()
    preset = _preset(source={"kind": "shm", "name": name_in},
                     sink=[{"kind": "shm", "name": name_out}], output_format="BGRA")
    daemon = Daemon(preset, pipeline_factory=identity_factory)
    assert daemon.start()
    reader = SharedMemorySource(name_out)
    sent: dict[int, np.ndarray] = {}
    got: dict[int, np.ndarray] = {}
    try:
        for seq in range(1, 400):
            pixels = to_pixel_format(render_rgb(64, 64, seq), PixelFormat.BGRA)
            sent[seq] = pixels
            writer.send(Frame(pixels, PixelFormat.BGRA, seq=seq))
            time.sleep(0.01)
            try:
                frame = reader.receive(0.0)
                got[frame.seq] = frame.pixels.copy()
            except Exception:  # noqa: BLE001 - stream not there yet / no new frame
                pass
            if len(got) >= 10:
                break
        assert len(got) >= 10, "frames did not flow shm -> daemon -> shm"
        for seq, pixels in got.items():
            np.testing.assert_array_equal(pixels, sent[seq])
        stats = daemon.get_stats()
        assert stats["counters"]["frames_out"] >= 10 and stats["status"] == "running"
        assert stats["latency_ms"]["end_to_end"]["count"] >= 10
    finally:
        reader.close()
        daemon.stop()
        writer.close()
    if sys.platform.startswith("linux"):
        assert not Path("/dev/shm", name_out).exists(), "stop() must unlink the output segment"


def test_live_change_shows_in_the_next_processed_frame():
    daemon, source, sink = _manual_daemon()
    try:
        source.push(1)
        first = wait_until(lambda: sink.by_seq(1), what="frame 1")
        assert _value(first) == round(1.2 / 20 * 255)
        result = daemon.set({"guidance_scale": 10.0})
        assert result["pending_rebuild"] == []
        source.push(2)
        second = wait_until(lambda: sink.by_seq(2), what="frame 2")
        assert _value(second) == round(10.0 / 20 * 255)
        assert daemon.get_state()["version"] == result["version"]
    finally:
        daemon.stop()
    assert sink.closed


def test_bursts_of_changes_coalesce_last_writer_wins():
    daemon, source, sink = _manual_daemon()
    try:
        for value in (2.0, 4.0, 6.0, 8.0):
            daemon.set({"guidance_scale": value})
        source.push(1)
        frame = wait_until(lambda: sink.by_seq(1), what="frame 1")
        assert _value(frame) == round(8.0 / 20 * 255)
    finally:
        daemon.stop()


def test_rebuild_change_sends_fallback_then_new_size():
    builds: list[dict[str, Any]] = []
    gate = threading.Event()

    def factory(preset, params):
        builds.append(dict(params))
        if len(builds) > 1:
            gate.wait(10)  # hold the rebuild so the test can see the fallback output
        return GuidancePipeline(params)

    statuses: list[str] = []
    daemon, source, sink = _manual_daemon(factory)
    daemon.add_state_listener(lambda s: statuses.append(s["status"]))
    try:
        result = daemon.set({"width": 96, "height": 80})
        assert set(result["pending_rebuild"]) == {"width", "height"}
        wait_until(lambda: daemon.get_state()["status"] == "rebuilding", what="rebuilding status")
        source.push(1, value=77)
        during = wait_until(lambda: sink.by_seq(1), what="fallback frame")
        assert _value(during) == 77  # passthrough while rebuilding
        gate.set()
        wait_until(lambda: daemon.get_state()["status"] == "running", what="running again")
        source.push(2)
        after = wait_until(lambda: sink.by_seq(2), what="frame after rebuild")
        assert after.width == 96 and after.height == 80
        assert builds[-1]["width"] == 96
        assert daemon.get_state()["pending_rebuild"] == []
        assert "rebuilding" in statuses
    finally:
        gate.set()
        daemon.stop()


def test_pause_freezes_output_and_resume_continues():
    daemon, source, sink = _manual_daemon()
    try:
        source.push(1)
        wait_until(lambda: sink.by_seq(1), what="frame 1")
        daemon.pause()
        daemon.set({"guidance_scale": 20.0})
        source.push(2, value=5)
        frozen = wait_until(lambda: sink.by_seq(2), what="paused frame")
        assert _value(frozen) == round(1.2 / 20 * 255)  # the last output, not the input or new params
        daemon.resume()
        source.push(3)
        resumed = wait_until(lambda: sink.by_seq(3), what="frame after resume")
        assert _value(resumed) == 255
    finally:
        daemon.stop()


def test_load_preset_switches_parameters_and_rejects_bad_files(tmp_path):
    daemon, source, sink = _manual_daemon()
    try:
        good = tmp_path / "good.yaml"
        good.write_text(yaml.safe_dump(dict(DEFAULT_PRESET, guidance_scale=5.0,
                                            control={"enabled": False})), encoding="utf-8")
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump(dict(DEFAULT_PRESET, guidance_scale=-1, fit="zoom")),
                       encoding="utf-8")
        version = daemon.get_state()["version"]
        with pytest.raises(ConfigError) as info:
            daemon.load_preset(str(bad))
        assert set(info.value.fields) == {"guidance_scale", "fit"}
        assert daemon.get_state()["version"] == version  # nothing applied
        result = daemon.load_preset(str(good))
        assert result["rebuild"] is False
        source.push(1)
        frame = wait_until(lambda: sink.by_seq(1), what="frame after preset load")
        assert _value(frame) == round(5.0 / 20 * 255)
    finally:
        daemon.stop()


def test_source_failure_reconnects_and_sink_gets_fallback():
    class FlakySource(QueueSource):
        opened = 0

        def open(self) -> None:
            FlakySource.opened += 1
            if FlakySource.opened == 2:
                raise FrameTimeout("cannot open yet", fix="wait")

        def receive(self, timeout: float) -> Frame:
            frame = super().receive(timeout)
            if frame.seq == 2:
                raise ConnectionError("source unplugged")
            return frame

    source, sink = FlakySource(), CaptureSink()
    daemon = Daemon(_preset(output_format="RGB", fallback_output="black"),
                    pipeline_factory=lambda p, params: GuidancePipeline(params),
                    source_factory=lambda cfg: source, sink_factory=lambda cfg: sink)
    assert daemon.start()
    try:
        source.push(1)
        wait_until(lambda: sink.by_seq(1), what="frame 1")
        source.push(2)  # breaks the source: closed, reopened after a failed attempt
        fallback = wait_until(lambda: next((f for f in sink.frames if f.source == "fallback"), None),
                         what="fallback frame while the source is gone")
        assert _value(fallback) == 0 and fallback.seq == 1  # black, numbered as the last input
        assert daemon.get_state()["last_error"]["where"] == "source"
        source.push(3)
        wait_until(lambda: sink.by_seq(3), what="frames again after reconnect")
        assert FlakySource.opened >= 3
        assert daemon.get_state()["last_error"] is None
    finally:
        daemon.stop()


def test_start_failure_raises_the_build_error():
    def broken(preset, params):
        raise ConfigError([], context="no such model")

    daemon = Daemon(_preset(), pipeline_factory=broken, source_factory=lambda c: QueueSource(),
                    sink_factory=lambda c: CaptureSink())
    with pytest.raises(ConfigError, match="no such model"):
        daemon.start()
    assert daemon.get_state()["status"] == "error"


def test_stream_batch_factory_on_tiny_model_and_explicit_acceleration_fallback():
    from bridge.errors import RuntimeMissingError
    from bridge.runtime.pipelines import stream_batch_factory

    preset = _preset()
    pipeline = stream_batch_factory(preset, preset.params, progress=False)
    frames = torch.rand(1, 3, 64, 64)
    out = pipeline.process(frames)
    assert out.shape == (1, 3, 64, 64) and pipeline.ready
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert pipeline.description["model"] == "tiny" and pipeline.skipped_frames == 0
    pipeline.update({"prompt": "a different prompt"})
    assert pipeline.process(frames).shape == (1, 3, 64, 64)
    if torch.cuda.is_available():
        pytest.skip("TensorRT may be usable here; the missing-runtime path is what is checked")
    trt = validate_preset(dict(DEFAULT_PRESET, model={"id": "tiny", "device": "cpu",
                                                      "acceleration": "tensorrt"}))
    with pytest.raises(RuntimeMissingError):
        stream_batch_factory(trt, trt.params, progress=False)
    allowed = validate_preset(dict(DEFAULT_PRESET, model={"id": "tiny", "device": "cpu",
                                                          "acceleration": "tensorrt",
                                                          "fallback": "none"}))
    fallback = stream_batch_factory(allowed, allowed.params, progress=False)
    assert fallback.description["acceleration_requested"] == "tensorrt"
    assert fallback.description["backend"] == "torch"


def test_frame_buffer_batches_of_two_keep_order_and_seq():
    daemon, source, sink = _manual_daemon(frame_buffer_size=2)
    try:
        for seq in (1, 2, 3, 4):  # one at a time: the input slot keeps only the newest frame
            source.push(seq)
            wait_until(lambda: daemon.stats.snapshot()["counters"].get("frames_in", 0) == seq)
            time.sleep(0.05)  # frames_in counts just before the slot put
            wait_until(lambda: len(daemon._slot) == 0, what="frame taken by the inference thread")
        wait_until(lambda: sink.by_seq(4), what="second batch")
        processed = [f.seq for f in sink.frames if f.source != "fallback"]
        assert processed == [1, 2, 3, 4]
    finally:
        daemon.stop()


def test_txt2img_through_the_daemon_on_the_tiny_model():
    from bridge.runtime.pipelines import stream_batch_factory

    source, sink = QueueSource(), CaptureSink()
    preset = _preset(mode="txt2img", t_index_list=[0], output_format="RGB")
    daemon = Daemon(preset, pipeline_factory=lambda p, params: stream_batch_factory(
        p, params, progress=False), source_factory=lambda c: source, sink_factory=lambda c: sink)
    assert daemon.start()
    try:
        source.push(1, size=32)  # the input only paces txt2img output
        out = wait_until(lambda: sink.by_seq(1), timeout=60.0, what="txt2img frame")
        assert (out.width, out.height) == (64, 64)
        assert daemon.get_stats()["counters"].get("pipeline_errors", 0) == 0
    finally:
        daemon.stop()


def test_failing_sink_is_reopened_and_reported_once_while_others_keep_receiving():
    class BrokenSink(CaptureSink):
        attempts = 0

        def open(self) -> None:
            BrokenSink.attempts += 1
            if BrokenSink.attempts > 1:  # the first open (at start) works, reopening fails
                raise ConnectionError("receiver went away")

        def send(self, frame: Frame) -> None:
            raise ConnectionError("receiver went away")

    source, good, broken = QueueSource(), CaptureSink(), BrokenSink()
    sinks = iter([good, broken])
    preset = _preset(sink=[{"kind": "null"}, {"kind": "null"}], output_format="RGB")
    daemon = Daemon(preset, pipeline_factory=lambda p, params: GuidancePipeline(params),
                    source_factory=lambda c: source,
                    sink_factory=lambda c: next(sinks, broken))
    assert daemon.start()
    try:
        versions = []
        for seq in range(1, 6):
            source.push(seq)
            wait_until(lambda: good.by_seq(seq), what=f"frame {seq} on the working sink")
            versions.append(daemon.get_state()["version"])
            time.sleep(0.3)  # let the broken sink's retry come round
        assert BrokenSink.attempts >= 2
        assert daemon.get_state()["last_error"]["where"] == "sink.1"
        assert daemon.get_stats()["counters"]["sink_errors"] >= 2
        # send failed, then reopening failed (two reports); repeats add no state events
        assert versions[-1] == versions[2]
    finally:
        daemon.stop()


def test_pipeline_error_then_a_fixing_change_recovers_without_waiting_out_the_backoff():
    daemon, source, sink = _manual_daemon(fallback_output="black")
    try:
        daemon.set({"mode": "txt2img"})  # this pipeline cannot do txt2img: it will raise
        wait_until(lambda: daemon.get_state()["pending_rebuild"] == [], what="txt2img rebuild")
        source.push(1)
        failed = wait_until(lambda: sink.by_seq(1), what="fallback frame for the failing call")
        assert _value(failed) == 0
        state = daemon.get_state()
        assert state["status"] in ("error", "rebuilding") and state["last_error"]["where"] == "pipeline"
        daemon.set({"mode": "img2img"})
        wait_until(lambda: daemon.get_state()["status"] == "running", timeout=5.0,
              what="recovery right after the fixing change")
        source.push(2)
        assert _value(wait_until(lambda: sink.by_seq(2), what="frame 2")) == round(1.2 / 20 * 255)
        assert daemon.get_stats()["counters"]["pipeline_errors"] >= 1
    finally:
        daemon.stop()


def test_load_preset_switches_source_and_sinks_without_restart(tmp_path):
    made: list[tuple[str, dict[str, Any], CaptureSink]] = []

    def sink_factory(config):
        sink = CaptureSink()
        made.append((config.kind, dict(config.options), sink))
        return sink

    sources = {"first": QueueSource(), "second": QueueSource()}
    preset = _preset(source={"kind": "test_pattern", "name": "first"},
                     sink=[{"kind": "null", "name": "a"}], output_format="RGB")
    daemon = Daemon(preset, pipeline_factory=lambda p, params: GuidancePipeline(params),
                    source_factory=lambda c: sources[c.options["name"]], sink_factory=sink_factory)
    assert daemon.start()
    try:
        sources["first"].push(1)
        wait_until(lambda: made[0][2].by_seq(1), what="frame on the first sink")
        switched = tmp_path / "switched.yaml"
        switched.write_text(yaml.safe_dump(dict(
            DEFAULT_PRESET, control={"enabled": False}, output_format="RGB", guidance_scale=2.0,
            source={"kind": "test_pattern", "name": "second"},
            sink=[{"kind": "null", "name": "b"}])), encoding="utf-8")
        result = daemon.load_preset(str(switched))
        assert result["rebuild"] is False
        sources["second"].push(2)
        frame = wait_until(lambda: next((s.by_seq(2) for k, o, s in made if o.get("name") == "b"
                                    and s.by_seq(2)), None), what="frame 2 on the new sink")
        assert _value(frame) == round(2.0 / 20 * 255)
        assert made[0][2].closed and made[0][2].by_seq(2) is None  # the old sink was closed
    finally:
        daemon.stop()
