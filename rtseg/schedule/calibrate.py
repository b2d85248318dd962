"""Choosing the adaptive threshold for a target keyframe rate, from recorded feature summaries.

The keyframe rate a threshold produces depends on the footage, so ``--target-keyframe-rate R``
records the pooled low features of the opening frames, replays the adaptive rule over them for
every candidate threshold (each change score that occurred is a candidate) and keeps the one whose
keyframe ratio is closest to R (the larger threshold on ties: fewer deep runs).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError
from .change import ChangeMeasure, Summary


def simulate_keyframes(changes: dict[tuple[int, int], float], frames: int, threshold: float,
                       max_interval: int) -> list[int]:
    """Keyframe indices the adaptive rule picks; ``changes[(t, k)]`` is frame t's score against k."""
    keys = [0]
    for t in range(1, frames):
        k = keys[-1]
        if t - k >= max_interval or changes[(t, k)] > threshold:
            keys.append(t)
    return keys


def pairwise_changes(summaries: Sequence[Summary], measure: ChangeMeasure,
                     max_interval: int) -> dict[tuple[int, int], float]:
    """Scores of every frame against each earlier frame that could still be its keyframe."""
    out = {}
    for t in range(len(summaries)):
        for k in range(max(0, t - max_interval + 1), t):
            out[(t, k)] = measure.distance(summaries[t], summaries[k])
    return out


def calibrate_threshold(summaries: Sequence[Summary], measure: ChangeMeasure, *, target_rate: float,
                        max_interval: int) -> tuple[float, float]:
    """(threshold, the keyframe ratio it gives on these frames)."""
    if not 0 < target_rate <= 1:
        raise ConfigError(f"target keyframe rate must be in (0, 1], got {target_rate}")
    n = len(summaries)
    if n < 2:
        raise ConfigError(f"calibration needs at least 2 frames, got {n}")
    changes = pairwise_changes(summaries, measure, max_interval)
    candidates = sorted(set(changes.values()) | {0.0})
    scored = []
    for threshold in candidates:
        ratio = len(simulate_keyframes(changes, n, threshold, max_interval)) / n
        scored.append((abs(ratio - target_rate), -threshold, ratio))
    _, neg_threshold, ratio = min(scored)
    return -neg_threshold, ratio
