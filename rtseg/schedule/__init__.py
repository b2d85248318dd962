"""Keyframe scheduling: run the deep stage only when needed, reuse its cached output otherwise."""

from __future__ import annotations

import inspect

import numpy as np

from ..errors import ConfigError
from .asynchronous import AsyncAdaptive
from .base import Scheduler, ScheduleStats
from .calibrate import calibrate_threshold
from .change import ChangeMeasure, Summary
from .flow import DEFAULT_STRIDE, FlowWarp, check_stride
from .policies import (
    CHANGES,
    DEFAULT_INTERVAL,
    DEFAULT_MAX_INTERVAL,
    DEFAULT_THRESHOLD,
    Adaptive,
    Clockwork,
    Every,
)

SCHEDULERS = ("every", "clockwork", "adaptive", "async")


def make_scheduler(
    name: str = "every",
    *,
    interval: int | None = None,
    threshold: float | None = None,
    max_interval: int | None = None,
    target_keyframe_rate: float | None = None,
    warp: bool | None = None,
    flow_stride: int | None = None,
    change: str | None = None,
    change_feature: str | None = None,
    change_pool: int | None = None,
) -> Scheduler:
    """A scheduler by name; an option that does not apply to it is an error, not ignored.

    ``warp`` (the DIS-flow warp of cached deep features) defaults to on for every scheduler that
    reuses a cache: on CamVid it bought 1-5 mIoU at the same keyframe ratio for about 2 % of the
    per-frame cost (docs/scheduling.md). With it, the adaptive change score defaults to the flow
    residual. ``flow_stride`` (default 4) downscales the frames the flow is computed on: the flow
    costs about 1 ms at 480x360 and 12 ms at 2048x1024 at stride 4, a third of that at 8.
    """
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    adaptive_only = {
        "threshold": threshold,
        "max_interval": max_interval,
        "target_keyframe_rate": target_keyframe_rate,
        "change": change,
        "change_feature": change_feature,
        "change_pool": change_pool,
    }
    # change with its value: a bare "change" is a word of prose too, which the CLI cannot tell
    # from the keyword (it names it --change flow)
    given = sorted(f"change={v!r}" if k == "change" else k for k, v in adaptive_only.items() if v is not None)
    if name not in ("adaptive", "async") and given:
        verb = "applies" if len(given) == 1 else "apply"
        raise ConfigError(
            f"{', '.join(given)} {verb} only to the adaptive and async schedulers, not to {name!r}"
        )
    if name != "clockwork" and interval is not None:
        raise ConfigError(f"interval applies to the clockwork scheduler, not {name!r}")
    if warp is not None and not isinstance(warp, bool | np.bool_):  # "no" would turn it on
        raise ConfigError(f"warp must be True, False or None (the scheduler's default), got {warp!r}")
    if name == "every" and warp:
        raise ConfigError(
            "warp=True (the flow warp) needs cached deep features: use it with clockwork, adaptive or async"
        )
    use_warp = name != "every" if warp is None else warp
    if flow_stride is not None and not use_warp:
        raise ConfigError(f"flow_stride applies to the flow warp, which {name!r} here does not use")
    if flow_stride is not None:
        check_stride(flow_stride, "flow_stride")
    # The keywords name these errors (the CLI turns them into its flags): Adaptive's own, which
    # name its FlowWarp and ChangeMeasure arguments, would not say which keyword to change.
    if name in ("adaptive", "async") and (change or ("flow" if use_warp else "features")) == "flow":
        if not use_warp:
            raise ConfigError(
                "change='flow' (the flow residual) needs the flow warp, which warp=False turns off: "
                "leave the warp on, or use change='features'"
            )
        measured = sorted(k for k in ("change_feature", "change_pool") if adaptive_only[k] is not None)
        if measured:
            verb = "applies" if len(measured) == 1 else "apply"
            raise ConfigError(
                f"{', '.join(measured)} {verb} to the low-feature change score, not to change='flow' "
                "(the flow residual, the default with the warp): use change='features', or warp=False"
            )
    flow = FlowWarp(stride=DEFAULT_STRIDE if flow_stride is None else flow_stride) if use_warp else None
    if name == "every":
        return Every()
    if name == "clockwork":
        return Clockwork(DEFAULT_INTERVAL if interval is None else interval, warp=flow)
    measure = None
    if change_feature is not None or change_pool is not None:
        measure = ChangeMeasure(feature=change_feature, pool=4 if change_pool is None else change_pool)
    cls = Adaptive if name == "adaptive" else AsyncAdaptive
    return cls(
        threshold,
        max_interval=DEFAULT_MAX_INTERVAL if max_interval is None else max_interval,
        target_keyframe_rate=target_keyframe_rate,
        measure=measure,
        warp=flow,
        change=change,
    )


# make_scheduler's options, read from its signature so that this list cannot drift from it:
# Segmenter tells them apart from engine options by it.
SCHEDULER_OPTIONS = tuple(
    p.name for p in inspect.signature(make_scheduler).parameters.values() if p.kind is p.KEYWORD_ONLY
)

__all__ = [
    "CHANGES",
    "DEFAULT_INTERVAL",
    "DEFAULT_MAX_INTERVAL",
    "DEFAULT_THRESHOLD",
    "SCHEDULERS",
    "SCHEDULER_OPTIONS",
    "Adaptive",
    "AsyncAdaptive",
    "ChangeMeasure",
    "Clockwork",
    "Every",
    "FlowWarp",
    "ScheduleStats",
    "Scheduler",
    "Summary",
    "calibrate_threshold",
    "make_scheduler",
]
