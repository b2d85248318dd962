from __future__ import annotations

import io
import sys

import cv2
import numpy as np
import pytest
import torch

from rtseg.data.datasets import Sample
from rtseg.data.labels import CAMVID
from rtseg.evaluate import evaluate, labels_from_logits


def test_void_channel_is_never_predicted() -> None:
    logits = torch.zeros(1, 12, 2, 2)
    logits[0, 11] = 10.0  # void channel wins everywhere...
    logits[0, 3] = 1.0
    assert (labels_from_logits(logits, 11, (2, 2)) == 3).all()  # ...but only real classes count


def test_logits_are_upsampled_bilinearly_to_label_size() -> None:
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 1, 0, 1] = 1.0
    labels = labels_from_logits(logits, 2, (4, 2))
    assert labels.shape == (2, 4)
    # align_corners=False: column 0 samples x=-0.25 (clamped to the first logit), column 1 x=0.25.
    assert labels[:, 0].max() == 0 and labels[:, 1:].min() == 1


def test_evaluate_perfect_prediction() -> None:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 11, (8, 12)).astype(np.uint8)
    label[0, 0] = 255
    sample = Sample("x", np.zeros((8, 12, 3), np.uint8), label)

    def oracle(image: np.ndarray) -> torch.Tensor:
        logits = torch.zeros(1, 11, 8, 12)
        logits[0].scatter_(0, torch.from_numpy(np.where(label == 255, 0, label)).long()[None], 1.0)
        return logits

    report = evaluate(oracle, [sample], classes=CAMVID, input_size=(12, 8), progress=False)
    assert report.scores.miou == 1.0 and report.images == 1
    assert report.format().splitlines()[-1] == "mIoU: 100.00"
    assert report.to_dict()["confusion_matrix"][0][0] == int((label == 0).sum()) - 0


def test_input_is_resized_as_the_weights_preprocessing_says() -> None:
    """evaluate() shrank with INTER_LINEAR whatever Preprocessing.interpolation said, while
    `rtseg run` honours it: area-trained weights were scored on other inputs than they get."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    sample = Sample("x", image, np.zeros((96, 128), np.uint8))
    seen: list[np.ndarray] = []

    def spy(x: np.ndarray) -> torch.Tensor:
        seen.append(x)
        return torch.zeros(1, 11, 24, 32)

    for interpolation in ("area", "linear"):
        evaluate(
            spy, [sample], classes=CAMVID, input_size=(32, 24), interpolation=interpolation, progress=False
        )
    assert np.array_equal(seen[0], cv2.resize(image, (32, 24), interpolation=cv2.INTER_AREA))
    assert np.array_equal(seen[1], cv2.resize(image, (32, 24), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(seen[0], seen[1])


def test_the_progress_bar_is_drawn_on_a_terminal_only(
    stderr_terminal: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file (``2>eval.err``) the bar left a redraw per image or so in it."""
    monkeypatch.setattr(sys, "stderr", stderr_terminal)
    samples = [Sample(f"{i}", np.zeros((8, 12, 3), np.uint8), np.zeros((8, 12), np.uint8)) for i in range(3)]
    evaluate(lambda x: torch.zeros(1, 11, 8, 12), samples, classes=CAMVID, input_size=(12, 8))
    assert ("\r" in stderr_terminal.getvalue()) is stderr_terminal.isatty()
