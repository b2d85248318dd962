"""MobileNetV2 backbone (Sandler et al., CVPR 2018), width 1.0, split at stride 4 for staged use.

``features[0]`` is the stem conv, ``features[1:18]`` the 17 inverted residual blocks of the
paper's Table 2 (seven groups), ``features[18]`` the final 1x1 conv to 1280 channels (present
only with ``last_conv=True``).
The stride-4 features (24 channels) are the output of ``features[3]``, the end of the third
group, so ``stem_to_stride4`` and ``stride4_to_out`` together are the whole backbone.

At an output stride below 32, stride-2 blocks past that stride run with stride 1 and every later
depthwise conv is dilated by the stride it skipped (the DeepLab convention: the de-strided block
itself keeps the old rate, its successors use the new one), so receptive fields are unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError
from .base import init_weights, whole_number

# (expansion t, output channels c, repeats n, first stride s), Table 2 of the paper.
_INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STRIDE4_END = 4  # features[:4] = stem, the 16-channel group and the 24-channel group
_VALID_OUTPUT_STRIDES = (8, 16, 32)


class ConvBNReLU6(nn.Sequential):
    def __init__(
        self, c_in: int, c_out: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1
    ) -> None:
        pad = (k - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(c_in, c_out, k, stride, pad, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; identity shortcut when shapes allow."""

    def __init__(self, c_in: int, c_out: int, *, stride: int, expansion: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU6(c_in, hidden, 1))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, dilation, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y


class MobileNetV2(nn.Module):
    """The convolutional part of MobileNetV2 (no classifier).

    ``last_conv`` keeps the final 1x1 conv to 1280 channels of the ImageNet model; segmentation
    heads such as DeepLab's read the 320-channel features before it instead (MobileNetV2 paper,
    section 6.3: cheaper, equally accurate).
    """

    def __init__(self, *, output_stride: int = 32, last_conv: bool = True) -> None:
        super().__init__()
        output_stride = whole_number("MobileNetV2", "output_stride", output_stride, 1)
        if output_stride not in _VALID_OUTPUT_STRIDES:
            raise ConfigError(
                f"MobileNetV2 output_stride must be one of {_VALID_OUTPUT_STRIDES}, got {output_stride}"
            )
        self.output_stride = output_stride
        layers: list[nn.Module] = [ConvBNReLU6(3, 32, 3, stride=2)]
        c_in, current_stride, rate = 32, 2, 1
        for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                stride = s if i == 0 else 1
                dilation = rate
                if stride > 1 and current_stride >= output_stride:
                    rate *= stride
                    stride = 1
                else:
                    current_stride *= stride
                layers.append(InvertedResidual(c_in, c, stride=stride, expansion=t, dilation=dilation))
                c_in = c
        if last_conv:
            layers.append(ConvBNReLU6(c_in, 1280, 1))
            c_in = 1280
        self.features = nn.Sequential(*layers)
        self.stride4_channels = 24
        self.out_channels = c_in
        init_weights(self)

    def stem_to_stride4(self, x: Tensor) -> Tensor:
        """Input image to the 24-channel stride-4 features."""
        return self.features[:_STRIDE4_END](x)

    def stride4_to_out(self, x: Tensor) -> Tensor:
        """Stride-4 features to the backbone output (``out_channels`` at ``output_stride``)."""
        return self.features[_STRIDE4_END:](x)

    def forward(self, x: Tensor) -> Tensor:
        return self.stride4_to_out(self.stem_to_stride4(x))
