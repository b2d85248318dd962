from __future__ import annotations

import dataclasses
import io
import json
import sys

import cv2
import numpy as np
import pytest

from rtseg.data.datasets import Sample
from rtseg.engine import load
from rtseg.errors import DatasetError
from rtseg.metrics import ConfusionMatrix, SegmentationScores
from rtseg.models import get_model
from rtseg.schedule import Clockwork, Every
from rtseg.schedule.sequence import SequenceReport, evaluate_sequence


@pytest.fixture(scope="module")
def samples(drive) -> list[Sample]:
    rng = np.random.default_rng(1)
    out = []
    for i, image in enumerate(drive[:8]):
        label = rng.integers(0, 19, (96, 128), dtype=np.uint8)
        label[:4] = 255  # ignored pixels
        out.append(Sample(f"f{i}", cv2.resize(image, (128, 96)), label))
    return out


def test_every_scores_like_the_full_model(engine, samples) -> None:
    keep: list[np.ndarray] = []
    report = evaluate_sequence(engine, samples, Every(), keep_labels=keep)
    cm = ConfusionMatrix(19)
    for s in samples:
        x = cv2.resize(s.image, engine.input_size, interpolation=cv2.INTER_LINEAR)
        labels = cv2.resize(engine.run(x)[0], (128, 96), interpolation=cv2.INTER_NEAREST)
        cm.update(s.label, labels)
    assert report.scores.miou == pytest.approx(cm.result().miou)
    assert report.frames == 8 and report.keyframes == 8 and report.keyframe_ratio == 1.0
    assert report.stage_ms["preprocess"] > 0 and report.stage_ms["deep"] > 0
    assert len(keep) == 8 and keep[0].shape == (48, 64)
    again = evaluate_sequence(engine, samples, Every(), reference=keep)
    assert again.agreement.miou == 1.0 and again.agreement.pixel_accuracy == 1.0


def test_the_progress_bar_is_drawn_on_a_terminal_only(
    engine, samples, stderr_terminal: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", stderr_terminal)
    evaluate_sequence(engine, samples[:2], Every(), progress=True)
    assert ("\r" in stderr_terminal.getvalue()) is stderr_terminal.isatty()


def test_clockwork_report(engine, samples) -> None:
    keep: list[np.ndarray] = []
    evaluate_sequence(engine, samples, Every(), keep_labels=keep)
    report = evaluate_sequence(engine, samples, Clockwork(4), reference=keep)
    assert report.keyframes == 2 and report.keyframe_ratio == 0.25
    d = report.to_dict()
    assert d["keyframes"] == 2 and 0 <= d["agreement_miou"] <= 100
    text = report.format()
    assert "clockwork interval 4" in text and "agreement with every" in text


def test_a_sequence_without_a_labelled_pixel_is_refused(engine, samples) -> None:
    """All-void labels gave mIoU NaN, printed and written as the score, where plain eval refuses."""
    void = [Sample(s.name, s.image, np.full_like(s.label, 255)) for s in samples]
    with pytest.raises(DatasetError, match=r"^clip: no labelled pixel in 8 label maps \(all void"):
        evaluate_sequence(engine, void, Every(), description="clip")


def test_a_report_writes_null_for_nan() -> None:
    """``json.dumps`` wrote NaN, which strict JSON readers refuse."""
    nan = SegmentationScores((float("nan"), float("nan")), float("nan"), 0)
    report = SequenceReport(
        "every", 0, 0, {"deep": float("nan")}, 0.0, 0.0, nan, nan, extra={"worker_deep_ms": float("nan")}
    )
    d = report.to_dict()
    assert d["miou"] is None and d["pixel_accuracy"] is None and d["agreement_miou"] is None
    assert d["keyframe_ratio"] is None and d["fps"] is None and d["stage_ms"] == {"deep": None}
    assert d["worker_deep_ms"] is None
    json.dumps(d, allow_nan=False)


def test_frames_are_resized_as_the_weights_preprocessing_says() -> None:
    """--sequence shrank with INTER_LINEAR whatever Preprocessing.interpolation said, while
    `rtseg run` honours it: the scheduler saw other frames than it gets in a run."""
    model = get_model("espnet")
    preprocessing = dataclasses.replace(model.meta.preprocessing, interpolation="area")
    model.meta = dataclasses.replace(model.meta, preprocessing=preprocessing)
    area = load(model, input_size=(64, 48), backend="torch")
    seen: list[np.ndarray] = []

    class Recording(Every):
        def step(self, engine, image, *, index=None):
            seen.append(image)
            return super().step(engine, image, index=index)

    rng = np.random.default_rng(3)  # 160x120 into 64x48: a 2x shrink is the same either way
    samples = [
        Sample(
            str(i), rng.integers(0, 256, (120, 160, 3), np.uint8), rng.integers(0, 19, (120, 160), np.uint8)
        )
        for i in range(2)
    ]
    evaluate_sequence(area, samples, Recording())
    for s, x in zip(samples, seen, strict=True):
        assert np.array_equal(x, cv2.resize(s.image, (64, 48), interpolation=cv2.INTER_AREA))
        assert not np.array_equal(x, cv2.resize(s.image, (64, 48), interpolation=cv2.INTER_LINEAR))
