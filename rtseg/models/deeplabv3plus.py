"""DeepLabV3+ (Chen et al., ECCV 2018) on a MobileNetV2 backbone, logits at stride 4.

ASPP: a 1x1 branch, three separable 3x3 atrous branches (rates 6/12/18 at output stride 16,
doubled at 8) and image pooling, concatenated and projected to 256 channels. Decoder: the
stride-4 backbone features reduced to 48 channels, concatenated with the bilinearly upsampled
ASPP output, two separable 3x3 convs with 256 channels and a 1x1 classifier. Separable means
depthwise 3x3 + BN + ReLU then pointwise 1x1 + BN + ReLU, as the paper uses for speed. The
backbone ends at the 320-channel features, without MobileNetV2's 1x1 conv to 1280 (the
MobileNetV2 paper's choice for DeepLab heads).

Stage split (``rtseg.models.flops.stage_flops``, output stride 16, 19 outputs):

========  =====  =====  =====  ============
input     low    deep   head   total GFLOPs
========  =====  =====  =====  ============
1024x512  7.1%   47.7%  45.3%  22.36
480x360   7.0%   48.2%  44.8%  7.44
========  =====  =====  =====  ============

``low`` runs the backbone to stride 4 and returns its 24-channel features, the decoder's
low-level input from the current frame. ``deep`` is the rest of the backbone and ASPP, cached as
one 256-channel tensor at the output stride. ``head`` is the decoder and classifier. The split is
fixed by the architecture (the decoder is the only part that reads the current frame's stride-4
features), and the head holds almost half the FLOPs because its two 256-channel separable convs
run at stride 4, so reusing cached deep features saves at most about half of a full pass here.
(360 is not a multiple of 16: the decoder resizes to the stride-4 map's size, so the FLOP count
runs, but real inputs should be padded to a multiple of 16.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .base import FeatureInfo, Features, StagedSegmenter, StageSpec, init_weights, whole_number
from .mobilenetv2 import MobileNetV2

_ASPP_RATES_OS16 = (6, 12, 18)
_VALID_OUTPUT_STRIDES = (8, 16)


class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, k, padding=(k - 1) // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
        )


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 (optionally atrous) + BN + ReLU, pointwise 1x1 + BN + ReLU."""

    def __init__(self, c_in: int, c_out: int, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, padding=dilation, dilation=dilation, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )


class ImagePooling(nn.Module):
    """Global average -> 1x1 conv -> BN -> ReLU, broadcast back over the feature map.

    Written as a mean over H and W and an ``expand`` so that it exports to ONNX (ReduceMean,
    Expand) for any input size, with no pooling window tied to the export-time shape.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.project = ConvBNReLU(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.project(x.mean(dim=(2, 3), keepdim=True))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    def __init__(self, c_in: int, c_out: int, rates: tuple[int, ...], dropout: float = 0.1) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [
                ConvBNReLU(c_in, c_out, 1),
                *(SeparableConv(c_in, c_out, r) for r in rates),
                ImagePooling(c_in, c_out),
            ]
        )
        self.project = ConvBNReLU(c_out * len(self.branches), c_out, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.project(torch.cat([b(x) for b in self.branches], 1)))


class Decoder(nn.Module):
    """Fuses upsampled ASPP features with 48-channel projected stride-4 features."""

    def __init__(
        self, low_channels: int, aspp_channels: int, *, reduced: int = 48, channels: int = 256
    ) -> None:
        super().__init__()
        self.reduce = ConvBNReLU(low_channels, reduced, 1)
        self.fuse = nn.Sequential(
            SeparableConv(aspp_channels + reduced, channels), SeparableConv(channels, channels)
        )

    def forward(self, low: Tensor, aspp: Tensor) -> Tensor:
        up = F.interpolate(aspp, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([up, self.reduce(low)], 1))


class DeepLabV3Plus(StagedSegmenter):
    """DeepLabV3+ with MobileNetV2; see the module docstring for the stage split."""

    def __init__(self, *, num_outputs: int = 19, output_stride: int = 16) -> None:
        super().__init__()
        # Whole numbers first: 16.0 passed the membership test and failed inside torch.
        output_stride = whole_number("DeepLabV3Plus", "output_stride", output_stride, 1)
        num_outputs = whole_number("DeepLabV3Plus", "num_outputs", num_outputs, 1)
        if output_stride not in _VALID_OUTPUT_STRIDES:
            raise ConfigError(
                f"DeepLabV3Plus output_stride must be one of {_VALID_OUTPUT_STRIDES}, got {output_stride!r}"
            )
        self.num_outputs = num_outputs
        self.backbone = MobileNetV2(output_stride=output_stride, last_conv=False)
        rates = tuple(r * 16 // output_stride for r in _ASPP_RATES_OS16)
        self.aspp = ASPP(self.backbone.out_channels, 256, rates)
        self.decoder = Decoder(self.backbone.stride4_channels, 256)
        self.classifier = nn.Conv2d(256, num_outputs, 1)
        self.stage_spec = StageSpec(
            low=(FeatureInfo("s4", self.backbone.stride4_channels, 4),),
            deep=(FeatureInfo("aspp", 256, output_stride),),
            deep_inputs=("s4",),
            output_stride=4,
            input_multiple=output_stride,
        )
        init_weights(self)

    def forward_low(self, x: Tensor) -> Features:
        # Off the multiple the ASPP features' stride is no longer output_stride (ceil sizes) and
        # the logits come out a pixel off the spec's h // 4, without any error.
        self.check_input(x)
        return {"s4": self.backbone.stem_to_stride4(x)}

    def forward_deep(self, low: Features) -> Features:
        return {"aspp": self.aspp(self.backbone.stride4_to_out(low["s4"]))}

    def forward_head(self, low: Features, deep: Features) -> Tensor:
        return self.classifier(self.decoder(low["s4"], deep["aspp"]))
