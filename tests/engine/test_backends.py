"""The backend registry: the names the rest of rtseg reads come from it, its entries are checked,
and reading it imports no backend library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtseg.engine import BACKENDS, PRECISIONS, load_backend
from rtseg.engine.auto import candidates
from rtseg.engine.backends import (
    ALL_PRECISIONS,
    BACKEND_OPTIONS,
    BACKEND_SPECS,
    CUDA_ONLY,
    BackendSpec,
    default_device,
    uses_tensorrt,
)
from rtseg.engine.base import BACKEND_OPTIONS as BASE_OPTIONS
from rtseg.engine.base import CUDA_ONLY as BASE_CUDA_ONLY
from rtseg.engine.base import default_device as base_default_device
from rtseg.engine.openvino_backend import HINTS, check_target
from rtseg.engine.ort_backend import OrtEngine
from rtseg.engine.torch_backend import TorchEngine
from rtseg.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_the_public_names_are_the_registrys() -> None:
    assert BACKENDS == ("auto", "torch", "onnxruntime", "openvino", "tensorrt", "torch2trt")
    assert dict(PRECISIONS) == {name: spec.precisions for name, spec in BACKEND_SPECS.items()}
    assert dict(BACKEND_OPTIONS) == {name: spec.options for name, spec in BACKEND_SPECS.items()}
    assert CUDA_ONLY == ("tensorrt", "torch2trt")
    # engine.base, their old home, still has them
    assert (BASE_OPTIONS, BASE_CUDA_ONLY, base_default_device) == (BACKEND_OPTIONS, CUDA_ONLY, default_device)
    assert [default_device(b) for b in BACKENDS] == ["cpu", "cpu", "cpu", "cpu", "cuda", "cuda"]
    assert [b for b in BACKENDS if uses_tensorrt(b)] == ["tensorrt", "torch2trt"]
    assert not uses_tensorrt("no such backend")


def test_the_registry_cannot_be_changed_in_place() -> None:
    with pytest.raises(TypeError):
        PRECISIONS["torch"] = ("int8",)  # type: ignore[index]
    with pytest.raises(AttributeError):
        BACKEND_SPECS["torch"].cuda_only = True  # type: ignore[misc]


def test_openvino_hints_translate_exactly_its_precisions() -> None:
    assert tuple(HINTS) == BACKEND_SPECS["openvino"].precisions


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": ""}, r"BackendSpec.name must be a non-empty string, got ''"),
        (
            {"precisions": ("fp32", "fp8")},
            r"BackendSpec.precisions of x must be some of fp32, fp16, bf16, int8",
        ),
        ({"precisions": ()}, r"BackendSpec.precisions of x must be some of"),
        ({"precisions": ["fp32"]}, r"BackendSpec.precisions of x must be a tuple of strings, got \['fp32'\]"),
        ({"options": ("threads", "threads")}, r"BackendSpec.options of x lists a value twice"),
        ({"loader": None}, r"BackendSpec.loader of x must be callable, got None"),
        ({"batch": 0}, r"BackendSpec.batch of x must be a positive int or None, got 0"),
        ({"batch": True}, r"BackendSpec.batch of x must be a positive int or None, got True"),
        ({"cuda_only": "yes"}, r"BackendSpec.cuda_only of x must be a bool, got 'yes'"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(change: dict, message: str) -> None:
    fields = {"name": "x", "precisions": ("fp32",), "options": (), "loader": print, **change}
    with pytest.raises(ConfigError, match=message):
        BackendSpec(**fields)


def test_the_precision_messages_read_the_registry_and_stay_worded_as_before() -> None:
    with pytest.raises(
        ConfigError, match=r"^unknown backend 'x'; choose one of torch, onnxruntime, openvino, "
    ):
        load_backend(None, backend="x", size=(64, 48), precision="fp32", device="cpu", cache=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^torch backend precision must be fp32 or fp16, got 'int8'$"):
        TorchEngine(None, input_size=(64, 48), precision="int8")  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError, match=r"^onnxruntime precision must be one of fp32, fp16, int8, got 'bf16'$"
    ):
        OrtEngine({}, meta=None, stage_spec=None, head_low_inputs=(), input_size=(64, 48), precision="bf16")  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError, match=r"^openvino precision must be one of fp32, fp16, bf16, int8, got 'x'$"
    ):
        check_target(None, "cpu", "x")
    with pytest.raises(ConfigError, match=r"^unknown precision 'int4'; choose fp32, fp16, bf16 or int8$"):
        candidates("int4", "cpu")
    assert ALL_PRECISIONS == ("fp32", "fp16", "bf16", "int8")


def test_importing_rtseg_and_reading_the_registry_imports_no_backend_library() -> None:
    """The loaders import their backend on call: a CLI start or ``import rtseg`` loads no
    ONNX Runtime, OpenVINO, TensorRT or torch2trt (nor onnx, which the exporters need)."""
    code = (
        "import sys, rtseg\n"
        "import rtseg.engine, rtseg.engine.auto, rtseg.cli.export_cmd, rtseg.bench.report\n"
        "assert rtseg.engine.BACKEND_SPECS['tensorrt'].loader\n"
        "heavy = ['onnx', 'onnxruntime', 'openvino', 'tensorrt', 'torch2trt']\n"
        "heavy += ['rtseg.engine.' + m for m in ('onnx_engines', 'ort_backend', 'openvino_backend',\n"
        "          'tensorrt_backend', 'torch2trt_backend')]\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
