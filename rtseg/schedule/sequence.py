"""Running a scheduler over an ordered, optionally labelled, sequence and scoring it.

Two scores: against the ground truth (mIoU, the usual protocol) and against the ``every``
schedule's labels ("agreement": the mIoU of the scheduled labels taking the per-frame labels as
truth), which needs no annotation and isolates what skipping the deep stage costs. Throughput
counts the inference path per frame: preprocess (resize), low, change score, deep, warp, head.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..data.datasets import Sample
from ..data.labels import ClassSet
from ..engine.base import Engine
from ..evaluate import check_labelled, resize_to_input
from ..metrics import ConfusionMatrix, SegmentationScores
from ..result import SegResult, labels_at
from ..terminal import progress_bar
from .base import Scheduler

STAGES = ("preprocess", "low", "change", "deep", "warp", "head")


def _number(value: float, digits: int) -> float | None:
    """``value`` rounded for JSON, None (null) for NaN: ``json`` writes NaN, which is not JSON."""
    return None if math.isnan(value) else round(value, digits)


def to_input(
    image: np.ndarray, size: tuple[int, int], interpolation: str = "linear"
) -> tuple[np.ndarray, float]:
    """The engine's input (resized with cv2 as ``Preprocessing.interpolation`` says, as `rtseg
    run` does) and the resize time in ms."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image, 0.0
    t0 = time.perf_counter()
    out = resize_to_input(image, size, interpolation)
    return out, (time.perf_counter() - t0) * 1000.0


def run_sequence(engine: Engine, images: Iterable[np.ndarray], scheduler: Scheduler) -> Iterator[SegResult]:
    """Scheduler results for images in order; ``preprocess`` is added to each result's timings."""
    scheduler.check(engine)
    scheduler.reset()
    interpolation = engine.meta.preprocessing.interpolation
    for i, image in enumerate(images):
        x, ms = to_input(image, engine.input_size, interpolation)
        result = scheduler.step(engine, x, index=i)
        if ms:
            result = SegResult(
                result.labels,
                result.frame_index,
                result.is_keyframe,
                result.deep_age,
                result.classes,
                {"preprocess": ms, **result.timings},
                result.change,
            )
        yield result


@dataclass(frozen=True)
class SequenceReport:
    scheduler: str
    frames: int
    keyframes: int
    stage_ms: dict[str, float]  # mean per frame (a stage that did not run on a frame counts 0 there)
    seconds: float  # total inference time (sum of per-frame stage times)
    wall_seconds: float
    scores: SegmentationScores | None = None  # against the ground truth
    agreement: SegmentationScores | None = None  # against the every-frame labels
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def keyframe_ratio(self) -> float:
        return self.keyframes / self.frames if self.frames else float("nan")

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else float("nan")

    def to_dict(self) -> dict:
        out: dict = {
            "scheduler": self.scheduler,
            "frames": self.frames,
            "keyframes": self.keyframes,
            "keyframe_ratio": _number(self.keyframe_ratio, 4),
            "fps": _number(self.fps, 3),
            "ms_per_frame": _number(1000 * self.seconds / max(self.frames, 1), 2),
            "stage_ms": {k: _number(v, 2) for k, v in self.stage_ms.items()},
            "wall_seconds": _number(self.wall_seconds, 2),
        }
        if self.scores is not None:
            out["miou"] = _number(100 * self.scores.miou, 2)
            out["pixel_accuracy"] = _number(100 * self.scores.pixel_accuracy, 2)
        if self.agreement is not None:
            out["agreement_miou"] = _number(100 * self.agreement.miou, 2)
            out["agreement_pixels"] = _number(100 * self.agreement.pixel_accuracy, 2)
        out.update({k: _number(v, 2) if isinstance(v, float) else v for k, v in self.extra.items()})
        return out

    def format(self) -> str:
        parts = [
            f"{self.scheduler}: {self.frames} frames, keyframe ratio {self.keyframe_ratio:.3f} "
            f"({self.keyframes} deep runs), {self.fps:.2f} frames/s "
            f"({1000 * self.seconds / max(self.frames, 1):.1f} ms/frame: "
            + ", ".join(f"{k} {v:.1f}" for k, v in self.stage_ms.items() if v)
            + ")"
        ]
        if self.scores is not None:
            parts.append(
                f"mIoU vs ground truth: {100 * self.scores.miou:.2f} "
                f"(pixel accuracy {100 * self.scores.pixel_accuracy:.2f})"
            )
        if self.agreement is not None:
            parts.append(
                f"agreement with every: mIoU {100 * self.agreement.miou:.2f}, "
                f"pixels {100 * self.agreement.pixel_accuracy:.2f} %"
            )
        return "\n".join(parts)


def evaluate_sequence(
    engine: Engine,
    samples: Sequence[Sample] | Iterable[Sample],
    scheduler: Scheduler,
    *,
    classes: ClassSet | None = None,
    reference: Sequence[np.ndarray] | None = None,
    keep_labels: list[np.ndarray] | None = None,
    progress: bool = False,
    description: str = "sequence",
) -> SequenceReport:
    """Score ``scheduler`` on ordered labelled samples (file order matters: it is a video).

    ``reference``: per-frame labels of the ``every`` schedule, for the agreement score.
    ``keep_labels``: a list that receives each frame's labels (to be a later run's reference).
    """
    classes = classes or engine.meta.classes
    n = len(classes)
    truth = ConfusionMatrix(n, classes.ignore_index)
    agree = ConfusionMatrix(n, classes.ignore_index) if reference is not None else None
    totals = dict.fromkeys(STAGES, 0.0)
    frames = keyframes = 0
    samples = list(samples)
    wall = time.perf_counter()
    results = run_sequence(engine, (s.image for s in samples), scheduler)
    bar = progress_bar(
        zip(samples, results, strict=True),
        total=len(samples),
        desc=description,
        unit="frame",
        progress=progress,
        leave=False,
    )
    for sample, result in bar:
        frames += 1
        keyframes += int(result.is_keyframe)
        for k, v in result.timings.items():
            totals[k] = totals.get(k, 0.0) + v
        labels = labels_at(result.labels, sample.label.shape)
        truth.update(sample.label, labels)
        if agree is not None and reference is not None:
            agree.update(labels_at(reference[frames - 1], sample.label.shape), labels)
        if keep_labels is not None:
            keep_labels.append(result.labels.copy())
    wall = time.perf_counter() - wall
    if frames:  # one NaN mIoU, printed and written as the score, passed for a result
        check_labelled(truth, frames, classes, description)
    stats = scheduler.stats
    extra = (
        {"deferred": stats.deferred, "worker_deep_ms": round(stats.worker_deep_ms / max(frames, 1), 2)}
        if stats.deferred or stats.worker_deep_ms
        else {}
    )
    return SequenceReport(
        scheduler=scheduler.describe(),
        frames=frames,
        keyframes=keyframes,
        stage_ms={k: v / max(frames, 1) for k, v in totals.items()},
        seconds=sum(totals.values()) / 1000.0,
        wall_seconds=wall,
        scores=truth.result() if frames else None,
        agreement=agree.result() if agree is not None else None,
        extra=extra,
    )
