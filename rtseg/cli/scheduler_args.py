"""The keyframe-scheduling options, declared once for every command that schedules keyframes
(`rtseg run`, `rtseg eval --sequence`, `rtseg serve`), and the scheduler they describe."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError
from ..schedule import (
    CHANGES,
    DEFAULT_INTERVAL,
    DEFAULT_MAX_INTERVAL,
    DEFAULT_THRESHOLD,
    SCHEDULERS,
    Scheduler,
    make_scheduler,
)
from ..schedule.flow import DEFAULT_STRIDE
from .common import scheduler_flags

# The schedulers that take the change-threshold options (make_scheduler refuses them elsewhere).
_ADAPTIVE = ("adaptive", "async")
# Those options, as the flags the user typed and the attributes argparse fills.
_ADAPTIVE_ONLY = (
    ("--threshold", "threshold"),
    ("--max-interval", "max_interval"),
    ("--target-keyframe-rate", "target_keyframe_rate"),
    ("--change", "change"),
)


def _check_choices(choices: Sequence[str], default: str) -> None:
    """A command's own declaration (not user input) is checked: a typo there would offer a
    scheduler make_scheduler refuses."""
    if not choices or any(c not in SCHEDULERS for c in choices):
        raise ConfigError(f"scheduler choices must be some of {SCHEDULERS}, got {tuple(choices)}")
    if default not in choices:
        raise ConfigError(f"the default scheduler {default!r} is not among the choices {tuple(choices)}")


def add_scheduler_args(
    parser: argparse.ArgumentParser,
    *,
    default: str,
    choices: Sequence[str] = SCHEDULERS,
    what: str = "keyframe schedule",
) -> tuple[argparse.Action, ...]:
    """Add the keyframe-scheduling options, offering the schedulers ``choices`` (``default``
    unless one is given); ``what`` starts --scheduler's help (what the schedule applies to). The
    options are returned, so that a command can tell which of them were given (``given_options``).
    The other options' help is the same in every command, but for the schedulers it names: those
    among ``choices``."""
    _check_choices(choices, default)
    adaptive = "/".join(s for s in _ADAPTIVE if s in choices) or "adaptive"
    g = parser.add_argument_group("keyframe scheduling")
    actions: list[argparse.Action] = []

    def add(*names: str, **options: Any) -> None:
        actions.append(g.add_argument(*names, **options))

    add("--scheduler", choices=tuple(choices), default=default, help=f"{what} (default: {default})")
    add(
        "--interval",
        type=int,
        default=None,
        help=f"clockwork: a keyframe every K frames (default {DEFAULT_INTERVAL})",
    )
    add(
        "--threshold",
        type=float,
        default=None,
        help=f"{adaptive}: change threshold T of the --change score (default {DEFAULT_THRESHOLD['flow']:g} "
        f"for flow, {DEFAULT_THRESHOLD['features']:g} for features)",
    )
    add(
        "--max-interval",
        type=int,
        default=None,
        help=f"{adaptive}: keyframe at least every N frames (default {DEFAULT_MAX_INTERVAL})",
    )
    add(
        "--target-keyframe-rate",
        type=float,
        default=None,
        help=f"{adaptive}: calibrate T on the opening frames to reach this keyframe rate "
        "(at least 1/--max-interval)",
    )
    add(
        "--warp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="warp cached deep features along DIS optical flow (default: on, except for every)",
    )
    add(
        "--flow-stride",
        type=int,
        default=None,
        help=f"downscale frames by N for the warp's optical flow (default {DEFAULT_STRIDE}; 8 costs a "
        "third at large inputs)",
    )
    add(
        "--change",
        choices=CHANGES,
        default=None,
        help=f"{adaptive} change score: flow residual (default with --warp) or low features",
    )
    return tuple(actions)


def given_options(actions: tuple[argparse.Action, ...], args: argparse.Namespace) -> list[str]:
    """The ``actions`` that ``args`` sets to other than their defaults, as typed."""
    given = []
    for action in actions:
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            given.append(action.option_strings[0] if value else action.option_strings[1])
        else:
            given.append(f"{action.option_strings[0]} {value}")
    return given


def scheduler_from_args(args: argparse.Namespace, *, choices: Sequence[str] = SCHEDULERS) -> Scheduler:
    """The scheduler the options of ``add_scheduler_args`` describe (``choices`` as given there);
    a bad combination is a ConfigError naming the flags."""
    takers = [s for s in _ADAPTIVE if s in choices]
    if takers and args.scheduler not in takers and takers != list(_ADAPTIVE):
        # make_scheduler's refusal names "the adaptive and async schedulers", and one of them is
        # not offered here (serve has no async): say which --scheduler of this command takes them.
        given = [flag for flag, dest in _ADAPTIVE_ONLY if getattr(args, dest) is not None]
        if given:
            flags = given[0] if len(given) == 1 else f"{', '.join(given[:-1])} and {given[-1]}"
            verb = "applies" if len(given) == 1 else "apply"
            raise ConfigError(
                f"{flags} {verb} only to --scheduler {' or '.join(takers)}, not {args.scheduler}"
            )
    with scheduler_flags():
        return make_scheduler(
            args.scheduler,
            interval=args.interval,
            threshold=args.threshold,
            max_interval=args.max_interval,
            target_keyframe_rate=args.target_keyframe_rate,
            warp=args.warp,
            flow_stride=args.flow_stride,
            change=args.change,
        )


def check_scheduler_size(scheduler: Scheduler, size: tuple[int, int] | Callable[[], tuple[int, int]]) -> None:
    """Refuse, naming the flags, a scheduler that cannot run at the engine's input size before the
    engine loads (after it, a --flow-stride too large was refused only once the build, and auto's
    timing runs, had taken seconds). ``size`` is (w, h), or a function that finds it (reads the
    weights), called only when the scheduler refuses some size."""
    if not scheduler.limits_input_size:
        return
    w, h = size() if callable(size) else size
    with scheduler_flags():
        scheduler.check_input_size(w, h)
