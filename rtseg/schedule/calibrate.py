"""Choosing the adaptive threshold for a target keyframe rate, from recorded opening frames.

The keyframe rate a threshold produces depends on the footage, so ``--target-keyframe-rate R``
records what the change score needs of the opening frames (pooled low features, or small grey
images for the flow residual), replays the adaptive rule over them for every candidate threshold
(each change score that occurred is a candidate) and keeps the one whose keyframe ratio is closest
to R (the larger threshold on ties: fewer deep runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

from ..errors import ConfigError

T = TypeVar("T")
Distance = Callable[[T, T], float]  # (current, keyframe) -> change score


def simulate_keyframes(
    changes: dict[tuple[int, int], float], frames: int, threshold: float, max_interval: int
) -> list[int]:
    """Keyframe indices the adaptive rule picks; ``changes[(t, k)]`` is frame t's score against k."""
    keys = [0]
    for t in range(1, frames):
        k = keys[-1]
        if t - k >= max_interval or not changes[(t, k)] <= threshold:  # NaN, inf: a keyframe, as Adaptive
            keys.append(t)
    return keys


def changes_of_latest(
    items: Sequence[T], distance: Distance, max_interval: int
) -> dict[tuple[int, int], float]:
    """Scores of the last of ``items`` against each earlier one that could still be its keyframe:
    taken as each frame is recorded, so that calibrating costs a few flows per frame instead of
    stalling one frame for all of them (225 DIS flows: 0.4 s at 480x360, 2 s at 1280x720)."""
    t = len(items) - 1
    return {(t, k): distance(items[t], items[k]) for k in range(max(0, t - max_interval + 1), t)}


def pairwise_changes(
    items: Sequence[T], distance: Distance, max_interval: int
) -> dict[tuple[int, int], float]:
    """Scores of every frame against each earlier frame that could still be its keyframe."""
    out = {}
    for t in range(len(items)):
        out.update(changes_of_latest(items[: t + 1], distance, max_interval))
    return out


def threshold_for(
    changes: dict[tuple[int, int], float], frames: int, *, target_rate: float, max_interval: int
) -> tuple[float, float]:
    """(threshold, the keyframe ratio it gives on these frames), from their pairwise scores."""
    if not 0 < target_rate <= 1:
        raise ConfigError(f"target keyframe rate must be in (0, 1], got {target_rate}")
    if frames < 2:
        raise ConfigError(f"calibration needs at least 2 frames, got {frames}")
    scored = []
    # NaN or inf scores are keyframes under any threshold, so they are no candidates (NaN breaks the sort).
    for threshold in sorted({c for c in changes.values() if math.isfinite(c)} | {0.0}):
        ratio = len(simulate_keyframes(changes, frames, threshold, max_interval)) / frames
        scored.append((abs(ratio - target_rate), -threshold, ratio))
    _, neg_threshold, ratio = min(scored)
    return -neg_threshold, ratio


def calibrate_threshold(
    items: Sequence[T], distance: Distance, *, target_rate: float, max_interval: int
) -> tuple[float, float]:
    """(threshold, the keyframe ratio it gives on these frames)."""
    if not 0 < target_rate <= 1:
        raise ConfigError(f"target keyframe rate must be in (0, 1], got {target_rate}")
    return threshold_for(
        pairwise_changes(items, distance, max_interval),
        len(items),
        target_rate=target_rate,
        max_interval=max_interval,
    )
