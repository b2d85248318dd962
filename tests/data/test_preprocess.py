from __future__ import annotations

import numpy as np
import pytest
import torch

from rtseg.data.preprocess import IMAGENET_RGB, Normalize, Preprocessing, normalize_numpy
from rtseg.models.catalog import ESPNET_CAMVID_INPUT


def test_espnet_formula_with_trailing_division() -> None:
    image = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    mean = np.array(ESPNET_CAMVID_INPUT.mean)
    std = np.array(ESPNET_CAMVID_INPUT.std)
    expected = ((image.astype(np.float64) - mean) / std / 255).transpose(2, 0, 1)[None]
    got = normalize_numpy(image, ESPNET_CAMVID_INPUT)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    torch_got = Normalize(ESPNET_CAMVID_INPUT)(torch.from_numpy(image)[None])
    np.testing.assert_allclose(torch_got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_rgb_models_get_channels_flipped() -> None:
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[..., 2] = 255  # red in BGR
    x = Normalize(IMAGENET_RGB)(torch.from_numpy(image)[None])
    assert x[0, 0, 0, 0] == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)  # R first in model order
    assert x[0, 2, 0, 0] == pytest.approx((0 - 0.406) / 0.225, rel=1e-5)


@pytest.mark.parametrize("preprocessing", [ESPNET_CAMVID_INPUT, IMAGENET_RGB])
def test_the_eager_form_gives_the_graph_forms_values_as_contiguous_nchw(preprocessing) -> None:
    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 7, 9, 3), dtype=np.uint8))
    graph = Normalize(preprocessing)(image.to(torch.float32))
    eager = Normalize(preprocessing).eager(image)
    assert eager.is_contiguous() and eager.dtype == torch.float32
    torch.testing.assert_close(eager, graph.contiguous())


def test_the_torch_backend_runs_the_eager_form_and_exports_keep_the_graph_form() -> None:
    from rtseg.engine.graphs import LowGraph
    from rtseg.engine.torch_backend import TorchEngine
    from rtseg.models import get_model

    net = get_model("espnet")
    engine = TorchEngine(net, input_size=(64, 48))
    assert engine._low.eager and not LowGraph(net, net.meta.preprocessing).eager
    image = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with torch.inference_mode():
        reference = LowGraph(net, net.meta.preprocessing)(torch.from_numpy(image)[None])
    for got, want in zip(engine.run_low(image).values(), reference, strict=True):
        torch.testing.assert_close(got, want)


def test_round_trip_and_validation() -> None:
    assert Preprocessing.from_dict(ESPNET_CAMVID_INPUT.to_dict()) == ESPNET_CAMVID_INPUT
    with pytest.raises(ValueError, match="channel_order must be 'BGR' or 'RGB', got 'RGBA'"):
        Preprocessing("RGBA", (0, 0, 0), (1, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="std must be positive"):
        Preprocessing("BGR", (0, 0, 0), (1, 0, 1))
    with pytest.raises(ValueError, match="expected an HxWx3 uint8 BGR image"):
        normalize_numpy(np.zeros((4, 4), np.uint8), IMAGENET_RGB)
