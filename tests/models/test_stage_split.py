"""For every registered model: m(x) == head(low, deep(low)) exactly, and StageSpec is the truth."""

from __future__ import annotations

import pytest
import torch

from rtseg.errors import ConfigError
from rtseg.models import get_model, list_models


def _sizes(multiple: int) -> list[tuple[int, int]]:
    # Two different aspect ratios, small enough for a 2-core CPU.
    base = max(multiple, 32)
    return [(base * 4, base * 2), (base * 3, base * 3)]


def _prime_batchnorm(model: torch.nn.Module, shape: tuple[int, ...]) -> None:
    # Random-init BN statistics make eval-mode activations explode; a few train-mode passes fix it.
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(*shape))
    model.eval()


@pytest.mark.parametrize("name", list_models())
def test_forward_equals_staged_forward(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name)
    spec = model.stage_spec
    sizes = _sizes(spec.input_multiple)
    _prime_batchnorm(model, (2, 3, sizes[0][1], sizes[0][0]))
    for w, h in sizes:
        for batch in (1, 2):
            x = torch.randn(batch, 3, h, w)
            with torch.inference_mode():
                whole = model(x)
                low = model.forward_low(x)
                deep = model.forward_deep(low)
                staged = model.forward_head(low, deep)
            assert torch.equal(whole, staged), f"{name} {w}x{h} batch {batch}"
            assert whole.shape == (batch, model.num_outputs, h // spec.output_stride, w // spec.output_stride)
            for info in spec.low:
                t = low[info.name]
                assert t.shape[:2] == (batch, info.channels), (name, info)
                assert t.shape[-2:] == (h // info.stride, w // info.stride), (name, info)
            assert set(deep) == {f.name for f in spec.deep}
            for info in spec.deep:
                t = deep[info.name]
                assert t.shape[:2] == (batch, info.channels), (name, info)
                assert t.shape[-2:] == (h // info.stride, w // info.stride), (name, info)


@pytest.mark.parametrize("name", list_models())
def test_deep_reads_only_declared_inputs(name: str) -> None:
    model = get_model(name)
    spec = model.stage_spec
    w, h = _sizes(spec.input_multiple)[0]
    with torch.inference_mode():
        low = model.forward_low(torch.randn(1, 3, h, w))
        subset = {k: low[k] for k in spec.deep_inputs}
        model.forward_deep(subset)  # KeyError if deep needs an undeclared feature


@pytest.mark.parametrize("name", list_models())
def test_inputs_the_stage_spec_does_not_describe_are_refused(name: str) -> None:
    """Off the input multiple, feature shapes stop being h // stride (DeepLabV3+ at 50x30 gave 7x12
    logits where the spec says 7x12 but its stride-4 features were 8x13; ESPNet-C gave 4x7 for 3x6),
    so every model's low stage refuses such inputs, and wrong channel counts, with the same message:
    a ConfigError (it was a builtin ValueError, which a caller catching RtsegError missed)."""
    model = get_model(name)
    m = model.stage_spec.input_multiple
    with torch.inference_mode():
        with pytest.raises(ConfigError, match=rf"divisible by {m}, got {3 * m + 2}x{2 * m}"):
            model.forward_low(torch.zeros(1, 3, 2 * m, 3 * m + 2))
        with pytest.raises(ConfigError, match=r"expected an Nx3xHxW tensor, got shape \(1, 1, "):
            model.forward_low(torch.zeros(1, 1, 2 * m, 2 * m))
