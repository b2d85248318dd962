"""Drawing results: palette lookup and blend, optional legend and HUD.

Colouring uses ``cv2.LUT`` on a 3-channel view of the label map (about 0.5 ms at 1024x512 where
NumPy fancy indexing takes 5 ms) and ``cv2.addWeighted`` for the blend.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from ..data.labels import ClassSet
from ..errors import ConfigError, InputTypeError
from ..result import SegResult, labels_at

Mode = Literal["overlay", "mask", "side-by-side"]
MODES: tuple[str, ...] = ("overlay", "mask", "side-by-side")


@dataclass(frozen=True)
class OverlayStyle:
    mode: Mode = "overlay"
    alpha: float = 0.5  # weight of the colour mask in "overlay" mode
    legend: bool = False
    hud: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"OverlayStyle.mode must be one of {MODES}, got {self.mode!r}")
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, numbers.Real)
            or not 0.0 <= self.alpha <= 1.0
        ):
            raise ConfigError(f"OverlayStyle.alpha must be a number in [0, 1], got {self.alpha!r}")
        for name in ("legend", "hud"):
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):  # "no" would be true: drawn
                raise ConfigError(f"OverlayStyle.{name} must be True or False, got {value!r}")


@functools.lru_cache(maxsize=32)
def _lut(classes: ClassSet) -> np.ndarray:
    return classes.palette_bgr_lut()


def colorize(labels: np.ndarray, classes: ClassSet, size: tuple[int, int] | None = None) -> np.ndarray:
    """h x w uint8 labels -> H x W x 3 BGR colours, resized (nearest) to ``size`` = (W, H).

    One pass of cv2.applyColorMap with the palette as its table (no 3-channel merge). Nearest
    resizing only picks pixels, so colouring before or after it gives the same image: colours
    are looked up at the labels' resolution when that has at most half the pixels (480x360 into
    1280x720: 0.75 against 0.88 ms), else the one-channel labels are resized first (1024x512
    into 1280x720: 0.88 against 0.98 ms; the former LUT on merged channels took 1.44 ms).
    """
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ConfigError(f"labels must be an h x w uint8 map, got shape {labels.shape} dtype {labels.dtype}")
    if size is not None and not (
        len(size) == 2 and all(isinstance(n, numbers.Integral) and n > 0 for n in size)
    ):
        raise ConfigError(f"size must be (width, height) in whole pixels, both positive, got {size!r}")
    lut = _lut(classes)
    if size is None or (labels.shape[1], labels.shape[0]) == tuple(size):
        return cv2.applyColorMap(labels, userColor=lut)
    if 2 * labels.size <= size[0] * size[1]:
        return cv2.resize(
            cv2.applyColorMap(labels, userColor=lut), tuple(size), interpolation=cv2.INTER_NEAREST_EXACT
        )
    return cv2.applyColorMap(labels_at(labels, (size[1], size[0])), userColor=lut)


FONT = cv2.FONT_HERSHEY_SIMPLEX
LEGEND_MIN_SCALE = 0.3  # the legend's smallest text (8 px capitals): smaller is not legible
TRUNCATED = ".."  # ends a name cut short to fit a narrow frame


@functools.lru_cache(maxsize=256)
def _text_width(text: str, scale: float) -> int:
    """Drawn width in pixels with the 1 px outline either side: measured once per name and
    scale, not per frame."""
    return cv2.getTextSize(text, FONT, scale, 1)[0][0] + 2


@dataclass(frozen=True)
class LegendEntry:
    x: int
    y: int  # the top of its row
    class_id: int | None  # None: the "+N more" line, text without a swatch
    text: str


@dataclass(frozen=True)
class LegendLayout:
    scale: float
    row: int  # row height in pixels
    entries: tuple[LegendEntry, ...]
    box: tuple[int, int]  # (h, w) from the image's top left that holds every entry


def _columns(
    items: list[tuple[int | None, str]], scale: float, size: tuple[int, int], hud: tuple[int, int] | None
) -> list[LegendEntry]:
    """Places ``items`` (class id or None, text) in order down columns from the top left and
    returns those that fit: the first that would cross the frame's right edge ends the legend
    (a later column is further right). A column that would reach into the HUD's box (``hud``:
    its left edge and bottom) starts below it."""
    h, w = size
    row = int(22 * scale / 0.5)

    def span(item: tuple[int | None, str]) -> int:  # swatch and gap, name, 4 px of margin
        return (4 if item[0] is None else row + 6) + _text_width(item[1], scale)

    placed: list[LegendEntry] = []
    x = 8
    while len(placed) < len(items):
        rest = items[len(placed) :]
        for top in (8,) if hud is None else (8, hud[1] + 8):
            column: list[LegendEntry] = []
            width = 0
            for item in rest[: max((h - top) // row, 0)]:
                if x + span(item) > w:
                    break
                width = max(width, span(item))
                column.append(LegendEntry(x, top + len(column) * row, *item))
            if hud is None or top > 8 or x + width <= hud[0] - 4:
                break
        placed += column
        if len(column) < len(rest) and (not column or x + span(rest[len(column)]) > w):
            return placed  # an entry too wide here is too wide in every column to the right
        x += width + 8
    return placed


def _shortened(name: str, room: int, scale: float) -> str:
    """``name``, or its longest start that fits ``room`` pixels followed by TRUNCATED."""
    if _text_width(name, scale) <= room:
        return name
    for end in range(len(name) - 1, 0, -1):
        short = name[:end].rstrip() + TRUNCATED
        if cv2.getTextSize(short, FONT, scale, 1)[0][0] + 2 <= room:
            return short
    return name  # not even one letter fits: the entry is left to the "+N more" line


def _with_more(
    items: list[tuple[int | None, str]],
    fitting: int,
    scale: float,
    size: tuple[int, int],
    hud: tuple[int, int] | None,
) -> list[LegendEntry]:
    """The first of ``items`` that fit (at most ``fitting``) followed by a line counting the
    rest; none at all where not even that line fits."""
    for shown in range(fitting, -1, -1):
        more = len(items) - shown
        for marker in (f"+{more} more", f"+{more}"):
            placed = _columns([*items[:shown], (None, marker)], scale, size, hud)
            if len(placed) == shown + 1:
                return placed
    return []


@functools.lru_cache(maxsize=64)
def legend_layout(
    classes: ClassSet, size: tuple[int, int], ids: tuple[int, ...], hud: tuple[int, int] | None = None
) -> LegendLayout:
    """Where the legend of classes ``ids`` goes on an image of ``size`` = (h, w): every class
    with its full name, in smaller text where the frame needs it (down to LEGEND_MIN_SCALE).
    Where even that does not hold them all, names wider than the frame are shortened (ending
    in TRUNCATED) and the classes that still do not fit are counted in a last "+N more" line,
    never left out silently. Cached: it depends only on the frame size, the classes present
    and the HUD's box, which change rarely from frame to frame."""
    h, w = size
    items: list[tuple[int | None, str]] = [(i, classes.names[i]) for i in ids]
    scale = max(0.4, h / 1400)
    while True:
        placed = _columns(items, scale, size, hud)
        if len(placed) == len(items) or scale <= LEGEND_MIN_SCALE:
            break
        scale = max(round(scale * 0.9, 3), LEGEND_MIN_SCALE)
    row = int(22 * scale / 0.5)
    if len(placed) < len(items):
        room = w - 8 - (row + 6)  # the widest name span() lets the first column hold
        items = [(i, _shortened(name, room, scale)) for i, name in items]
        placed = _columns(items, scale, size, hud)
    if len(placed) < len(items):
        placed = _with_more(items, len(placed), scale, size, hud)
    box = (
        max((e.y + row for e in placed), default=0),
        max(
            (e.x + (4 if e.class_id is None else row + 6) + _text_width(e.text, scale) for e in placed),
            default=0,
        ),
    )
    return LegendLayout(scale, row, tuple(placed), box)


@functools.lru_cache(maxsize=16)
def _legend_sprite(classes: ClassSet, layout: LegendLayout) -> tuple[np.ndarray, np.ndarray]:
    """The legend drawn once per layout as two images over ``layout.box``, ``keep`` and ``add``:
    an image pixel p becomes p * keep / 255 + add, two OpenCV passes a frame where drawing it
    took two putText calls a name. White names in a 1 px black outline made by dilating their
    coverage: an outline drawn as thicker text was a bolder, wider font in OpenCV 5, a shadow
    spreading right of the name ("traffic light" 5 px wider at 0.5) instead of around it."""
    row, scale = layout.row, layout.scale
    baseline = row - round(8 * scale / 0.5)  # below the row's top; the text centred on the swatch
    text = np.zeros(layout.box, np.uint8)  # each pixel's coverage by a name, 0..255
    swatches = []
    for entry in layout.entries:
        x = entry.x + 1  # the outline's pixel left of the text
        if entry.class_id is not None:
            swatches.append((entry.x, entry.y, entry.class_id))
            x += row + 2
        cv2.putText(text, entry.text, (x, entry.y + baseline), FONT, scale, 255, 1, cv2.LINE_AA)
    outline = cv2.dilate(text, np.ones((3, 3), np.uint8))
    # Black outline (coverage o) under white text (t): p -> p (1 - o)(1 - t) + 255 t.
    keep = ((255 - outline.astype(np.uint16)) * (255 - text) + 127) // 255
    keep = cv2.merge([keep.astype(np.uint8)] * 3)
    add = cv2.merge([text] * 3)
    for x, y, i in swatches:
        keep[y : y + row - 3, x : x + row - 3] = 0
        add[y : y + row - 3, x : x + row - 3] = classes.palette[i][::-1]
    return keep, add


def _draw_legend(
    image: np.ndarray, classes: ClassSet, present: np.ndarray | None, hud: tuple[int, int] | None = None
) -> None:
    """Class swatches and names down the left side, in as many columns as they need and below
    the HUD's box (``hud``: its left edge and bottom) where they would reach into it."""
    ids = tuple(range(len(classes))) if present is None else tuple(np.flatnonzero(present).tolist())
    layout = legend_layout(classes, image.shape[:2], ids, hud)
    if not layout.entries:
        return
    keep, add = _legend_sprite(classes, layout)
    roi = image[: layout.box[0], : layout.box[1]]
    cv2.multiply(roi, keep, dst=roi, scale=1 / 255)  # where keep is 255 the image is unchanged
    cv2.add(roi, add, dst=roi)


def hud_text(result: SegResult, fps: float | None) -> str:
    """FPS, latency and where the deep features came from. An ``async`` keyframe starts its deep
    run on the worker and is itself answered from the older cache: "KEY reuse +N", not "KEY"."""
    parts = []
    if fps is not None:
        parts.append(f"{fps:5.1f} FPS")
    parts.append(f"{result.latency_ms:6.1f} ms")
    reuse = f"reuse +{result.deep_age}" if result.deep_age else ""
    source = " ".join(p for p in ("KEY" if result.is_keyframe else "", reuse) if p)
    if source:
        parts.append(source)
    return "  ".join(parts)


def _draw_hud(image: np.ndarray, result: SegResult, fps: float | None) -> tuple[int, int]:
    """Draws the HUD in the top right corner, smaller where the frame is too narrow for it, and
    returns its box's left edge and bottom."""
    text = hud_text(result, fps)
    scale = max(0.5, image.shape[0] / 1000)
    (tw, th), _ = cv2.getTextSize(text, FONT, scale, 1)
    if tw > image.shape[1] - 20:  # a small frame: shrink the text rather than cut it off
        scale *= max(image.shape[1] - 20, 1) / tw
        (tw, th), _ = cv2.getTextSize(text, FONT, scale, 1)
    x, y = max(image.shape[1] - tw - 10, 6), th + 10
    cv2.rectangle(image, (x - 6, y - th - 6), (x + tw + 6, y + 6), (0, 0, 0), -1)
    colour = (0, 220, 255) if result.is_keyframe else (255, 255, 255)
    cv2.putText(image, text, (x, y), FONT, scale, colour, 1, cv2.LINE_AA)
    return x - 6, y + 6


def check_fps(fps: object) -> None:
    """The HUD's frame rate: "30" failed in the f-string format, NaN and -3 were drawn as such.
    Public: a sink's Packet checks its fps with it when it is made, as annotate() would draw it."""
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
        raise InputTypeError(
            f"fps must be None or a number of frames per second, got {fps!r} ({type(fps).__name__})"
        )
    if not (math.isfinite(fps) and fps >= 0):
        raise ConfigError(f"fps must be None or a finite number >= 0, got {fps!r}")


def annotate(
    frame: np.ndarray,
    result: SegResult,
    mode: Mode = "overlay",
    alpha: float = 0.5,
    legend: bool = False,
    hud: bool = False,
    fps: float | None = None,
) -> np.ndarray:
    """A new BGR image showing ``result`` (a SegResult) on ``frame``; ``frame`` itself is not
    modified. ``fps`` is the frame rate the HUD shows (None: none shown), a finite number >= 0."""
    style = OverlayStyle(mode, alpha, legend, hud)
    if not isinstance(frame, np.ndarray):
        raise InputTypeError(f"frame must be an HxWx3 uint8 BGR NumPy array, got {type(frame).__name__}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or frame.size == 0:
        raise ConfigError(
            f"frame must be a non-empty HxWx3 uint8 BGR image, got shape {frame.shape} dtype {frame.dtype}"
        )
    if not isinstance(result, SegResult):  # a label map alone failed with an AttributeError
        raise InputTypeError(
            f"result must be a rtseg.SegResult (what Segmenter returns), got {type(result).__name__}; "
            "a bare label map is coloured by rtseg.overlay.colorize(labels, classes)"
        )
    if fps is not None:
        check_fps(fps)
    h, w = frame.shape[:2]
    mask = colorize(result.labels, result.classes, (w, h))
    if style.mode == "mask":
        out = mask
    elif style.mode == "overlay":
        out = cv2.addWeighted(mask, style.alpha, frame, 1.0 - style.alpha, 0.0)
    else:
        out = np.hstack((frame, mask))
    hud_box = _draw_hud(out, result, fps) if style.hud else None  # first: the legend keeps clear of it
    if style.legend:
        # calcHist: 0.16 ms at 1024x512 where np.bincount, counting in int64, takes 0.64
        counts = cv2.calcHist([result.labels], [0], None, [256], [0, 256]).ravel()
        _draw_legend(out, result.classes, counts[: len(result.classes)] > 0, hud_box)
    return out
