"""Dilated ResNet backbones: deep stem, dilation instead of stride, feature_info as data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rtseg.errors import ConfigError
from rtseg.models.base import param_count
from rtseg.models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet50

BUILDERS = {"resnet18": resnet18, "resnet50": resnet50}
# Parameters of torchvision's ImageNet ResNets minus their 7x7 stem (conv + BN) and fc layer:
# layer1..layer4 must match them exactly for ImageNet weights to load by name.
TORCHVISION_LAYER_PARAMS = {"resnet18": 11_166_976, "resnet50": 23_498_496}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("hw", [(64, 96), (96, 64)])
def test_outputs_match_feature_info(name: str, batch: int, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = BUILDERS[name]().eval()
    x = torch.randn(batch, 3, *hw)
    with torch.no_grad():
        out = net(x)
    assert list(out) == [f.name for f in net.feature_info]
    for f in net.feature_info:
        assert out[f.name].shape == (batch, f.channels, hw[0] // f.stride, hw[1] // f.stride), f.name


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_output_stride_8_channels_and_strides(name: str) -> None:
    net = BUILDERS[name]()
    expansion = 1 if name == "resnet18" else 4
    strides = {f.name: f.stride for f in net.feature_info}
    channels = {f.name: f.channels for f in net.feature_info}
    assert strides == {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8}
    assert channels == {
        "stem": 64,
        "layer1": 64 * expansion,
        "layer2": 128 * expansion,
        "layer3": 256 * expansion,
        "layer4": 512 * expansion,
    }
    assert net.channels("layer2") == 128 * expansion and net.stride("layer4") == 8
    with pytest.raises(KeyError, match="layer5"):
        net.channels("layer5")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_layer3_layer4_dilate_instead_of_striding(name: str) -> None:
    net = BUILDERS[name]()
    for layer, dilation in (("layer3", 2), ("layer4", 4)):
        convs = [m for m in getattr(net, layer).modules() if isinstance(m, nn.Conv2d)]
        assert all(c.stride == (1, 1) for c in convs), layer
        three = [c for c in convs if c.kernel_size == (3, 3)]
        assert three and all(c.dilation == (dilation, dilation) for c in three), layer
        assert all(c.padding == (dilation, dilation) for c in three), layer


def test_deep_stem() -> None:
    net = resnet50()
    convs = [m for m in net.stem.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 32, (3, 3), (2, 2)),
        (32, 32, (3, 3), (1, 1)),
        (32, 64, (3, 3), (1, 1)),
    ]
    assert isinstance(net.stem[-1], nn.MaxPool2d)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_layers_have_imagenet_resnet_parameter_count(name: str) -> None:
    net = BUILDERS[name]()
    layers = sum(param_count(getattr(net, f"layer{i}")) for i in range(1, 5))
    assert layers == TORCHVISION_LAYER_PARAMS[name]


@pytest.mark.parametrize(("output_stride", "last"), [(8, 8), (16, 16), (32, 32)])
def test_output_stride_option(output_stride: int, last: int) -> None:
    net = resnet18(output_stride=output_stride).eval()
    assert net.stride("layer4") == last
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))
    assert out["layer4"].shape[-2:] == (64 // last, 64 // last)


def test_invalid_configuration_names_the_field() -> None:
    with pytest.raises(ConfigError, match="output_stride"):
        resnet50(output_stride=4)
    with pytest.raises(ConfigError, match="depths"):
        ResNet(block=BasicBlock, depths=(2, 2, 2))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="depths"):
        ResNet(block=Bottleneck, depths=(3, 0, 6, 3))
    with pytest.raises(ConfigError, match="block"):
        ResNet(block=nn.Conv2d, depths=(2, 2, 2, 2))  # type: ignore[arg-type]
