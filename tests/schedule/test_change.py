from __future__ import annotations

import numpy as np
import pytest
import torch

from rtseg.errors import ConfigError
from rtseg.schedule import ChangeMeasure


def _features(seed: int, shape=(1, 6, 16, 24)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_definition_on_numpy_and_torch_agree() -> None:
    a, b = _features(0), _features(1)
    m = ChangeMeasure(pool=4)
    expected = float(np.abs(_pool4(b) - _pool4(a)).mean() / np.abs(_pool4(a)).mean())
    got_np = m.distance(m.summarize(b), m.summarize(a))
    got_t = m.distance(m.summarize(torch.from_numpy(b)), m.summarize(torch.from_numpy(a)))
    assert got_np == pytest.approx(expected, rel=1e-5)
    assert got_t == pytest.approx(expected, rel=1e-5)


def _pool4(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 4, 4, w // 4, 4).mean(axis=(3, 5))


def test_zero_for_the_same_frame_and_scale_free() -> None:
    a, b = _features(2), _features(3)
    m = ChangeMeasure(pool=2)
    assert m.distance(m.summarize(a), m.summarize(a.copy())) == 0.0
    base = m.distance(m.summarize(b), m.summarize(a))
    assert m.distance(m.summarize(10 * b), m.summarize(10 * a)) == pytest.approx(base, rel=1e-5)


def test_summary_is_owned_and_smaller() -> None:
    x = torch.from_numpy(_features(4))
    s = ChangeMeasure(pool=4).summarize(x)
    x.zero_()  # an engine reusing its output buffer must not change the kept reference
    assert s.pooled.shape == (1, 6, 4, 6) and float(s.pooled.abs().sum()) > 0
    s1 = ChangeMeasure(pool=1).summarize(x)
    x.add_(1)
    assert float(s1.pooled.abs().sum()) == 0.0


def test_odd_sizes_are_cropped_to_whole_cells() -> None:
    x = _features(5, (1, 3, 10, 13))
    s = ChangeMeasure(pool=4).summarize(x)
    assert s.pooled.shape == (1, 3, 2, 3)
    t = ChangeMeasure(pool=4).summarize(torch.from_numpy(x))
    assert np.allclose(s.pooled, t.pooled.numpy(), atol=1e-6)


def test_feature_resolution_and_errors() -> None:
    m = ChangeMeasure()
    assert m.resolve(("l1_cat", "image_s4"), ("l1_cat", "image_s4")) == "l1_cat"
    assert ChangeMeasure(feature="image_s4").resolve(("l1_cat", "image_s4"), ("l1_cat",)) == "image_s4"
    with pytest.raises(ConfigError, match="not a low feature"):
        ChangeMeasure(feature="deep").resolve(("l1_cat",), ("l1_cat",))
    with pytest.raises(ConfigError, match="pool"):
        ChangeMeasure(pool=0)
    with pytest.raises(ConfigError, match="larger than the feature map"):
        ChangeMeasure(pool=32).summarize(_features(6))


@pytest.mark.parametrize("pool", [0, 2.5, True])
def test_pool_must_be_a_whole_number(pool) -> None:
    with pytest.raises(ConfigError, match=f"pool must be a whole number >= 1, got {pool!r}"):
        ChangeMeasure(pool=pool)


def test_numpy_features_are_pooled_without_torch(monkeypatch) -> None:
    """torch's OpenMP workers spin after avg_pool2d and took a core from the engine's next stage
    (3-5 ms a frame at 480x360): NumPy features (ONNX Runtime, OpenVINO) are pooled by OpenCV."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 3, 18, 26)).astype(np.float32)
    expected = torch.nn.functional.avg_pool2d(torch.from_numpy(a[:, :, :16, :24].copy()), 4).numpy()

    def no_torch(*args, **kwargs):
        raise AssertionError("NumPy features went through torch")

    monkeypatch.setattr(torch.nn.functional, "avg_pool2d", no_torch)
    pooled = ChangeMeasure(pool=4).summarize({"f": a}["f"]).pooled
    assert isinstance(pooled, np.ndarray) and pooled.shape == (1, 3, 4, 6)
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)
