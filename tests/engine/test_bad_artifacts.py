"""Engine files that cannot be used, handed to an engine directly (the cache validates its own
files by their recorded SHA-256, so these reach an engine only from outside it): a graph cut
short or not a graph at all, and a graph exported for another input size. Each is a typed error
naming the file and what is wrong, at load time, not a library exception or a failure per frame."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rtseg.engine.cache import ArtifactCache
from rtseg.engine.onnx_export import OnnxStages, check_image_input, ensure_onnx
from rtseg.errors import EngineBuildError
from rtseg.models import StagedSegmenter, get_model

SIZE = (64, 48)


@pytest.fixture(scope="module")
def net() -> StagedSegmenter:
    return get_model("espnet")


@pytest.fixture(scope="module")
def stages(net: StagedSegmenter, tmp_path_factory: pytest.TempPathFactory) -> OnnxStages:
    return ensure_onnx(net, SIZE, ArtifactCache(tmp_path_factory.mktemp("bad-artifacts")))


def _engine(backend: str) -> Any:
    if backend == "onnxruntime":
        from rtseg.engine.ort_backend import OrtEngine

        return OrtEngine
    pytest.importorskip("openvino")
    from rtseg.engine.openvino_backend import OpenVinoEngine

    return OpenVinoEngine


def _kwargs(net: StagedSegmenter, stages: OnnxStages, size: tuple[int, int] = SIZE) -> dict[str, Any]:
    return dict(
        meta=net.meta, stage_spec=net.stage_spec, head_low_inputs=stages.head_low_inputs, input_size=size
    )


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("damage", ["truncated", "text", "empty"])
def test_a_damaged_graph_file_names_the_file(
    net: StagedSegmenter, stages: OnnxStages, tmp_path: Path, backend: str, damage: str
) -> None:
    data = stages.files["deep"].read_bytes()
    bad = tmp_path / "m.deep.onnx"
    bad.write_bytes({"truncated": data[: len(data) // 3], "text": b"not a graph\n", "empty": b""}[damage])
    with pytest.raises(EngineBuildError) as info:
        _engine(backend)({**stages.files, "deep": bad}, **_kwargs(net, stages))
    message = str(info.value)
    assert f"could not load {bad}" in message and "delete it" in message


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_graph_for_another_input_size_is_refused_at_load(
    net: StagedSegmenter, stages: OnnxStages, backend: str
) -> None:
    """Before, the engine was built and every frame of the asked-for size failed inside the runtime."""
    with pytest.raises(EngineBuildError) as info:
        _engine(backend)(stages.files, **_kwargs(net, stages, size=(96, 64)))
    message = str(info.value)
    assert str(stages.files["low"]) in message
    assert "(1, 48, 64, 3)" in message and "(1, 64, 96, 3)" in message and "96x64" in message


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_graphs_of_the_right_size_still_load_and_run(
    net: StagedSegmenter, stages: OnnxStages, backend: str
) -> None:
    engine = _engine(backend)(stages.files, **_kwargs(net, stages))
    labels = engine.run(np.zeros((SIZE[1], SIZE[0], 3), np.uint8))
    assert labels.shape[-2:] == (SIZE[1], SIZE[0])


def test_check_image_input_accepts_only_the_engine_input(tmp_path: Path) -> None:
    path = tmp_path / "x.low.plan"
    check_image_input(path, (1, 48, 64, 3), (64, 48))
    for shape in ((1, 64, 48, 3), (1, 48, 64), (2, 48, 64, 3), (1, -1, -1, 3)):
        with pytest.raises(EngineBuildError, match=r"x\.low\.plan takes images of shape"):
            check_image_input(path, shape, (64, 48))
