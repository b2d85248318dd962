"""Robust summaries of timing samples, and the rule that decides when enough were taken.

Timings on a shared machine have long right tails (other processes, frequency changes), so they
are summarised by order statistics: the median and percentiles, the interquartile range and the
median absolute deviation as spread, and a distribution-free confidence interval for the median
(binomial order statistics: no normality or independence-of-tails assumption, no resampling).

Stop rule (``StopRule.reason_to_stop``), checked after every sample:
  1. "stable" once there are at least ``min_samples`` samples and the confidence interval of the
     median has a relative half-width (max(median - low, high - median) / median) of at most
     ``rel_halfwidth``;
  2. otherwise "max samples" at ``max_samples``, or "time limit" once ``max_seconds`` have passed
     (with at least min(3, min_samples) samples), whichever comes first.
Results record which one ended them, so an unstable number is never presented as a stable one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


def _binomial_tail_rank(n: int, alpha: float) -> int:
    """The largest 1-based rank j with P(Bin(n, 1/2) <= j - 1) <= alpha / 2, or 0 when none.

    Summed in log space from 5 sqrt(n) below the mean (Hoeffding: under e^-50 of the mass lies
    below it), so O(sqrt(n)) steps: exact binomials from 0 cost O(n^2) big-integer work, and the
    stop rule runs after every frame, inside the loop whose speed it measures.
    """
    start = max(0, math.ceil(n / 2 - 5 * math.sqrt(n))) if alpha / 2 > 1e-20 else 0
    log_p = math.lgamma(n + 1) - math.lgamma(start + 1) - math.lgamma(n - start + 1) - n * math.log(2)
    cumulative = 0.0
    j = start
    for k in range(start, n + 1):
        cumulative += math.exp(log_p)
        if cumulative > alpha / 2:
            break
        j = k + 1
        if k < n:
            log_p += math.log((n - k) / (k + 1))
    return j


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A confidence interval for the median with coverage >= ``confidence``, or None (too few samples).

    It is [x_(j), x_(n+1-j)] of the sorted samples, j from the Binomial(n, 1/2) distribution of the
    number of samples below the true median. Needs n >= 6 at 95 %.
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    n = len(samples)
    if n == 0:
        return None
    j = _binomial_tail_rank(n, 1 - confidence)
    if j < 1:
        return None
    ordered = np.sort(np.asarray(samples, dtype=np.float64))
    return float(ordered[j - 1]), float(ordered[n - j])


def relative_halfwidth(samples: Sequence[float], confidence: float = 0.95) -> float | None:
    ci = median_ci(samples, confidence)
    if ci is None:
        return None
    median = float(np.median(np.asarray(samples, dtype=np.float64)))
    if median <= 0:
        return None
    return max(median - ci[0], ci[1] - median) / median


@dataclass(frozen=True)
class Summary:
    """Order statistics of n samples (milliseconds, usually)."""

    n: int
    median: float
    mean: float
    p90: float
    p99: float
    minimum: float
    maximum: float
    iqr: float  # 75th - 25th percentile
    mad: float  # median absolute deviation (unscaled)
    ci_low: float | None  # confidence interval of the median
    ci_high: float | None
    confidence: float

    @property
    def p50(self) -> float:
        return self.median

    @property
    def rel_halfwidth(self) -> float | None:
        if self.ci_low is None or self.ci_high is None or self.median <= 0:
            return None
        return max(self.median - self.ci_low, self.ci_high - self.median) / self.median

    def to_dict(self, digits: int = 3) -> dict:
        def r(v: float | None) -> float | None:
            return None if v is None else round(float(v), digits)

        return {
            "n": self.n,
            "median": r(self.median),
            "mean": r(self.mean),
            "p50": r(self.median),
            "p90": r(self.p90),
            "p99": r(self.p99),
            "min": r(self.minimum),
            "max": r(self.maximum),
            "iqr": r(self.iqr),
            "mad": r(self.mad),
            "ci_low": r(self.ci_low),
            "ci_high": r(self.ci_high),
            "confidence": self.confidence,
            "rel_halfwidth": None if self.rel_halfwidth is None else round(self.rel_halfwidth, 4),
        }


def summarize(samples: Sequence[float], confidence: float = 0.95) -> Summary:
    if len(samples) == 0:
        raise ValueError("summarize() needs at least one sample")
    x = np.asarray(samples, dtype=np.float64)
    median = float(np.median(x))
    q25, q75, p90, p99 = (float(v) for v in np.percentile(x, [25, 75, 90, 99]))
    ci = median_ci(x.tolist(), confidence)
    return Summary(
        n=int(x.size),
        median=median,
        mean=float(x.mean()),
        p90=p90,
        p99=p99,
        minimum=float(x.min()),
        maximum=float(x.max()),
        iqr=q75 - q25,
        mad=float(np.median(np.abs(x - median))),
        ci_low=None if ci is None else ci[0],
        ci_high=None if ci is None else ci[1],
        confidence=confidence,
    )


@dataclass(frozen=True)
class StopRule:
    """When a measurement has enough samples; see the module docstring for the rule."""

    min_samples: int = 10
    max_samples: int = 100
    rel_halfwidth: float = 0.025
    confidence: float = 0.95
    max_seconds: float | None = 60.0

    def __post_init__(self) -> None:
        if self.min_samples < 1:
            raise ConfigError(f"StopRule.min_samples must be >= 1, got {self.min_samples}")
        if self.max_samples < self.min_samples:
            raise ConfigError(
                f"StopRule.max_samples must be >= min_samples ({self.min_samples}), got {self.max_samples}"
            )
        if not 0 < self.rel_halfwidth < 1:
            raise ConfigError(f"StopRule.rel_halfwidth must be in (0, 1), got {self.rel_halfwidth}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"StopRule.confidence must be in (0, 1), got {self.confidence}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(f"StopRule.max_seconds must be positive or None, got {self.max_seconds}")

    def reason_to_stop(self, samples: Sequence[float], elapsed_s: float) -> str | None:
        """'stable', 'max samples' or 'time limit' when the measurement should end, else None."""
        n = len(samples)
        if n >= self.min_samples:
            width = relative_halfwidth(samples, self.confidence)
            if width is not None and width <= self.rel_halfwidth:
                return "stable"
        if n >= self.max_samples:
            return "max samples"
        if self.max_seconds is not None and elapsed_s >= self.max_seconds and n >= min(3, self.min_samples):
            return "time limit"
        return None

    def to_dict(self) -> dict:
        return {
            "min_samples": self.min_samples,
            "max_samples": self.max_samples,
            "rel_halfwidth": self.rel_halfwidth,
            "confidence": self.confidence,
            "max_seconds": self.max_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict) -> StopRule:
        return cls(**data)
