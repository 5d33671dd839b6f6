"""LiveState: versioned, all-or-nothing, coalescing, thread-safe, rebuild policy."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from bridge.errors import ConfigError, PipelineError, RebuildRequired
from bridge.params import default_params
from bridge.runtime.state import LiveState


def test_defaults_and_initial_snapshot() -> None:
    state = LiveState()
    snap = state.snapshot()
    assert snap["version"] == 0 and snap["params"] == default_params()
    assert snap["paused"] is False and snap["pending_rebuild"] == [] and snap["last_error"] is None
    assert snap["rebuild_policy"] == "schedule"


def test_initial_params_are_validated() -> None:
    assert LiveState({"prompt": "a fox"}).params()["prompt"] == "a fox"
    with pytest.raises(ConfigError, match="guidance_scale"):
        LiveState({"guidance_scale": -1})
    with pytest.raises(ConfigError, match="rebuild_policy"):
        LiveState(rebuild_policy="sometimes")  # type: ignore[arg-type]


def test_submit_is_all_or_nothing() -> None:
    state = LiveState()
    with pytest.raises(ConfigError) as info:
        state.submit({"prompt": "ok", "delta": 99, "bogus": 1})
    assert sorted(info.value.fields) == ["bogus", "delta"]
    assert state.version == 0 and state.params() == default_params() and state.take_pending() == {}
    with pytest.raises(ConfigError, match="no parameters"):
        state.submit({})


def test_pending_changes_coalesce_last_writer_wins() -> None:
    state = LiveState()
    state.submit({"prompt": "a", "guidance_scale": 1.0})
    state.submit({"prompt": "b"})
    result = state.submit({"seed": 7, "guidance_scale": 2})
    assert result == {"version": 3, "applied": {"seed": 7, "guidance_scale": 2.0}, "pending_rebuild": []}
    assert state.has_pending()
    assert state.take_pending() == {"prompt": "b", "guidance_scale": 2.0, "seed": 7}
    assert state.take_pending() == {} and not state.has_pending()


def test_returned_and_pending_values_are_copies() -> None:
    state = LiveState()
    state.submit({"t_index_list": [10, 20]})
    state.params()["t_index_list"].append(30)
    state.snapshot()["params"]["t_index_list"].append(30)
    assert state.params()["t_index_list"] == [10, 20]
    assert state.take_pending()["t_index_list"] == [10, 20]


def test_rebuild_scheduled_then_done() -> None:
    state = LiveState()
    result = state.submit({"width": 640, "t_index_list": [10, 20, 30], "prompt": "x"})
    assert sorted(result["pending_rebuild"]) == ["t_index_list", "width"]
    state.submit({"t_index_list": [5, 6]})  # back to the built length: no rebuild for it
    assert state.snapshot()["pending_rebuild"] == ["width"]
    state.rebuild_done()
    snap = state.snapshot()
    assert snap["pending_rebuild"] == [] and snap["params"]["width"] == 640


def test_rebuild_rejected_with_reject_policy() -> None:
    state = LiveState(rebuild_policy="reject")
    with pytest.raises(RebuildRequired) as info:
        state.submit({"cfg_type": "full", "prompt": "x"})
    assert info.value.code == "rebuild_required" and info.value.fields == ["cfg_type"]
    assert state.version == 0 and state.params()["prompt"] == default_params()["prompt"]
    assert state.submit({"cfg_type": "self", "t_index_list": [1, 2]})["version"] == 1  # unchanged n


def test_every_change_bumps_version_and_notifies_in_order() -> None:
    state = LiveState()
    seen: list[dict[str, Any]] = []
    remove = state.add_listener(seen.append)
    state.submit({"prompt": "a"})
    state.pause()
    state.resume()
    state.set_error(PipelineError("unet exploded", fix="lower the resolution"), where="pipeline")
    state.set_error(None)
    state.set_error(None)  # already clear: no change, no event
    state.set_status("running")
    state.rebuild_done()
    assert [s["version"] for s in seen] == list(range(1, 8))
    assert seen[1]["paused"] is True and seen[2]["paused"] is False
    assert seen[3]["last_error"]["code"] == "pipeline_error"
    assert "unet exploded" in seen[3]["last_error"]["message"] and seen[3]["last_error"]["where"] == "pipeline"
    assert seen[4]["last_error"] is None and seen[5]["status"] == "running"
    remove()
    state.submit({"prompt": "b"})
    assert len(seen) == 7


def test_a_failing_listener_does_not_break_writers() -> None:
    state = LiveState()
    state.add_listener(lambda snap: 1 / 0)
    good: list[int] = []
    state.add_listener(lambda snap: good.append(snap["version"]))
    assert state.submit({"prompt": "x"})["version"] == 1
    assert good == [1]


def test_concurrent_writers_lose_nothing() -> None:
    state = LiveState()
    versions: list[int] = []
    state.add_listener(lambda snap: versions.append(snap["version"]))
    taken: dict[str, Any] = {}

    def writer(n: int) -> None:
        for i in range(200):
            state.submit({"seed": n * 1000 + i})

    def reader(stop: threading.Event) -> None:
        while not stop.is_set():
            taken.update(state.take_pending())

    stop = threading.Event()
    inference = threading.Thread(target=reader, args=(stop,))
    inference.start()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    inference.join()
    taken.update(state.take_pending())
    assert state.version == 800 and versions == list(range(1, 801))
    assert taken["seed"] == state.params()["seed"]  # the inference thread ends on the final value
