from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from rtseg.data.labels import CAMVID, CITYSCAPES, ClassSet
from rtseg.errors import ConfigError, InputTypeError
from rtseg.overlay import OverlayStyle, annotate, colorize
from rtseg.overlay.annotate import hud_text
from rtseg.result import SegResult


def _result(h: int = 24, w: int = 32, keyframe: bool = True) -> SegResult:
    labels = np.zeros((h, w), np.uint8)
    labels[:, w // 2 :] = 3  # left sky, right road
    return SegResult(labels, 7, keyframe, 0 if keyframe else 2, CAMVID, {"low": 1.5, "head": 2.5})


def test_colorize_uses_the_palette_and_resizes_nearest() -> None:
    colours = colorize(_result().labels, CAMVID, (64, 48))
    assert colours.shape == (48, 64, 3)
    assert tuple(colours[0, 0]) == (128, 128, 128)  # sky
    assert tuple(colours[0, -1]) == (128, 64, 128)  # road (BGR of RGB 128, 64, 128)
    with pytest.raises(ConfigError, match="uint8"):
        colorize(np.zeros((4, 4), np.int32), CAMVID)


@pytest.mark.parametrize("labels_shape", [(360, 480), (512, 1024)])  # colour first / resize first
def test_colorize_is_the_palette_of_the_labels_at_the_frame(labels_shape: tuple[int, int]) -> None:
    labels = np.random.default_rng(0).integers(0, len(CAMVID), labels_shape, dtype=np.uint8)
    expected = CAMVID.palette_bgr_lut()[:, 0][SegResult(labels, 0, True, 0, CAMVID).labels_at((720, 1280))]
    np.testing.assert_array_equal(colorize(labels, CAMVID, (1280, 720)), expected)


def test_modes_and_alpha() -> None:
    frame = np.full((48, 64, 3), 200, np.uint8)
    before = frame.copy()
    result = _result()
    mask = annotate(frame, result, "mask")
    assert np.array_equal(mask, colorize(result.labels, CAMVID, (64, 48)))
    half = annotate(frame, result, "overlay", alpha=0.5)
    assert tuple(half[0, 0]) == (164, 164, 164)  # (128 + 200) / 2
    none = annotate(frame, result, "overlay", alpha=0.0)
    assert np.array_equal(none, frame)
    sbs = annotate(frame, result, "side-by-side")
    assert sbs.shape == (48, 128, 3) and np.array_equal(sbs[:, :64], frame)
    assert np.array_equal(frame, before)  # the input frame is never drawn on
    with pytest.raises(ValueError, match="mode"):
        annotate(frame, result, "blend")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha"):
        OverlayStyle(alpha=1.5)
    with pytest.raises(ValueError, match="alpha must be a number in \\[0, 1\\], got True"):
        OverlayStyle(alpha=True)  # not taken as 1.0


@pytest.mark.parametrize(
    ("keyframe", "age", "text"),
    [(True, 0, "  KEY"), (False, 2, "  reuse +2"), (True, 3, "  KEY reuse +3"), (False, 0, "")],
)
def test_the_hud_says_where_the_deep_features_came_from(keyframe: bool, age: int, text: str) -> None:
    # (True, 3): an async keyframe. (False, 0): nothing to add, and no trailing blanks widening the box.
    result = SegResult(np.zeros((4, 4), np.uint8), 7, keyframe, age, CAMVID, {"low": 1.5, "head": 2.5})
    assert hud_text(result, 12.5) == f" 12.5 FPS     4.0 ms{text}"
    assert hud_text(result, None) == f"   4.0 ms{text}"


def _every_class(classes: ClassSet, h: int, w: int) -> SegResult:
    labels = np.tile(np.arange(len(classes), dtype=np.uint8), (h, w // len(classes) + 1))[:, :w]
    return SegResult(labels, 0, False, 3, classes, {"head": 5.0})


@pytest.mark.parametrize("classes", [CAMVID, CITYSCAPES])
@pytest.mark.parametrize("width", [160, 340])
def test_on_a_small_frame_the_hud_fits_and_the_legend_starts_below_it(width: int, classes: ClassSet) -> None:
    # At 160x120 the HUD began at x = -86 (its FPS cut off) and its box covered the legend's rows;
    # at 340x120 the legend's second column ran into the HUD's box.
    frame = np.full((120, width, 3), 90, np.uint8)
    result = _every_class(classes, 120, width)
    mask = annotate(frame, result, "mask")
    hud = annotate(frame, result, "mask", hud=True, fps=30.0)
    both = annotate(frame, result, "mask", hud=True, legend=True, fps=30.0)
    drawn = (hud != mask).any(axis=2)
    cols = np.flatnonzero(drawn.any(axis=0))
    rows = np.flatnonzero(drawn.any(axis=1))
    assert cols[0] > 0 and cols[-1] < width - 1  # the whole box inside the frame
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    assert np.array_equal(both[box], hud[box])  # the legend drew nothing over the HUD
    assert (both != hud).any(axis=2)[rows[-1] + 1 :].sum() > 200  # it is there, below


def _swatches(image: np.ndarray, classes: ClassSet) -> list[int]:
    """The classes whose colour fills a 5x5 block somewhere in ``image`` (text strokes do not)."""
    kernel = np.ones((5, 5), np.uint8)
    return [
        i
        for i, rgb in enumerate(classes.palette)
        if cv2.erode(np.all(image == rgb[::-1], axis=2).astype(np.uint8), kernel).any()
    ]


def _hud_box(frame: np.ndarray, result: SegResult) -> tuple[int, int]:
    """The HUD's box (left edge, bottom) as annotate(..., hud=True, fps=30.0) draws it."""
    from rtseg.overlay.annotate import _draw_hud

    return _draw_hud(annotate(frame, result, alpha=0.0), result, 30.0)


@pytest.mark.parametrize("hud", [True, False])
def test_a_small_frame_lists_every_class_it_can_and_counts_the_rest(hud: bool) -> None:
    # At 160x120 the legend showed 10 of Cityscapes' 19 classes and left the other 9 out with no
    # sign of them. Now it shrinks its text to list more, and counts what still does not fit.
    from rtseg.overlay.annotate import legend_layout

    frame = np.full((120, 160, 3), (40, 90, 140), np.uint8)  # alpha 0: the legend on a plain frame
    result = _every_class(CITYSCAPES, 120, 160)
    image = annotate(frame, result, alpha=0.0, legend=True, hud=hud, fps=30.0)
    hud_box = _hud_box(frame, result) if hud else None
    entries = legend_layout(CITYSCAPES, (120, 160), tuple(range(19)), hud_box).entries
    shown = [e.class_id for e in entries if e.class_id is not None]
    assert _swatches(image, CITYSCAPES) == shown  # the layout is what was drawn
    assert len(shown) > 10
    assert all(e.text == CITYSCAPES.names[e.class_id] for e in entries[:-1])  # full names
    assert entries[-1].class_id is None and entries[-1].text == f"+{19 - len(shown)} more"


@pytest.mark.parametrize(("width", "height"), [(160, 120), (340, 120), (120, 90), (64, 48), (70, 300)])
@pytest.mark.parametrize("hud", [True, False])
def test_legend_names_are_never_cut_off_by_the_frame_edge(width: int, height: int, hud: bool) -> None:
    # At 160x120 the second column's names ran off the frame ("traffic", "vegeta").
    frame = np.full((height, width, 3), (40, 90, 140), np.uint8)
    result = _every_class(CITYSCAPES, height, width)
    without = annotate(frame, result, alpha=0.0, hud=hud, fps=30.0)
    legend = (annotate(frame, result, alpha=0.0, legend=True, hud=hud, fps=30.0) != without).any(axis=2)
    assert legend.sum() > 100  # something is drawn, even at 64x48
    assert not legend[:, -3:].any() and not legend[-1].any()


def test_the_legend_shrinks_its_text_before_leaving_classes_out() -> None:
    # 340x120 holds all 19 Cityscapes names in smaller text (at the former 0.4 it showed 18).
    frame = np.full((120, 340, 3), (40, 90, 140), np.uint8)
    result = _every_class(CITYSCAPES, 120, 340)
    image = annotate(frame, result, alpha=0.0, legend=True, hud=True, fps=30.0)
    assert _swatches(image, CITYSCAPES) == list(range(19))
    from rtseg.overlay.annotate import LEGEND_MIN_SCALE, legend_layout

    layout = legend_layout(CITYSCAPES, (120, 340), tuple(range(19)), _hud_box(frame, result))
    assert LEGEND_MIN_SCALE <= layout.scale < 0.4
    assert [e.text for e in layout.entries] == list(CITYSCAPES.names)


def test_names_too_wide_for_a_narrow_frame_are_shortened_with_a_marker() -> None:
    from rtseg.overlay.annotate import TRUNCATED, legend_layout

    entries = legend_layout(CITYSCAPES, (300, 70), tuple(range(19))).entries
    assert [e.class_id for e in entries] == list(range(19))  # all of them, in one column
    shortened = [e for e in entries if e.text != CITYSCAPES.names[e.class_id]]
    assert {e.class_id for e in shortened} >= {6, 7}  # "traffic light", "traffic sign"
    for e in shortened:
        assert e.text.endswith(TRUNCATED) and CITYSCAPES.names[e.class_id].startswith(
            e.text[: -len(TRUNCATED)]
        )


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (160, 120)])
def test_the_legend_names_black_outline_hugs_the_white_text(width: int, height: int) -> None:
    # Drawn as the same name in thickness 3, the outline was a bolder, wider font in OpenCV 5: a
    # black shadow reaching 5 px right of "traffic light" at 1280x720, which blurred the names.
    frame = np.full((height, width, 3), (40, 90, 140), np.uint8)  # no channel above 160 or below 32
    image = annotate(frame, _every_class(CITYSCAPES, height, width), alpha=0.0, legend=True)
    white = (image.min(axis=2) > 160).astype(np.uint8)  # the names (no swatch is that light)
    black = image.max(axis=2) < 32  # their outline (no swatch is that dark)
    assert white.sum() > 100 and black.sum() > 100
    stray = black & ~cv2.dilate(white, np.ones((3, 3), np.uint8)).astype(bool)
    assert not stray.any(), f"{stray.sum()} outline pixels not next to a name's"


@pytest.mark.parametrize("name", ["legend", "hud"])
def test_legend_and_hud_take_booleans_only(name: str) -> None:
    with pytest.raises(ConfigError, match=f"OverlayStyle.{name} must be True or False, got 'no'"):
        OverlayStyle(**{name: "no"})  # a non-empty string is true: it was drawn
    assert getattr(OverlayStyle(**{name: np.bool_(True)}), name)


def test_legend_and_hud_draw_something() -> None:
    frame = np.full((240, 320, 3), 90, np.uint8)
    plain = annotate(frame, _result(), "overlay")
    legend = annotate(frame, _result(), "overlay", legend=True)
    hud = annotate(frame, _result(keyframe=False), "overlay", hud=True, fps=12.5)
    assert (legend != plain).any(axis=2)[:60, :120].sum() > 200  # the top-left legend box
    assert (hud != plain).any(axis=2)[:40, -160:].sum() > 200  # the top-right HUD


def test_the_legend_lists_only_the_classes_in_the_frame() -> None:
    # alpha 0: the frame shows through untouched, so what differs from it is what the legend drew.
    frame = np.full((240, 320, 3), 90, np.uint8)
    result = _result()  # sky (0) and road (3) of CamVid's 11 classes
    legend = annotate(frame, result, "overlay", alpha=0.0, legend=True)
    # Down column x = 10 the legend has only its swatches (the names are to their right).
    drawn = (legend[:, 10] != frame[:, 10]).any(axis=1)
    starts = np.flatnonzero(drawn & ~np.r_[False, drawn[:-1]])
    assert len(starts) == 2, f"{len(starts)} swatches"
    swatches = [tuple(int(v) for v in legend[y + 2, 10]) for y in starts]
    palette = [tuple(int(v) for v in CAMVID.palette[i][::-1]) for i in (0, 3)]  # RGB to BGR
    assert swatches == palette


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((48, 64), np.uint8),  # grayscale: was blended into a 3-channel image silently
        np.zeros((48, 64, 4), np.uint8),  # BGRA: was an OpenCV assertion
        np.zeros((48, 64, 3), np.float32),  # float: was converted to uint8 silently
        np.zeros((0, 0, 3), np.uint8),  # empty: was an OpenCV assertion in resize
    ],
)
def test_frames_that_are_not_bgr_uint8_are_refused(frame: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="HxWx3 uint8 BGR image, got shape " + re.escape(str(frame.shape))):
        annotate(frame, _result())
    with pytest.raises(InputTypeError, match="NumPy array, got list"):
        annotate(frame.tolist(), _result())


def test_bad_alpha_and_size_name_the_argument() -> None:
    with pytest.raises(ConfigError, match=r"alpha must be a number in \[0, 1\], got '0.5'"):
        annotate(np.zeros((48, 64, 3), np.uint8), _result(), alpha="0.5")
    with pytest.raises(ConfigError, match=r"size must be \(width, height\).*got \(0, 48\)"):
        colorize(_result().labels, CAMVID, (0, 48))


@pytest.mark.parametrize(
    ("fps", "error", "message"),
    [
        ("30", InputTypeError, r"fps must be None or a number of frames per second, got '30' \(str\)"),
        (True, InputTypeError, r"fps must be None or a number .*got True \(bool\)"),
        (float("nan"), ConfigError, r"fps must be None or a finite number >= 0, got nan"),
        (-3.0, ConfigError, r"fps must be None or a finite number >= 0, got -3.0"),
        (float("inf"), ConfigError, r"fps must be None or a finite number >= 0, got inf"),
    ],
)
def test_a_hud_frame_rate_that_is_no_finite_rate_is_refused(fps, error, message) -> None:
    """fps="30" failed with "Unknown format code 'f'"; NaN and -3 were drawn as 'nan FPS' and '-3.0 FPS'."""
    with pytest.raises(error, match=message):
        annotate(np.zeros((48, 64, 3), np.uint8), _result(), hud=True, fps=fps)


def test_hud_frame_rates_that_are_numbers_are_drawn() -> None:
    frame = np.zeros((48, 64, 3), np.uint8)
    for fps in (None, 0, 0.0, 30, np.float32(29.5), np.int64(25)):
        assert annotate(frame, _result(), hud=True, fps=fps).shape == (48, 64, 3)


def test_a_result_that_is_no_segresult_is_named() -> None:
    """annotate(img, r.labels) failed with AttributeError: 'numpy.ndarray' has no attribute 'labels'."""
    with pytest.raises(InputTypeError, match=r"result must be a rtseg.SegResult .*got ndarray; .*colorize"):
        annotate(np.zeros((48, 64, 3), np.uint8), _result().labels)
