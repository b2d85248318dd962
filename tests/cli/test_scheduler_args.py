"""The keyframe-scheduling flags, declared once for `rtseg run`, `rtseg eval` and `rtseg serve`."""

from __future__ import annotations

import argparse

import pytest

from rtseg.cli import build_parser
from rtseg.schedule import DEFAULT_INTERVAL, Clockwork, make_scheduler


def _scheduling_help(command: str) -> dict[str, str | None]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    group = next(g for g in sub.choices[command]._action_groups if g.title == "keyframe scheduling")
    return {a.option_strings[0]: a.help for a in group._group_actions}


def test_run_eval_and_serve_describe_the_scheduling_flags_alike() -> None:
    """serve declared its own --interval, --threshold, --max-interval and --warp, worded apart from
    run's, and lacked --target-keyframe-rate, --flow-stride and --change."""
    run, serve, evaluate = (_scheduling_help(c) for c in ("run", "serve", "eval"))
    assert list(serve) == list(run) == list(evaluate)
    # --scheduler's choices, default and subject are the command's own
    shared = [flag for flag in run if flag != "--scheduler"]
    assert {f: evaluate[f] for f in shared} == {f: run[f] for f in shared}
    # the same words, but for the schedulers named: serve offers no async
    assert {f: serve[f] for f in shared} == {
        f: (run[f] or "").replace("adaptive/async", "adaptive") for f in shared
    }
    assert "async" not in " ".join(serve[f] or "" for f in shared)


def test_the_interval_help_states_the_default_the_scheduler_uses() -> None:
    """The default interval 4 was written in make_scheduler, Clockwork and the help separately."""
    assert f"(default {DEFAULT_INTERVAL})" in (_scheduling_help("run")["--interval"] or "")
    assert make_scheduler("clockwork").interval == Clockwork().interval == DEFAULT_INTERVAL


def test_the_input_size_is_looked_up_only_when_the_scheduler_refuses_some() -> None:
    """`rtseg run` builds the network from the weights to learn their size: not for a stride that
    runs at any size (the default, or no warp)."""
    from rtseg.cli.scheduler_args import check_scheduler_size
    from rtseg.errors import ConfigError

    def size() -> tuple[int, int]:
        raise AssertionError("the input size was looked up for a scheduler that runs at any size")

    for scheduler in (make_scheduler("adaptive"), make_scheduler("clockwork", warp=False)):
        check_scheduler_size(scheduler, size)
    with pytest.raises(ConfigError, match=r"^--flow-stride 8 leaves a 8x6 flow image at input 64x48"):
        check_scheduler_size(make_scheduler("clockwork", flow_stride=8), lambda: (64, 48))
