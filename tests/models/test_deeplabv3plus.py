"""DeepLabV3+ (MobileNetV2): shapes, the staged-forward identity, stage spec, and ONNX export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rtseg.errors import ConfigError
from rtseg.models.base import deep_inputs, param_count, prime_batchnorm
from rtseg.models.deeplabv3plus import DeepLabV3Plus


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model() -> DeepLabV3Plus:
    torch.manual_seed(0)
    return DeepLabV3Plus(num_outputs=5).eval()


def _calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Give BN real running statistics so eval-mode activations stay O(1), as after training."""
    prime_batchnorm(model, [x])


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("size", [(64, 128), (48, 80)])
def test_output_shape(model: DeepLabV3Plus, batch: int, size: tuple[int, int]) -> None:
    with torch.no_grad():
        y = model(torch.randn(batch, 3, *size))
    assert y.shape == (batch, 5, size[0] // 4, size[1] // 4)


def test_staged_forward_equals_forward(model: DeepLabV3Plus) -> None:
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        full = model(x)
        low = model.forward_low(x)
        staged = model.forward_head(low, model.forward_deep(deep_inputs(low, model.stage_spec)))
    assert torch.equal(full, staged)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_stage_spec_matches_tensors(output_stride: int) -> None:
    m = DeepLabV3Plus(num_outputs=3, output_stride=output_stride).eval()
    spec = m.stage_spec
    h, w = 64, 96
    with torch.no_grad():
        low = m.forward_low(torch.randn(1, 3, h, w))
        deep = m.forward_deep(low)
        logits = m.forward_head(low, deep)
    for infos, feats in ((spec.low, low), (spec.deep, deep)):
        assert sorted(f.name for f in infos) == sorted(feats)
        for info in infos:
            assert feats[info.name].shape == (1, info.channels, h // info.stride, w // info.stride), info
    assert [(f.channels, f.stride) for f in spec.low] == [(24, 4)]
    assert [(f.channels, f.stride) for f in spec.deep] == [(256, output_stride)]
    assert logits.shape == (1, 3, h // spec.output_stride, w // spec.output_stride)
    assert spec.output_stride == 4
    assert spec.input_multiple == output_stride


def test_aspp_rates_follow_output_stride() -> None:
    def rates(m: DeepLabV3Plus) -> list[int]:
        return [c.dilation[0] for c in m.aspp.modules() if isinstance(c, nn.Conv2d) and c.groups > 1]

    assert rates(DeepLabV3Plus(output_stride=16)) == [6, 12, 18]
    assert rates(DeepLabV3Plus(output_stride=8)) == [12, 24, 36]


def test_image_pooling_is_global(model: DeepLabV3Plus) -> None:
    """The pooling branch gives every position the same vector, computed from the whole map."""
    pool = model.aspp.branches[-1]
    x = torch.randn(1, 320, 4, 6)
    with torch.no_grad():
        y = pool(x)
        x2 = x.clone()
        x2[..., 0, 0] += 10.0
        y2 = pool(x2)
    assert y.shape == (1, 256, 4, 6)
    assert torch.equal(y, y[..., :1, :1].expand_as(y))
    assert not torch.equal(y, y2)


def test_param_counts() -> None:
    m = DeepLabV3Plus(num_outputs=19)
    # Backbone: MobileNetV2 without its 1x1 conv to 1280; the whole model stays under 3 M.
    assert param_count(m.backbone) == 1_811_712
    assert 2.5e6 < param_count(m) < 3.0e6


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigError, match="output_stride"):
        DeepLabV3Plus(output_stride=32)
    with pytest.raises(ConfigError, match="num_outputs"):
        DeepLabV3Plus(num_outputs=0)


def test_trains() -> None:
    m = DeepLabV3Plus(num_outputs=3).train()
    y = m(torch.randn(2, 3, 32, 64))
    y.square().mean().backward()
    assert m.backbone.features[0][0].weight.grad is not None
    assert m.aspp.branches[-1].project[0].weight.grad is not None


def test_onnx_export_runs_in_onnxruntime(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = DeepLabV3Plus(num_outputs=5)
    _calibrate_bn(m, torch.randn(2, 3, 64, 96))
    x = torch.randn(1, 3, 64, 96)
    path = tmp_path / "deeplab.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=True)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "ReduceMean" in ops, ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = m(x)
    scale = float(want.abs().max())
    assert scale > 0.1
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=0, atol=1e-4 * scale)
