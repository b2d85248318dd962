"""ICNet: cascade shapes, the staged-forward identity, cascade guidance, exportable PPM, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rtseg.models.base import deep_inputs, prime_batchnorm
from rtseg.models.flops import stage_flops
from rtseg.models.icnet import ICNet, PyramidPoolingSum, adaptive_avg_pool

BACKBONES = ("resnet18", "resnet50")
SIZES = ((64, 128), (96, 64))  # (height, width), multiples of 32 and small


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def models() -> dict[str, ICNet]:
    torch.manual_seed(0)
    return {name: ICNet(num_outputs=5, backbone=name).eval() for name in BACKBONES}


def _calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Give BN real running statistics so eval-mode activations stay O(1), as after training."""
    prime_batchnorm(model, [x])


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("hw", SIZES)
def test_stage_shapes_match_stage_spec(
    models: dict[str, ICNet], backbone: str, batch: int, hw: tuple[int, int]
) -> None:
    m = models[backbone]
    spec = m.stage_spec
    x = torch.randn(batch, 3, *hw)
    with torch.no_grad():
        low = m.forward_low(x)
        deep = m.forward_deep(low)
        logits = m(x)
    for infos, feats in ((spec.low, low), (spec.deep, deep)):
        assert sorted(feats) == sorted(f.name for f in infos)
        for f in infos:
            assert feats[f.name].shape == (batch, f.channels, hw[0] // f.stride, hw[1] // f.stride), f.name
    s = spec.output_stride
    assert s == 4
    assert logits.shape == (batch, m.num_outputs, hw[0] // s, hw[1] // s)


def test_stage_spec_channels() -> None:
    for backbone, c_half in (("resnet18", 128), ("resnet50", 512)):
        spec = ICNet(backbone=backbone).stage_spec
        assert {(f.name, f.channels, f.stride) for f in spec.low} == {
            ("sub1_s8", 64, 8),
            ("sub2_s16", c_half, 16),
        }
        assert [(f.name, f.channels, f.stride) for f in spec.deep] == [("sub4_s32", 256, 32)]
        assert spec.deep_inputs == ("sub2_s16",)
        assert spec.input_multiple == 32


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_equals_staged_forward_exactly(models: dict[str, ICNet], backbone: str) -> None:
    m = models[backbone]
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        low = m.forward_low(x)
        staged = m.forward_head(low, m.forward_deep(deep_inputs(low, m.stage_spec)))
        assert torch.equal(m(x), staged)
        assert torch.equal(m.forward_with_aux(x)[0], staged)


def test_deep_cache_carries_the_scene_and_low_the_detail(models: dict[str, ICNet]) -> None:
    """Swapping the cached deep features changes the output: the head really reads both."""
    m = models["resnet18"]
    a, b = torch.randn(2, 1, 3, 64, 64)
    with torch.no_grad():
        low_a, low_b = m.forward_low(a), m.forward_low(b)
        deep_a, deep_b = m.forward_deep(low_a), m.forward_deep(low_b)
        out = m.forward_head(low_a, deep_a)
        assert not torch.equal(out, m.forward_head(low_a, deep_b))
        assert not torch.equal(out, m.forward_head(low_b, deep_a))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_with_aux_in_train_mode(backbone: str) -> None:
    torch.manual_seed(0)
    m = ICNet(num_outputs=7, backbone=backbone).train()
    x = torch.randn(2, 3, 64, 96)
    logits, aux = m.forward_with_aux(x)
    assert logits.shape == (2, 7, 16, 24)
    assert set(aux) == set(ICNet.aux_weights) == {"aux_s16", "aux_s8"}
    assert aux["aux_s16"].shape == (2, 7, 4, 6)
    assert aux["aux_s8"].shape == (2, 7, 8, 12)
    loss = logits.mean() + sum(w * aux[k].mean() for k, w in ICNet.aux_weights.items())
    loss.backward()
    for name in ("cff_s16.aux_classifier.weight", "cff_s8.aux_classifier.weight", "classifier.weight"):
        grad = m.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_aux_weights_are_the_papers_and_read_only() -> None:
    assert dict(ICNet.aux_weights) == {"aux_s16": 0.4, "aux_s8": 0.4}
    with pytest.raises(TypeError):
        ICNet.aux_weights["aux_s8"] = 1.0  # type: ignore[index]


@pytest.mark.parametrize("hw", [(4, 8), (16, 32), (5, 7), (1, 1), (33, 65)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_matmul_pooling_equals_adaptive_avg_pool(hw: tuple[int, int], bins: int) -> None:
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    torch.testing.assert_close(adaptive_avg_pool(x, bins), F.adaptive_avg_pool2d(x, bins), rtol=0, atol=1e-12)


def test_pyramid_pooling_sums_upsampled_pools() -> None:
    x = torch.randn(1, 4, 4, 8, dtype=torch.float64)
    expected = x.clone()
    for b in (1, 2, 3, 6):
        pooled = F.adaptive_avg_pool2d(x, b)
        expected += F.interpolate(pooled, size=(4, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(PyramidPoolingSum((1, 2, 3, 6))(x), expected)


@pytest.mark.parametrize("backbone", ["resnet", "resnet101", "ResNet50"])
def test_bad_backbone_raises(backbone: str) -> None:
    with pytest.raises(ValueError, match=r"backbone.*resnet18.*resnet50"):
        ICNet(backbone=backbone)


def test_input_not_multiple_of_32_raises(models: dict[str, ICNet]) -> None:
    with pytest.raises(ValueError, match="divisible by 32"):
        models["resnet18"](torch.randn(1, 3, 48, 64))


def test_resnet50_split_meets_the_per_frame_aim() -> None:
    """low + head <= 35 % of the FLOPs for ResNet-50 (shares barely move with the input size)."""
    flops = stage_flops(ICNet(backbone="resnet50"), (256, 128))
    assert flops.per_frame_share <= 0.35
    assert flops.deep > flops.low > flops.head > 0


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
def test_onnx_export_matches_torch(tmp_path, dynamo: bool) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    m = ICNet(num_outputs=19, backbone="resnet18")
    _calibrate_bn(m, torch.randn(2, 3, 128, 256))
    x = torch.randn(1, 3, 128, 256)  # the 1/32 map is 4x8: bins 3 and 6 do not divide it
    path = tmp_path / "icnet.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=dynamo)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = m(x).numpy()
    assert got.shape == want.shape == (1, 19, 32, 64)
    # fp32 rounding over ~25 layers: torch itself is 6e-5 off float64 here, on logits up to ~14.
    assert np.abs(got - want).max() < 1e-4 * max(1.0, float(np.abs(want).max()))
