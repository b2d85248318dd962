"""ENet: shapes, the staged-forward identity, exact ONNX-friendly unpooling, and ONNX export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rtseg.errors import ConfigError
from rtseg.models import get_model
from rtseg.models.base import deep_inputs, param_count, prime_batchnorm
from rtseg.models.enet import ENet, max_unpool2x2


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model() -> ENet:
    torch.manual_seed(0)
    return ENet(num_outputs=5).eval()


def _calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Give BN real running statistics so eval-mode activations stay O(1), as after training."""
    prime_batchnorm(model, [x])


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("size", [(64, 128), (40, 72)])
def test_output_shape(model: ENet, batch: int, size: tuple[int, int]) -> None:
    with torch.no_grad():
        y = model(torch.randn(batch, 3, *size))
    assert y.shape == (batch, 5, *size)


def test_staged_forward_equals_forward(model: ENet) -> None:
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        full = model(x)
        low = model.forward_low(x)
        # forward_deep must only read the low features the spec says it needs.
        deep = model.forward_deep(deep_inputs(low, model.stage_spec))
        staged = model.forward_head(low, deep)
    assert torch.equal(full, staged)


def test_stage_spec_matches_tensors(model: ENet) -> None:
    spec = model.stage_spec
    h, w = 64, 128
    with torch.no_grad():
        low = model.forward_low(torch.randn(1, 3, h, w))
        deep = model.forward_deep(low)
        logits = model.forward_head(low, deep)
    for infos, feats in ((spec.low, low), (spec.deep, deep)):
        assert sorted(f.name for f in infos) == sorted(feats)
        for info in infos:
            assert feats[info.name].shape == (1, info.channels, h // info.stride, w // info.stride), info
    assert low["idx1"].dtype == torch.int64
    assert logits.shape[-2:] == (h // spec.output_stride, w // spec.output_stride)
    assert spec.input_multiple == 8


def test_head_uses_current_frame_indices(model: ENet) -> None:
    """Same cached deep features, another frame's stage-1 indices: the logits must change."""
    with torch.no_grad():
        low_a = model.forward_low(torch.randn(1, 3, 64, 128))
        low_b = model.forward_low(torch.randn(1, 3, 64, 128))
        deep_a = model.forward_deep(low_a)
        assert not torch.equal(model.forward_head(low_a, deep_a), model.forward_head(low_b, deep_a))


def test_param_count_matches_paper() -> None:
    # The paper reports 0.37 M parameters; the architecture as specified has 0.364 M.
    assert 0.35e6 < param_count(ENet(num_outputs=19)) < 0.38e6


def test_invalid_num_outputs() -> None:
    with pytest.raises(ConfigError, match="num_outputs"):
        ENet(num_outputs=0)


@pytest.mark.parametrize("shape", [(1, 1, 4, 4), (2, 3, 6, 10), (2, 16, 16, 32)])
@pytest.mark.parametrize("ties", [False, True])
def test_unpool_bit_identical_to_max_unpool2d(shape: tuple[int, ...], ties: bool) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-2, 3, shape, generator=g).float() if ties else torch.randn(shape, generator=g)
    pooled, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    values = pooled * 3.0 - 1.0  # the decoder unpools different values than it pooled
    assert torch.equal(max_unpool2x2(values, idx), F.max_unpool2d(values, idx, 2))


def test_unpool_rejects_mismatched_indices() -> None:
    with pytest.raises(ValueError, match="indices shape"):
        max_unpool2x2(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.int64))


def test_trains() -> None:
    m = ENet(num_outputs=3).train()
    y = m(torch.randn(2, 3, 32, 64))
    y.square().mean().backward()
    assert m.initial.conv.weight.grad is not None
    assert m.fullconv.weight.grad is not None


def test_onnx_export_runs_in_onnxruntime(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = ENet(num_outputs=5)
    _calibrate_bn(m, torch.randn(2, 3, 64, 128))
    x = torch.randn(1, 3, 64, 128)
    path = tmp_path / "enet.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=True)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "MaxUnpool" not in ops and "ScatterND" not in ops, ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = m(x)
    scale = float(want.abs().max())
    assert scale > 0.1  # the comparison below is meaningful only on non-trivial logits
    # Pooling indices match exactly; fp32 summation order differs between the engines and gives
    # about 1.3e-4 absolute on logits of magnitude 8, so the bound is relative to the logit range.
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=0, atol=1e-4 * scale)


def test_sizes_max_unpooling_cannot_take_are_named() -> None:
    """60x100 used to fail deep in max_unpool2x2 with an indices/values shape mismatch."""
    model = get_model("enet", num_classes=3)
    with pytest.raises(ValueError, match="ENet needs input height and width divisible by 8, got 100x60"):
        model(torch.zeros(1, 3, 60, 100))
