"""Sweep planning: every combination, scheduler comparisons wired to their 'every' reference."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from rtseg.bench.runner import Planned, SweepSpec, one_line, plan, run_planned
from rtseg.errors import ConfigError


def test_every_combination_in_order(tmp_path: Path) -> None:
    spec = SweepSpec(
        models=("espnet", "enet"), backends=("torch", "onnxruntime"), sizes=((64, 48), (128, 96))
    )
    planned = plan(spec, tmp_path)
    assert len(planned) == 2 * 2 * 2
    assert [p.config.label for p in planned[:3]] == [
        "espnet torch fp32 64x48 every",
        "espnet torch fp32 128x96 every",
        "espnet onnxruntime fp32 64x48 every",
    ]
    assert all(p.config.engine and p.config.pipeline and not p.config.fixed_frames for p in planned)
    assert all(p.config.reference_in is None and p.config.reference_out is None for p in planned)


def test_scheduler_comparison_runs_every_first_on_the_same_frames(tmp_path: Path) -> None:
    spec = SweepSpec(models=("espnet",), schedulers=("adaptive", "every", "clockwork"))
    planned = plan(spec, tmp_path)
    cfgs = [p.config for p in planned]
    assert [c.scheduler for c in cfgs] == ["every", "adaptive", "clockwork"]
    assert all(c.fixed_frames for c in cfgs)
    ref = cfgs[0].reference_out
    assert ref is not None and Path(ref).parent == tmp_path
    assert [c.reference_in for c in cfgs[1:]] == [ref, ref]
    assert [c.engine for c in cfgs] == [True, False, False]  # the engine-only time is scheduler-free
    assert "same engine" in planned[1].notes[0]


def test_comparison_without_every_says_agreement_is_missing(tmp_path: Path) -> None:
    planned = plan(SweepSpec(models=("espnet",), schedulers=("clockwork", "adaptive")), tmp_path)
    assert all(p.config.reference_in is None for p in planned)
    assert all(any("needs 'every'" in n for n in p.notes) for p in planned)


def test_spec_validation() -> None:
    with pytest.raises(ConfigError, match="one model"):
        SweepSpec(models=("espnet", "enet"), weights="w.pt")
    with pytest.raises(ConfigError, match="backends"):
        SweepSpec(models=("espnet",), backends=())
    with pytest.raises(ConfigError, match="twice"):
        SweepSpec(models=("espnet", "espnet"))


def test_an_engine_only_sweep_takes_one_scheduler() -> None:
    """Engine-only timing was repeated per scheduler and labelled with each one's name: the same
    engine timed three times read as 13.92, 10.02 and 4.42 FPS for every, clockwork, adaptive."""
    message = r"--engine-only times the engine alone.*got --scheduler every clockwork adaptive\)"
    with pytest.raises(ConfigError, match=message):
        SweepSpec(models=("espnet",), schedulers=("every", "clockwork", "adaptive"), pipeline=False)
    one = SweepSpec(models=("espnet",), schedulers=("clockwork",), pipeline=False)
    assert one.schedulers == ("clockwork",)


def test_run_planned_keeps_order_and_adds_notes(tmp_path: Path) -> None:
    planned = plan(SweepSpec(models=("espnet",), schedulers=("every", "clockwork")), tmp_path)
    seen = []

    def fake(cfg):
        seen.append(cfg.scheduler)
        return {"label": cfg.label, "status": "skipped", "reason": "test", "notes": ["from runner"]}

    results = run_planned(planned, progress=False, runner=fake)
    assert seen == ["every", "clockwork"]
    assert results[1]["notes"][0] == "from runner" and "same engine" in results[1]["notes"][1]
    assert one_line(results[0]) == "  espnet torch fp32 default every: skipped: test"
    assert isinstance(planned[0], Planned)


@pytest.mark.parametrize("isolated", [True, False])
def test_results_say_whether_their_memory_was_measured_in_process(tmp_path: Path, isolated: bool) -> None:
    """--in-process peak RSS kept what earlier configurations left (espnet: 437 MiB after enet,
    285 alone) and nothing said so."""
    planned = plan(SweepSpec(models=("espnet", "enet")), tmp_path)

    def fake(cfg):
        memory = {"peak_rss_mib": 300.0, "process_peak_rss_mib": 310.0, "gpu_peak_mib": None}
        return {"label": cfg.label, "status": "ok", "reason": None, "notes": [], "memory": memory}

    results = run_planned(planned, isolated=isolated, progress=False, runner=fake)
    assert [r["memory"]["in_process"] for r in results] == [not isolated] * 2


def test_the_bar_is_drawn_on_a_terminal_only_and_each_result_always_said(
    tmp_path: Path, stderr_terminal: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", stderr_terminal)
    planned = plan(SweepSpec(models=("espnet", "enet")), tmp_path)

    def fake(cfg):
        return {"label": cfg.label, "status": "skipped", "reason": "test", "notes": []}

    results = run_planned(planned, runner=fake)
    said = stderr_terminal.getvalue()
    assert ("\r" in said) is stderr_terminal.isatty()  # a log kept every redraw of the bar
    assert all(said.count(one_line(r) + "\n") == 1 for r in results)
