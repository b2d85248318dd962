"""Drawing results: palette lookup and blend, optional legend and HUD.

Colouring uses ``cv2.LUT`` on a 3-channel view of the label map (about 0.5 ms at 1024x512 where
NumPy fancy indexing takes 5 ms) and ``cv2.addWeighted`` for the blend.
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from ..data.labels import ClassSet
from ..errors import ConfigError
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
        raise ValueError(f"labels must be an h x w uint8 map, got shape {labels.shape} dtype {labels.dtype}")
    if size is not None and not (
        len(size) == 2 and all(isinstance(n, numbers.Integral) and n > 0 for n in size)
    ):
        raise ValueError(f"size must be (width, height) in whole pixels, both positive, got {size!r}")
    lut = _lut(classes)
    if size is None or (labels.shape[1], labels.shape[0]) == tuple(size):
        return cv2.applyColorMap(labels, userColor=lut)
    if 2 * labels.size <= size[0] * size[1]:
        return cv2.resize(
            cv2.applyColorMap(labels, userColor=lut), tuple(size), interpolation=cv2.INTER_NEAREST_EXACT
        )
    return cv2.applyColorMap(labels_at(labels, (size[1], size[0])), userColor=lut)


FONT = cv2.FONT_HERSHEY_SIMPLEX


@functools.lru_cache(maxsize=32)
def _name_widths(classes: ClassSet, scale: float) -> tuple[int, ...]:
    """Each class name's drawn width in pixels: measured once per class set and frame height,
    not per frame."""
    return tuple(cv2.getTextSize(name, FONT, scale, 3)[0][0] for name in classes.names)


def _draw_legend(
    image: np.ndarray, classes: ClassSet, present: np.ndarray | None, hud: tuple[int, int] | None = None
) -> None:
    """Class swatches down the left side, in more columns when one does not hold them all, and
    below the HUD's box (``hud``: its left edge and bottom) where they would reach into it."""
    ids = range(len(classes)) if present is None else [i for i in range(len(classes)) if present[i]]
    scale = max(0.4, image.shape[0] / 1400)
    row = int(22 * scale / 0.5)
    widths = _name_widths(classes, scale)
    width = row + 6 + max((widths[i] for i in ids), default=0)

    def top(x: int) -> int:  # a column that would reach into the HUD's box starts below it
        return hud[1] + 8 if hud is not None and x + width > hud[0] - 4 else 8

    x = 8
    y = top(x)
    for i in ids:
        if y + row > image.shape[0]:
            x += width + 8
            y = top(x)
        if x + row > image.shape[1] or y + row > image.shape[0]:
            break
        b, g, r = (int(v) for v in classes.palette[i][::-1])
        cv2.rectangle(image, (x, y), (x + row - 4, y + row - 4), (b, g, r), -1)
        origin = (x + row + 2, y + row - 8)
        for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # white on a black outline
            cv2.putText(image, classes.names[i], origin, FONT, scale, colour, thickness, cv2.LINE_AA)
        y += row


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


def annotate(
    frame: np.ndarray,
    result: SegResult,
    mode: Mode = "overlay",
    alpha: float = 0.5,
    legend: bool = False,
    hud: bool = False,
    fps: float | None = None,
) -> np.ndarray:
    """A new BGR image showing ``result`` on ``frame``; ``frame`` itself is not modified."""
    style = OverlayStyle(mode, alpha, legend, hud)
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frame must be an HxWx3 uint8 BGR NumPy array, got {type(frame).__name__}")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or frame.size == 0:
        raise ValueError(
            f"frame must be a non-empty HxWx3 uint8 BGR image, got shape {frame.shape} dtype {frame.dtype}"
        )
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
