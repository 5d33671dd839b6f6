"""shift_t_index_list: a 0..1 strength onto t_index_list, keeping length and gaps (live change)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import ConfigError
from bridge.params import (NUM_LCM_STEPS, needs_rebuild, shift_t_index_list, t_index_strength,
                           validate_value)


def test_known_values() -> None:
    # span 13: the first index travels 36 (strength 0) .. 0 (strength 1)
    assert shift_t_index_list([32, 45], 0.0) == [36, 49]
    assert shift_t_index_list([32, 45], 1.0) == [0, 13]
    assert shift_t_index_list([32, 45], 0.5) == [18, 31]
    assert shift_t_index_list([32, 45], 0.25) == [27, 40]
    assert shift_t_index_list([10, 20, 30, 40], 1) == [0, 10, 20, 30]  # ints are fine
    assert shift_t_index_list([5], 0.0) == [49] and shift_t_index_list([5], 1.0) == [0]
    assert shift_t_index_list([0, 49], 0.3) == [0, 49]  # no room to move


@given(st.lists(st.integers(0, NUM_LCM_STEPS - 1), min_size=1, max_size=8, unique=True),
       st.floats(0.0, 1.0))
def test_result_is_valid_same_length_same_gaps_and_live(raw: list[int], strength: float) -> None:
    current = sorted(raw)
    shifted = shift_t_index_list(current, strength)
    assert validate_value("t_index_list", shifted) == shifted
    assert len(shifted) == len(current)
    assert [b - a for a, b in zip(shifted, shifted[1:])] == [b - a for a, b in zip(current, current[1:])]
    span = current[-1] - current[0]
    assert shifted[0] == round((1 - strength) * (NUM_LCM_STEPS - 1 - span))
    assert needs_rebuild({"t_index_list": current}, {"t_index_list": shifted}) == []
    # the inverse lands on the same list, so a fader default / readout is exact
    assert shift_t_index_list(current, t_index_strength(shifted)) == shifted


@given(st.lists(st.integers(0, NUM_LCM_STEPS - 1), min_size=2, max_size=8, unique=True),
       st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_more_strength_never_gives_larger_indices(raw: list[int], a: float, b: float) -> None:
    current = sorted(raw)
    low, high = sorted((a, b))
    assert shift_t_index_list(current, high)[0] <= shift_t_index_list(current, low)[0]


@pytest.mark.parametrize("strength", [-0.01, 1.5, math.nan, math.inf, "0.5", None, True])
def test_bad_strength_names_field_value_and_fix(strength: object) -> None:
    with pytest.raises(ConfigError) as err:
        shift_t_index_list([32, 45], strength)  # type: ignore[arg-type]
    assert err.value.fields == ["strength"]
    text = str(err.value)
    assert repr(strength) in text and "0..1" in text and "fix:" in text


@pytest.mark.parametrize("current", [[], [45, 32], [32, 50], [1.5, 3], "32,45"])
def test_bad_current_list_is_refused(current: object) -> None:
    with pytest.raises(ConfigError) as err:
        shift_t_index_list(current, 0.5)  # type: ignore[arg-type]
    assert err.value.fields == ["t_index_list"]


def test_strength_of_the_default_list() -> None:
    assert t_index_strength([32, 45]) == pytest.approx(1 - 32 / 36)
    assert t_index_strength([0, 49]) == 1.0
    with pytest.raises(ConfigError):
        t_index_strength([])
