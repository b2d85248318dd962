"""ESPNet and ESPNet-C (Mehta et al., ECCV 2018).

Module and parameter names follow the authors' release (sacmehta/ESPNet) so that their
checkpoints load strictly, unchanged.

Stage split. ``low`` is the stride-2 stem (level 1: one strided 3x3 conv, plus the average-pooled
image used for input reinforcement): about 1 % of the FLOPs. ``deep`` is everything from level 2
to the decoder's stride-2 score map: the ESP modules, which hold most of the work. ``head`` is
the decoder's last step, the 3x3 conv that fuses the cached stride-2 scores with the *current*
frame's stride-2 features, then the final x2 deconvolution. That fusion is the one place where
ESPNet reads the image at high resolution, so it is where a stale deep cache gets refined with
fresh edges. ESPNet-C has no decoder: its head is the 1x1 classifier on cached features.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import FeatureInfo, Features, StagedSegmenter, StageSpec, init_weights, whole_number

_BN_EPS = 1e-3
_MIN_WIDTH = 5  # an ESP module splits its output channels over five dilated branches


class ConvBNPReLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, padding=(k - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=_BN_EPS)
        self.act = nn.PReLU(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class BNPReLU(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=_BN_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(x))


class Conv(nn.Module):
    """A bias-free conv wrapped as ``.conv`` (the checkpoints' naming)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        pad = (k - 1) // 2 * dilation
        self.conv = nn.Conv2d(c_in, c_out, k, stride, padding=pad, dilation=dilation, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _ESPBranches(nn.Module):
    """Reduce, five parallel dilated 3x3 convs (d = 1, 2, 4, 8, 16), hierarchical fusion."""

    def __init__(self, c_in: int, c_out: int, reduce_k: int, stride: int) -> None:
        super().__init__()
        n = c_out // 5
        n1 = c_out - 4 * n
        self.c1 = Conv(c_in, n, reduce_k, stride)
        self.d1 = Conv(n, n1, 3, 1, 1)
        self.d2 = Conv(n, n, 3, 1, 2)
        self.d4 = Conv(n, n, 3, 1, 4)
        self.d8 = Conv(n, n, 3, 1, 8)
        self.d16 = Conv(n, n, 3, 1, 16)

    def branches(self, x: Tensor) -> Tensor:
        r = self.c1(x)
        # Hierarchical feature fusion: cumulative sums remove the gridding of large dilations.
        add1 = self.d2(r)
        add2 = add1 + self.d4(r)
        add3 = add2 + self.d8(r)
        add4 = add3 + self.d16(r)
        return torch.cat([self.d1(r), add1, add2, add3, add4], 1)


class ESPDownsample(_ESPBranches):
    """Strided ESP module (the authors' ``DownSamplerB``)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, reduce_k=3, stride=2)
        self.bn = nn.BatchNorm2d(c_out, eps=_BN_EPS)
        self.act = nn.PReLU(c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.branches(x)))


class ESPBlock(_ESPBranches):
    """ESP module with residual add (the authors' ``DilatedParllelResidualBlockB``)."""

    def __init__(self, c_in: int, c_out: int, residual: bool = True) -> None:
        super().__init__(c_in, c_out, reduce_k=1, stride=1)
        self.bn = BNPReLU(c_out)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.branches(x)
        if self.residual:
            y = x + y
        return self.bn(y)


class ImagePyramid(nn.Module):
    """Input reinforcement: the image average-pooled ``times`` times by 2."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.pool = nn.ModuleList(nn.AvgPool2d(3, stride=2, padding=1) for _ in range(times))

    def forward(self, x: Tensor) -> Tensor:
        for pool in self.pool:
            x = pool(x)
        return x


class ESPNetEncoder(nn.Module):
    """ESPNet-C's layers; also the encoder inside ESPNet."""

    def __init__(self, num_outputs: int, p: int, q: int) -> None:
        super().__init__()
        self.level1 = ConvBNPReLU(3, 16, 3, 2)
        self.sample1 = ImagePyramid(1)
        self.sample2 = ImagePyramid(2)
        self.b1 = BNPReLU(16 + 3)
        self.level2_0 = ESPDownsample(16 + 3, 64)
        self.level2 = nn.ModuleList(ESPBlock(64, 64) for _ in range(p))
        self.b2 = BNPReLU(128 + 3)
        self.level3_0 = ESPDownsample(128 + 3, 128)
        self.level3 = nn.ModuleList(ESPBlock(128, 128) for _ in range(q))
        self.b3 = BNPReLU(256)
        self.classifier = Conv(256, num_outputs, 1, 1)

    def stem(self, x: Tensor) -> Features:
        l1 = self.level1(x)
        return {
            "l1": l1,
            "l1_cat": self.b1(torch.cat([l1, self.sample1(x)], 1)),
            "image_s4": self.sample2(x),
        }

    def body(self, l1_cat: Tensor, image_s4: Tensor) -> tuple[Tensor, Tensor]:
        """Levels 2 and 3: returns (level-2 concat at stride 4, level-3 concat at stride 8)."""
        y0 = self.level2_0(l1_cat)
        y = y0
        for block in self.level2:
            y = block(y)
        l2_cat = self.b2(torch.cat([y, y0, image_s4], 1))
        z0 = self.level3_0(l2_cat)
        z = z0
        for block in self.level3:
            z = block(z)
        l3_cat = self.b3(torch.cat([z0, z], 1))
        return l2_cat, l3_cat


class ESPNetC(ESPNetEncoder, StagedSegmenter):
    """ESPNet-C: the encoder alone, logits at stride 8 (its checkpoints are the bare encoder)."""

    def __init__(self, *, num_outputs: int = 20, p: int = 2, q: int = 8) -> None:
        num_outputs = whole_number("ESPNetC", "num_outputs", num_outputs, 1)
        p, q = whole_number("ESPNetC", "p", p, 0), whole_number("ESPNetC", "q", q, 0)
        super().__init__(num_outputs, p, q)
        self.num_outputs = num_outputs
        self.stage_spec = StageSpec(
            low=(FeatureInfo("l1_cat", 19, 2), FeatureInfo("image_s4", 3, 4)),
            deep=(FeatureInfo("l3_cat", 256, 8),),
            deep_inputs=("l1_cat", "image_s4"),
            output_stride=8,
            input_multiple=8,
        )
        init_weights(self)

    def forward_low(self, x: Tensor) -> Features:
        self.check_input(x)  # off the multiple the logits are not at stride 8 (ceil sizes) and say nothing
        stem = self.stem(x)
        return {"l1_cat": stem["l1_cat"], "image_s4": stem["image_s4"]}

    def forward_deep(self, low: Features) -> Features:
        _, l3_cat = self.body(low["l1_cat"], low["image_s4"])
        return {"l3_cat": l3_cat}

    def forward_head(self, low: Features, deep: Features) -> Tensor:
        return self.classifier(deep["l3_cat"])


class ESPNet(StagedSegmenter):
    """ESPNet: ESPNet-C plus the light decoder, logits at full resolution.

    ``skip_channels`` is 16 for the authors' Cityscapes release (the decoder reads the level-1
    conv output) and 19 for their CamVid release (it reads level 1 concatenated with the
    pooled image). ``width`` is the number of channels of the decoder's score maps, which the
    authors tie to the number of outputs (but at least 5, which the ESP modules split five ways:
    a 2-class network gets width 5); a wider decoder lets a model fine-tuned from another
    dataset keep that dataset's whole decoder and select its outputs in the last layer alone.
    """

    def __init__(
        self,
        *,
        num_outputs: int = 20,
        p: int = 2,
        q: int = 8,
        skip_channels: int = 19,
        width: int | None = None,
    ) -> None:
        super().__init__()
        num_outputs = whole_number("ESPNet", "num_outputs", num_outputs, 1)
        p, q = whole_number("ESPNet", "p", p, 0), whole_number("ESPNet", "q", q, 0)
        # Whole number first: 16.0 passed the membership test and failed inside torch.
        skip_channels = whole_number("ESPNet", "skip_channels", skip_channels, 0)
        if skip_channels not in (16, 19):
            raise ConfigError(f"ESPNet.skip_channels must be 16 or 19, got {skip_channels!r}")
        if width is None:
            # The authors tie the width to the outputs; below 5 the ESP modules' five-way split
            # leaves 0-channel convolutions that fail on the first forward, so 1-4 outputs get 5.
            c = max(num_outputs, _MIN_WIDTH)
        else:
            c = whole_number("ESPNet", "width", width, 1)
            if c < _MIN_WIDTH:
                raise ConfigError(
                    f"ESPNet.width must be at least {_MIN_WIDTH} (the decoder's ESP module splits "
                    f"its channels five ways), got {c}"
                )
        if c < num_outputs:
            raise ConfigError(f"ESPNet.width must be at least num_outputs ({num_outputs}), got {width}")
        self.num_outputs = num_outputs
        self.skip = "l1" if skip_channels == 16 else "l1_cat"
        self._arch = {"p": p, "q": q, "skip_channels": skip_channels, "width": c}
        self.encoder = ESPNetEncoder(c, p, q)
        self.level3_C = Conv(128 + 3, c, 1, 1)
        self.br = nn.BatchNorm2d(c, eps=_BN_EPS)
        self.conv = ConvBNPReLU(skip_channels + c, c, 3, 1)
        self.up_l3 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False))
        self.combine_l2_l3 = nn.Sequential(BNPReLU(2 * c), ESPBlock(2 * c, c, residual=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False), BNPReLU(c))
        self.classifier = nn.ConvTranspose2d(c, num_outputs, 2, stride=2, bias=False)
        low = [FeatureInfo("l1_cat", 19, 2), FeatureInfo("image_s4", 3, 4)]
        if self.skip == "l1":
            low.append(FeatureInfo("l1", 16, 2))
        self.stage_spec = StageSpec(
            low=tuple(low),
            deep=(FeatureInfo("scores_s2", c, 2),),
            deep_inputs=("l1_cat", "image_s4"),
            output_stride=1,
            input_multiple=8,
        )
        init_weights(self)

    def select_outputs(self, indices: list[int]) -> ESPNet:
        """A copy that predicts only output channels ``indices``, in that order: every layer is
        kept and the last one (a per-channel transposed convolution) keeps those columns, so the
        copy's logits equal these logits' ``[:, indices]`` exactly."""
        if not indices or any(not 0 <= i < self.num_outputs for i in indices):
            raise ValueError(f"output indices must be in 0..{self.num_outputs - 1}, got {indices}")
        out = ESPNet(num_outputs=len(indices), **self._arch)
        state = dict(self.state_dict())
        state["classifier.weight"] = state["classifier.weight"][:, indices].clone()
        out.load_state_dict(state, strict=True)
        return out.train(self.training)

    def forward_low(self, x: Tensor) -> Features:
        self.check_input(x)  # other sizes fail later, in a decoder concat, with an opaque shape error
        stem = self.encoder.stem(x)
        low = {"l1_cat": stem["l1_cat"], "image_s4": stem["image_s4"]}
        if self.skip == "l1":
            low["l1"] = stem["l1"]
        return low

    def forward_deep(self, low: Features) -> Features:
        l2_cat, l3_cat = self.encoder.body(low["l1_cat"], low["image_s4"])
        s8 = self.up_l3(self.br(self.encoder.classifier(l3_cat)))
        s4 = torch.cat([self.level3_C(l2_cat), s8], 1)
        return {"scores_s2": self.up_l2(self.combine_l2_l3(s4))}

    def forward_head(self, low: Features, deep: Features) -> Tensor:
        fused = self.conv(torch.cat([deep["scores_s2"], low[self.skip]], 1))
        return self.classifier(fused)


def espnet_config_from_state_dict(state: dict[str, Tensor]) -> dict[str, int]:
    """Architecture hyper-parameters read off an ESPNet (decoder) state dict's shapes."""
    p = len({k.split(".")[2] for k in state if k.startswith("encoder.level2.")})
    q = len({k.split(".")[2] for k in state if k.startswith("encoder.level3.")})
    width, num_outputs = (int(n) for n in state["classifier.weight"].shape[:2])  # ConvTranspose: in, out
    skip = int(state["conv.conv.weight"].shape[1]) - width
    config = {"num_outputs": num_outputs, "p": p, "q": q, "skip_channels": skip}
    if width != num_outputs:
        config["width"] = width
    return config


def espnet_c_config_from_state_dict(state: dict[str, Tensor]) -> dict[str, int]:
    p = len({k.split(".")[1] for k in state if k.startswith("level2.")})
    q = len({k.split(".")[1] for k in state if k.startswith("level3.")})
    return {"num_outputs": int(state["classifier.conv.weight"].shape[0]), "p": p, "q": q}
