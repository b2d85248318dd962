"""ENet (Paszke et al., 2016): bottleneck encoder with pooling indices reused by a small decoder.

Layout follows the paper's Table 1 and the authors' Torch release: internal projection ratio 4 of
each bottleneck's output channels, BN eps 1e-3, PReLU and spatial dropout (0.01 in stage 1, 0.1 in
stages 2-3) in the encoder, ReLU and no dropout in the decoder, a 2x2 stride-2 full convolution at
the end.

Max-unpooling is written as index-equality masking (``max_unpool2x2``) instead of
``nn.MaxUnpool2d``: it is bit-identical, exports to plain ONNX ops (Expand/Reshape/Equal/Where)
and so also runs where an engine's ONNX parser has no MaxUnpool (TensorRT).

Stage split, measured with ``rtseg.models.flops.stage_flops`` (convolution FLOPs, 2 x MACs):

========  =====  =====  =====  ============
input     low    deep   head   total GFLOPs
========  =====  =====  =====  ============
1024x512  19.4%  74.3%  6.4%   7.84
480x360   19.4%  74.3%  6.4%   2.59
========  =====  =====  =====  ============

``low`` is the initial block and stage 1 (stride 4): it returns the stage-1 output and stage 1's
pooling indices, the one thing the decoder reads from the current frame. ``deep`` is stages 2, 3
and 4: stage 4 (10.7 % of the FLOPs) reads only stage 3's output and stage 2's pooling indices,
so computing it in the head would redo identical work on every reused frame, and it would leave
low + head at 36.5 % instead of 25.7 %. The cached tensor is stage 4's 64-channel stride-4 output
(stage 2's indices are consumed inside ``deep``). ``head`` is stage 5's upsampling bottleneck,
which unpools the cached features with the *current* frame's stage-1 indices (so edges follow
the new frame), its regular bottleneck and the full convolution. FLOP shares understate ENet's
low and head cost on CPUs, where its element-wise work and unpooling are memory-bound.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .base import FeatureInfo, Features, StagedSegmenter, StageSpec, init_weights, whole_number

_BN_EPS = 1e-3
_PROJECTION_RATIO = 4


def max_unpool2x2(x: Tensor, indices: Tensor) -> Tensor:
    """Exact ``F.max_unpool2d(x, indices, 2)`` for indices from a 2x2 stride-2 max-pool.

    Every pooled value is repeated over its 2x2 window and kept only where the window position's
    flat index equals the recorded one; all other positions are zero, as in max-unpooling.
    """
    n, c, h, w = x.shape
    if indices.shape != x.shape:
        raise ValueError(f"max_unpool2x2: indices shape {tuple(indices.shape)} != values {tuple(x.shape)}")

    def up(t: Tensor) -> Tensor:
        return t[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)

    positions = torch.arange(4 * h * w, device=x.device, dtype=indices.dtype).view(1, 1, 2 * h, 2 * w)
    return torch.where(up(indices) == positions, up(x), torch.zeros((), dtype=x.dtype, device=x.device))


def _act(channels: int, relu: bool) -> nn.Module:
    return nn.ReLU() if relu else nn.PReLU(channels)


class InitialBlock(nn.Module):
    """13 strided 3x3 filters concatenated with the 2x2 max-pooled image: 16 channels at stride 2."""

    def __init__(self, out_channels: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_channels - 3, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), F.max_pool2d(x, 2, 2)], 1)))


class Bottleneck(nn.Module):
    """Size-preserving residual bottleneck: 1x1 reduce, spatial conv, 1x1 expand, spatial dropout.

    The spatial conv is a 3x3 with ``dilation`` or, with ``asymmetric`` = k, a kx1 then 1xk pair.
    """

    def __init__(
        self,
        channels: int,
        *,
        dilation: int = 1,
        asymmetric: int = 0,
        dropout: float = 0.0,
        relu: bool = False,
    ) -> None:
        super().__init__()
        internal = channels // _PROJECTION_RATIO
        if asymmetric:
            p = asymmetric // 2
            spatial: nn.Module = nn.Sequential(
                nn.Conv2d(internal, internal, (asymmetric, 1), padding=(p, 0), bias=False),
                nn.Conv2d(internal, internal, (1, asymmetric), padding=(0, p), bias=False),
            )
        else:
            spatial = nn.Conv2d(internal, internal, 3, padding=dilation, dilation=dilation, bias=False)
        self.branch = nn.Sequential(
            nn.Conv2d(channels, internal, 1, bias=False),
            nn.BatchNorm2d(internal, eps=_BN_EPS),
            _act(internal, relu),
            spatial,
            nn.BatchNorm2d(internal, eps=_BN_EPS),
            _act(internal, relu),
            nn.Conv2d(internal, channels, 1, bias=False),
            nn.BatchNorm2d(channels, eps=_BN_EPS),
            nn.Dropout2d(dropout),
        )
        self.act = _act(channels, relu)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.branch(x))


class DownsamplingBottleneck(nn.Module):
    """Main branch: max-pool (indices kept) and zero channel padding; extension: 2x2 stride-2 conv."""

    def __init__(self, c_in: int, c_out: int, *, dropout: float) -> None:
        super().__init__()
        if c_out < c_in:
            raise ConfigError(f"DownsamplingBottleneck c_out must be >= c_in ({c_in}), got {c_out}")
        internal = c_out // _PROJECTION_RATIO
        self.pad = c_out - c_in
        self.branch = nn.Sequential(
            nn.Conv2d(c_in, internal, 2, stride=2, bias=False),
            nn.BatchNorm2d(internal, eps=_BN_EPS),
            nn.PReLU(internal),
            nn.Conv2d(internal, internal, 3, padding=1, bias=False),
            nn.BatchNorm2d(internal, eps=_BN_EPS),
            nn.PReLU(internal),
            nn.Conv2d(internal, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, eps=_BN_EPS),
            nn.Dropout2d(dropout),
        )
        self.act = nn.PReLU(c_out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        main, indices = F.max_pool2d(x, 2, 2, return_indices=True)
        main = F.pad(main, (0, 0, 0, 0, 0, self.pad))
        return self.act(main + self.branch(x)), indices


class UpsamplingBottleneck(nn.Module):
    """Main branch: 1x1 conv + BN, then max-unpool with the encoder's indices; extension: 3x3 deconv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        internal = c_out // _PROJECTION_RATIO
        self.main = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, eps=_BN_EPS))
        self.branch = nn.Sequential(
            nn.Conv2d(c_in, internal, 1, bias=False),
            nn.BatchNorm2d(internal, eps=_BN_EPS),
            nn.ReLU(),
            nn.ConvTranspose2d(internal, internal, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(internal, eps=_BN_EPS),
            nn.ReLU(),
            nn.Conv2d(internal, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, eps=_BN_EPS),
        )
        self.act = nn.ReLU()

    def forward(self, x: Tensor, indices: Tensor) -> Tensor:
        return self.act(max_unpool2x2(self.main(x), indices) + self.branch(x))


def _stage23_blocks(channels: int, dropout: float) -> list[nn.Module]:
    """Regular, dilated 2, asymmetric 5, dilated 4, regular, dilated 8, asymmetric 5, dilated 16."""
    return [
        Bottleneck(channels, dropout=dropout),
        Bottleneck(channels, dilation=2, dropout=dropout),
        Bottleneck(channels, asymmetric=5, dropout=dropout),
        Bottleneck(channels, dilation=4, dropout=dropout),
        Bottleneck(channels, dropout=dropout),
        Bottleneck(channels, dilation=8, dropout=dropout),
        Bottleneck(channels, asymmetric=5, dropout=dropout),
        Bottleneck(channels, dilation=16, dropout=dropout),
    ]


class ENet(StagedSegmenter):
    """ENet with logits at full resolution; see the module docstring for the stage split."""

    def __init__(self, *, num_outputs: int = 19) -> None:
        super().__init__()
        # A float count failed inside torch without naming the option.
        num_outputs = whole_number("ENet", "num_outputs", num_outputs, 1)
        self.num_outputs = num_outputs
        self.initial = InitialBlock(16)
        self.down1 = DownsamplingBottleneck(16, 64, dropout=0.01)
        self.stage1 = nn.Sequential(*(Bottleneck(64, dropout=0.01) for _ in range(4)))
        self.down2 = DownsamplingBottleneck(64, 128, dropout=0.1)
        self.stage2 = nn.Sequential(*_stage23_blocks(128, 0.1))
        self.stage3 = nn.Sequential(*_stage23_blocks(128, 0.1))
        self.up4 = UpsamplingBottleneck(128, 64)
        self.stage4 = nn.Sequential(Bottleneck(64, relu=True), Bottleneck(64, relu=True))
        self.up5 = UpsamplingBottleneck(64, 16)
        self.stage5 = nn.Sequential(Bottleneck(16, relu=True))
        self.fullconv = nn.ConvTranspose2d(16, num_outputs, 2, stride=2)
        self.stage_spec = StageSpec(
            low=(FeatureInfo("s1", 64, 4), FeatureInfo("idx1", 16, 4)),
            deep=(FeatureInfo("s4", 64, 4),),
            deep_inputs=("s1",),
            output_stride=1,
            input_multiple=8,
        )
        init_weights(self)

    def forward_low(self, x: Tensor) -> Features:
        self.check_input(x)  # other sizes fail later, in max-unpooling, with an opaque shape error
        s1, idx1 = self.down1(self.initial(x))
        return {"s1": self.stage1(s1), "idx1": idx1}

    def forward_deep(self, low: Features) -> Features:
        s2, idx2 = self.down2(low["s1"])
        s3 = self.stage3(self.stage2(s2))
        return {"s4": self.stage4(self.up4(s3, idx2))}

    def forward_head(self, low: Features, deep: Features) -> Tensor:
        return self.fullconv(self.stage5(self.up5(deep["s4"], low["idx1"])))
