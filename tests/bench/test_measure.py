"""One configuration, measured for real on a tiny engine and a short synthetic drive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtseg.bench.measure import STAGES, BenchConfig, _MemoryMeter, run_config
from rtseg.bench.stats import StopRule
from rtseg.errors import ConfigError

SOURCE = "synthetic://drive?size=128x96&seed=3&frames=40"
RULE = StopRule(min_samples=4, max_samples=8, max_seconds=20.0)


def _cfg(**kw) -> BenchConfig:
    base = dict(model="espnet", size=(64, 48), source=SOURCE, warmup=2, rule=RULE, threads=1)
    return BenchConfig(**{**base, **kw})


def test_engine_and_pipeline_numbers() -> None:
    r = run_config(_cfg())
    assert r["status"] == "ok", r["reason"]
    e, p = r["engine"], r["pipeline"]
    assert e["frames"] <= 8 and e["stop"] in ("stable", "max samples", "time limit")
    assert e["fps"] == pytest.approx(1000 / e["latency_ms"]["median"], rel=1e-3)
    assert p["frames"] <= 8 and p["warmup"] == 2 and p["fps"] > 0
    lat = p["latency_ms"]
    assert lat["p50"] <= lat["p90"] <= lat["p99"]
    # every stage of the breakdown is there (no warp/change with `every`)
    assert set(p["stages_ms"]) == set(STAGES) - {"change", "warp"}
    assert p["keyframe_ratio"] == 1.0 and p["keyframes"] == p["frames"]
    assert p["sink"].startswith("null://") and p["source"]["size"] == [128, 96]
    assert r["engine_info"]["input_size"] == [64, 48] and r["threads"] == 1
    assert r["memory"]["peak_rss_mib"] > 10 and r["memory"]["gpu_peak_mib"] is None


def test_the_process_high_water_mark_is_never_below_a_sampled_rss() -> None:
    # Linux updates getrusage's high-water mark lazily: it was reported below psutil's sampled peak.
    meter = _MemoryMeter("cpu")
    meter.sample()
    meter.peak_rss += 2**30  # an RSS the kernel's counter has not caught up with
    memory = meter.to_dict()
    assert memory["process_peak_rss_mib"] >= memory["peak_rss_mib"] > 1024


def test_label_maps_kept_for_agreement_are_not_the_pipelines_memory() -> None:
    # Scoring after the run keeps each frame's labels until then: charged to the pipeline, a
    # scheduler compared with `every` would seem to need (frames x label map) more memory.
    meter = _MemoryMeter("cpu")
    meter.sample()
    keeping = _MemoryMeter("cpu")
    keeping.hold(meter.peak_rss // 2)
    keeping.sample()
    assert 0 < keeping.peak_rss < meter.peak_rss * 3 // 4


def test_unsupported_combination_is_skipped_with_reason() -> None:
    r = run_config(_cfg(precision="int8"))
    assert r["status"] == "skipped" and "precision" in r["reason"]
    assert r["engine"] is None and r["pipeline"] is None
    r = run_config(_cfg(backend="no-such-backend"))
    assert r["status"] == "skipped" and "no-such-backend" in r["reason"]


def test_scheduler_against_every_reference(tmp_path: Path) -> None:
    ref = tmp_path / "every.npz"
    fixed = StopRule(min_samples=4, max_samples=10, max_seconds=20.0)
    every = run_config(_cfg(rule=fixed, fixed_frames=True, reference_out=str(ref), engine=False))
    assert every["status"] == "ok" and every["engine"] is None
    assert every["pipeline"]["frames"] == 10 and every["pipeline"]["stop"] == "max samples"
    with np.load(ref) as saved:
        assert len(saved.files) == 12  # warm-up frames too
    again = run_config(_cfg(rule=fixed, fixed_frames=True, reference_in=str(ref), engine=False))
    assert again["pipeline"]["agreement"]["miou"] == 100.0  # every against itself
    clock = run_config(
        _cfg(rule=fixed, fixed_frames=True, reference_in=str(ref), engine=False, scheduler="clockwork")
    )
    p = clock["pipeline"]
    assert p["frames"] == 10 and 0 < p["keyframe_ratio"] < 1
    assert p["stages_ms"]["deep"]["frames"] == p["keyframes"] < p["frames"]
    assert p["agreement"]["frames"] == 10 and 0 <= p["agreement"]["miou"] <= 100
    assert "clockwork" in p["scheduler"]


def test_without_warmup_the_pipeline_stops_at_max_samples_frames() -> None:
    # No warm-up: the first measured frame has no interval before it, so there is one interval
    # fewer than frames; --frames still caps the frames.
    rule = StopRule(min_samples=4, max_samples=4, max_seconds=20.0)
    p = run_config(_cfg(warmup=0, rule=rule, engine=False))["pipeline"]
    assert p["frames"] == 4 and p["stop"] == "max samples" and p["warmup"] == 0


def test_source_that_ends_in_the_warmup_is_an_error() -> None:
    r = run_config(_cfg(source="synthetic://drive?size=64x48&frames=2", warmup=5, engine=False))
    assert r["status"] == "failed" and "warm-up" in r["reason"]


def test_a_source_that_ends_before_min_frames_says_so() -> None:
    """--min-frames 8 on a 4-frame source measured 3 frames, status ok, no note: a p99 of three
    samples read as one of eight or more."""
    rule = StopRule(min_samples=8, max_samples=10, max_seconds=20.0)
    r = run_config(_cfg(source="synthetic://drive?size=64x48&frames=4", warmup=1, rule=rule, engine=False))
    assert r["status"] == "ok" and r["pipeline"]["frames"] == 3 and r["pipeline"]["stop"] == "source ended"
    assert r["notes"] == [
        "end-to-end: 3 frames measured, fewer than --min-frames 8: the source ended after 4 frames "
        "(1 of them warm-up): use a longer source or fewer --warmup frames"
    ]
    assert run_config(_cfg(engine=False))["notes"] == []  # 40 frames: enough


def test_a_phase_cut_short_by_the_time_limit_says_so() -> None:
    rule = StopRule(min_samples=8, max_samples=10, max_seconds=0.001)
    r = run_config(_cfg(rule=rule, pipeline=False))
    runs = r["engine"]["frames"]  # 3 (the fewest the time limit stops at) unless a run took < 0.3 ms
    assert 3 <= runs < 8 and r["engine"]["stop"] == "time limit"
    assert r["notes"] == [
        f"engine-only: {runs} runs measured, fewer than --min-frames 8: the time limit per phase "
        "(--max-seconds 0.001) came first"
    ]


def test_config_round_trip_and_validation() -> None:
    cfg = _cfg(scheduler="adaptive")
    assert BenchConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.label == "espnet torch fp32 64x48 adaptive"
    with pytest.raises(ConfigError, match="scheduler"):
        _cfg(scheduler="sometimes")
    with pytest.raises(ConfigError, match="warmup"):
        _cfg(warmup=-1)
    with pytest.raises(ConfigError, match="both are off"):
        _cfg(engine=False, pipeline=False)


def test_a_result_records_a_stream_url_without_its_password() -> None:
    """Results (and so --json) wrote the source's password and token in clear; the worker, which
    opens the source, still gets the real URL."""
    url = "rtsp://admin:pw9secret@127.0.0.1:9/x?token=tok123secret"
    cfg = _cfg(source=url)
    assert BenchConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_record() == {**cfg.to_dict(), "source": "rtsp://admin:***@127.0.0.1:9/x?token=***"}


def test_an_unset_device_is_the_backends_default_and_recorded_as_such() -> None:
    assert _cfg().device == "cpu" and _cfg(backend="auto").device == "cpu"
    assert _cfg(backend="tensorrt").device == "cuda" and _cfg(backend="torch2trt").device == "cuda"
    assert _cfg(backend="tensorrt", device="cuda:1").device == "cuda:1"
    assert BenchConfig.from_dict(_cfg(backend="tensorrt").to_dict()).device == "cuda"


def test_threads_are_given_to_onnxruntime_and_recorded_as_it_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    """--threads 1 left ONNX Runtime on its own count while the row said 1; without --threads
    the row gave torch's count, not the engine's."""
    import torch

    from rtseg.engine import ort_backend

    asked = run_config(_cfg(backend="onnxruntime", pipeline=False))
    assert asked["status"] == "ok", asked["reason"]
    assert "threads 1" in asked["engine_info"]["notes"] and asked["threads"] == 1
    monkeypatch.setattr(ort_backend, "default_threads", lambda: 3)
    torch.set_num_threads(1)
    own = run_config(_cfg(backend="onnxruntime", threads=None, pipeline=False))
    assert "threads 3" in own["engine_info"]["notes"] and own["threads"] == 3


def _every_then_clockwork(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list[bool], Path]:
    """`every` writes its labels, clockwork is scored against them and writes its own; also
    returns, per ConfusionMatrix.update call, whether the pipeline was running then."""
    from rtseg.metrics import ConfusionMatrix
    from rtseg.pipeline import Pipeline

    ref, own = tmp_path / "every.npz", tmp_path / "clockwork.npz"
    fixed = StopRule(min_samples=4, max_samples=6, max_seconds=20.0)
    run_config(_cfg(rule=fixed, fixed_frames=True, reference_out=str(ref), engine=False))
    running = [False]
    calls: list[bool] = []
    run, update = Pipeline.run, ConfusionMatrix.update

    def tracked_run(self: Pipeline) -> object:
        running[0] = True
        try:
            return run(self)
        finally:
            running[0] = False

    def tracked_update(self: ConfusionMatrix, target: np.ndarray, pred: np.ndarray) -> None:
        calls.append(running[0])
        update(self, target, pred)

    monkeypatch.setattr(Pipeline, "run", tracked_run)
    monkeypatch.setattr(ConfusionMatrix, "update", tracked_update)
    clock = run_config(
        _cfg(
            rule=fixed,
            fixed_frames=True,
            engine=False,
            scheduler="clockwork",
            reference_in=str(ref),
            reference_out=str(own),
        )
    )
    assert clock["status"] == "ok", clock["reason"]
    return clock["pipeline"], calls, ref


def test_agreement_is_scored_after_the_run_not_between_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring in the result callback ran on the inference thread between frames: its 2-5 ms per
    frame were counted in every scheduler's FPS but `every`'s."""
    p, calls, _ = _every_then_clockwork(tmp_path, monkeypatch)
    assert len(calls) == p["agreement"]["frames"] > 0
    assert not any(calls), "a frame was scored while the pipeline ran"


def test_agreement_scores_are_those_of_the_frames_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scored after the run, the confusion is the one of the measured frames' labels scored one by
    one (the saved labels include the 2 warm-up frames; the agreement does not)."""
    from rtseg.metrics import ConfusionMatrix
    from rtseg.models import get_model

    p, _, ref = _every_then_clockwork(tmp_path, monkeypatch)
    classes = get_model("espnet").meta.classes
    with np.load(ref) as every, np.load(tmp_path / "clockwork.npz") as clock:
        frames = sorted(clock.files, key=lambda name: int(name[1:]))[2:]
        expected = ConfusionMatrix(len(classes), classes.ignore_index)
        for name in frames:
            expected.update(every[name], clock[name])
    scores = expected.result()
    assert p["agreement"]["frames"] == len(frames)
    assert p["agreement"]["miou"] == round(100 * scores.miou, 2)
    assert p["agreement"]["pixel_accuracy"] == round(100 * scores.pixel_accuracy, 2)


def test_agreement_scores_the_measured_frames_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 6 frames after 2 warm-up frames the agreement said 8 frames: warm-up was scored."""
    p, _, _ = _every_then_clockwork(tmp_path, monkeypatch)
    assert p["frames"] == 6 and p["warmup"] == 2
    assert p["agreement"]["frames"] == p["frames"]
