"""ESPNetv2 for segmentation (Mehta et al., CVPR 2019), as released in sacmehta/EdgeNets.

Module and parameter names follow that release so the authors' checkpoints load strictly,
unchanged. Encoder (EESPNet levels 1-4, strides 2-16): a strided 3x3 conv, then EESP modules
(grouped 1x1 reduce, four depthwise dilated 3x3 branches fused hierarchically, grouped 1x1
expand, residual). Each strided level concatenates an average-pooled copy of its input with a
strided EESP and adds the image, average-pooled to that stride, through a tiny conv
("input reinforcement"). Decoder: bottom-up, stride 16 -> 8 -> 4 -> 2. Every step upsamples
bilinearly (align_corners=True), adds the encoder feature of that stride passed through a
sigmoid-gated grouped 3x3 conv, and refines with an efficient pyramid pool (depthwise 3x3 convs
at scales 2, 1.5, 1, 0.5 and 0.1 of the map). The stride-2 scores are finally upsampled to the
input size (align_corners=True), so the logits have output stride 1.

Stage split (measured with ``rtseg.models.flops.stage_flops`` at 1024x512; FLOPs = 2 x MACs of
convs, which matches the authors' published 1086.59 M / 2699.05 M MACs for s = 1.0 / 2.0):

=====  ===========  =======  =====  ======  =====  ==========
scale  params       GFLOPs   low    deep    head   low + head
=====  ===========  =======  =====  ======  =====  ==========
1.0    234,010      2.171    10.4%  66.2%   23.4%  33.8%
2.0    789,242      5.395     4.2%  86.4%    9.4%  13.6%
=====  ===========  =======  =====  ======  =====  ==========

``low`` is level 1 (the strided 3x3 conv, stride 2) plus the image average-pooled to stride 4
for the input reinforcement of the deeper levels. ``deep`` is levels 2-4 and every decoder step
down to the stride-4 map, reading the frame only through what ``low`` hands over. ``head``
is the decoder's last step: it merges the cached stride-4 decoder map with the *current* frame's
stride-2 level-1 features (gated conv, BN-PReLU, pyramid pool to the class scores) and resizes
to the input. That is the only place the decoder reads stride-2 features, so it is where a stale
deep cache meets fresh edges. Moving level 2 (stride 4) into ``low`` as well, with the stride-4
decoder step in the head, costs 48.1% (s = 1.0) and 25.5% (s = 2.0) per frame: over the 35%
budget at s = 1.0, so the head stops at stride 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from .base import FeatureInfo, Features, StagedSegmenter, StageSpec, init_weights, whole_number

# Output channels of encoder levels 1-4 (strides 2, 4, 8, 16) for each width scale ``s``.
LEVEL_CHANNELS: dict[float, tuple[int, int, int, int]] = {
    0.5: (16, 32, 64, 128),
    1.0: (32, 64, 128, 256),
    1.25: (32, 80, 160, 320),
    1.5: (32, 96, 192, 384),
    2.0: (32, 128, 256, 512),
}
_BRANCHES = 4  # parallel dilated branches per EESP module
_LEVEL3_BLOCKS = 3
_LEVEL4_BLOCKS = 7
# Largest effective kernel size of an EESP branch per level: deeper maps are smaller, so they
# need (and tolerate) less dilation.
_RECEPTIVE_LIMIT = {"level2_0": 13, "level3_0": 11, "level3": 9, "level4_0": 9, "level4": 7}
_IMAGE_CHANNELS = 3
# Decoder widths after the pyramid pools at strides 16, 8 and 4 (the release's Cityscapes setting).
_DECODER_CHANNELS = (64, 48, 32)
_MAX_PYRAMID_WIDTH = 16
_PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)
_PYRAMID_MIN_SIZE = 5


def _pool2(x: Tensor) -> Tensor:
    """The 3x3 stride-2 average pool used for both the downsamplers and the image pyramid."""
    return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1)


def _upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


# --- encoder layers (named like EdgeNets' espnet_utils: .conv / .bn / .act) ---------------------


class ConvBNPReLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, padding=(k - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.PReLU(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, 1, padding=(k - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class BNPReLU(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(x))


class DepthwiseDilated(nn.Module):
    """One EESP branch: a depthwise 3x3 conv, wrapped as ``.conv`` (the checkpoints' naming)."""

    def __init__(self, channels: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            channels, channels, 3, stride, padding=dilation, dilation=dilation, groups=channels, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def branch_dilations(branches: int, receptive_limit: int) -> tuple[int, ...]:
    """Dilations of the EESP branches, ascending so hierarchical fusion goes small to large.

    Branch ``i`` would see a (3 + 2i)-wide window (dilation i + 1); past the level's limit it
    falls back to a plain 3x3.
    """
    sizes = sorted(3 + 2 * i if 3 + 2 * i <= receptive_limit else 3 for i in range(branches))
    return tuple((k - 1) // 2 for k in sizes)


class EESP(nn.Module):
    """Extremely efficient spatial pyramid module: reduce, split, transform, fuse, expand.

    Stride 1: residual add, then PReLU. Stride 2: the expanded map is returned bare, because
    ``EESPDownsample`` concatenates it with a pooled copy of the input before activating.
    ``module_act`` exists in both cases since the checkpoints carry it.
    """

    def __init__(self, c_in: int, c_out: int, *, stride: int, receptive_limit: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ConfigError(f"EESP stride must be 1 or 2, got {stride}")
        if c_out % _BRANCHES or c_in % _BRANCHES:
            raise ConfigError(
                f"EESP channels must be multiples of {_BRANCHES}, got c_in={c_in}, c_out={c_out}"
            )
        if stride == 1 and c_in != c_out:
            raise ConfigError(
                f"EESP with stride 1 is residual: c_in must equal c_out, got {c_in} and {c_out}"
            )
        width = c_out // _BRANCHES
        self.stride = stride
        self.proj_1x1 = ConvBNPReLU(c_in, width, 1, groups=_BRANCHES)
        self.dilations = branch_dilations(_BRANCHES, receptive_limit)
        self.spp_dw = nn.ModuleList(DepthwiseDilated(width, stride, d) for d in self.dilations)
        self.conv_1x1_exp = ConvBN(c_out, c_out, 1, groups=_BRANCHES)
        self.br_after_cat = BNPReLU(c_out)
        self.module_act = nn.PReLU(c_out)

    def forward(self, x: Tensor) -> Tensor:
        reduced = self.proj_1x1(x)
        fused = self.spp_dw[0](reduced)
        branches = [fused]
        for conv in self.spp_dw[1:]:
            # Hierarchical fusion: each branch adds all smaller ones, which removes the gridding
            # pattern of the larger dilations.
            fused = conv(reduced) + fused
            branches.append(fused)
        y = self.conv_1x1_exp(self.br_after_cat(torch.cat(branches, 1)))
        if self.stride == 2:
            return y
        return self.module_act(y + x)


class EESPDownsample(nn.Module):
    """Strided level entry: [avg-pool(x), strided EESP(x)] + reinforcement(image at that stride)."""

    def __init__(self, c_in: int, c_out: int, *, receptive_limit: int) -> None:
        super().__init__()
        if c_out <= c_in:
            raise ConfigError(f"EESPDownsample c_out must exceed c_in, got c_in={c_in}, c_out={c_out}")
        self.eesp = EESP(c_in, c_out - c_in, stride=2, receptive_limit=receptive_limit)
        self.avg = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        self.inp_reinf = nn.Sequential(
            ConvBNPReLU(_IMAGE_CHANNELS, _IMAGE_CHANNELS, 3), ConvBN(_IMAGE_CHANNELS, c_out, 1)
        )
        self.act = nn.PReLU(c_out)

    def forward(self, x: Tensor, image: Tensor) -> Tensor:
        y = torch.cat([self.avg(x), self.eesp(x)], 1)
        return self.act(y + self.inp_reinf(image))


class EESPNetEncoder(nn.Module):
    """EESPNet levels 1-4 (the ImageNet backbone without level 5 and classifier)."""

    def __init__(self, channels: tuple[int, int, int, int]) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels
        lim = _RECEPTIVE_LIMIT
        self.level1 = ConvBNPReLU(_IMAGE_CHANNELS, c1, 3, stride=2)
        self.level2_0 = EESPDownsample(c1, c2, receptive_limit=lim["level2_0"])
        self.level3_0 = EESPDownsample(c2, c3, receptive_limit=lim["level3_0"])
        self.level3 = nn.ModuleList(
            EESP(c3, c3, stride=1, receptive_limit=lim["level3"]) for _ in range(_LEVEL3_BLOCKS)
        )
        self.level4_0 = EESPDownsample(c3, c4, receptive_limit=lim["level4_0"])
        self.level4 = nn.ModuleList(
            EESP(c4, c4, stride=1, receptive_limit=lim["level4"]) for _ in range(_LEVEL4_BLOCKS)
        )


# --- decoder layers (named like EdgeNets' cnn_utils: a Sequential called .cbr / .br) ----------


class SeqConvBNPReLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(c_in, c_out, k, 1, padding=(k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.PReLU(c_out),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.cbr(x)


class SeqBNPReLU(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.br(x)


class ChannelShuffle(nn.Module):
    """Interleave ``groups`` channel groups, so each grouped conv after it sees every scale."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class PyramidPool(nn.Module):
    """Efficient pyramid pooling: a depthwise 3x3 conv on the map resampled to each scale.

    Scales above 1 are upsampled, convolved and adaptive-average-pooled back; scales below 1
    are pooled, convolved and upsampled. The branches are merged by a channel shuffle and a
    grouped 3x3 conv, then a 1x1 conv (with BN-PReLU after it, except in the last decoder step,
    whose 1x1 conv has a bias and yields the class scores).
    """

    def __init__(self, c_in: int, width: int, c_out: int, *, final_bn_act: bool = True) -> None:
        super().__init__()
        n = len(_PYRAMID_SCALES)
        self.stages = nn.ModuleList(
            nn.Conv2d(width, width, 3, 1, padding=1, groups=width, bias=False) for _ in range(n)
        )
        self.projection_layer = SeqConvBNPReLU(c_in, width, 1)
        self.merge_layer = nn.Sequential(
            SeqBNPReLU(width * n),
            ChannelShuffle(n),
            SeqConvBNPReLU(width * n, width, 3, groups=width),
            nn.Conv2d(width, c_out, 1, bias=not final_bn_act),
        )
        self.br = SeqBNPReLU(c_out) if final_bn_act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.projection_layer(x)
        h, w = x.shape[-2:]
        outs = []
        for scale, conv in zip(_PYRAMID_SCALES, self.stages, strict=True):
            size = (
                max(_PYRAMID_MIN_SIZE, math.ceil(h * scale)),
                max(_PYRAMID_MIN_SIZE, math.ceil(w * scale)),
            )
            if scale > 1.0:
                y = F.adaptive_avg_pool2d(conv(_upsample(x, size)), (h, w))
            elif scale < 1.0:
                y = _upsample(conv(F.adaptive_avg_pool2d(x, size)), (h, w))
            else:
                y = conv(x)
            outs.append(y)
        y = self.merge_layer(torch.cat(outs, 1))
        return y if self.br is None else self.br(y)


class GatedConv(nn.Module):
    """Grouped 3x3 conv scaled per channel by a sigmoid of the global average (EfficientPWConv)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.wt_layer = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_in, c_out, 1, bias=False), nn.Sigmoid()
        )
        self.expansion_layer = SeqConvBNPReLU(c_in, c_out, 3, groups=math.gcd(c_in, c_out))

    def forward(self, x: Tensor) -> Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


def _bn_prelu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))


class ESPNetV2(StagedSegmenter):
    """ESPNetv2 segmentation network; ``scale`` is the encoder width factor ``s`` of the paper."""

    def __init__(self, *, num_outputs: int = 20, scale: float = 2.0) -> None:
        super().__init__()
        if isinstance(scale, bool) or scale not in LEVEL_CHANNELS:
            raise ConfigError(f"ESPNetV2 scale must be one of {sorted(LEVEL_CHANNELS)}, got {scale!r}")
        # A float count failed inside torch without naming the option.
        num_outputs = whole_number("ESPNetV2", "num_outputs", num_outputs, 2)
        channels = LEVEL_CHANNELS[scale]
        c1, c2, c3, c4 = channels
        d1, d2, d3 = _DECODER_CHANNELS
        width = min(num_outputs // 2, _MAX_PYRAMID_WIDTH)
        self.scale = float(scale)
        self.num_outputs = num_outputs
        self.base_net = EESPNetEncoder(channels)
        self.bu_dec_l1 = PyramidPool(c4, width, d1)
        self.bu_dec_l2 = PyramidPool(d1, width, d2)
        self.bu_dec_l3 = PyramidPool(d2, width, d3)
        self.bu_dec_l4 = PyramidPool(d3, width, num_outputs, final_bn_act=False)
        self.merge_enc_dec_l2 = GatedConv(c3, d1)
        self.merge_enc_dec_l3 = GatedConv(c2, d2)
        self.merge_enc_dec_l4 = GatedConv(c1, d3)
        self.bu_br_l2 = _bn_prelu(d1)
        self.bu_br_l3 = _bn_prelu(d2)
        self.bu_br_l4 = _bn_prelu(d3)
        self.stage_spec = StageSpec(
            low=(FeatureInfo("l1", c1, 2), FeatureInfo("image_s4", _IMAGE_CHANNELS, 4)),
            deep=(FeatureInfo("dec_s4", d3, 4),),
            deep_inputs=("l1", "image_s4"),
            output_stride=1,
            input_multiple=16,
        )
        init_weights(self)

    def forward_low(self, x: Tensor) -> Features:
        self.check_input(x)
        return {"l1": self.base_net.level1(x), "image_s4": _pool2(_pool2(x))}

    def forward_deep(self, low: Features) -> Features:
        enc = self.base_net
        image_s4 = low["image_s4"]
        image_s8 = _pool2(image_s4)
        l2 = enc.level2_0(low["l1"], image_s4)
        l3 = enc.level3_0(l2, image_s8)
        for block in enc.level3:
            l3 = block(l3)
        l4 = enc.level4_0(l3, _pool2(image_s8))
        for block in enc.level4:
            l4 = block(l4)
        y = self.bu_dec_l1(l4)
        y = self._merge(y, l3, self.merge_enc_dec_l2, self.bu_br_l2, self.bu_dec_l2)
        y = self._merge(y, l2, self.merge_enc_dec_l3, self.bu_br_l3, self.bu_dec_l3)
        return {"dec_s4": y}

    def forward_head(self, low: Features, deep: Features) -> Tensor:
        l1 = low["l1"]
        y = self._merge(deep["dec_s4"], l1, self.merge_enc_dec_l4, self.bu_br_l4, self.bu_dec_l4)
        # Level 1 has stride 2 and the input size is a multiple of 16, so this is the input size.
        return _upsample(y, (2 * l1.shape[-2], 2 * l1.shape[-1]))

    @staticmethod
    def _merge(dec: Tensor, skip: Tensor, gate: nn.Module, bn_act: nn.Module, pyramid: nn.Module) -> Tensor:
        """One bottom-up decoder step: upsample, add the gated encoder feature, refine."""
        y = gate(skip) + _upsample(dec, (skip.shape[-2], skip.shape[-1]))
        return pyramid(bn_act(y))


def espnetv2_config_from_state_dict(state: dict[str, Tensor]) -> dict[str, int | float]:
    """``ESPNetV2`` keyword arguments read off a state dict's tensor shapes."""
    names = (
        "base_net.level1.act.weight",
        "base_net.level2_0.act.weight",
        "base_net.level3_0.act.weight",
        "base_net.level4_0.act.weight",
    )
    scores_key = "bu_dec_l4.merge_layer.3.weight"
    missing = [k for k in [*names, scores_key] if k not in state]
    if missing:
        raise CheckpointError(f"not an ESPNetv2 segmentation state dict: missing {missing}")
    channels = tuple(int(state[k].shape[0]) for k in names)
    scales = [s for s, c in LEVEL_CHANNELS.items() if c == channels]
    if not scales:
        raise CheckpointError(f"ESPNetv2 level channels {channels} match no known scale in {LEVEL_CHANNELS}")
    return {"num_outputs": int(state[scores_key].shape[0]), "scale": scales[0]}
