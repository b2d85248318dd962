"""The OpenVINO head's argmax rewrite: the same labels as PyTorch's, without the slow TopK."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from rtseg.engine import load
from rtseg.engine.openvino_backend import argmax_by_comparison, import_openvino
from rtseg.errors import BackendUnavailableError

try:
    ov = import_openvino()  # as rtseg imports it: a plain `import openvino` would send OpenVINO's telemetry
except BackendUnavailableError:
    pytest.skip("needs openvino", allow_module_level=True)


def argmax_graph(shape: list[int], *, axis: int = 1, with_values: bool = False) -> bytes:
    """ONNX ArgMax over ``axis`` (OpenVINO reads it as a k=1 TopK); ``with_values`` adds a
    ReduceMax output so a graph that reads the maxima too can be checked."""
    nodes = [helper.make_node("ArgMax", ["x"], ["index"], axis=axis, keepdims=0)]
    out_shape = [d for i, d in enumerate(shape) if i != axis % len(shape)]
    outputs = [helper.make_tensor_value_info("index", TensorProto.INT64, out_shape)]
    if with_values:
        nodes.append(helper.make_node("TopK", ["x", "k"], ["top", "top_index"], axis=axis))
        outputs.append(helper.make_tensor_value_info("top", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "argmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        outputs,
        [helper.make_tensor("k", TensorProto.INT64, [1], [2])] if with_values else [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def op_types(compiled) -> set[str]:
    ops = compiled.get_runtime_model().get_ordered_ops()
    return {op.get_rt_info()["layerType"].astype(str) for op in ops}


def test_the_rewrite_gives_pytorchs_labels_ties_and_infinities_included() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5, 7, 9)).astype(np.float32)
    x[0, :, 0, 0] = [1, 3, 3, 0, 3]  # ties: the first maximum
    x[0, :, 0, 3] = [np.inf, np.inf, 0, 0, 0]
    x[0, :, 0, 4] = -np.inf  # the plugin's ReduceMax gives -FLT_MAX here: nothing equals it
    x[0, :, 0, 6] = [-np.inf, -np.inf, -5, -np.inf, -5]
    x[0, :, 1] = np.round(x[0, :, 1])  # many ties
    core = ov.Core()
    model = core.read_model(argmax_graph(list(x.shape)))
    assert argmax_by_comparison(model) == 1
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert "TopK" not in op_types(compiled)
    request = compiled.create_infer_request()
    np.testing.assert_array_equal(request.infer({"x": x})[0], torch.from_numpy(x).max(1).indices.numpy())
    x[0, :, 0, 1] = [1, np.nan, 3, 0, 0]
    x[0, :, 0, 2] = [1, 2, np.nan, np.nan, 9]
    x[0, :, 0, 5] = np.nan
    index = request.infer({"x": x})[0]
    assert ((index >= 0) & (index < 5)).all()  # a NaN's label is unspecified, but a label


def test_argmax_over_another_axis() -> None:
    x = np.random.default_rng(1).integers(0, 4, size=(2, 3, 6)).astype(np.float32)
    core = ov.Core()
    model = core.read_model(argmax_graph(list(x.shape), axis=-1))
    assert argmax_by_comparison(model) == 1
    index = core.compile_model(model, "CPU").create_infer_request().infer({"x": x})[0]
    np.testing.assert_array_equal(index, torch.from_numpy(x).max(-1).indices.numpy())


def test_a_topk_whose_values_are_read_is_left_alone() -> None:
    core = ov.Core()
    model = core.read_model(argmax_graph([1, 4, 3, 3], with_values=True))
    assert argmax_by_comparison(model) == 1  # the ArgMax, not the k=2 TopK
    assert "TopK" in op_types(core.compile_model(model, "CPU"))


def test_the_engines_head_has_no_topk_and_matches_the_torch_labels(
    shared_engine_dir: Path, make_model, make_image
) -> None:
    model = make_model("espnet", (128, 64))
    engine = load(model, backend="openvino", input_size=(128, 64), engine_dir=shared_engine_dir, threads=1)
    reference = load(model, backend="torch", input_size=(128, 64))
    for stage in ("head", "head:labels"):
        assert "TopK" not in op_types(engine._stages[stage].compiled), stage
    image = make_image((128, 64))
    low = reference.run_low(image)
    deep = reference.run_deep(low)
    ref_labels = reference.run_head(low, deep)
    labels, logits = engine.run_head(low, deep, logits=True)
    expected = torch.as_tensor(np.asarray(logits))[:, : len(model.meta.classes)].max(1).indices.numpy()
    np.testing.assert_array_equal(labels, expected.astype(np.uint8))  # the argmax of its own logits
    np.testing.assert_array_equal(engine.run_head(low, deep), labels)
    assert np.mean(labels == np.asarray(ref_labels)) >= 0.999


def test_enets_pooling_indices_run_natively_with_the_same_labels(
    shared_engine_dir: Path, make_model, make_image
) -> None:
    """MaxPool's indices output ran through the CPU plugin's reference implementation: ENet's low
    and deep stages at 1024x512 took 314 and 336 ms, 54 and 70 ms rewritten."""
    model = make_model("enet", (128, 64))
    engine = load(model, backend="openvino", input_size=(128, 64), engine_dir=shared_engine_dir, threads=1)
    for stage in ("low", "deep"):
        types = op_types(engine._stages[stage].compiled)
        assert "Reference" not in types and "Pooling" in types, (stage, sorted(types))
    reference = load(model, backend="torch", input_size=(128, 64))
    image = make_image((128, 64))
    low = reference.run_low(image)
    for name, value in engine.run_low(image).items():
        np.testing.assert_allclose(value, low[name].numpy(), rtol=1e-4, atol=1e-4)
    assert np.mean(engine.run(image) == np.asarray(reference.run(image))) >= 0.999


def test_under_an_f16_hint_enets_pooling_indices_stay_exact(shared_engine_dir: Path, make_model) -> None:
    """The rewrite counts positions in floats; in f16 those past 2048 round (a 128x64 plane has
    8192), which moved indices by up to 2 and changed a quarter of the labels."""
    model = make_model("enet", (256, 128))
    engine = load(
        model, backend="openvino", precision="fp16", input_size=(256, 128), engine_dir=shared_engine_dir
    )
    for stage in ("low", "deep"):
        assert "Reference" in op_types(engine._stages[stage].compiled), stage


ALT_STACK_CHECK = """
import ctypes, gc, sys
from rtseg.engine import load
from rtseg.models import get_model

class Stack(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

def writable(address):
    for line in open("/proc/self/maps"):
        span, perms = line.split()[:2]
        low, high = (int(x, 16) for x in span.split("-"))
        if low <= address < high:
            return "w" in perms
    return False

net = get_model("espnet", num_classes=11)
engines = [load(net, backend="openvino", input_size=(64, 48), engine_dir=sys.argv[1]) for _ in range(2)]
for engine in engines:  # closed in the order they were made, as auto closes its candidates
    engine.close()
del engines, engine
gc.collect()
stack = Stack()
ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack))
print("disabled" if stack.flags & 2 else ("ok" if writable(stack.sp) else f"freed {stack.sp:#x}"))
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_closing_engines_leaves_the_main_threads_signal_stack_usable(tmp_path: Path) -> None:
    """Each engine's own Core loaded a CPU plugin that swapped the main thread's alternate signal
    stack for its own and put the previous one back when destroyed; two closed first to last left
    a freed stack, and the next SIGTERM or Ctrl-C (Python's handlers run on it) crashed the process."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", ALT_STACK_CHECK, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in ("ok", "disabled"), done.stdout


NO_TELEMETRY_CHECK = """
import multiprocessing, sys, threading
from rtseg.engine.openvino_backend import import_openvino

ov = import_openvino()
import openvino.tools.ovc.telemetry_utils as telemetry_utils

assert telemetry_utils.tm.__name__ == "openvino.tools.ovc.telemetry_stub", telemetry_utils.tm
assert "openvino_telemetry" not in sys.modules, sys.modules["openvino_telemetry"]
assert import_openvino() is ov is sys.modules["openvino"]
assert not multiprocessing.active_children(), multiprocessing.active_children()
assert threading.active_count() == 1, threading.enumerate()
import openvino_telemetry  # the host can still import it itself
print("ok")
"""


def test_importing_openvino_sends_no_telemetry(tmp_path: Path) -> None:
    """``import openvino`` sent a usage-telemetry event from inside the host process: a child
    process (under 'spawn' one that re-ran the host's __main__), a Google Analytics request, writes
    to ~/intel and a thread left behind. rtseg's import leaves OpenVINO on its no-op telemetry stub.
    CI=true and a private HOME keep OpenVINO's own telemetry off here even were that to regress."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "CI": "true",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", NO_TELEMETRY_CHECK], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
    assert not (tmp_path / "intel").exists()
