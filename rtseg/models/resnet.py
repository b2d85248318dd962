"""Dilated ResNet-18 / ResNet-50 backbones with the PSPNet deep stem.

PSPNet and ICNet replace ResNet's 7x7 stem with three 3x3 convs (3 -> 32 -> 32 -> 64, the first
strided) before the max-pool, and trade the strides of layer3 and layer4 for dilation so the
features keep output stride 8. Blocks use the torchvision layout (stride on the 3x3 conv,
"ResNet v1.5") and its parameter names inside ``layer1``..``layer4``, so ImageNet weights for
those layers load by name. Every block of a dilated layer uses that layer's dilation, as PSPNet
does. The stem, the four layers and their channels/strides (``feature_info``) are exposed
separately because ICNet runs them on different image scales.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from torch import Tensor, nn

from ..errors import ConfigError
from .base import FeatureInfo, Features, init_weights

STEM_CHANNELS = (32, 32, 64)
LAYER_WIDTHS = (64, 128, 256, 512)
# output stride -> (stride, dilation) of layer1..layer4; the stem always has stride 4.
_STRIDE_DILATION: Mapping[int, tuple[tuple[int, int], ...]] = MappingProxyType(
    {
        32: ((1, 1), (2, 1), (2, 1), (2, 1)),
        16: ((1, 1), (2, 1), (2, 1), (1, 2)),
        8: ((1, 1), (2, 1), (1, 2), (1, 4)),
    }
)


def conv_bn_relu(c_in: int, c_out: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = (k - 1) // 2 * dilation
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _projection(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, c_out, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """Backbone only (no pooling or classifier): ``forward`` returns every stage's output.

    ``feature_info`` lists, in order, ``stem``, ``layer1``..``layer4`` with their channels and
    strides relative to the input, which is what code that runs the pieces separately reads.
    """

    def __init__(self, *, block: Block, depths: tuple[int, int, int, int], output_stride: int = 8) -> None:
        super().__init__()
        if block not in (BasicBlock, Bottleneck):
            raise ConfigError(f"ResNet.block must be BasicBlock or Bottleneck, got {block!r}")
        if len(depths) != 4 or any(not isinstance(d, int) or d < 1 for d in depths):
            raise ConfigError(f"ResNet.depths must be 4 positive ints, got {depths!r}")
        if output_stride not in _STRIDE_DILATION:
            raise ConfigError(
                f"ResNet.output_stride must be one of {sorted(_STRIDE_DILATION)}, got {output_stride!r}"
            )
        self.output_stride = output_stride
        c1, c2, c3 = STEM_CHANNELS
        self.stem = nn.Sequential(
            conv_bn_relu(3, c1, stride=2),
            conv_bn_relu(c1, c2),
            conv_bn_relu(c2, c3),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        info = [FeatureInfo("stem", c3, 4)]
        c_in, total_stride = c3, 4
        layers = []
        for i, (depth, planes, (stride, dilation)) in enumerate(
            zip(depths, LAYER_WIDTHS, _STRIDE_DILATION[output_stride], strict=True)
        ):
            blocks = []
            for j in range(depth):
                blocks.append(block(c_in, planes, stride if j == 0 else 1, dilation))
                c_in = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
            total_stride *= stride
            info.append(FeatureInfo(f"layer{i + 1}", c_in, total_stride))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.feature_info: tuple[FeatureInfo, ...] = tuple(info)
        init_weights(self)

    def channels(self, name: str) -> int:
        return self._info(name).channels

    def stride(self, name: str) -> int:
        return self._info(name).stride

    def _info(self, name: str) -> FeatureInfo:
        for f in self.feature_info:
            if f.name == name:
                return f
        raise KeyError(f"ResNet has no stage {name!r}; stages are {[f.name for f in self.feature_info]}")

    def forward(self, x: Tensor) -> Features:
        out = {"stem": self.stem(x)}
        y = out["stem"]
        for name in ("layer1", "layer2", "layer3", "layer4"):
            y = getattr(self, name)(y)
            out[name] = y
        return out


def resnet18(*, output_stride: int = 8) -> ResNet:
    return ResNet(block=BasicBlock, depths=(2, 2, 2, 2), output_stride=output_stride)


def resnet50(*, output_stride: int = 8) -> ResNet:
    return ResNet(block=Bottleneck, depths=(3, 4, 6, 3), output_stride=output_stride)
