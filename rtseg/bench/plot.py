"""The quality/speed scatter: mIoU against FPS (log scale), published and measured points apart.

Published points use the paper's FPS on the paper's GPU; measured points use this machine's
engine-only FPS at the row's resolution, or its end-to-end FPS (another marker, said in the
legend) where the engine alone was not measured (``rtseg bench --pipeline-only``): that one also
pays capture, overlay and encode. rtseg cannot measure Cityscapes mIoU here (no val set), so a
measured point is drawn at the published mIoU of its row and joined to the published point by a
dotted line: the horizontal gap is the hardware (and backend) difference. A point measured at
another size than the row's resolution (a sweep's ``--size``; its label names the size) is drawn
without the line, as its gap would also be the resolution's.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes
from ..errors import ConfigError


def _published_points(rows: Sequence[dict[str, Any]]) -> list[tuple[str, float, float, str]]:
    out = []
    for row in rows:
        miou = row["miou_test"] if row["miou_test"] is not None else row["miou_val"]
        if row["fps"] is None or miou is None:
            continue
        split = "test" if row["miou_test"] is not None else "val"
        out.append((row["model"], float(row["fps"]), float(miou), split))
    return out


# Label offsets in points, tried in order; a label takes the first that overlaps no other label or
# marker, else the one with the least overlap.
_OFFSETS = tuple((dx, dy) for dy in (4, -11, 13, -20, 22, -29) for dx in (5, -5))


class _Labeller:
    """Places point labels greedily so that they do not overlap each other or the markers."""

    def __init__(self, fig: Any, ax: Any, points: list[tuple[float, float]]) -> None:
        fig.canvas.draw()
        self.renderer = fig.canvas.get_renderer()
        self.ax = ax
        frame = ax.get_window_extent(self.renderer)
        self.frame = (frame.x0, frame.y0, frame.x1, frame.y1)
        self.taken: list[tuple[float, float, float, float]] = []
        for x, y in points:  # a small box around every marker
            px, py = ax.transData.transform((x, y))
            self.taken.append((px - 5, py - 5, px + 5, py + 5))

    def place(self, text: str, xy: tuple[float, float], **style: Any) -> None:
        tried: list[tuple[float, tuple[int, int]]] = []
        for offset in _OFFSETS:
            rect = self._box(text, xy, offset, style)
            outside = _area(rect) - _overlap(rect, self.frame)  # parts drawn outside the axes
            tried.append((sum(_overlap(rect, other) for other in self.taken) + 10 * outside, offset))
            if tried[-1][0] == 0:
                break
        dx, dy = min(tried, key=lambda t: t[0])[1]
        note = self.ax.annotate(
            text, xy, textcoords="offset points", xytext=(dx, dy), ha="left" if dx > 0 else "right", **style
        )
        box = note.get_window_extent(self.renderer)
        self.taken.append((box.x0, box.y0, box.x1, box.y1))

    def _box(self, text: str, xy: tuple[float, float], offset: tuple[int, int], style: dict) -> tuple:
        note = self.ax.annotate(
            text,
            xy,
            textcoords="offset points",
            xytext=offset,
            ha="left" if offset[0] > 0 else "right",
            **style,
        )
        box = note.get_window_extent(self.renderer)
        note.remove()
        return (box.x0, box.y0, box.x1, box.y1)


def _area(a: tuple[float, ...]) -> float:
    return max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """The overlapping area of two (x0, y0, x1, y1) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _at_row_resolution(measured: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether a measurement ran at its row's resolution: the table's always do (they have no
    "size"); a sweep's carry the size they ran at."""
    size = measured.get("size")
    return size is None or (row["resolution"] is not None and size == row["resolution"])


def _measured_points(
    rows: Sequence[dict[str, Any]],
) -> list[tuple[str, float, float, dict[str, Any], str, dict[str, Any]]]:
    """(label, FPS, mIoU, row, kind, measurement) of each measurement: kind "engine" (engine-only
    FPS) or, where only the pipeline was measured, "e2e" (its end-to-end FPS, rather than no point)."""
    out = []
    for row in rows:
        miou = row["miou_test"] if row["miou_test"] is not None else row["miou_val"]
        if miou is None:
            continue
        for m in row["measured"]:
            if m["status"] != "ok":
                continue
            if m["engine_fps"]:
                name = f"{row['model']} ({m['backend']})"
                out.append((name, float(m["engine_fps"]), float(miou), row, "engine", m))
            elif m["pipeline_fps"]:
                name = f"{row['model']} ({m['backend']}, end-to-end)"
                out.append((name, float(m["pipeline_fps"]), float(miou), row, "e2e", m))
    return out


def plot_quality_speed(table: dict[str, Any], path: Path, *, title: str | None = None) -> Path:
    # A Figure on its own Agg canvas: pyplot and matplotlib.use() would switch the host's backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = table["rows"]
    fig = Figure(figsize=(11, 7), dpi=130)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    published = _published_points(rows)
    for split, marker, colour in (("test", "o", "tab:blue"), ("val", "s", "tab:cyan")):
        pts = [p for p in published if p[3] == split]
        if pts:
            ax.scatter(
                [p[1] for p in pts],
                [p[2] for p in pts],
                s=46,
                marker=marker,
                color=colour,
                zorder=3,
                label=f"published (each source's GPU), Cityscapes {split} mIoU",
            )
    measured = _measured_points(rows)
    legend = {
        "engine": ("D", "measured here (engine-only FPS), drawn at the published mIoU"),
        "e2e": ("v", "measured here (end-to-end FPS: --pipeline-only), drawn at the published mIoU"),
    }
    labelled: set[str] = set()
    for _, fps, miou, row, kind, m in measured:
        marker, label = legend[kind]
        ax.scatter(
            [fps],
            [miou],
            s=70,
            marker=marker,
            color="tab:red",
            edgecolor="black",
            zorder=4,
            label=None if kind in labelled else label,
        )
        labelled.add(kind)
        if row["fps"] is not None and _at_row_resolution(m, row):
            ax.plot(
                [fps, float(row["fps"])], [miou, miou], linestyle=":", color="grey", linewidth=1, zorder=2
            )
    ax.set_xscale("log")
    ax.set_xlabel("frames per second (log scale)")
    ax.set_ylabel("Cityscapes mIoU (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "Cityscapes quality vs speed: published (GPU) and measured on this machine")
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ax.margins(x=0.08, y=0.06)
    ax.autoscale_view()
    hardware = table.get("hardware")
    if hardware:
        fig.text(0.01, 0.005, f"measured on: {hardware}", fontsize=7, color="dimgrey")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    labeller = _Labeller(fig, ax, [(p[1], p[2]) for p in published] + [(m[1], m[2]) for m in measured])
    for name, fps, miou, _ in published:
        labeller.place(name, (fps, miou), fontsize=8, color="#1a3d6b")
    for name, fps, miou, *_ in measured:
        labeller.place(name, (fps, miou), fontsize=8, color="darkred")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=plot_format(path))
    atomic_write_bytes(path, buffer.getvalue())  # an interrupted run leaves no half image
    return path


def plot_format(path: Path) -> str:
    """The image format matplotlib writes for ``path`` (PNG without a suffix); a ConfigError
    naming the formats for one it cannot write."""
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = path.suffix[1:].lower() or "png"
    formats = FigureCanvasBase.get_supported_filetypes()
    if fmt not in formats:
        raise ConfigError(
            f"--plot {path}: cannot write .{fmt} images; "
            f"use one of {', '.join('.' + f for f in sorted(formats))}"
        )
    return fmt
