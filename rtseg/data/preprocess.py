"""Input preprocessing as data, so it travels with the weights instead of the call site."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch

ChannelOrder = Literal["BGR", "RGB"]


@dataclass(frozen=True)
class Preprocessing:
    """How a checkpoint expects its input: ``x = (img * pixel_scale - mean) / std * post_scale``.

    ``img`` is the uint8 image in ``channel_order``. ``post_scale`` exists because ESPNet's
    authors divide by 255 *after* standardising (``(img - mean) / std / 255``), and their
    checkpoints only work with that quirk reproduced.
    """

    channel_order: ChannelOrder
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_scale: float = 1.0
    post_scale: float = 1.0
    input_size: tuple[int, int] = (1024, 512)  # (width, height) the weights were trained at
    interpolation: Literal["linear", "area"] = "linear"

    def __post_init__(self) -> None:
        if self.channel_order not in ("BGR", "RGB"):
            raise ValueError(
                f"Preprocessing.channel_order must be 'BGR' or 'RGB', got {self.channel_order!r}"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"Preprocessing.{name} must have 3 values, got {value!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Preprocessing.std must be positive, got {self.std!r}")
        if self.pixel_scale <= 0 or self.post_scale <= 0:
            raise ValueError(
                "Preprocessing.pixel_scale and post_scale must be positive, "
                f"got {self.pixel_scale} and {self.post_scale}"
            )
        w, h = self.input_size
        if w <= 0 or h <= 0:
            raise ValueError(f"Preprocessing.input_size must be positive (w, h), got {self.input_size}")
        if self.interpolation not in ("linear", "area"):
            raise ValueError(
                f"Preprocessing.interpolation must be 'linear' or 'area', got {self.interpolation!r}"
            )

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (scale, shift) in model channel order: ``x = img * scale + shift``."""
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        scale = self.pixel_scale * self.post_scale / std
        shift = -mean * self.post_scale / std
        return scale.astype(np.float32), shift.astype(np.float32)

    def with_input_size(self, size: tuple[int, int]) -> Preprocessing:
        return Preprocessing(
            channel_order=self.channel_order,
            mean=self.mean,
            std=self.std,
            pixel_scale=self.pixel_scale,
            post_scale=self.post_scale,
            input_size=(int(size[0]), int(size[1])),
            interpolation=self.interpolation,
        )

    def to_dict(self) -> dict:
        return {
            "channel_order": self.channel_order,
            "mean": list(self.mean),
            "std": list(self.std),
            "pixel_scale": self.pixel_scale,
            "post_scale": self.post_scale,
            "input_size": list(self.input_size),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(
            channel_order=data["channel_order"],
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            pixel_scale=float(data.get("pixel_scale", 1.0)),
            post_scale=float(data.get("post_scale", 1.0)),
            input_size=tuple(int(v) for v in data["input_size"]),  # type: ignore[arg-type]
            interpolation=data.get("interpolation", "linear"),
        )


IMAGENET_RGB = Preprocessing(
    channel_order="RGB",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    pixel_scale=1 / 255,
)


def cv2_interpolation(interpolation: str) -> int:
    """The cv2 flag for ``Preprocessing.interpolation``, one mapping for every path that resizes
    frames to the input (run, serve, eval, the sequence study): weights trained on area-shrunk
    frames are scored on what they are fed."""
    return cv2.INTER_AREA if interpolation == "area" else cv2.INTER_LINEAR


class Normalize(torch.nn.Module):
    """uint8 NHWC BGR batch -> float NCHW in model order, normalised; exported into the graphs.

    Doing this inside the engine saves a float copy of every frame on the host, and the NHWC
    view of an OpenCV image is already a channels_last tensor, so nothing is copied to get here.
    """

    def __init__(self, preprocessing: Preprocessing) -> None:
        super().__init__()
        scale, shift = preprocessing.affine()
        self.rgb = preprocessing.channel_order == "RGB"
        self.register_buffer("scale", torch.from_numpy(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.from_numpy(shift).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float()
        if self.rgb:
            x = x.flip(1)
        return x * self.scale + self.shift

    def eager(self, image: torch.Tensor) -> torch.Tensor:
        """The same values as a contiguous NCHW tensor, for running in PyTorch: the uint8 bytes are
        transposed first (a quarter of the float bytes) and then scaled in place, where forward's
        graph form makes four float passes (ESPNet at 1280x720, one thread: 2.4 against 6.6 ms).
        Not exported: TensorRT takes a uint8 input only cast to float, not transposed."""
        x = (image.flip(3) if self.rgb else image).permute(0, 3, 1, 2).contiguous()
        return x.float().mul_(self.scale).add_(self.shift)


def normalize_numpy(image_bgr: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """HWC uint8 BGR -> 1x3xHxW float32 in model order, for tools that feed float tensors."""
    if image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(
            f"expected an HxWx3 uint8 BGR image, got shape {image_bgr.shape} dtype {image_bgr.dtype}"
        )
    scale, shift = preprocessing.affine()
    src = image_bgr[:, :, ::-1] if preprocessing.channel_order == "RGB" else image_bgr
    chw = np.empty((1, 3, *image_bgr.shape[:2]), dtype=np.float32)
    for c in range(3):
        np.multiply(src[:, :, c], scale[c], out=chw[0, c], casting="unsafe")
        chw[0, c] += shift[c]
    return chw
