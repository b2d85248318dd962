"""ICNet (Zhao et al., ECCV 2018) on a dilated ResNet-18 or ResNet-50.

Three branches read the image at scales 1, 1/2 and 1/4. Full: three strided 3x3 convs (stride
8, 64 ch). Half: the backbone's stem, layer1 and the first, strided block of layer2 ("conv3_1"
in the paper's PSPNet50 naming) on the 1/2 image, stride 16. Quarter: conv3_1 downsampled by 2,
then the rest of layer2, the dilated layer3/layer4 and the light pyramid pooling (bins 1, 2, 3,
6 summed, 1x1 conv to 256), stride 32. As in the authors' release (``conv3_1_sub4`` is the
interpolated ``conv3_1``) the quarter branch reuses the half branch's conv3_1 instead of running
the shared layers again on a 1/4 image. Cascade feature fusion (CFF) merges 1/32 into 1/16 and
1/16 into 1/8; a x2 upsample and a 1x1 classifier give logits at stride 4. Unlike the authors'
release, widths are the full ResNet ones (no 0.5x kernel pruning), blocks stride on the 3x3 conv
and resizing is bilinear with ``align_corners=False``.

Stage split (the issue's): ``low`` = full and half branches, returning the stride-8 and
stride-16 features; ``deep`` = the quarter branch on the downsampled stride-16 features,
returning the stride-32 PPM output; ``head`` = both CFF units and the classifier. Measured with
``rtseg.models.flops.stage_flops`` (GFLOPs = 2 x MACs; shares identical at both sizes):

=========  ==========  ==========  ======  ======  ======  ==========
backbone   size        total GF    low     deep    head    low+head
=========  ==========  ==========  ======  ======  ======  ==========
resnet50   1024x512    36.60       23.1 %  65.5 %  11.4 %  34.5 %
resnet50   2048x1024   146.37      23.1 %  65.5 %  11.4 %  34.5 %
resnet18   1024x512    21.52       29.5 %  52.0 %  18.5 %  48.0 %
resnet18   2048x1024   86.09       29.5 %  52.0 %  18.5 %  48.0 %
=========  ==========  ==========  ======  ======  ======  ==========

ResNet-50 meets the aim of low + head <= 35 %, narrowly. ResNet-18 cannot while both cascade
branches stay current: its layer3/layer4 are cheap next to the deep stem the half branch shares,
so ``low`` alone is 29.5 %, and the 1/8 CFF plus classifier (12.6 %) must see the current frame. Variations
measured: running all of layer2 on the 1/2 image (reading "stem..layer2" literally) is a
different, costlier network (39.2 / 22.4 GF) and worse, 41.0 % (R50) / 51.5 % (R18); moving the
first CFF's upsample + dilated conv, which reads only deep features, into ``deep`` gives the
same outputs at 31.2 % / 42.4 %, but caches 128 ch at stride 16 (twice the bytes of 256 ch at
stride 32); ResNet-50 does not need it and it does not rescue ResNet-18, so the issue's split
is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .base import FeatureInfo, Features, StagedSegmenter, StageSpec, init_weights, whole_number
from .resnet import ResNet, conv_bn_relu, resnet18, resnet50

BACKBONES: Mapping[str, Callable[..., ResNet]] = MappingProxyType(
    {"resnet18": resnet18, "resnet50": resnet50}
)
PPM_BINS = (1, 2, 3, 6)
PPM_CHANNELS = 256
CFF_CHANNELS = 128
SUB1_CHANNELS = (32, 32, 64)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _half(x: Tensor) -> Tensor:
    return _resize(x, (x.shape[-2] // 2, x.shape[-1] // 2))


def upsample2(x: Tensor) -> Tensor:
    return _resize(x, (2 * x.shape[-2], 2 * x.shape[-1]))


def _pool_matrix(n: int, bins: int, like: Tensor) -> Tensor:
    """``bins x n`` matrix whose rows average adaptive-pooling windows (PyTorch's window bounds)."""
    i = torch.arange(bins, device=like.device)
    start = torch.div(i * n, bins, rounding_mode="floor")
    end = torch.div((i + 1) * n + bins - 1, bins, rounding_mode="floor")
    j = torch.arange(n, device=like.device)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def adaptive_avg_pool(x: Tensor, bins: int) -> Tensor:
    """``F.adaptive_avg_pool2d(x, bins)`` as two matmuls.

    The windows do not tile the map when ``bins`` does not divide its size (3 and 6 bins on
    rtseg's 16x32 or 4x8 maps), which breaks the legacy ONNX exporter and engines without a
    general adaptive pool; two small matmuls are plain MatMul nodes everywhere.
    """
    h, w = x.shape[-2:]
    return _pool_matrix(h, bins, x) @ x @ _pool_matrix(w, bins, x).transpose(0, 1)


class PyramidPoolingSum(nn.Module):
    """ICNet's light PPM: pool to each bin count, upsample back, and *sum* with the input.

    PSPNet concatenates reduced branches; ICNet sums the unreduced pooled maps, which keeps the
    channel count and avoids four 1x1 convs.
    """

    def __init__(self, bins: tuple[int, ...] = PPM_BINS) -> None:
        super().__init__()
        if not bins or any(b < 1 for b in bins):
            raise ConfigError(f"PyramidPoolingSum.bins must be positive ints, got {bins!r}")
        self.bins = tuple(bins)

    def forward(self, x: Tensor) -> Tensor:
        size = (x.shape[-2], x.shape[-1])
        out = x
        for b in self.bins:
            out = out + _resize(adaptive_avg_pool(x, b), size)
        return out


class CascadeFeatureFusion(nn.Module):
    """CFF unit: x2-upsampled low-res features through a dilated 3x3 conv, plus projected high-res.

    The dilated conv widens the receptive field on the upsampled map at the cost of a 3x3 conv;
    ``aux_classifier`` is the cascade label guidance, which reads the upsampled low-resolution
    features during training only.
    """

    def __init__(self, *, low_channels: int, high_channels: int, out_channels: int, num_outputs: int) -> None:
        super().__init__()
        self.conv_low = nn.Sequential(
            nn.Conv2d(low_channels, out_channels, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.conv_high = nn.Sequential(
            nn.Conv2d(high_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.relu = nn.ReLU(inplace=True)
        self.aux_classifier = nn.Conv2d(low_channels, num_outputs, 1)

    def forward(self, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
        """Fused features and the upsampled low-res features (input of the aux classifier)."""
        low_up = upsample2(low)
        return self.relu(self.conv_low(low_up) + self.conv_high(high)), low_up


class ICNet(StagedSegmenter):
    """ICNet: logits at stride 4 from an image cascade at scales 1, 1/2 and 1/4."""

    aux_weights: ClassVar[Mapping[str, float]] = MappingProxyType({"aux_s16": 0.4, "aux_s8": 0.4})

    def __init__(self, *, num_outputs: int = 19, backbone: str = "resnet50") -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ConfigError(f"ICNet.backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        # A float count failed inside torch without naming the option.
        num_outputs = whole_number("ICNet", "num_outputs", num_outputs, 1)
        self.num_outputs = num_outputs
        self.backbone: ResNet = BACKBONES[backbone](output_stride=8)
        c_sub1 = SUB1_CHANNELS[-1]
        c_sub2 = self.backbone.channels("layer2")
        c_sub4 = self.backbone.channels("layer4")
        a, b, c = SUB1_CHANNELS
        self.sub1 = nn.Sequential(
            conv_bn_relu(3, a, stride=2), conv_bn_relu(a, b, stride=2), conv_bn_relu(b, c, stride=2)
        )
        self.ppm = PyramidPoolingSum(PPM_BINS)
        self.ppm_proj = conv_bn_relu(c_sub4, PPM_CHANNELS, k=1)
        k = num_outputs
        self.cff_s16 = CascadeFeatureFusion(
            low_channels=PPM_CHANNELS, high_channels=c_sub2, out_channels=CFF_CHANNELS, num_outputs=k
        )
        self.cff_s8 = CascadeFeatureFusion(
            low_channels=CFF_CHANNELS, high_channels=c_sub1, out_channels=CFF_CHANNELS, num_outputs=k
        )
        self.classifier = nn.Conv2d(CFF_CHANNELS, num_outputs, 1)
        self.stage_spec = StageSpec(
            low=(FeatureInfo("sub1_s8", c_sub1, 8), FeatureInfo("sub2_s16", c_sub2, 16)),
            deep=(FeatureInfo("sub4_s32", PPM_CHANNELS, 32),),
            deep_inputs=("sub2_s16",),
            output_stride=4,
            input_multiple=32,
        )
        init_weights(self)

    def _branch_half(self, x: Tensor) -> Tensor:
        """Stem, layer1 and the first (strided) block of layer2, "conv3_1", on the 1/2 image."""
        bb = self.backbone
        return bb.layer2[0](bb.layer1(bb.stem(_half(x))))

    def _branch_quarter(self, conv3_1: Tensor) -> Tensor:
        """The rest of the backbone and the PPM on conv3_1 downsampled by 2 (stride 32)."""
        bb = self.backbone
        y = _half(conv3_1)
        for block in bb.layer2[1:]:
            y = block(y)
        y = bb.layer4(bb.layer3(y))
        return self.ppm_proj(self.ppm(y))

    def forward_low(self, x: Tensor) -> Features:
        self.check_input(x)  # other sizes fail later, in a CFF sum, with an opaque shape error
        return {"sub1_s8": self.sub1(x), "sub2_s16": self._branch_half(x)}

    def forward_deep(self, low: Features) -> Features:
        return {"sub4_s32": self._branch_quarter(low["sub2_s16"])}

    def forward_head(self, low: Features, deep: Features) -> Tensor:
        return self._fuse(low, deep)[0]

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        low = self.forward_low(x)
        logits, sub4_up, s16_up = self._fuse(low, self.forward_deep(low))
        aux = {"aux_s16": self.cff_s16.aux_classifier(sub4_up), "aux_s8": self.cff_s8.aux_classifier(s16_up)}
        return logits, aux

    def _fuse(self, low: Features, deep: Features) -> tuple[Tensor, Tensor, Tensor]:
        """Logits at stride 4, plus the two upsampled inputs of the cascade guidance."""
        s16, sub4_up = self.cff_s16(deep["sub4_s32"], low["sub2_s16"])
        s8, s16_up = self.cff_s8(s16, low["sub1_s8"])
        return self.classifier(upsample2(s8)), sub4_up, s16_up
