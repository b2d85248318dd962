"""MobileNetV2 backbone: published size, the stride-4 split, and dilation at reduced output stride."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rtseg.errors import ConfigError
from rtseg.models.base import param_count
from rtseg.models.mobilenetv2 import MobileNetV2


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _depthwise(model: MobileNetV2) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


def test_param_counts() -> None:
    # ImageNet MobileNetV2 (width 1.0) has 3.50 M parameters, 1.28 M of them in the classifier.
    assert param_count(MobileNetV2()) == 2_223_872
    # Without the 1x1 conv to 1280 (320 * 1280 weights + 2 * 1280 BN).
    assert param_count(MobileNetV2(last_conv=False)) == 2_223_872 - 320 * 1280 - 2 * 1280


@pytest.mark.parametrize(("output_stride", "last_conv"), [(32, True), (16, False), (8, False)])
@pytest.mark.parametrize("batch", [1, 2])
def test_split_and_output_shapes(output_stride: int, last_conv: bool, batch: int) -> None:
    m = MobileNetV2(output_stride=output_stride, last_conv=last_conv).eval()
    x = torch.randn(batch, 3, 64, 96)
    with torch.no_grad():
        s4 = m.stem_to_stride4(x)
        out = m.stride4_to_out(s4)
        assert torch.equal(m(x), out)
    assert s4.shape == (batch, m.stride4_channels, 16, 24)
    assert m.stride4_channels == 24
    assert out.shape == (batch, m.out_channels, 64 // output_stride, 96 // output_stride)
    assert m.out_channels == (1280 if last_conv else 320)


@pytest.mark.parametrize(
    ("output_stride", "expected"),
    [
        (32, [(1, 1)] * 3 + [(2, 1)] + [(1, 1)] * 3),
        # The de-strided block keeps the old rate; the blocks after it see a 2x sparser grid.
        (16, [(1, 1)] * 3 + [(1, 1)] + [(1, 2)] * 3),
        (8, [(1, 2)] * 3 + [(1, 2)] + [(1, 4)] * 3),
    ],
)
def test_dilation_replaces_stride(output_stride: int, expected: list[tuple[int, int]]) -> None:
    """(stride, dilation) of the depthwise convs of the 96-, 160- and 320-channel groups."""
    dw = _depthwise(MobileNetV2(output_stride=output_stride))[-7:]
    assert [(c.stride[0], c.dilation[0]) for c in dw] == expected
    assert all(c.padding[0] == c.dilation[0] for c in dw)


def test_invalid_output_stride() -> None:
    with pytest.raises(ConfigError, match="output_stride"):
        MobileNetV2(output_stride=4)
