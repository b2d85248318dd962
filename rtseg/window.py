"""``RecentSamples``: the newest N values of a measurement in one fixed array.

A robot or a car runs the pipeline for days: latency percentiles come from the most recent samples
(by default 100,000, about 55 minutes at 30 FPS), so memory and the cost of a percentile stay flat.
"""

from __future__ import annotations

import numbers

import numpy as np

from .errors import ConfigError

DEFAULT_CAPACITY = 100_000


class RecentSamples:
    """A ring buffer of floats; not thread-safe (callers that share one hold their own lock)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, numbers.Integral) or capacity < 1:
            raise ConfigError(f"RecentSamples capacity must be a whole number >= 1, got {capacity!r}")
        self._values = np.empty(capacity, dtype=np.float64)
        self._count = 0  # every value ever added

    def add(self, value: float) -> None:
        self._values[self._count % self._values.size] = value
        self._count += 1

    def __len__(self) -> int:
        """How many values were added in all (the window holds at most ``capacity`` of them)."""
        return self._count

    def last(self, n: int | None = None) -> np.ndarray:
        """The newest ``n`` values (all that the window holds when None), oldest first, as a copy."""
        size = self._values.size
        held = min(self._count, size)
        n = held if n is None else max(0, min(n, held))
        end = self._count % size
        if n <= end:
            return self._values[end - n : end].copy()
        return np.concatenate((self._values[size - (n - end) :], self._values[:end]))

    def percentile(self, q: float, n: int | None = None) -> float:
        """The q-th percentile of the newest ``n`` values (of the window when None); nan when empty."""
        values = self.last(n)
        return float(np.percentile(values, q)) if values.size else float("nan")

    def max(self) -> float:
        values = self.last()
        return float(values.max()) if values.size else float("nan")
