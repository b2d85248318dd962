"""The mIoU-vs-FPS scatter."""

from __future__ import annotations

from pathlib import Path

import cv2

from rtseg.bench.plot import _overlap, _published_points, plot_quality_speed
from rtseg.bench.report import table_document
from rtseg.bench.table import load_table, table_path


def _measured(fps: float) -> dict:
    return {
        "label": "enet torch fp32 1024x512 every",
        "backend": "torch",
        "precision": "fp32",
        "status": "ok",
        "reason": None,
        "engine_fps": fps,
        "engine_ms": 1000 / fps,
        "engine_ci_ms": [None, None],
        "engine_frames": 5,
        "pipeline_fps": None,
        "weights": "random init",
        "hardware": "CPU",
        "miou": "n/a",
    }


def test_published_points_need_fps_and_miou() -> None:
    rows = [
        {"model": "A", "fps": 10.0, "miou_test": 70.0, "miou_val": None},
        {"model": "B", "fps": None, "miou_test": 70.0, "miou_val": 71.0},
        {"model": "C", "fps": 5.0, "miou_test": None, "miou_val": 66.0},
    ]
    assert _published_points(rows) == [("A", 10.0, 70.0, "test"), ("C", 5.0, 66.0, "val")]


def test_overlap_area() -> None:
    assert _overlap((0, 0, 2, 2), (1, 1, 3, 3)) == 1
    assert _overlap((0, 0, 1, 1), (1, 1, 2, 2)) == 0


def test_png_is_written(tmp_path: Path) -> None:
    path = table_path("cityscapes")
    doc = table_document(
        "cityscapes",
        path,
        load_table(path),
        [],
        {"cpu": {"model": "CPU", "physical_cores": 2, "logical_cores": 2}, "gpus": []},
    )
    for row in doc["rows"]:
        if row["model"] == "ENet":
            row["measured"] = [_measured(4.2)]
    out = plot_quality_speed(doc, tmp_path / "plots" / "q.png")
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 500 and image.shape[1] > 800
