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


def test_a_pipeline_only_measurement_is_drawn_at_its_end_to_end_fps(tmp_path: Path, monkeypatch) -> None:
    """--plot with --pipeline-only dropped the measured point (it needed an engine FPS)."""
    from matplotlib.axes import Axes

    drawn: list[tuple[list, str | None, str]] = []
    scatter = Axes.scatter

    def recorded(self, x, y, *args, **kwargs):
        drawn.append((list(x), kwargs.get("label"), kwargs.get("marker")))
        return scatter(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "scatter", recorded)
    path = table_path("cityscapes")
    env = {"cpu": {"model": "CPU", "physical_cores": 2, "logical_cores": 2}, "gpus": []}
    doc = table_document("cityscapes", path, load_table(path), [], env)
    for row in doc["rows"]:
        if row["model"] == "ENet":
            row["measured"] = [{**_measured(4.2), "engine_fps": None, "engine_ms": None, "pipeline_fps": 3.5}]
        if row["model"] == "ESPNet":
            row["measured"] = [_measured(6.0)]
    plot_quality_speed(doc, tmp_path / "q.png")
    measured = {x[0]: (label, marker) for x, label, marker in drawn if marker in ("D", "v")}
    assert set(measured) == {3.5, 6.0}
    assert "end-to-end FPS" in measured[3.5][0] and "engine-only FPS" in measured[6.0][0]


def test_only_a_point_at_the_rows_resolution_is_joined_to_the_published_one(
    tmp_path: Path, monkeypatch
) -> None:
    """A sweep at 320x160 was joined to the paper's 1024x512 point as if the gap were the hardware's."""
    from matplotlib.axes import Axes

    lines: list[list] = []
    plot = Axes.plot

    def recorded(self, *args, **kwargs):
        if kwargs.get("linestyle") == ":":
            lines.append(list(args[0]))
        return plot(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", recorded)
    path = table_path("cityscapes")
    env = {"cpu": {"model": "CPU", "physical_cores": 2, "logical_cores": 2}, "gpus": []}
    doc = table_document("cityscapes", path, load_table(path), [], env)
    for row in doc["rows"]:
        if row["model"] == "ENet":  # published at 1024x512
            row["measured"] = [{**_measured(4.2), "backend": "torch, 1024x512", "size": "1024x512"}]
        if row["model"] == "ESPNet":  # published at 1024x512 too
            row["measured"] = [{**_measured(30.0), "backend": "torch, 320x160", "size": "320x160"}]
        if row["model"] == "ESPNetv2":  # a --table measurement: at the row's resolution, no "size"
            row["measured"] = [_measured(2.0)]
    plot_quality_speed(doc, tmp_path / "q.png")
    assert lines == [[4.2, 76.9]]  # ESPNetv2 has no published FPS to join


QUALITY_SPEED_CHECK = """
import sys
from pathlib import Path
import matplotlib
from rtseg.bench.plot import plot_quality_speed
from rtseg.bench.report import table_document
from rtseg.bench.table import load_table, table_path

path = table_path("cityscapes")
env = {"cpu": {"model": "CPU", "physical_cores": 2, "logical_cores": 2}, "gpus": []}
plot_quality_speed(table_document("cityscapes", path, load_table(path), [], env), Path(sys.argv[1]))
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_plotting_leaves_the_hosts_matplotlib_backend_alone(tmp_path: Path, plot_under_svg_backend) -> None:
    """plot_quality_speed called matplotlib.use("Agg"): a host drawing its own figures (an
    interactive backend, a notebook's) had its backend switched under it."""
    out = tmp_path / "q.png"
    assert plot_under_svg_backend(QUALITY_SPEED_CHECK, out) == ["svg", "False"]
    assert cv2.imread(str(out)).shape == (910, 1430, 3)  # 11 x 7 inches at 130 dpi
