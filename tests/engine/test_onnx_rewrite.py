"""``onnx_rewrite.for_tensorrt``: ENet's stage graphs without what TensorRT's ONNX parser rejects
(MaxUnpool, MaxPool's Indices output), run in ONNX Runtime against the exported originals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from rtseg.engine.cache import ArtifactCache
from rtseg.engine.onnx_export import STAGES, OnnxStages, ensure_onnx
from rtseg.engine.onnx_rewrite import UNSUPPORTED_BY_TENSORRT, for_tensorrt, rewrite_pool_indices
from rtseg.errors import EngineBuildError
from rtseg.models import StagedSegmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (64, 48)
Rewritten = dict[str, tuple[onnx.ModelProto, list[str]]]


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _pools_with_indices(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1]]


@pytest.fixture(scope="module")
def enet(make_model: Callable[..., StagedSegmenter], tmp_path_factory: pytest.TempPathFactory) -> OnnxStages:
    model = make_model("enet", SIZE)
    return ensure_onnx(model, SIZE, ArtifactCache(tmp_path_factory.mktemp("enet-engines")))


@pytest.fixture(scope="module")
def rewritten(enet: OnnxStages) -> Rewritten:
    return {stage: for_tensorrt(onnx.load(str(enet.files[stage]))) for stage in STAGES}


def test_enet_graphs_need_the_rewrite(enet: OnnxStages) -> None:
    """Guard: if the export stopped emitting pooling indices, the equality test would prove nothing."""
    pools = {stage: _pools_with_indices(onnx.load(str(enet.files[stage]))) for stage in STAGES}
    assert pools["low"] and pools["deep"], pools


def test_rewritten_graphs_hold_nothing_tensorrt_rejects(rewritten: Rewritten) -> None:
    for stage, (model, _) in rewritten.items():
        ops = {n.op_type for n in model.graph.node}
        assert not ops & set(UNSUPPORTED_BY_TENSORRT), f"{stage}: {ops & set(UNSUPPORTED_BY_TENSORRT)}"
        assert _pools_with_indices(model) == [], f"{stage} still asks MaxPool for indices"
        onnx.checker.check_model(model)
    assert any("equality mask + min-pool" in d for d in rewritten["low"][1])
    assert any("equality mask + min-pool" in d for d in rewritten["deep"][1])
    assert rewritten["head"][1] == []  # nothing to do: the head gets the indices as an input


def _images() -> list[np.ndarray]:
    """A noisy frame, and one with flat regions, where 2x2 windows hold equal maxima (ties)."""
    w, h = SIZE
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    flat = noisy.copy()
    flat[:, : w // 2] = 128
    flat[h // 4 : 3 * h // 4, 3 * w // 4 :] = 0
    return [noisy, flat]


@pytest.mark.parametrize("which", ["noisy", "flat"])
def test_rewritten_graphs_compute_the_same_outputs(
    enet: OnnxStages, rewritten: Rewritten, which: str
) -> None:
    image = _images()[["noisy", "flat"].index(which)]
    values: dict[str, np.ndarray] = {"image": image[None]}
    for stage in STAGES:
        original, candidate = _session(enet.files[stage]), _session(rewritten[stage][0])
        feed = {i.name: values[i.name] for i in original.get_inputs()}
        names = [o.name for o in original.get_outputs()]
        assert names == [o.name for o in candidate.get_outputs()]
        for name, a, b in zip(names, original.run(None, feed), candidate.run(None, feed), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype, f"{stage}.{name}"
            if a.dtype.kind in "iub":  # pooling indices and labels: identical
                assert np.array_equal(a, b), f"{stage}.{name}: {np.mean(a != b):.2%} differ"
            else:
                scale = float(np.abs(a).max()) or 1.0
                assert float(np.abs(a - b).max()) <= 1e-5 * scale, f"{stage}.{name}"
            values[name] = a  # the next stage is fed the original graph's outputs


def _pool_graph(kernel: int, shape: tuple[int, int, int, int], **attrs: object) -> onnx.ModelProto:
    node = helper.make_node(
        "MaxPool",
        ["x"],
        ["values", "indices"],
        kernel_shape=[kernel, kernel],
        strides=[kernel, kernel],
        **attrs,
    )
    n, c, h, w = shape
    graph = helper.make_graph(
        [node],
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [
            helper.make_tensor_value_info("values", TensorProto.FLOAT, [n, c, h // kernel, w // kernel]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, [n, c, h // kernel, w // kernel]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("kernel", [1, 2])
def test_pool_indices_match_pytorch_with_ties(kernel: int) -> None:
    """Ties are resolved to the first maximum in row-major order, as max_pool2d records it."""
    shape = (2, 3, 4, 6)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, shape).astype(np.float32)  # three values: most windows tie
    if kernel == 2:
        windows = x.reshape(2, 3, 2, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 2, 3, 4)
        ties = (windows == windows.max(-1, keepdims=True)).sum(-1) > 1
        assert ties.mean() > 0.3  # guard: the tie-breaking is really exercised
    model, done = for_tensorrt(_pool_graph(kernel, shape))
    assert len(done) == 1 and _pools_with_indices(model) == []
    values, indices = _session(model).run(None, {"x": x})
    ref_values, ref_indices = F.max_pool2d(torch.from_numpy(x), kernel, kernel, return_indices=True)
    np.testing.assert_array_equal(values, ref_values.numpy())
    # ONNX counts indices over the whole tensor, PyTorch per plane
    n, c, h, w = shape
    offsets = (np.arange(n * c) * h * w).reshape(n, c, 1, 1)
    np.testing.assert_array_equal(indices, ref_indices.numpy() + offsets)
    assert indices.dtype == np.int64
    _, ort_indices = _session(_pool_graph(kernel, shape)).run(None, {"x": x})
    np.testing.assert_array_equal(indices, ort_indices)


def test_graphs_without_indices_are_returned_unchanged() -> None:
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    graph = helper.make_graph(
        [node],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, done = for_tensorrt(model)
    assert out is model and done == []


def test_unrewritable_graphs_name_the_problem() -> None:
    with pytest.raises(EngineBuildError, match="not a plain 1x1 or 2x2 pooling"):
        for_tensorrt(_pool_graph(3, (1, 1, 6, 6)))
    with pytest.raises(EngineBuildError, match="not a plain 1x1 or 2x2 pooling"):
        for_tensorrt(_pool_graph(2, (1, 1, 4, 4), ceil_mode=1))
    with pytest.raises(EngineBuildError, match="is not divisible by its window"):
        for_tensorrt(_pool_graph(2, (1, 1, 5, 6)))
    unpool = helper.make_node("MaxUnpool", ["x", "i"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    graph = helper.make_graph(
        [unpool],
        "unpool",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2]),
            helper.make_tensor_value_info("i", TensorProto.INT64, [1, 1, 2, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(EngineBuildError, match="does not support MaxUnpool; use backend onnxruntime"):
        for_tensorrt(model)


@pytest.mark.parametrize(
    ("kernel", "shape", "options"),
    [(3, (1, 1, 6, 6), {}), (2, (1, 1, 4, 4), {"ceil_mode": 1}), (2, (1, 1, 5, 6), {})],
)
def test_without_strict_the_pools_it_cannot_rewrite_stay(kernel: int, shape: tuple, options: dict) -> None:
    """OpenVINO runs those itself (slowly), so its rewrite keeps them instead of refusing the graph."""
    model = _pool_graph(kernel, shape, **options)
    out, done = rewrite_pool_indices(model, strict=False)
    assert done == [] and len(_pools_with_indices(out)) == 1
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    for a, b in zip(_session(out).run(None, {"x": x}), _session(model).run(None, {"x": x}), strict=True):
        np.testing.assert_array_equal(a, b)


def test_without_strict_a_plain_pool_is_rewritten() -> None:
    out, done = rewrite_pool_indices(_pool_graph(2, (1, 2, 4, 6)), strict=False)
    assert len(done) == 1 and _pools_with_indices(out) == []
