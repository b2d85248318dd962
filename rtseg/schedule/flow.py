"""Flow-guided warp of cached deep features (Deep Feature Flow, Zhu et al. CVPR 2017), with DIS flow.

Between keyframes the cached deep features describe where things *were*. Warping them along the
optical flow from the current frame back to the keyframe moves them to where things *are* before
the head fuses them with the current low features. Flow comes from OpenCV's DIS (Kroeger et al.
2016) on grey images downscaled by ``stride``, computed down to that image's own resolution; each
deep feature is resampled bilinearly at its own resolution (grid_sample for torch tensors,
cv2.remap for NumPy arrays).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


DEFAULT_STRIDE = 4


def check_stride(stride: Any, name: str) -> None:
    """Refuse a flow stride that is not a whole number >= 1; ``name`` is the caller's keyword."""
    if not isinstance(stride, numbers.Integral) or isinstance(stride, bool) or stride < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {stride!r}")


class FlowWarp:
    """Owns the keyframe's grey image and a DIS instance: one per scheduler, not thread-shared."""

    def __init__(self, *, preset: str = "ultrafast", stride: int = DEFAULT_STRIDE) -> None:
        if preset not in PRESETS:
            raise ConfigError(f"flow preset must be one of {sorted(PRESETS)}, got {preset!r}")
        check_stride(stride, "FlowWarp stride")
        self.preset = preset
        self.stride = stride
        self._dis = cv2.DISOpticalFlow.create(PRESETS[preset])
        # Flow down to the flow image's own pixels. The presets stop two pyramid levels short (at
        # 1/16 of a 480x360 input at stride 4, where the pyramid also has one level only): on the
        # CamVid sequence that cost 0.7-3.7 mIoU at every clockwork interval for 0.8 ms less per
        # frame (docs/scheduling.md, "The flow").
        self._dis.setFinestScale(0)
        self._key: np.ndarray | None = None
        self._key_mean = 0.0
        self._last: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (image, grey, flow)

    def describe(self) -> str:
        """What a scheduler's description says of the warp (the defaults go unnamed)."""
        options = [f"flow stride {self.stride}"] if self.stride != DEFAULT_STRIDE else []
        options += [f"DIS {self.preset}"] if self.preset != "ultrafast" else []
        return "flow warp" + (f" ({', '.join(options)})" if options else "")

    @property
    def limits_input(self) -> bool:
        """Whether ``check_input`` refuses some input size: a caller that must work to learn the
        size before the engine loads (read the weights) need not, otherwise."""
        return self.stride > DEFAULT_STRIDE

    def check_input(self, w: int, h: int) -> None:
        """Refuse a stride above the default that leaves a w x h input's flow image below the side
        DIS needs.

        ``grey`` stretches such an image up to that side (``dis_size``), so a larger stride ran a
        few-pixel flow under its own name; at 480x360 every stride past 30 ran a 12x12 one
        (flow_stride 1000: 66.07 mIoU on CamVid against 69.17 at stride 4, clockwork K=3, silently).
        The default and smaller strides are always accepted: on a small input (under 48 px a side at
        stride 4) the stretched flow image is the finest there is, and the default must work.
        """
        need = max(12, self._dis.getPatchSize())
        if not self.limits_input or min(w // self.stride, h // self.stride) >= need:
            return
        largest = max(DEFAULT_STRIDE, min(w, h) // need)
        raise ConfigError(
            f"flow_stride {self.stride} leaves a {w // self.stride}x{h // self.stride} flow image at "
            f"input {w}x{h}, and DIS needs both sides >= {need} px: the largest flow_stride here is "
            f"{largest}, or turn the warp off (warp=False)"
        )

    def grey(self, image: np.ndarray) -> np.ndarray:
        """The image as flow input: grey, downscaled by ``stride``."""
        if image.ndim == 4:
            image = image[0]
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        h, w = grey.shape
        size = dis_size(max(1, w // self.stride), max(1, h // self.stride), self._dis.getPatchSize())
        if size != (w, h):
            shrink = size[0] <= w and size[1] <= h
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return grey

    def grey_of(self, image: np.ndarray) -> np.ndarray:
        """``grey(image)``, reused when this frame's flow already made it (a keyframe whose change
        was just scored)."""
        if self._last is not None and self._last[0] is image:
            return self._last[1]
        return self.grey(image)

    def set_keyframe(self, image: np.ndarray) -> None:
        self.set_keyframe_grey(self.grey_of(image))

    def set_keyframe_grey(self, grey: np.ndarray) -> None:
        """The keyframe from an image ``grey`` already made (one taken before its buffer was reused)."""
        self._key = grey
        self._key_mean = float(grey.mean())  # every residual against this keyframe divides by it
        self._last = None

    def new_frame(self) -> None:
        """Forget the last frame's flow. A scheduler calls this once per frame: the flow is kept for
        the same image object, and callers that refill one buffer per frame pass the same object."""
        self._last = None

    def reset(self) -> None:
        self._key = None
        self._last = None

    def _grey_and_flow(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._key is None:
            raise RuntimeError("FlowWarp.flow called before set_keyframe")
        if self._last is None or self._last[0] is not image:
            grey = self.grey(image)
            self._last = (image, grey, self._dis.calc(grey, self._key, None))
        return self._key, self._last[1], self._last[2]

    def flow(self, image: np.ndarray) -> np.ndarray:
        """h x w x 2 flow at ``stride``: current(x) ~ keyframe(x + flow(x)).

        The last result is kept for the same image object until ``new_frame``, so a scheduler that
        scores the motion-compensated change and then warps pays for one flow per frame.
        """
        return self._grey_and_flow(image)[2]

    def residual(self, image: np.ndarray) -> float:
        """The motion-compensated change since the keyframe (see ``residual_of``), reusing the flow."""
        key, grey, flow = self._grey_and_flow(image)
        return residual_of(grey, key, flow, key_mean=self._key_mean)

    def residual_between(self, grey: np.ndarray, key: np.ndarray) -> float:
        """The same score for two images already made by ``grey`` (threshold calibration)."""
        return residual_of(grey, key, self._dis.calc(grey, key, None))

    def warp(self, deep: dict[str, Any], image: np.ndarray) -> dict[str, Any]:
        flow = self.flow(image)
        return {name: _warp_one(value, flow) for name, value in deep.items()}


def dis_size(w: int, h: int, patch: int) -> tuple[int, int]:
    """The smallest flow-image size from w x h that OpenCV's DIS can compute on.

    DIS refuses sides under 12 and crashes (a segmentation fault, OpenCV 4-5) when its coarsest
    pyramid level, chosen from the longer side (about log2(long / (4 * patch)) levels), leaves the
    short side under one patch: a 64x12 image, or a 1920x240 strip at stride 4. The short side is
    stretched to fit; the warp rescales flow per axis, so a stretched image gives the right motion.
    """
    w, h = max(w, 12, patch), max(h, 12, patch)

    def least_short_side(long_side: int) -> int:
        levels = max(0, math.floor(math.log2(long_side / (4 * patch)) + 0.5))
        return patch << levels

    return max(w, least_short_side(h)), max(h, least_short_side(w))


def residual_of(
    grey: np.ndarray, key: np.ndarray, flow: np.ndarray, *, key_mean: float | None = None
) -> float:
    """What the flow does not explain: mean |grey_now - warped keyframe grey| / mean keyframe grey.

    Motion the warp will compensate does not count as change; what appears, disappears or moves
    unlike the flow (occlusions, new objects, lighting) does.
    """
    h, w = grey.shape
    map_x, map_y = _sampling_map(flow, w, h)
    warped = cv2.remap(key, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mean = float(key.mean()) if key_mean is None else key_mean
    return float(cv2.absdiff(grey, warped).mean()) / (mean + 1e-6)


@functools.lru_cache(maxsize=8)
def _pixel_grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates, made once per feature size (read-only: every caller adds to them)."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.flags.writeable = gy.flags.writeable = False
    return gx, gy


def _sampling_map(flow: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    fh, fw = flow.shape[:2]
    if (fw, fh) != (w, h):
        flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
    gx, gy = _pixel_grid(w, h)
    # Flow vectors are in flow-image pixels: rescale them to this feature's pixels.
    return gx + flow[..., 0] * (w / fw), gy + flow[..., 1] * (h / fh)


def _warp_one(value: Any, flow: np.ndarray) -> Any:
    h, w = value.shape[-2:]
    map_x, map_y = _sampling_map(flow, w, h)
    if isinstance(value, torch.Tensor):
        grid = np.stack(((map_x + 0.5) * (2.0 / w) - 1.0, (map_y + 0.5) * (2.0 / h) - 1.0), axis=-1)
        g = (
            torch.from_numpy(grid)
            .to(value.device, value.dtype)
            .unsqueeze(0)
            .expand(value.shape[0], -1, -1, -1)
        )
        return F.grid_sample(value, g, mode="bilinear", padding_mode="border", align_corners=False)
    out = np.empty_like(value)
    for idx in np.ndindex(*value.shape[:-2]):
        cv2.remap(value[idx], map_x, map_y, cv2.INTER_LINEAR, dst=out[idx], borderMode=cv2.BORDER_REPLICATE)
    return out
