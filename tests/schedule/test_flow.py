from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import torch

from rtseg.errors import ConfigError
from rtseg.schedule import FlowWarp


def _textured(shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (24, 32), dtype=np.uint8)
    base = np.kron(base, np.ones((4, 4), np.uint8))  # 96 x 128 blocks: trackable texture
    image = np.roll(base, shift, axis=1)
    return np.dstack([image] * 3)


def test_static_scene_warps_to_itself() -> None:
    warp = FlowWarp(stride=2)
    key = _textured()
    warp.set_keyframe(key)
    feat = torch.randn(1, 5, 48, 64)
    out = warp.warp({"f": feat}, key)["f"]
    assert torch.allclose(out, feat, atol=1e-3)


def test_features_follow_the_motion_for_torch_and_numpy() -> None:
    warp = FlowWarp(stride=2, preset="medium")
    key, now = _textured(0), _textured(8)  # everything moved 8 px right
    warp.set_keyframe(key)
    grid = np.arange(64, dtype=np.float32)[None, None, None, :].repeat(48, axis=2)  # feature = x coordinate
    feat_np = np.repeat(grid, 2, axis=1)  # 1 x 2 x 48 x 64 at stride 2
    out_np = warp.warp({"f": feat_np}, now)["f"]
    out_t = warp.warp({"f": torch.from_numpy(feat_np)}, now)["f"].numpy()
    # At stride 2 the motion is 4 feature pixels: the value now at x came from x - 4.
    centre = (slice(None), slice(None), slice(10, 38), slice(12, 52))
    assert np.median(feat_np[centre] - out_np[centre]) == pytest.approx(4.0, abs=0.5)
    assert np.allclose(out_np, out_t, atol=1e-3)


def test_features_coarser_than_the_flow_image_move_by_the_scaled_flow() -> None:
    # The flow is computed at stride 2 (48 x 64); features at stride 4 (24 x 32) moved half as
    # many of their own pixels: 2, not the flow's 4.
    warp = FlowWarp(stride=2, preset="medium")
    warp.set_keyframe(_textured(0))
    now = _textured(8)
    grid = np.arange(32, dtype=np.float32)[None, None, None, :].repeat(24, axis=2)  # 1 x 1 x 24 x 32
    out_np = warp.warp({"f": grid}, now)["f"]
    out_t = warp.warp({"f": torch.from_numpy(grid)}, now)["f"].numpy()
    centre = (slice(None), slice(None), slice(5, 19), slice(6, 26))
    assert np.median(grid[centre] - out_np[centre]) == pytest.approx(2.0, abs=0.25)
    assert np.allclose(out_np, out_t, atol=1e-3)


def test_errors() -> None:
    with pytest.raises(ConfigError):
        FlowWarp(preset="warp9")
    with pytest.raises(ConfigError):
        FlowWarp(stride=0)
    with pytest.raises(RuntimeError, match="before set_keyframe"):
        FlowWarp().flow(_textured())


@pytest.mark.parametrize("stride", [1, 4])
@pytest.mark.parametrize("size", [(1, 1), (7, 5), (40, 40), (64, 8)])
def test_small_frames_get_a_flow_dis_can_compute(size: tuple[int, int], stride: int) -> None:
    """DIS needs both sides >= 8 and one >= 12: a 40x40 input at stride 4 (10x10 grey) failed with
    an OpenCV error on the first frame after a keyframe."""
    w, h = size
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    warp = FlowWarp(stride=stride)
    warp.set_keyframe(image)
    assert warp.residual(image) == pytest.approx(0.0, abs=1e-6)  # zero motion: no change
    feat = torch.randn(1, 3, h, w)
    assert torch.allclose(warp.warp({"f": feat}, image)["f"], feat, atol=1e-4)
    feat_np = feat.numpy()
    assert np.allclose(warp.warp({"f": feat_np}, image)["f"], feat_np, atol=1e-4)


@pytest.mark.parametrize("stride", [2.5, True, "4"])
def test_stride_must_be_a_whole_number(stride) -> None:
    with pytest.raises(ConfigError, match=r"FlowWarp stride must be a whole number >= 1, got"):
        FlowWarp(stride=stride)


@pytest.mark.parametrize(
    ("stride", "size"),
    # The default and finer strides always: on a small input the stretched image is the finest.
    [
        *[(4, (64, 48)), (4, (48, 48)), (4, (480, 360)), (30, (480, 360)), (42, (1024, 512))],
        *[(4, (32, 32)), (1, (8, 8)), (2, (16, 16)), (4, (16, 16))],
    ],
)
def test_a_stride_that_keeps_the_flow_image_dis_sized_is_accepted(stride: int, size: tuple[int, int]) -> None:
    FlowWarp(stride=stride).check_input(*size)


@pytest.mark.parametrize(
    ("stride", "size", "message"),
    [
        # every stride past 30 ran a stretched 12x12 flow at 480x360, named "flow stride 1000"
        (
            1000,
            (480, 360),
            "flow_stride 1000 leaves a 0x0 flow image at input 480x360, and DIS needs "
            "both sides >= 12 px: the largest flow_stride here is 30, or turn the warp off",
        ),
        (31, (480, 360), "flow_stride 31 leaves a 15x11 flow image at input 480x360"),
        (
            5,
            (64, 48),
            "12x9 flow image at input 64x48, and DIS needs both sides >= 12 px: the largest "
            "flow_stride here is 4",
        ),
        (5, (16, 16), "the largest flow_stride here is 4"),
    ],
)
def test_a_stride_past_the_flow_image_dis_needs_is_refused(
    stride: int, size: tuple[int, int], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        FlowWarp(stride=stride).check_input(*size)


def test_a_small_moving_object_gets_its_own_motion() -> None:
    """A 48x48 px car moving 8 px over a still textured road in a 480x360 frame, at stride 4 (a
    120x90 flow image). With DIS's preset levels the flow stopped at 1/16 of the frame, where the
    car is three cells wide: its motion was smeared into the still road around it (0.2 px)."""
    rng = np.random.default_rng(1)

    def texture(h: int, w: int, sigma: float) -> np.ndarray:
        noise = cv2.GaussianBlur(rng.integers(0, 255, (h, w)).astype(np.float32), (0, 0), sigma)
        return cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)

    road, car = texture(360, 480, 3), texture(56, 56, 2)[4:52, 4:52]
    key, now = road.copy(), road.copy()
    key[160:208, 200:248] = car
    now[160:208, 208:256] = car  # 8 px to the right
    warp = FlowWarp()
    warp.set_keyframe(np.dstack([key] * 3))
    flow = warp.flow(np.dstack([now] * 3)) * 4  # in frame pixels
    assert np.median(flow[43:49, 55:61, 0]) == pytest.approx(-8.0, abs=1.0)  # it came from 8 px left
    assert np.median(np.abs(flow[:30, :, 0])) < 0.5  # the road far from it stays still


def test_a_keyframe_whose_change_was_just_scored_reuses_its_grey_image(drive) -> None:
    """Scoring the change made the frame's grey image: making the keyframe from it again cost
    0.1 ms a keyframe. Reused, the keyframe is the same, and so is every later score."""
    from rtseg.schedule import FlowWarp

    reused, fresh = FlowWarp(), FlowWarp()
    reused.set_keyframe(drive[0])
    fresh.set_keyframe(drive[0])
    frame = drive[3].copy()
    reused.residual(frame)
    made = reused._last[1]
    reused.set_keyframe(frame)
    fresh.set_keyframe(frame.copy())
    assert reused._key is made and np.array_equal(reused._key, fresh._key)
    assert reused.residual(drive[5].copy()) == fresh.residual(drive[5].copy())
