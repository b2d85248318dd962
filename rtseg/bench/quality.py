"""The measured-mIoU column: only what real weights and a real labelled set here can support.

The only Cityscapes data in the shared folder is one 256x128 frame (a format fixture): a score
on it is not a Cityscapes mIoU, so Cityscapes rows say so instead of showing one. ESPNet's CamVid
checkpoint can be scored on the full CamVid test split, with the reference protocol of
``rtseg eval``; that number is reported separately, labelled as CamVid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.datasets import camvid
from ..errors import ConfigError
from ..evaluate import evaluate, torch_logits_fn
from ..models import get_model
from .weights import data_root

NO_CITYSCAPES = "n/a (no Cityscapes val set here)"
CAMVID_WEIGHTS = "weights/espnet/decoder/espnet_p_2_q_8_camvid.pth"


def check_camvid(root: Path | None = None, split: str = "test") -> Path:
    """The data root, or a ConfigError when it lacks the CamVid split or the ESPNet CamVid
    checkpoint (checked before a table run's measurements, not after them)."""
    root = data_root() if root is None else root
    if not (root / CAMVID_WEIGHTS).is_file() or not (root / "camvid" / split).is_dir():
        raise ConfigError(f"CamVid or the ESPNet CamVid checkpoint is not in {root} (set RTSEG_DATA)")
    return root


def camvid_miou(root: Path | None = None, *, split: str = "test", progress: bool = False) -> dict[str, Any]:
    """ESPNet-CamVid's mIoU on a CamVid split, measured now with the torch reference path."""
    root = check_camvid(root, split)
    weights = root / CAMVID_WEIGHTS
    model = get_model("espnet", weights=weights)
    meta = model.meta
    dataset = camvid(root / "camvid", split)
    size = meta.preprocessing.input_size
    report = evaluate(
        torch_logits_fn(model, meta.preprocessing),
        dataset,
        classes=meta.classes,
        input_size=size,
        interpolation=meta.preprocessing.interpolation,
        total=len(dataset),
        progress=progress,
        description=f"CamVid {split}",
    )
    return {
        "model": "espnet",
        "weights": weights.name,
        "dataset": f"camvid/{split}",
        "images": report.images,
        "input_size": f"{size[0]}x{size[1]}",
        "miou": round(100 * report.scores.miou, 2),
        "pixel_accuracy": round(100 * report.scores.pixel_accuracy, 2),
    }
