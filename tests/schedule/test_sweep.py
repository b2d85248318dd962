"""The sweep replays schedules from memoised heads: it must score exactly like the real schedulers."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import weakref
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtseg.data.datasets import Sample
from rtseg.errors import DatasetError
from rtseg.schedule import Adaptive, ChangeMeasure, Clockwork, Every, FlowWarp, sweep
from rtseg.schedule.calibrate import simulate_keyframes
from rtseg.schedule.sequence import evaluate_sequence
from rtseg.schedule.sweep import (
    FLOW_GRID,
    ORACLE,
    Point,
    at_threshold,
    clockwork_keys,
    frontier_at,
    gains_over_clockwork,
    main,
    markdown,
    paired_gain,
    plot,
    run_study,
    source_frames,
    threshold_curve,
    threshold_rows,
)
from rtseg.source import open_source


@pytest.fixture(scope="module")
def study(engine, drive):
    rng = np.random.default_rng(2)
    images = drive[:10]
    labels = [rng.integers(0, 19, (48, 64), dtype=np.uint8) for _ in images]
    study, points = run_study(
        engine, images, labels, max_interval=4, variants=[("l1_cat", 4)], warp=True, progress=lambda _: None
    )
    samples = [Sample(str(i), im, lab) for i, (im, lab) in enumerate(zip(images, labels, strict=True))]
    return study, points, samples


def test_replayed_clockwork_equals_the_real_scheduler(engine, study) -> None:
    _, points, samples = study
    every: list[np.ndarray] = []
    evaluate_sequence(engine, samples, Every(), keep_labels=every)
    real = evaluate_sequence(engine, samples, Clockwork(3), reference=every)
    replay = next(p for p in points if p.family == "clockwork" and p.parameter == 3)
    assert replay.keyframes == real.keyframes
    assert replay.miou == pytest.approx(100 * real.scores.miou, abs=1e-9)
    assert replay.agreement == pytest.approx(100 * real.agreement.miou, abs=1e-9)


def test_replayed_adaptive_equals_the_real_scheduler(engine, study) -> None:
    _, points, samples = study
    curve = [p for p in points if p.family == "adaptive l1_cat/4"]
    assert curve[0].keyframes <= curve[-1].keyframes == len(samples)
    middle = curve[len(curve) // 2]
    real = evaluate_sequence(
        engine, samples, Adaptive(middle.parameter, max_interval=4, measure=ChangeMeasure("l1_cat", 4))
    )
    assert real.keyframes == middle.keyframes
    assert middle.miou == pytest.approx(100 * real.scores.miou, abs=1e-9)


def test_replayed_flow_residual_equals_the_real_scheduler(engine, study) -> None:
    _, points, samples = study
    curve = [p for p in points if p.family == "adaptive flow-residual + warp"]
    assert curve
    middle = curve[len(curve) // 2]
    real = evaluate_sequence(engine, samples, Adaptive(middle.parameter, max_interval=4, warp=FlowWarp()))
    assert real.keyframes == middle.keyframes
    assert middle.miou == pytest.approx(100 * real.scores.miou, abs=1e-9)


def test_oracle_scores_a_cached_frame_by_its_label_disagreement(study) -> None:
    s, points, samples = study
    curve = [p for p in points if p.family == ORACLE]
    # Threshold 0: a frame is reused only when its cached labels equal the every-frame labels.
    assert curve[-1].agreement == pytest.approx(100.0)
    # Above every score only the maximum interval makes keyframes: clockwork at that interval.
    fewest = curve[0]
    clockwork = next(p for p in points if p.family == "clockwork + warp" and p.parameter == s.max_interval)
    assert fewest.keyframes == len(clockwork_keys(len(samples), s.max_interval)) == clockwork.keyframes
    assert fewest.miou == pytest.approx(clockwork.miou)
    assert fewest.agreement == pytest.approx(clockwork.agreement)


def test_costs_frontier_and_plot(study, tmp_path) -> None:
    s, points, _ = study
    assert set(s.stage_ms) == {"low", "deep", "head"} and s.warp_ms > 0
    every = next(p for p in points if p.family == "every")
    cheaper = [p for p in points if p.family == "clockwork"]
    assert all(p.ms_per_frame < every.ms_per_frame for p in cheaper)
    assert any(p.family == "clockwork + warp" for p in points)
    best = frontier_at(points, "clockwork", 0.5)
    assert isinstance(best, Point) and best.ratio <= 0.5
    out = tmp_path / "plot.png"
    plot(points, ["clockwork", "adaptive l1_cat/4"], out, "test")
    assert out.stat().st_size > 1000


def test_clockwork_phases_shift_the_keyframes_after_frame_0() -> None:
    assert clockwork_keys(10, 3) == clockwork_keys(10, 3, 0) == [0, 3, 6, 9]
    assert clockwork_keys(10, 3, 1) == [0, 1, 4, 7]
    assert clockwork_keys(10, 3, 2) == [0, 2, 5, 8]


def test_paired_gain_of_clockwork_against_itself_is_exactly_zero(study) -> None:
    s, _, samples = study
    keys = clockwork_keys(len(samples), 3)
    g = paired_gain(s, [keys], 3, True, rounds=50)
    assert g.gain == g.low == g.high == 0.0
    # all three phases give 4 keyframes in 10 frames (as in the test above); phase 0 is the schedule
    phases = [s.score(clockwork_keys(len(samples), 3, p), True)[0] for p in range(3)]
    assert g.phases == pytest.approx(phases)


def test_paired_gain_is_the_mean_adaptive_score_minus_clockwork(study) -> None:
    s, _, samples = study
    others = [[0, 1, 3, 5, 7], [0, 3, 5, 7, 9]]
    g = paired_gain(s, others, 2, False, rounds=200, seed=1)
    clockwork = s.score(clockwork_keys(len(samples), 2), False)[0]
    assert g.gain == pytest.approx(np.mean([s.score(k, False)[0] for k in others]) - clockwork)
    assert g.low <= g.high and g.keyframes == 5 and g.interval == 2
    with pytest.raises(ValueError, match="5 keyframes"):
        paired_gain(s, [[0, 4]], 2, False)


def test_gains_are_reported_for_every_matched_interval(study, tmp_path) -> None:
    s, points, samples = study
    family = "adaptive flow-residual + warp"
    gains = gains_over_clockwork(s, points, family, True)
    counts = {p.keyframes for p in points if p.family == family}
    n = len(samples)
    assert [g.interval for g in gains] == [k for k in range(2, 5) if len(clockwork_keys(n, k)) in counts]
    for g in gains:
        same = [p.miou for p in points if p.family == family and p.keyframes == g.keyframes]
        clockwork = next(p for p in points if p.family == "clockwork + warp" and p.parameter == g.interval)
        assert g.gain == pytest.approx(np.mean(same) - clockwork.miou)
    out = tmp_path / "phases.png"
    plot(points, ["clockwork + warp", family], out, "test", phases={"clockwork + warp": gains})
    assert out.stat().st_size > 1000
    payload = {
        "frames": n,
        "points": [{**p.__dict__, "ratio": p.ratio} for p in points],
        "gains": {family: [g.__dict__ for g in gains]},
    }
    costs = dict.fromkeys(("low", "deep", "head", "change", "flow", "warp"), 1.0)
    table = markdown(payload, costs)
    for g in gains:
        assert f"| {g.interval} | {g.keyframes} | - | - | - | {g.gain:+.2f} |" in table


def test_the_report_row_of_each_interval_shows_that_intervals_warped_result() -> None:
    # on 30 frames K=6 and K=7 both give 5 keyframes: K=7's row showed K=6's clockwork + warp
    def point(family: str, parameter: float, keyframes: int, miou: float) -> dict:
        return {
            "family": family,
            "parameter": parameter,
            "keyframes": keyframes,
            "ratio": keyframes / 30,
            "miou": miou,
            "agreement": miou + 20,
        }

    payload = {
        "frames": 30,
        "points": [
            point("every", 1, 30, 70.0),
            point("clockwork", 6, 5, 57.0),
            point("clockwork", 7, 5, 57.2),
            point("clockwork + warp", 6, 5, 60.96),
            point("clockwork + warp", 7, 5, 59.58),
            point("adaptive l1_cat/4", 0.1, 5, 58.0),
            point("adaptive flow-residual + warp", 0.05, 5, 61.0),
        ],
    }
    costs = dict.fromkeys(("low", "deep", "head", "change", "flow", "warp"), 1.0)
    rows = [line for line in markdown(payload, costs).splitlines() if line.startswith(("| 6 |", "| 7 |"))]
    assert "| 60.96 / 80.96 |" in rows[0] and "| 59.58 / 79.58 |" in rows[1]


def test_a_threshold_gives_the_schedule_the_report_lists_for_it(study) -> None:
    """The threshold tables looked a threshold up among the points by the highest threshold of each
    schedule's interval: a threshold inside an interval got the next lower schedule (on CamVid the
    0.06 row said 69.13 mIoU where the scheduler, run at 0.06, scores 68.81)."""
    s, _, samples = study
    n = len(samples)
    rng = np.random.default_rng(0)
    reach = s.max_interval - 1
    changes = {(t, k): float(rng.random()) for t in range(n) for k in range(max(0, t - reach), t)}
    points = threshold_curve(s, changes, "random", True, lambda _: 0.0)
    rows = [dataclasses.asdict(p) for p in points]
    values = sorted(set(changes.values()))
    probes = values + [(a + b) / 2 for a, b in itertools.pairwise(values)] + [0.0, 2.0]
    for threshold in probes:
        expected = tuple(simulate_keyframes(changes, n, threshold, s.max_interval))
        assert tuple(at_threshold(rows, threshold)["keys"]) == expected, threshold


def test_without_labels_the_every_frame_labels_are_the_reference(engine, drive) -> None:
    _study, points = run_study(
        engine, drive[:8], None, max_interval=3, variants=[("l1_cat", 4)], warp=True, progress=lambda _: None
    )
    assert next(p for p in points if p.family == "every").miou == 100.0
    assert all(p.miou == p.agreement for p in points)
    assert any(p.miou < 100.0 for p in points if p.family == "clockwork")


def test_the_sweep_runs_on_footage_without_labels(tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    uri = "synthetic://drive?size=320x240&seed=1&frames=8"
    assert main(["--source", uri, "--frames", "6", "--max-interval", "3", "--out", str(out)]) == 0
    payload = json.loads((out / "scheduling_sweep.json").read_text())
    assert payload["frames"] == 6 and payload["reference"] == "every-frame labels"
    assert payload["weights"] == "shipped" and (out / "scheduling.png").stat().st_size > 1000
    assert all(p["miou"] == p["agreement"] for p in payload["points"])
    # --report needs the step costs too (it was a FileNotFoundError traceback)
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--report"])
    err = capsys.readouterr().err
    assert f"--report needs {out / 'scheduling_costs.json'}: run --costs-only with --out {out}" in err
    assert main(["--source", uri, "--frames", "6", "--out", str(out), "--costs-only"]) == 0
    capsys.readouterr()
    assert main(["--out", str(out), "--report"]) == 0
    assert "adaptive, flow change + warp (the default)" in capsys.readouterr().out


def test_the_sweep_gives_its_threads_to_the_engine(tmp_path, monkeypatch) -> None:
    """--threads set torch's threads only: ONNX Runtime and OpenVINO chose their own, and the
    costs file said --threads whatever the engine ran with."""
    real_load, engines = sweep.load, []

    def load_and_keep(*args, **kwargs):
        engines.append(real_load(*args, **kwargs))
        return engines[-1]

    monkeypatch.setattr(sweep, "load", load_and_keep)
    out = tmp_path / "costs"
    uri = "synthetic://drive?size=320x240&seed=1&frames=4"
    argv = ["--source", uri, "--frames", "3", "--backend", "onnxruntime", "--threads", "1"]
    assert main([*argv, "--costs-only", "--out", str(out)]) == 0
    costs = json.loads((out / "scheduling_costs.json").read_text())
    (engine,) = engines
    assert engine.info.backend == "onnxruntime" and engine.info.threads == 1
    assert costs["threads"] == engine.info.threads


def test_the_sweep_needs_a_sequence(engine, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path)])
    assert "give the frames: --root CAMVID_DIR (labelled) or --source URI" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="gave 1 frame"):
        list(source_frames("synthetic://drive?size=64x48&frames=1", engine))
    with pytest.raises(SystemExit):
        main(["--source", "x.mp4", "--frames", "1", "--out", str(tmp_path)])
    assert "--frames must be at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--source", "x.mp4", "--max-interval", "1", "--out", str(tmp_path)])
    assert "--max-interval must be at least 2" in capsys.readouterr().err
    frames = list(source_frames("synthetic://drive?size=128x96&frames=5", engine, limit=3))
    assert len(frames) == 3 and all(f.shape == (48, 64, 3) for f in frames)  # the engine's input
    assert len(list(source_frames("synthetic://drive?size=64x48&frames=4", engine))) == 4


def test_the_sweep_reports_an_rtseg_error_in_one_line(engine, tmp_path, monkeypatch, capsys) -> None:
    """A source that cannot be opened ended the sweep in a SourceError traceback; it is one line,
    as the rtseg command says it (the session's small engine stands in for the built one)."""
    monkeypatch.setattr(sweep, "load", lambda *args, **kwargs: engine)
    missing = tmp_path / "nope.mp4"
    assert main(["--source", str(missing), "--out", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert f"python -m rtseg.schedule.sweep: error: no such file or folder: {missing}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        # FEATURE alone was an IndexError after the engine was built
        (
            "l1_cat",
            "argument --variant: expected FEATURE/POOL, a low feature of the model and a whole "
            "number >= 1 (default l1_cat/4), got 'l1_cat'",
        ),
        ("l1_cat/0", "argument --variant: expected FEATURE/POOL, "),
        ("l1_cat/x", "argument --variant: expected FEATURE/POOL, "),
        ("/4", "argument --variant: expected FEATURE/POOL, "),
        # a feature the model lacks was a ConfigError traceback after the engine was built
        ("nope/4", "--variant nope/4: 'nope' is not a low feature of espnet; FEATURE is one of l1_cat, "),
    ],
)
def test_the_sweep_refuses_a_bad_variant_before_building_the_engine(
    variant: str, message: str, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(sweep, "load", lambda *args, **kwargs: pytest.fail("built the engine"))
    uri = "synthetic://drive?size=320x240&frames=3"
    with pytest.raises(SystemExit) as stop:
        main(["--source", uri, "--variant", variant, "--frames", "3", "--out", str(tmp_path / "sweep")])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_study_holds_only_the_frames_a_schedule_can_still_keep(engine, drive) -> None:
    """The study kept every frame's low and deep features (6 MB a frame for ESPNet at 480x360),
    so the sweep read only the first 300 frames of a video."""
    alive: list[weakref.ref] = []
    most = 0

    def frames():
        nonlocal most
        for image in drive[:12]:
            copy = image.copy()
            alive.append(weakref.ref(copy))
            most = max(most, sum(r() is not None for r in alive))
            yield copy

    study, points = run_study(
        engine, frames(), None, max_interval=3, variants=[("l1_cat", 4)], warp=True, progress=lambda _: None
    )
    gc.collect()
    assert study.frames == 12 and most <= 3  # the frame read, and the two a schedule can keep
    assert sum(r() is not None for r in alive) == 0
    with pytest.raises(ValueError, match="keyframes up to 2 frames back"):
        study.pair(5, 2, True)
    with pytest.raises(ValueError, match="keeps deep features 3 frames"):
        study.score([0, 4, 8], True)
    # the streamed study scores like one over a list
    _listed, listed_points = run_study(
        engine, drive[:12], None, max_interval=3, variants=[("l1_cat", 4)], warp=True, progress=lambda _: None
    )
    assert [(p.family, p.keys, p.miou) for p in points] == [(p.family, p.keys, p.miou) for p in listed_points]


def test_labels_must_match_the_frames(engine, drive) -> None:
    labels = [np.zeros((48, 64), np.uint8)] * 3
    with pytest.raises(DatasetError, match="3 label maps for a sequence of more frames"):
        run_study(
            engine, drive[:4], labels, max_interval=3, variants=[("l1_cat", 4)], warp=False, progress=print
        )
    with pytest.raises(DatasetError, match="3 label maps for a sequence of 2 frames"):
        run_study(
            engine, drive[:2], labels, max_interval=3, variants=[("l1_cat", 4)], warp=False, progress=print
        )


def test_report_thresholds_follow_footage_whose_scores_lie_outside_the_grid() -> None:
    def points(thresholds_and_counts: list[tuple[float, int]]) -> list[dict]:
        return [{"parameter": t, "keyframes": k, "ratio": k / 100} for t, k in thresholds_and_counts]

    camvid_like = points([(0.0, 100), (0.05, 40), (0.06, 28), (0.07, 22), (0.1, 13), (0.2, 11)])
    assert threshold_rows(camvid_like, FLOW_GRID) == list(FLOW_GRID)
    # a steady highway: every score under 0.04, so each grid threshold gives the same schedule
    calm = points([(0.0, 100), (0.011, 52), (0.015, 34), (0.018, 25), (0.021, 17), (0.03, 11)])
    rows = threshold_rows(calm, FLOW_GRID)
    assert rows == [0.011, 0.015, 0.018, 0.021, 0.03]  # nearest to ratios 1/2, 1/3, 1/4, 1/6, 1/10


def test_a_study_of_frames_and_labels_at_another_size_scores_like_the_real_scheduler(engine) -> None:
    """Study passed the frames to run_low as they came: any size but the engine's input failed."""
    with open_source("synthetic://drive?size=160x120&seed=3&frames=6") as src:
        images = [f.image for f in src]
    rng = np.random.default_rng(4)
    labels = [rng.integers(0, 19, (120, 160), dtype=np.uint8) for _ in images]
    _study, points = run_study(
        engine, images, labels, max_interval=3, variants=[("l1_cat", 4)], warp=True, progress=lambda _: None
    )
    samples = [Sample(str(i), im, lab) for i, (im, lab) in enumerate(zip(images, labels, strict=True))]
    every: list[np.ndarray] = []
    evaluate_sequence(engine, samples, Every(), keep_labels=every)
    for family, scheduler in (
        ("clockwork", Clockwork(3)),
        ("clockwork + warp", Clockwork(2, warp=FlowWarp())),
    ):
        real = evaluate_sequence(engine, samples, scheduler, reference=every)
        replay = next(p for p in points if p.family == family and p.parameter == scheduler.interval)
        assert replay.keyframes == real.keyframes
        assert replay.miou == pytest.approx(100 * real.scores.miou, abs=1e-9)
        assert replay.agreement == pytest.approx(100 * real.agreement.miou, abs=1e-9)


def _tiny_camvid(root: Path, size: tuple[int, int] = (64, 48), count: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for folder in ("val", "valannot"):
        (root / folder).mkdir(parents=True)
    for i in range(count):
        image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        cv2.imwrite(str(root / "val" / f"{i}.png"), image)
        cv2.imwrite(str(root / "valannot" / f"{i}.png"), rng.integers(0, 12, size[::-1], dtype=np.uint8))
    return root


def test_the_sweep_resizes_camvid_frames_to_the_models_input(tmp_path) -> None:
    """--root with frames of another size than the model's input ended in a traceback (the shipped
    model takes 480x360; these frames are 64x48)."""
    root, out = _tiny_camvid(tmp_path / "camvid"), tmp_path / "sweep"
    argv = ["--root", str(root), "--max-interval", "2", "--out", str(out)]
    assert main([*argv, "--no-warp"]) == 0
    payload = json.loads((out / "scheduling_sweep.json").read_text())
    assert payload["frames"] == 3 and payload["reference"] == "ground truth"
    assert main([*argv, "--costs-only"]) == 0
    assert json.loads((out / "scheduling_costs.json").read_text())["input_size"] == [480, 360]


@pytest.mark.data
def test_the_sweep_refuses_weights_for_other_classes(data_root: Path, tmp_path, capsys) -> None:
    """Cityscapes weights were swept on CamVid labels, comparing unrelated class ids."""
    weights = data_root / "weights" / "espnet" / "decoder" / "espnet_p_2_q_8.pth"
    root = _tiny_camvid(tmp_path / "camvid")
    with pytest.raises(SystemExit):
        main(["--root", str(root), "--weights", str(weights), "--out", str(tmp_path / "sweep")])
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"error: --weights {weights} on --root {root}: the weights predict the 19 cityscapes classes, "
            "but camvid is labelled with 11 camvid classes"
        )
    )


SWEEP_PLOT_CHECK = """
import sys
import matplotlib
from rtseg.schedule.sweep import Point, plot

points = [Point("every", 0, 10, 10, 60.0, 100.0, 10.0), Point("clockwork", 2, 5, 10, 58.0, 90.0, 5.0)]
plot(points, ["clockwork"], sys.argv[1], "test")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_plotting_leaves_the_hosts_matplotlib_backend_alone(tmp_path: Path, plot_under_svg_backend) -> None:
    """plot() called matplotlib.use("Agg"): a host drawing its own figures (an interactive
    backend, a notebook's) had its backend switched under it."""
    out = tmp_path / "plot.png"
    assert plot_under_svg_backend(SWEEP_PLOT_CHECK, out) == ["svg", "False"]
    assert cv2.imread(str(out)).shape == (576, 900, 3)  # 7.5 x 4.8 inches at 120 dpi
