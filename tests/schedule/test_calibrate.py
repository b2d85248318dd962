from __future__ import annotations

import numpy as np
import pytest

from rtseg.errors import ConfigError
from rtseg.schedule import ChangeMeasure, calibrate_threshold
from rtseg.schedule.calibrate import pairwise_changes, simulate_keyframes


def _summaries(values: list[float]):
    m = ChangeMeasure(pool=1)
    return m, [m.summarize(np.full((1, 1, 2, 2), 1.0 + v, np.float32)) for v in values]


def test_simulation_follows_the_adaptive_rule() -> None:
    m, s = _summaries([0, 0, 0.5, 0.5, 0.5, 2, 2])
    changes = pairwise_changes(s, m.distance, max_interval=10)
    assert changes[(2, 0)] == pytest.approx(0.5)
    assert simulate_keyframes(changes, 7, threshold=0.4, max_interval=10) == [0, 2, 5]
    assert simulate_keyframes(changes, 7, threshold=0.4, max_interval=2) == [0, 2, 4, 5]
    assert simulate_keyframes(changes, 7, threshold=10, max_interval=10) == [0]


def test_threshold_reaches_the_target_rate() -> None:
    rng = np.random.default_rng(0)
    m, s = _summaries(list(np.cumsum(rng.uniform(0, 0.1, 40))))
    for target in (0.1, 0.25, 0.5):
        threshold, ratio = calibrate_threshold(s, m.distance, target_rate=target, max_interval=20)
        assert abs(ratio - target) <= 0.05
        keys = simulate_keyframes(pairwise_changes(s, m.distance, 20), 40, threshold, 20)
        assert len(keys) / 40 == ratio


def test_bad_targets() -> None:
    m, s = _summaries([0, 1])
    with pytest.raises(ConfigError):
        calibrate_threshold(s, m.distance, target_rate=0, max_interval=5)
    with pytest.raises(ConfigError):
        calibrate_threshold(s[:1], m.distance, target_rate=0.5, max_interval=5)


def test_non_finite_scores_count_as_keyframes_and_are_no_candidates() -> None:
    """A NaN score sorted among the candidates (NaN breaks the order) and never counted as change;
    inf was a candidate threshold under which nothing is ever a keyframe."""
    values = [0.0, 1.0, float("nan"), 2.0, 3.0, float("inf"), 4.0, 5.0]

    def distance(a: float, b: float) -> float:
        return abs(a - b)

    changes = pairwise_changes(values, distance, max_interval=10)
    assert simulate_keyframes(changes, len(values), threshold=100.0, max_interval=10) == [0, 2, 3, 5, 6]
    threshold, ratio = calibrate_threshold(values, distance, target_rate=0.5, max_interval=10)
    assert np.isfinite(threshold)
    assert ratio == len(simulate_keyframes(changes, len(values), threshold, 10)) / len(values)
