"""Dataset evaluation with the reference protocol (../shared/data/REFERENCE.md).

One forward pass per image at the weights' input size (resized as their preprocessing says);
logits bilinearly upsampled (align_corners=False) to the label's size; argmax over the dataset's
real classes only (a void output channel is never predicted); ignore-labelled pixels skipped; one
confusion matrix over the whole split.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .data.datasets import Sample, SegmentationDataset
from .data.labels import ClassSet, numbered_classes
from .data.preprocess import Normalize, Preprocessing, cv2_interpolation
from .errors import ConfigError, DatasetError
from .metrics import ConfusionMatrix, SegmentationScores
from .models.base import StagedSegmenter
from .terminal import progress_bar

log = logging.getLogger(__name__)

# image (HxWx3 uint8 BGR, already at the network's input size) -> logits (1xCxhxw)
LogitsFn = Callable[[np.ndarray], torch.Tensor]


@dataclass(frozen=True)
class EvalReport:
    scores: SegmentationScores
    classes: ClassSet
    images: int
    seconds: float
    confusion: np.ndarray

    def to_dict(self) -> dict:
        return {
            "miou": round(100 * self.scores.miou, 4),
            "pixel_accuracy": round(100 * self.scores.pixel_accuracy, 4),
            "iou": {
                n: (None if np.isnan(v) else round(100 * v, 4))
                for n, v in zip(self.classes.names, self.scores.iou, strict=True)
            },
            "images": self.images,
            "images_per_second": round(self.images / self.seconds, 3) if self.seconds else None,
            "confusion_matrix": self.confusion.tolist(),
        }

    def format(self) -> str:
        width = max(len(n) for n in self.classes.names)
        lines = [f"{'class':<{width}}  IoU %"]
        for name, v in zip(self.classes.names, self.scores.iou, strict=True):
            lines.append(f"{name:<{width}}  {'  n/a' if np.isnan(v) else f'{100 * v:6.2f}'}")
        lines.append(f"pixel accuracy: {100 * self.scores.pixel_accuracy:.2f}")
        lines.append(f"images: {self.images} ({self.images / max(self.seconds, 1e-9):.2f} img/s)")
        lines.append(f"mIoU: {100 * self.scores.miou:.2f}")
        return "\n".join(lines)


def torch_logits_fn(model: StagedSegmenter, preprocessing: Preprocessing) -> LogitsFn:
    """The reference path: normalise inside torch and run the eval-mode model."""
    normalize = Normalize(preprocessing)

    @torch.inference_mode()
    def logits(image: np.ndarray) -> torch.Tensor:
        x = normalize(torch.from_numpy(image).unsqueeze(0))
        return model(x.contiguous())

    return logits


def resize_to_input(image: np.ndarray, size: tuple[int, int], interpolation: str = "linear") -> np.ndarray:
    """``image`` at the network's input ``size``, resized as ``Preprocessing.interpolation`` says."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return cv2.resize(image, size, interpolation=cv2_interpolation(interpolation))


def labels_from_logits(logits: torch.Tensor, num_classes: int, size: tuple[int, int]) -> np.ndarray:
    """Upsample logits to ``size`` = (w, h) bilinearly, then argmax over the real classes."""
    x = logits[:, :num_classes].float()
    if x.shape[-2:] != (size[1], size[0]):
        x = F.interpolate(x, size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return x.max(1).indices[0].to(torch.uint8).numpy()  # argmax; see engine.graphs.labels_from


def check_labelled(confusion: ConfusionMatrix, count: int, classes: ClassSet, description: str) -> None:
    """Refuse a split without one scored pixel: its mIoU is NaN, which is no score (and no JSON)."""
    if not confusion.matrix.any():
        raise DatasetError(
            f"{description}: no labelled pixel in {count} label maps (all void or outside the "
            f"{len(classes)} {classes.name} class ids); check that the annotations use them"
        )


def evaluate(
    logits_fn: LogitsFn,
    samples: Iterable[Sample],
    *,
    classes: ClassSet,
    input_size: tuple[int, int],
    interpolation: str = "linear",
    total: int | None = None,
    progress: bool = True,
    description: str = "eval",
) -> EvalReport:
    confusion = ConfusionMatrix(len(classes), classes.ignore_index)
    start = time.perf_counter()
    count = 0
    bar = progress_bar(samples, progress=progress, total=total, desc=description, unit="img", leave=False)
    for sample in bar:
        logits = logits_fn(resize_to_input(sample.image, input_size, interpolation))
        h, w = sample.label.shape
        confusion.update(sample.label, labels_from_logits(logits, len(classes), (w, h)))
        count += 1
    seconds = time.perf_counter() - start
    check_labelled(confusion, count, classes, description)
    return EvalReport(confusion.result(), classes, count, seconds, confusion.matrix.copy())


def fit_classes(
    model: StagedSegmenter, dataset: SegmentationDataset, name: str, weights: str | os.PathLike[str] | None
) -> None:
    """Score ``model`` in ``dataset``'s classes: a plain state dict's numbered classes take the
    dataset's names (it says how many classes it predicts, not which); weights that predict
    other classes are refused, as their scores would compare unrelated ids."""
    meta = model.meta
    unnamed = meta.classes == numbered_classes(len(meta.classes))
    if unnamed and len(meta.classes) == len(dataset.classes):
        log.info(
            "%s does not name its %d classes: scoring them as %s's, in order",
            weights,
            len(meta.classes),
            dataset.classes.name,
        )
        model.meta = dataclasses.replace(meta, classes=dataset.classes)  # type: ignore[type-var]
    elif dataset.classes.names != meta.classes.names:
        what = f"{len(meta.classes)} unnamed" if unnamed else f"the {len(meta.classes)} {meta.classes.name}"
        raise ConfigError(
            f"the weights predict {what} classes, but {name} is labelled with "
            f"{len(dataset.classes)} {dataset.classes.name} classes"
        )
