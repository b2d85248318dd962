"""Order statistics, the median's confidence interval and the stop rule."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from rtseg.bench.stats import StopRule, median_ci, relative_halfwidth, summarize
from rtseg.errors import ConfigError


def test_median_ci_uses_binomial_ranks() -> None:
    # n = 10 at 95 %: P(Bin(10, 1/2) <= 1) = 11/1024 <= 0.025 < P(<= 2) = 56/1024, so ranks 2 and 9.
    samples = [10.0, 1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0, 5.0]
    assert median_ci(samples, 0.95) == (2.0, 9.0)


def test_median_ci_needs_six_samples_at_95_percent() -> None:
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) is None  # 2 * 2**-5 > 0.05: no interval exists
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == (1.0, 6.0)
    assert median_ci([]) is None


def test_median_ci_covers_the_true_median_and_narrows() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(300):
        x = rng.exponential(1.0, size=40)  # skewed, like latencies; true median ln 2
        lo, hi = median_ci(x.tolist())
        hits += lo <= math.log(2) <= hi
    assert hits / 300 >= 0.93  # nominal coverage >= 95 %, allow sampling noise
    small = relative_halfwidth(rng.normal(100, 5, 20).tolist())
    large = relative_halfwidth(rng.normal(100, 5, 2000).tolist())
    assert small is not None and large is not None and large < small / 4


def test_median_ci_of_a_long_run_is_exact_and_cheap() -> None:
    # The stop rule runs after every frame, inside the loop whose FPS it reports: exact big-integer
    # binomials took 3 s per check at 10,000 frames (0.1 s at 3,000), and the FPS fell with the run.
    samples = np.random.default_rng(0).permutation(10_000).astype(float).tolist()
    rule = StopRule(min_samples=10, max_samples=20_000, rel_halfwidth=0.001, max_seconds=None)
    start = time.perf_counter()
    assert median_ci(samples) == (4901.0, 5098.0)  # 1-based ranks 4902 and 5099, as exact sums give
    assert rule.reason_to_stop(samples, 0.0) is None  # half-width 2 %: not stable
    assert time.perf_counter() - start < 0.5  # milliseconds now


def test_summarize_reports_spread() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0, 5.0, 6.0])
    assert s.n == 7 and s.median == 4.0 and s.p50 == 4.0
    assert s.minimum == 1.0 and s.maximum == 100.0
    assert s.iqr == pytest.approx(5.5 - 2.5)
    assert s.mad == 2.0  # |x - 4| = 3 2 1 0 96 1 2 -> median 2
    d = s.to_dict()
    assert d["ci_low"] == 1.0 and d["ci_high"] == 100.0 and d["p99"] > d["p90"]
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_stop_rule_reasons() -> None:
    rule = StopRule(min_samples=8, max_samples=50, rel_halfwidth=0.02, max_seconds=5.0)
    steady = [10.0 + 0.01 * (i % 3) for i in range(8)]
    assert rule.reason_to_stop(steady[:7], 0.1) is None  # below the minimum
    assert rule.reason_to_stop(steady, 0.1) == "stable"
    noisy = [10.0, 30.0] * 25
    assert rule.reason_to_stop(noisy[:20], 0.1) is None
    assert rule.reason_to_stop(noisy, 0.1) == "max samples"
    assert rule.reason_to_stop(noisy[:3], 6.0) == "time limit"
    assert rule.reason_to_stop(noisy[:2], 6.0) is None  # at least three samples even past the limit
    assert StopRule.from_dict(rule.to_dict()) == rule


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_samples": 0}, "min_samples"),
        ({"min_samples": 10, "max_samples": 5}, "max_samples"),
        ({"rel_halfwidth": 0.0}, "rel_halfwidth"),
        ({"confidence": 1.0}, "confidence"),
        ({"max_seconds": -1.0}, "max_seconds"),
    ],
)
def test_stop_rule_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        StopRule(**kwargs)
