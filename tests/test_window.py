from __future__ import annotations

import numpy as np
import pytest

from rtseg.errors import ConfigError
from rtseg.window import RecentSamples


def test_the_window_keeps_the_newest_values_in_order() -> None:
    window = RecentSamples(capacity=4)
    assert len(window) == 0 and window.last().size == 0 and np.isnan(window.percentile(50))
    for v in range(1, 4):
        window.add(v)
    np.testing.assert_array_equal(window.last(), [1, 2, 3])
    for v in range(4, 11):
        window.add(v)
    assert len(window) == 10  # every value counted, only 4 held
    np.testing.assert_array_equal(window.last(), [7, 8, 9, 10])
    np.testing.assert_array_equal(window.last(2), [9, 10])
    np.testing.assert_array_equal(window.last(99), [7, 8, 9, 10])
    assert window.percentile(50) == 8.5 and window.percentile(50, n=2) == 9.5 and window.max() == 10


@pytest.mark.parametrize("n", [1, 3, 5, 6, 7])
def test_last_across_the_wrap_matches_a_list(n: int) -> None:
    window, reference = RecentSamples(capacity=5), []
    for v in range(13):
        window.add(v)
        reference.append(v)
        np.testing.assert_array_equal(window.last(n), reference[-5:][-n:])


def test_memory_does_not_grow_with_the_count() -> None:
    window = RecentSamples(capacity=100)
    for v in range(100_000):
        window.add(float(v))
    assert window.last().nbytes == 800 and window.last()[0] == 99_900.0


@pytest.mark.parametrize("capacity", [0, -3, 2.5, True, "10"])
def test_capacity_must_be_a_positive_whole_number(capacity) -> None:
    with pytest.raises(ConfigError, match=f"capacity must be a whole number >= 1, got {capacity!r}"):
        RecentSamples(capacity=capacity)
