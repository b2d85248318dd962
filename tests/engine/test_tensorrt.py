"""TensorRT and torch2trt on a machine without them: clear errors that name what is missing and
how to install it, argument checks before any GPU is needed, the plan and timing-cache names, and
the wrapper logic around the TensorRT 10 API (logger, build configuration, failure results, I/O
buffers by tensor name) against a stand-in module. (Real builds and runs need TensorRT 10 and a
GPU; the graph rewrite they parse through is tested in test_onnx_rewrite.py, the calibrator's
batching in test_calibration.py.)"""

from __future__ import annotations

import ast
import contextlib
import enum
import importlib.util
import logging
import re
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rtseg.engine import load
from rtseg.engine import tensorrt_backend as tb
from rtseg.engine import torch2trt_backend as t2t
from rtseg.engine.cache import ArtifactCache, ArtifactKey, CacheUnwritableError, weights_hash
from rtseg.engine.calibration import CalibrationList, EntropyCalibrator
from rtseg.engine.graphs import DeepGraph, LowGraph, head_low_inputs, pick
from rtseg.engine.onnx_export import onnx_key
from rtseg.engine.onnx_rewrite import EXACT_MARK
from rtseg.engine.tensorrt_backend import (
    INSTALL,
    cuda_index,
    device_tag,
    import_tensorrt,
    load_tensorrt,
    plan_key,
    require_cuda,
    timing_cache_path,
)
from rtseg.errors import BackendUnavailableError, ConfigError, EngineBuildError
from rtseg.models import StagedSegmenter, get_model

SIZE = (64, 48)
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_TORCH2TRT = importlib.util.find_spec("torch2trt") is not None
no_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
CALIBRATION = CalibrationList("images", Path("frames"), ("a.png",))


@pytest.fixture(scope="module")
def net() -> StagedSegmenter:
    torch.manual_seed(0)
    return get_model("espnet")


@no_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_load_without_tensorrt_names_it_and_the_install(
    net: StagedSegmenter, tmp_path: Path, precision: str
) -> None:
    with pytest.raises(BackendUnavailableError) as info:
        load(net, backend="tensorrt", precision=precision, input_size=SIZE, engine_dir=tmp_path)
    message = str(info.value)
    assert re.search(r"needs (an NVIDIA GPU, .* and )?TensorRT: pip install \"rtseg\[tensorrt\]\"", message)
    assert "TensorRT 10" in message and "\n" not in message
    assert not tmp_path.exists() or not list(tmp_path.iterdir())  # failed before exporting anything


@pytest.mark.skipif(HAS_TORCH2TRT, reason="torch2trt is installed here")
def test_torch2trt_missing_names_it_and_the_install(net: StagedSegmenter, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError) as info:
        load(net, backend="torch2trt", device="cuda", input_size=SIZE, engine_dir=tmp_path)
    message = str(info.value)
    assert "needs the torch2trt package" in message and "not on PyPI" in message
    assert "git clone https://github.com/NVIDIA-AI-IOT/torch2trt" in message and "pip install ." in message


def test_precisions_tensorrt_lacks_are_config_errors(net: StagedSegmenter, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tensorrt backend cannot run precision 'bf16'; it supports fp32"):
        load(net, backend="tensorrt", precision="bf16", input_size=SIZE, engine_dir=tmp_path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precision": "bf16"}, "tensorrt precision must be one of fp32, fp16, int8, got 'bf16'"),
        ({"int8_mode": "implicit"}, "int8_mode must be one of qdq, calibrator, got 'implicit'"),
        ({"workspace_gb": 0}, "workspace_gb must be positive, got 0"),
        ({"workspace_gb": -1.5}, "workspace_gb must be positive"),
        (
            {"precision": "int8", "int8_mode": "calibrator"},
            "int8_mode='calibrator' needs a calibration list",
        ),
        ({"calibration": CALIBRATION}, "calibration applies to int8 engines, not fp32"),
        ({"calibration": CALIBRATION, "precision": "fp16"}, "calibration applies to int8 engines, not fp16"),
    ],
)
def test_load_tensorrt_checks_arguments_before_needing_tensorrt(
    net: StagedSegmenter, tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    kwargs = {
        "size": SIZE,
        "precision": "fp32",
        "device": "cuda",
        "cache": ArtifactCache(tmp_path),
        **options,
    }
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_tensorrt(net, **kwargs)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch2trt_refuses_calibration_for_a_float_engine(
    monkeypatch: pytest.MonkeyPatch, net: StagedSegmenter, tmp_path: Path, precision: str
) -> None:
    """As ONNX Runtime, OpenVINO and TensorRT do: it was ignored without a word."""
    monkeypatch.setattr(t2t, "_torch2trt", lambda: lambda module, inputs, **options: module)
    with pytest.raises(ConfigError, match=f"calibration applies to int8 engines, not {precision}"):
        t2t.load_torch2trt(
            net,
            size=SIZE,
            precision=precision,
            device="cuda",
            cache=ArtifactCache(tmp_path),
            calibration=CALIBRATION,
        )


def test_cuda_index_parses_cuda_devices() -> None:
    assert cuda_index("cuda") == 0
    assert cuda_index("cuda:0") == 0
    assert cuda_index("cuda:3") == 3
    for bad in ("cpu", "gpu", "cuda:", "cuda:x", "cuda:1:2", "CUDA:0", " cuda"):
        with pytest.raises(ConfigError, match=r"runs on 'cuda' or 'cuda:N', got device"):
            cuda_index(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_require_cuda_without_a_gpu_says_what_is_needed() -> None:
    with pytest.raises(BackendUnavailableError) as info:
        require_cuda("cuda:0")
    message = str(info.value)
    assert "needs an NVIDIA GPU and a CUDA build of torch" in message and torch.__version__ in message
    assert "pip install" not in message  # TensorRT may be there: only the GPU is said to be missing
    with pytest.raises(ConfigError):  # a malformed device is reported as such, GPU or not
        require_cuda("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize(
    ("module", "missing"),
    [(None, "TensorRT"), (types.SimpleNamespace(__version__="8.6.1"), "TensorRT 10 (found 8.6.1)")],
)
def test_without_a_gpu_or_tensorrt_one_error_names_both(
    monkeypatch: pytest.MonkeyPatch, net: StagedSegmenter, tmp_path: Path, module: Any, missing: str
) -> None:
    """It named only TensorRT: installing it then met a second error, for the GPU."""
    monkeypatch.setitem(sys.modules, "tensorrt", module)  # None: import raises ImportError
    for call in (
        lambda: load(net, backend="tensorrt", input_size=SIZE, engine_dir=tmp_path),
        lambda: tb.TensorRTEngine(
            {}, net=net, head_low_inputs=(), input_size=SIZE, precision="fp32", device="cuda"
        ),
    ):
        with pytest.raises(BackendUnavailableError) as info:
            call()
        message = str(info.value)
        assert f"needs an NVIDIA GPU, a CUDA build of torch (this is torch {torch.__version__}" in message
        assert f"and {missing}: {INSTALL}" in message
    with pytest.raises(ConfigError, match="got device 'cpu'"):  # a wrong device first, as ever
        load(net, backend="tensorrt", device="cpu", input_size=SIZE, engine_dir=tmp_path)


def _fake_tensorrt(monkeypatch: pytest.MonkeyPatch, version: str) -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    module.__version__ = version  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0", "11.0.0"])
def test_only_tensorrt_10_is_accepted(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    _fake_tensorrt(monkeypatch, version)
    with pytest.raises(BackendUnavailableError) as info:
        import_tensorrt()
    message = str(info.value)
    assert f"needs TensorRT 10 (found {version})" in message and INSTALL in message


def test_tensorrt_10_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _fake_tensorrt(monkeypatch, "10.3.0")
    assert import_tensorrt() is module


def test_a_broken_tensorrt_install_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An empty tensorrt folder imports as a namespace package: it raised AttributeError on
    __version__ instead of saying what is wrong and what to do."""
    (tmp_path / "tensorrt").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    try:
        with pytest.raises(BackendUnavailableError) as info:
            import_tensorrt()
    finally:
        sys.modules.pop("tensorrt", None)  # the empty package imported here: no later test gets it
    message = str(info.value)
    assert "broken install" in message and str(tmp_path / "tensorrt") in message
    assert INSTALL in message


def test_an_absent_tensorrt_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"needs TensorRT: pip install \"rtseg\[tensorrt\]\""):
        import_tensorrt()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_tensorrt_without_a_device_means_cuda_and_an_explicit_cpu_is_refused(
    monkeypatch: pytest.MonkeyPatch, net: StagedSegmenter, tmp_path: Path
) -> None:
    """TensorRT runs only on CUDA: an unset device is 'cuda' (here: no GPU, said as such), never
    'cpu', which the user did not give; a device='cpu' they did give is still refused."""
    _fake_tensorrt(monkeypatch, "10.3.0")
    with pytest.raises(BackendUnavailableError, match="needs an NVIDIA GPU") as info:
        load(net, backend="tensorrt", input_size=SIZE, engine_dir=tmp_path)
    assert "pip install" not in str(info.value)  # TensorRT is there: only the GPU is missing
    with pytest.raises(ConfigError, match=r"runs on 'cuda' or 'cuda:N', got device 'cpu'"):
        load(net, backend="tensorrt", device="cpu", input_size=SIZE, engine_dir=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_torch2trt_without_a_device_means_cuda_and_an_explicit_cpu_is_refused(
    monkeypatch: pytest.MonkeyPatch, net: StagedSegmenter, tmp_path: Path
) -> None:
    monkeypatch.setattr(t2t, "_torch2trt", lambda: lambda module, inputs, **options: module)
    with pytest.raises(BackendUnavailableError, match="torch2trt backend needs an NVIDIA GPU"):
        load(net, backend="torch2trt", input_size=SIZE, engine_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"runs on 'cuda' or 'cuda:N', got device 'cpu'"):
        load(net, backend="torch2trt", device="cpu", input_size=SIZE, engine_dir=tmp_path)


def _source(**changes: object) -> ArtifactKey:
    base: dict = dict(
        model="espnet",
        weights="aa60be0bc0",
        input_size=(480, 360),
        precision="fp32",
        backend="onnx",
        device="any",
        library="torch2.13.0+cpu",
    )
    return ArtifactKey(**{**base, **changes})


def test_plan_key_names_everything_the_plan_depends_on(tmp_path: Path) -> None:
    key = plan_key(_source(), precision="fp16", device="h100_sm90", trt_version="10.3.0")
    assert key.stem == "espnet-aa60be0bc0-480x360-fp16-tensorrt-h100_sm90-trt10.3.0"
    cache = ArtifactCache(tmp_path)
    assert cache.path(key, "head", "plan").name == (
        "espnet-aa60be0bc0-480x360-fp16-tensorrt-h100_sm90-trt10.3.0.head.plan"
    )
    qdq = plan_key(
        _source(precision="int8", variant="54bdc04ds", library="ort1.31.1"),
        precision="int8",
        device="h100_sm90",
        trt_version="10.3.0",
        variant="54bdc04dsq",
    )
    assert qdq.stem == "espnet-aa60be0bc0-480x360-int8_54bdc04dsq-tensorrt-h100_sm90-trt10.3.0"
    stems = {
        plan_key(_source(**src), precision=p, device=d, trt_version=v, variant=var).stem
        for src, p, d, v, var in (
            ({}, "fp16", "h100_sm90", "10.3.0", ""),
            ({"weights": "ffffffffff"}, "fp16", "h100_sm90", "10.3.0", ""),
            ({"input_size": (240, 180)}, "fp16", "h100_sm90", "10.3.0", ""),
            ({"model": "enet"}, "fp16", "h100_sm90", "10.3.0", ""),
            ({}, "fp32", "h100_sm90", "10.3.0", ""),
            ({}, "fp16", "a100sxm440gb_sm80", "10.3.0", ""),
            ({}, "fp16", "h100_sm90", "10.4.0", ""),
            ({}, "int8", "h100_sm90", "10.3.0", "54bdc04dc"),
        )
    }
    assert len(stems) == 8


def test_plan_key_of_a_real_model_carries_its_weights_hash(net) -> None:
    source = onnx_key(net, SIZE)
    key = plan_key(source, precision="fp32", device="h200_sm90", trt_version="10.9.0.34")
    assert key.stem == f"espnet-{weights_hash(net)}-64x48-fp32-tensorrt-h200_sm90-trt10.9.0.34"


def test_device_tag_is_one_name_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """GPU model and compute capability, with no '-' (which separates the fields of a name), so
    plans and the timing cache spell it alike. Only torch's two device queries are replaced."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    tag = device_tag(0)
    assert tag == "h10080gbhbm3_sm90"
    key = plan_key(_source(), precision="fp16", device=tag, trt_version="10.3.0")
    assert key.stem.split("-")[5] == tag
    assert timing_cache_path(ArtifactCache(tmp_path), tag, "10.3.0").name == (
        f"tensorrt-{tag}-trt10.3.0.timing.cache"
    )


def test_timing_cache_is_per_gpu_kind_and_tensorrt_version(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    path = timing_cache_path(cache, "h100_sm90", "10.3.0")
    assert path == tmp_path / "tensorrt-h100_sm90-trt10.3.0.timing.cache"
    assert timing_cache_path(cache, "l4_sm89", "10.3.0") != path
    assert timing_cache_path(cache, "h100_sm90", "10.4.0") != path


def test_plans_from_another_tensorrt_or_modified_plans_are_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Plans are cached like every artifact: another TensorRT misses, a modified file is rebuilt."""
    cache = ArtifactCache(tmp_path)
    key = plan_key(_source(), precision="fp16", device="h100_sm90", trt_version="10.3.0")
    art = cache.put(key, "low", "plan", b"serialised plan bytes", {"stage": "low"})
    assert cache.get(key, "low", "plan") is not None
    newer = plan_key(_source(), precision="fp16", device="h100_sm90", trt_version="10.4.0")
    assert cache.get(newer, "low", "plan") is None
    art.path.write_bytes(b"serialised plan bytez")  # same size, other content
    assert cache.get(key, "low", "plan") is None
    assert "its SHA-256 differs" in caplog.text


# --- The wrapper logic around TensorRT's API, against a stand-in module -------------------------
# The stand-ins model only what the TensorRT 10 Python API documents as inputs and outcomes (None
# results, bool returns, messages through the ILogger); they produce no TensorRT result, and the
# tests check what rtseg does around those calls.


class _Severity(enum.Enum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class _ILogger:
    Severity = _Severity

    def __init__(self) -> None:
        pass


class _DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    BF16 = 2
    INT8 = 3
    UINT8 = 4
    INT32 = 5
    INT64 = 6
    BOOL = 7
    FP8 = 8


class _TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class _Calibrator2:
    def __init__(self) -> None:
        pass


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = _fake_tensorrt(monkeypatch, "10.3.0")
    module.ILogger = _ILogger  # type: ignore[attr-defined]
    module.DataType = _DataType  # type: ignore[attr-defined]
    module.TensorIOMode = _TensorIOMode  # type: ignore[attr-defined]
    module.IInt8EntropyCalibrator2 = _Calibrator2  # type: ignore[attr-defined]
    module.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")  # type: ignore[attr-defined]
    module.BuilderFlag = types.SimpleNamespace(  # type: ignore[attr-defined]
        FP16="fp16", INT8="int8", PREFER_PRECISION_CONSTRAINTS="prefer_precision_constraints"
    )
    module.LayerType = types.SimpleNamespace(CONSTANT="constant", POOLING="pooling")  # type: ignore[attr-defined]
    return module


def test_one_logger_forwards_messages_and_captures_errors(
    fake_trt: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    logger = tb.trt_logger(fake_trt)
    assert tb.trt_logger(fake_trt) is logger  # TensorRT keeps the first logger it is given
    assert isinstance(logger, _ILogger)
    with caplog.at_level(logging.DEBUG, logger=tb.__name__), logger.capture() as errors:
        logger.log(_Severity.ERROR, "[runtime.cpp] Engine deserialization failed.")
        logger.log(_Severity.INTERNAL_ERROR, "Assertion failed")
        logger.log(_Severity.WARNING, "Using default stream in enqueueV3()")
        logger.log(_Severity.VERBOSE, "tactic 7")
    logger.log(_Severity.ERROR, "after the capture")
    assert errors == ["[runtime.cpp] Engine deserialization failed.", "Assertion failed"]
    assert "TensorRT: Using default stream in enqueueV3()" in caplog.text


def test_concurrent_captures_get_their_own_threads_errors(fake_trt: types.ModuleType) -> None:
    # Two engines built on two threads: each build's error list used to get the other's errors.
    logger = tb.trt_logger(fake_trt)
    inside, done = threading.Barrier(2), threading.Event()
    caught: dict[str, list[str]] = {}

    def build(name: str) -> None:
        with logger.capture() as errors:
            inside.wait(5)
            logger.log(_Severity.ERROR, f"{name} failed")
            inside.wait(5)
            if name == "a":
                done.wait(5)
        caught[name] = errors

    threads = [threading.Thread(target=build, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    threads[1].join(5)
    logger.log(_Severity.ERROR, "from a thread of TensorRT's own")  # no capture here: goes to all
    done.set()
    threads[0].join(5)
    assert caught == {"a": ["a failed", "from a thread of TensorRT's own"], "b": ["b failed"]}


class _Layer:
    """An ILayer as the ONNX parser leaves it: named after its node, precision not set."""

    def __init__(self, name: str, kind: str, inputs: list[_DataType], outputs: list[_DataType]) -> None:
        self.name, self.type = name, kind
        self._inputs = [types.SimpleNamespace(dtype=d) for d in inputs]
        self._outputs = [types.SimpleNamespace(dtype=d) for d in outputs]
        self.precision: _DataType | None = None
        self.output_types: dict[int, _DataType] = {}

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, i: int) -> Any:
        return self._inputs[i]

    def get_output(self, i: int) -> Any:
        return self._outputs[i]

    def set_output_type(self, i: int, dtype: _DataType) -> None:
        self.output_types[i] = dtype


class _Network:
    def __init__(self, inputs: list[tuple[str, tuple[int, ...]]], layers: list[_Layer] | None = None) -> None:
        self._inputs = [types.SimpleNamespace(name=n, shape=s) for n, s in inputs]
        self.layers = layers or []

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, i: int) -> Any:
        return self._inputs[i]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> _Layer:
        return self.layers[i]


class _Config:
    def __init__(self) -> None:
        self.flags: list[str] = []
        self.pools: dict[str, int] = {}
        self.int8_calibrator: Any = None
        self.profiles: list[Any] = []

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)

    def create_timing_cache(self, data: bytes) -> bytes:
        return data

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
        self.timing = cache
        return True

    def get_timing_cache(self) -> Any:
        return types.SimpleNamespace(serialize=lambda: b"timing", combine=lambda other, ignore: True)

    def add_optimization_profile(self, profile: Any) -> int:
        self.profiles.append(profile)
        return 0

    def set_calibration_profile(self, profile: Any) -> bool:
        return True


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        self.shapes[name] = (lo, opt, hi)


def _builder_api(
    fake_trt: types.ModuleType,
    *,
    parse_errors: tuple[str, ...] = (),
    inputs: list[tuple[str, tuple[int, ...]]] | None = None,
    build: Callable[[Any, _Config], Any] = lambda logger, config: b"plan",
    config: Callable[[], Any] = _Config,
    layers: Callable[[], list[_Layer]] = list,
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    class Builder:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> _Network:
            seen["network_flags"] = flags
            seen["network"] = _Network(
                inputs if inputs is not None else [("image", (1, 48, 64, 3))], layers()
            )
            return seen["network"]

        def create_builder_config(self) -> Any:
            seen["config"] = config()
            return seen["config"]

        def create_optimization_profile(self) -> _Profile:
            seen["profile"] = _Profile()
            return seen["profile"]

        def build_serialized_network(self, network: _Network, config: _Config) -> Any:
            return build(self.logger, config)

    class OnnxParser:
        def __init__(self, network: _Network, logger: Any) -> None:
            self.num_errors = len(parse_errors)

        def parse(self, data: bytes) -> bool:
            return not parse_errors

        def get_error(self, i: int) -> str:
            return parse_errors[i]

    fake_trt.Builder = Builder  # type: ignore[attr-defined]
    fake_trt.OnnxParser = OnnxParser  # type: ignore[attr-defined]
    return seen


def _onnx_model() -> Any:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 48, 64, 3])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 48, 64, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["out"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_build_plan_configures_a_fixed_profile_and_the_workspace(fake_trt: types.ModuleType) -> None:
    seen = _builder_api(fake_trt)
    plan, timing = tb.build_plan(_onnx_model(), precision="fp16", workspace_bytes=2**30, timing_cache=b"t")
    assert (plan, timing) == (b"plan", b"timing")
    assert seen["network_flags"] == 0  # explicit batch is the only mode in TensorRT 10
    assert seen["config"].pools == {"workspace": 2**30} and seen["config"].flags == ["fp16"]
    shape = (1, 48, 64, 3)
    assert seen["profile"].shapes == {"image": (shape, shape, shape)}


def _pool_index_layers() -> list[_Layer]:
    mark = f"/pool1/{EXACT_MARK}"
    f32, i32, boolean = _DataType.FLOAT, _DataType.INT32, _DataType.BOOL
    return [
        _Layer("/conv1/Conv", "convolution", [f32], [f32]),
        _Layer(f"{mark}/max", "pooling", [f32], [f32]),
        _Layer(f"{mark}/offsets", "constant", [], [i32]),
        _Layer(f"{mark}/equal", "elementwise", [f32, f32], [boolean]),
        _Layer(f"{mark}/where", "select", [boolean, f32, f32], [f32]),
        _Layer(f"{mark}/i32", "cast", [f32], [i32]),
        _Layer(f"{mark}/add", "elementwise", [i32, i32], [i32]),
    ]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_the_exact_pooling_index_layers_stay_float32_in_lower_precision_builds(
    fake_trt: types.ModuleType, precision: str
) -> None:
    """Positions counted in floats are exact to 2048 in fp16: ENet's 1024x512 planes hold 131,072."""
    seen = _builder_api(fake_trt, layers=_pool_index_layers)
    tb.build_plan(_onnx_model(), precision=precision, workspace_bytes=2**30)
    layers = {layer.name.rsplit("/", 1)[-1]: layer for layer in seen["network"].layers}
    lower = precision != "fp32"
    assert ("prefer_precision_constraints" in seen["config"].flags) == lower
    for name in ("max", "equal", "where", "i32"):  # float arithmetic or comparison
        assert layers[name].precision == (_DataType.FLOAT if lower else None), name
    assert layers["max"].output_types == ({0: _DataType.FLOAT} if lower else {})
    assert layers["where"].output_types == ({0: _DataType.FLOAT} if lower else {})
    assert layers["equal"].output_types == {} and layers["i32"].output_types == {}  # bool, int32
    for name in ("Conv", "offsets", "add"):  # the network's own layers; integer ones
        assert layers[name].precision is None and layers[name].output_types == {}, name


def test_parse_failure_names_the_parser_errors(fake_trt: types.ModuleType) -> None:
    _builder_api(fake_trt, parse_errors=("In node 3 (MaxUnpool): unsupported", "second"))
    with pytest.raises(EngineBuildError, match=r"could not parse the ONNX graph: In node 3 .*; second"):
        tb.build_plan(_onnx_model(), precision="fp32", workspace_bytes=2**30)


def test_dynamic_onnx_inputs_are_refused_before_building(fake_trt: types.ModuleType) -> None:
    _builder_api(fake_trt, inputs=[("image", (-1, 48, 64, 3))])
    with pytest.raises(EngineBuildError, match="dynamic shape"):
        tb.build_plan(_onnx_model(), precision="fp32", workspace_bytes=2**30)


def test_build_out_of_memory_says_so_with_what_to_do(fake_trt: types.ModuleType) -> None:
    def build(logger: Any, config: _Config) -> None:
        logger.log(
            _Severity.ERROR, "[defaultAllocator.cpp::allocate] Error Code 1: Cuda Runtime (out of memory)"
        )
        return None  # build_serialized_network's documented failure result

    _builder_api(fake_trt, build=build)
    with pytest.raises(EngineBuildError) as info:
        tb.build_plan(_onnx_model(), precision="fp16", workspace_bytes=2**30)
    message = str(info.value)
    assert "failed to build the engine: [defaultAllocator.cpp::allocate]" in message
    assert "ran out of memory" in message and "workspace_gb" in message


def test_build_failure_without_log_is_still_typed(fake_trt: types.ModuleType) -> None:
    _builder_api(fake_trt, build=lambda logger, config: None)
    with pytest.raises(EngineBuildError, match=r"failed to build the engine \(TensorRT logged no error\)"):
        tb.build_plan(_onnx_model(), precision="fp32", workspace_bytes=2**30)


def test_an_error_inside_the_calibrator_is_raised_not_swallowed(
    fake_trt: types.ModuleType, tmp_path: Path
) -> None:
    """TensorRT's bindings print an exception raised in get_batch and fail the build; the wrapper
    keeps it, answers TensorRT with 'no more batches', and build_plan raises the rtseg error."""
    feeds = [{"other": np.zeros((1, 2), np.float32)}]
    calibrator = tb.as_trt_calibrator(
        EntropyCalibrator(lambda: feeds, cache_path=tmp_path / "c.calib", upload=lambda a: (1, a))
    )
    assert isinstance(calibrator, _Calibrator2) and calibrator.get_batch_size() == 1

    def build(logger: Any, config: _Config) -> None:
        assert config.int8_calibrator is calibrator and "int8" in config.flags
        assert config.int8_calibrator.read_calibration_cache() is None
        assert config.int8_calibrator.get_batch(["image"]) is None  # the error ends calibration
        return None

    _builder_api(fake_trt, build=build)
    with pytest.raises(ConfigError, match=r"calibration batch lacks inputs \['image'\]"):
        tb.build_plan(_onnx_model(), precision="int8", workspace_bytes=2**30, calibrator=calibrator)


def test_a_calibration_batch_other_than_the_networks_is_refused(
    fake_trt: types.ModuleType, tmp_path: Path
) -> None:
    """No implicit batch in TensorRT 10: two stacked frames into a batch-1 input calibrate on one."""
    calibrator = tb.as_trt_calibrator(
        EntropyCalibrator(lambda: [], cache_path=tmp_path / "c.calib", batch_size=2, upload=lambda a: (1, a))
    )
    _builder_api(fake_trt, build=lambda logger, config: pytest.fail("built with a mismatched batch"))
    with pytest.raises(
        ConfigError, match=r"calibrator's batch size is 2 but the ONNX input image has batch 1"
    ):
        tb.build_plan(_onnx_model(), precision="int8", workspace_bytes=2**30, calibrator=calibrator)


@pytest.mark.parametrize("bad", ["unreadable", "folder"])
def test_a_bad_calibration_cache_inside_a_tensorrt_build(
    fake_trt: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    """TensorRT calls read_calibration_cache itself: an unreadable cache file means calibrating
    and saving a new one; a folder in its place is the typed error, raised before any batch."""
    path = tmp_path / "espnet.low.calib"
    if bad == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"old")
        real_read = Path.read_bytes

        def read_bytes(self: Path) -> bytes:
            if self == path:
                raise PermissionError(13, "Permission denied")
            return real_read(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)  # root ignores chmod
    inner = EntropyCalibrator(
        lambda: [{"image": np.zeros((1, 2), np.float32)}], cache_path=path, upload=lambda a: (7, a)
    )
    calibrator = tb.as_trt_calibrator(inner)

    def build(logger: Any, config: _Config) -> bytes:
        # what TensorRT does: no cache, so calibrate on every batch, then hand over the new cache
        if config.int8_calibrator.read_calibration_cache() is None:
            while config.int8_calibrator.get_batch(["image"]) is not None:
                pass
            config.int8_calibrator.write_calibration_cache(b"new")
        return b"plan"

    _builder_api(fake_trt, build=build)
    if bad == "folder":
        with pytest.raises(CacheUnwritableError, match=re.escape(str(path))):
            tb.build_plan(_onnx_model(), precision="int8", workspace_bytes=2**30, calibrator=calibrator)
        assert inner.batches_served == 0 and path.is_dir()
        return
    plan, _ = tb.build_plan(_onnx_model(), precision="int8", workspace_bytes=2**30, calibrator=calibrator)
    assert plan == b"plan" and calibrator.error is None and inner.batches_served == 1
    monkeypatch.undo()
    assert path.read_bytes() == b"new"


class _Engine:
    """An ICudaEngine's tensor-name API (TensorRT 10: no binding indices)."""

    def __init__(self, tensors: dict[str, tuple[_TensorIOMode, tuple[int, ...], _DataType]]) -> None:
        self.tensors = tensors
        self.context: Any = None

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, i: int) -> str:
        return list(self.tensors)[i]

    def get_tensor_mode(self, name: str) -> _TensorIOMode:
        return self.tensors[name][0]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][1]

    def get_tensor_dtype(self, name: str) -> _DataType:
        return self.tensors[name][2]

    def create_execution_context(self) -> Any:
        return self.context


class _Context:
    """Output shapes are known (not -1) only after every input shape is set, as documented."""

    def __init__(self, engine: _Engine, output_shapes: dict[str, tuple[int, ...]]) -> None:
        self.engine = engine
        self.output_shapes = output_shapes
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.streams: list[int] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.input_shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        inputs = [n for n, t in self.engine.tensors.items() if t[0] == _TensorIOMode.INPUT]
        if any(n not in self.input_shapes for n in inputs):
            return tuple(-1 for _ in self.output_shapes[name])
        return self.output_shapes[name]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.streams.append(stream_handle)
        return True


def _stage_engine() -> tuple[_Engine, _Context]:
    engine = _Engine(
        {
            "image": (_TensorIOMode.INPUT, (1, 48, 64, 3), _DataType.UINT8),
            "labels": (_TensorIOMode.OUTPUT, (1, -1, -1), _DataType.UINT8),
            "logits": (_TensorIOMode.OUTPUT, (1, 11, -1, -1), _DataType.HALF),
        }
    )
    context = _Context(engine, {"labels": (1, 48, 64), "logits": (1, 11, 48, 64)})
    engine.context = context
    return engine, context


def _runtime(engine: Any, message: str | None = None) -> Any:
    def deserialize_cuda_engine(data: bytes) -> Any:
        if message is not None:
            tb.trt_logger(sys.modules["tensorrt"]).log(_Severity.ERROR, message)
        return engine

    return types.SimpleNamespace(deserialize_cuda_engine=deserialize_cuda_engine)


def test_plan_sizes_outputs_from_the_context_after_setting_input_shapes(fake_trt: types.ModuleType) -> None:
    engine, context = _stage_engine()
    plan = tb._Plan(_runtime(engine), b"plan", torch.device("cpu"), name="x.head.plan")
    assert context.input_shapes == {"image": (1, 48, 64, 3)}
    assert plan.inputs == {"image": ((1, 48, 64, 3), torch.uint8)}
    assert plan.outputs == {"labels": ((1, 48, 64), torch.uint8), "logits": ((1, 11, 48, 64), torch.float16)}
    image = torch.zeros(1, 48, 64, 3, dtype=torch.uint8)
    stream = types.SimpleNamespace(cuda_stream=12345)
    (labels,) = plan({"image": image}, ("labels",), stream)
    assert context.streams == [12345]  # execute_async_v3 gets the stream handle
    assert labels.shape == (1, 48, 64) and labels.dtype == torch.uint8
    assert context.addresses["image"] == image.data_ptr()
    assert context.addresses["labels"] == labels.data_ptr()
    assert context.addresses["logits"] == plan._scratch["logits"].data_ptr()  # unwanted: scratch
    (again,) = plan({"image": image}, ("labels",), stream)
    assert again.data_ptr() != labels.data_ptr()  # fresh per call: cached results stay intact
    with pytest.raises(ValueError, match=r"TensorRT input image: expected \(1, 48, 64, 3\) torch.uint8"):
        plan({"image": image.float()}, ("labels",), stream)


def test_a_failed_execute_is_a_typed_error(fake_trt: types.ModuleType) -> None:
    engine, context = _stage_engine()
    plan = tb._Plan(_runtime(engine), b"plan", torch.device("cpu"))
    context.execute_async_v3 = lambda stream_handle: False  # type: ignore[method-assign]
    with pytest.raises(EngineBuildError, match="execute_async_v3 failed"):
        plan(
            {"image": torch.zeros(1, 48, 64, 3, dtype=torch.uint8)},
            ("labels",),
            types.SimpleNamespace(cuda_stream=1),
        )


def test_a_plan_from_another_tensorrt_names_the_file_and_the_fix(fake_trt: types.ModuleType) -> None:
    message = (
        "IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error (The engine plan file is not "
        "compatible with this version of TensorRT, expecting library version 10.3.0 got 10.0.1)"
    )
    with pytest.raises(EngineBuildError) as info:
        tb._Plan(_runtime(None, message), b"old", torch.device("cpu"), name="m.low.plan")
    text = str(info.value)
    assert "TensorRT 10.3.0 could not deserialise m.low.plan: IRuntime::deserializeCudaEngine" in text
    assert "delete the file to rebuild it" in text


def test_no_execution_context_is_a_typed_error(fake_trt: types.ModuleType) -> None:
    engine, _ = _stage_engine()
    engine.context = None  # create_execution_context's failure result
    with pytest.raises(EngineBuildError, match=r"could not create an execution context .*out of memory"):
        tb._Plan(_runtime(engine), b"plan", torch.device("cpu"), name="m.deep.plan")


def test_tensor_types_without_a_torch_dtype_are_named(fake_trt: types.ModuleType) -> None:
    assert tb._torch_dtype(fake_trt, _DataType.BF16) == torch.bfloat16
    assert tb._torch_dtype(fake_trt, _DataType.INT64) == torch.int64
    with pytest.raises(EngineBuildError, match=r"TensorRT type _DataType\.FP8"):
        tb._torch_dtype(fake_trt, _DataType.FP8)


def test_torch2trt_without_tensorrt_names_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch2trt imports tensorrt: a missing TensorRT is reported as such, not as torch2trt."""
    module = types.ModuleType("torch2trt")

    def missing(name: str) -> Any:
        raise ImportError("No module named 'tensorrt'", name="tensorrt")

    module.__getattr__ = missing  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch2trt", module)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError, match="needs TensorRT"):
        t2t._torch2trt()


def test_torch2trt_outputs_and_calibration_sets(net: StagedSegmenter) -> None:
    """TRTModule returns a lone output bare; torch2trt's calibrator wants samples without the batch
    dimension (it stacks them). Both are shaped here, on the fp32 stages, on CPU."""
    x = torch.zeros(1, 2)
    assert t2t.as_tuple(x)[0] is x and t2t.as_tuple((x, x)) == (x, x) and t2t.as_tuple([x]) == (x,)
    low = LowGraph(net.eval(), net.meta.preprocessing).eval()
    deep = DeepGraph(net).eval()
    head_low = head_low_inputs(net, SIZE)
    frames = [torch.full((1, SIZE[1], SIZE[0], 3), float(v)) for v in (0, 128)]
    low_set, deep_set, head_set = t2t.calibration_sets(low, deep, frames, head_low)
    assert len(low_set) == len(deep_set) == len(head_set) == 2
    assert [t.shape for t in low_set[0]] == [(SIZE[1], SIZE[0], 3)]
    assert len(deep_set[0]) == len(deep.input_names) and len(head_set[0]) == len(head_low) + len(deep.names)
    assert all(t.dim() == 3 for t in (*deep_set[0], *head_set[0]))  # C, H, W: no batch dimension
    logits = t2t.HeadLogits(net, head_low).eval()
    with torch.no_grad():
        low_out = dict(zip(low.names, low(frames[1]), strict=True))
        deep_out = deep(*pick(low_out, deep.input_names))
        out = logits(*pick(low_out, head_low), *deep_out)
        expected = net.forward_head(low_out, dict(zip(deep.names, deep_out, strict=True)))
    assert torch.equal(out, expected)


# --- The head plans: labels only per frame, logits on request ----------------------------------


@pytest.fixture(scope="module")
def exported(net: StagedSegmenter, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from rtseg.engine.onnx_export import ensure_onnx

    return ensure_onnx(net, SIZE, ArtifactCache(tmp_path_factory.mktemp("trt-onnx")))


def test_the_per_frame_head_plan_is_built_without_the_logits(exported: Any) -> None:
    """The per-frame head graph given to TensorRT's parser ends in the labels alone (before,
    the plan kept the full-resolution logits as an output, bound and written every frame and
    never read); the logits head is built from the same file, and both give the same labels."""
    import onnxruntime

    head = exported.files["head"]
    labels_only, _ = tb.plan_graph(head, "head")
    with_logits, _ = tb.plan_graph(head, "head_logits")
    assert [o.name for o in labels_only.graph.output] == ["labels"]
    assert [o.name for o in with_logits.graph.output] == ["labels", "logits"]
    assert [i.name for i in labels_only.graph.input] == [i.name for i in with_logits.graph.input]
    for stage in ("low", "deep"):  # every output of the other stages is a feature
        graph, _ = tb.plan_graph(exported.files[stage], stage)
        assert [o["name"] for o in exported.sidecars[stage]["io"]["outputs"]] == [
            o.name for o in graph.graph.output
        ]
    rng = np.random.default_rng(0)
    feed = {
        i["name"]: rng.normal(size=i["shape"]).astype(np.float32)
        for i in exported.sidecars["head"]["io"]["inputs"]
    }
    a = onnxruntime.InferenceSession(labels_only.SerializeToString(), providers=["CPUExecutionProvider"])
    b = onnxruntime.InferenceSession(with_logits.SerializeToString(), providers=["CPUExecutionProvider"])
    (labels,) = a.run(None, feed)
    both = b.run(None, feed)
    assert np.array_equal(labels, both[0]) and both[1].shape[1] >= len(np.unique(labels))
    with pytest.raises(EngineBuildError, match=r"asked to keep \['scores'\]"):
        tb.keep_outputs(with_logits, ("labels", "scores"))


def test_build_stage_parses_the_labels_only_head_and_records_it(
    fake_trt: types.ModuleType, exported: Any, tmp_path: Path
) -> None:
    import onnx

    _builder_api(fake_trt)
    parsed: list[bytes] = []

    class Parser:
        num_errors = 0

        def __init__(self, network: Any, logger: Any) -> None:
            pass

        def parse(self, data: bytes) -> bool:
            parsed.append(data)
            return True

    fake_trt.OnnxParser = Parser  # type: ignore[attr-defined]
    timing = tmp_path / "t.timing.cache"
    plan, meta = tb.build_stage(
        "head", exported.files["head"], precision="fp16", workspace_gb=1, timing_path=timing
    )
    assert plan == b"plan" and timing.read_bytes() == b"timing"
    assert [o.name for o in onnx.load_from_string(parsed[0]).graph.output] == ["labels"]
    assert [o["name"] for o in meta["io"]["outputs"]] == ["labels"] and meta["stage"] == "head"
    _, meta = tb.build_stage(
        "head_logits", exported.files["head"], precision="fp16", workspace_gb=1, timing_path=timing
    )
    assert [o.name for o in onnx.load_from_string(parsed[1]).graph.output] == ["labels", "logits"]
    assert meta["source_onnx"] == exported.files["head"].name


def test_a_plan_from_another_export_of_the_same_weights_is_stale(tmp_path: Path) -> None:
    """The plan's name keeps the source's weights and variant but not its library or its graphs'
    hashes: a plan built from another export (exporter, torch or ONNX Runtime version) was reused."""
    sha = {"low": "1", "deep": "2", "head": "3"}
    key = plan_key(_source(), precision="fp16", device="h100_sm90", trt_version="10.3.0", source_sha256=sha)
    others = [
        plan_key(
            _source(),
            precision="fp16",
            device="h100_sm90",
            trt_version="10.3.0",
            source_sha256={**sha, "head": "4"},
        ),
        plan_key(
            _source(library="torch2.14.0"),
            precision="fp16",
            device="h100_sm90",
            trt_version="10.3.0",
            source_sha256=sha,
        ),
    ]
    assert all(k.stem == key.stem and k.source != key.source for k in others)
    cache = ArtifactCache(tmp_path)
    cache.put(key, "head", "plan", b"plan", {"stage": "head"})
    assert cache.get(key, "head", "plan") is not None
    assert cache.problem(others[0], cache.path(key, "head", "plan")).startswith(
        "stale: built for another key (source"
    )


# --- The shared timing cache: concurrent builds merge, never drop each other's entries --------


class _TimingCache:
    """An ITimingCache: a set of tactic timings; ``combine`` appends the other's entries."""

    def __init__(self, entries: set[str]) -> None:
        self.entries = set(entries)
        self.combined: list[bool] = []

    def combine(self, other: _TimingCache, ignore_mismatch: bool) -> bool:
        self.combined.append(ignore_mismatch)
        self.entries |= other.entries
        return True

    def serialize(self) -> bytes:
        return "\n".join(["timing-cache", *sorted(self.entries)]).encode()


def _parse_timing(data: bytes) -> set[str] | None:
    lines = bytes(data).decode(errors="replace").splitlines()
    if not lines:
        return set()
    return set(lines[1:]) if lines[0] == "timing-cache" else None  # None: not a timing cache


class _TimingConfig(_Config):
    """create_timing_cache from bytes (None for bytes that are no timing cache), and the build
    adding its own tactics to the cache set on the config, as TensorRT's builder does."""

    def create_timing_cache(self, data: bytes) -> Any:  # type: ignore[override]
        entries = _parse_timing(data)
        return None if entries is None else _TimingCache(entries)

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        if cache is None:
            raise TypeError("set_timing_cache(): incompatible function arguments (None)")
        self.timing = cache
        return True

    def get_timing_cache(self) -> Any:
        return self.timing


def _timing_build(tactic: Callable[[], str], before: Callable[[], None] = lambda: None) -> Any:
    def build(logger: Any, config: _TimingConfig) -> bytes:
        before()
        config.timing.entries.add(tactic())
        return b"plan"

    return build


def _identity_onnx(path: Path) -> Path:
    import onnx

    onnx.save(_onnx_model(), str(path))
    return path


def test_concurrent_builds_keep_both_builds_timing_entries(
    fake_trt: types.ModuleType, tmp_path: Path
) -> None:
    """Two builds (two engines, two processes in practice) both read the shared timing cache,
    build, and write it back: the second writer used to replace the first one's new entries.
    Both read before either writes here (the barrier), the worst interleaving."""
    timing = tmp_path / "tensorrt-h100_sm90-trt10.3.0.timing.cache"
    timing.write_bytes(_TimingCache({"old"}).serialize())
    barrier = threading.Barrier(2, timeout=10)
    _builder_api(
        fake_trt,
        config=_TimingConfig,
        build=_timing_build(lambda: threading.current_thread().name, before=barrier.wait),
    )
    source = _identity_onnx(tmp_path / "m.low.onnx")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            tb.build_stage("low", source, precision="fp16", workspace_gb=1, timing_path=timing)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, name=f"build-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert _parse_timing(timing.read_bytes()) == {"old", "build-0", "build-1"}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_corrupt_timing_cache_is_replaced_not_fatal(
    fake_trt: types.ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A timing cache cut short or from elsewhere: the build starts from an empty cache (with a
    warning naming the file), and the file is replaced by a valid one."""
    timing = tmp_path / "t.timing.cache"
    timing.write_bytes(b"\x00garbage")

    class Complaining(_TimingConfig):
        """TensorRT logs an ERROR for bytes that are no timing cache before returning nothing."""

        def create_timing_cache(self, data: bytes) -> Any:  # type: ignore[override]
            cache = super().create_timing_cache(data)
            if cache is None:
                tb.trt_logger(fake_trt).log(_Severity.ERROR, "Error Code 1: Serialization (magicTagRead)")
            return cache

    _builder_api(fake_trt, config=Complaining, build=_timing_build(lambda: "new"))
    source = _identity_onnx(tmp_path / "m.low.onnx")
    with caplog.at_level(logging.DEBUG, logger=tb.__name__):
        plan, _ = tb.build_stage("low", source, precision="fp32", workspace_gb=1, timing_path=timing)
    assert plan == b"plan" and _parse_timing(timing.read_bytes()) == {"new"}
    assert "t.timing.cache" in caplog.text and "not a usable timing cache" in caplog.text
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "magicTagRead" in r.getMessage()]
    # read when the build starts and again when its cache is merged into the file: never an ERROR
    assert said and set(said) == {
        ("DEBUG", "TensorRT (recovered from): Error Code 1: Serialization (magicTagRead)")
    }


def _save_in_child(path: str, entry: str, start: Any) -> None:
    start.wait(10)
    tb.save_timing_cache(_TimingConfig(), _TimingCache({entry}), Path(path))


def test_processes_saving_the_timing_cache_at_once_keep_every_entry(
    fake_trt: types.ModuleType, tmp_path: Path
) -> None:
    """The lock beside the file is an inter-process one: four processes released together each
    merge their entry in; none is lost and the file is a whole timing cache."""
    import multiprocessing

    timing = tmp_path / "t.timing.cache"
    ctx = multiprocessing.get_context("fork")  # the children inherit the stand-in tensorrt module
    start = ctx.Event()
    procs = [ctx.Process(target=_save_in_child, args=(str(timing), f"p{i}", start)) for i in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert _parse_timing(timing.read_bytes()) == {"p0", "p1", "p2", "p3"}
    assert (tmp_path / ".t.timing.cache.lock").is_file()


def test_an_unwritable_timing_cache_is_a_typed_error_naming_it(
    fake_trt: types.ModuleType, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = blocker / "engines" / "t.timing.cache"  # a folder under a file cannot exist (even for root)
    with pytest.raises(
        CacheUnwritableError, match=r"cannot write the TensorRT timing cache .*t\.timing\.cache"
    ):
        tb.save_timing_cache(_TimingConfig(), _TimingCache({"a"}), path)


# --- A plan whose record matches but that TensorRT refuses: rebuilt once -----------------------


def _plan_cache(tmp_path: Path) -> tuple[ArtifactCache, ArtifactKey, list[tuple[str, ...]], Any]:
    cache = ArtifactCache(tmp_path)
    key = plan_key(_source(), precision="fp16", device="h100_sm90", trt_version="10.3.0")
    builds: list[tuple[str, ...]] = []

    def build(todo: tuple[str, ...]) -> dict[str, tuple[bytes, dict[str, Any]]]:
        builds.append(todo)
        return {s: (f"plan {len(builds)}".encode(), {"stage": s}) for s in todo}

    return cache, key, builds, build


def test_a_plan_tensorrt_refuses_is_rebuilt_once_with_its_siblings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache, key, builds, build = _plan_cache(tmp_path)
    cache.get_or_build(key, tb.PLAN_STAGES, "plan", build)
    cache.get_or_build(key, (tb.LOGITS_STAGE,), "plan", build)  # built earlier by an eval
    assert len(builds) == 2
    opened: list[dict[str, bytes]] = []

    def open_plans(plans: Any) -> Any:
        data = {s: Path(p).read_bytes() for s, p in plans.items()}
        opened.append(data)
        if data["deep"] == b"plan 1":  # the first build's deep plan no longer deserialises
            raise tb.PlanLoadError("10.3.0", Path(plans["deep"]).name, ["Engine deserialization failed."])
        return data

    with caplog.at_level(logging.WARNING, logger=tb.__name__):
        data = tb.open_or_rebuild(cache, key, build, open_plans)
    assert builds[2:] == [tb.PLAN_STAGES]  # all three rebuilt together, once
    assert data == {s: b"plan 3" for s in tb.PLAN_STAGES} and len(opened) == 2
    assert "could not deserialise" in caplog.text and "rebuilding the" in caplog.text
    # the logits head of the refused build is gone too: built afresh on its first use
    assert not cache.path(key, tb.LOGITS_STAGE, "plan").exists()
    assert not cache.sidecar_path(cache.path(key, tb.LOGITS_STAGE, "plan")).exists()
    assert tb.open_or_rebuild(cache, key, build, open_plans) == data and len(builds) == 3


def test_plans_refused_again_after_the_rebuild_say_so(tmp_path: Path) -> None:
    cache, key, builds, build = _plan_cache(tmp_path)

    def refuse(plans: Any) -> Any:
        raise tb.PlanLoadError("10.3.0", Path(plans["low"]).name, ["Engine deserialization failed."])

    with pytest.raises(EngineBuildError) as info:
        tb.open_or_rebuild(cache, key, build, refuse)
    assert len(builds) == 2  # the first build and one rebuild, then the error
    text = str(info.value)
    assert f"could not deserialise {key.stem}.low.plan, rebuilt for this load a moment ago" in text
    assert "Engine deserialization failed." in text and "driver" in text


def test_a_torch2trt_from_before_tensorrt_10_is_named_as_such() -> None:
    """Older torch2trt calls TensorRT 8 API that TensorRT 10 removed: a raw AttributeError deep in
    its conversion became a typed error that says what to install."""
    module = torch.nn.Identity()

    def old_torch2trt(module, inputs, **options):
        raise AttributeError(
            "'tensorrt.tensorrt.IBuilderConfig' object has no attribute 'max_workspace_size'"
        )

    with pytest.raises(
        BackendUnavailableError, match=r"this torch2trt predates TensorRT 10 .*max_workspace_size"
    ):
        t2t.convert_module(old_torch2trt, module, [torch.zeros(1)], fp16_mode=False)

    def buggy(module, inputs, **options):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    with pytest.raises(AttributeError, match="'shape'"):  # any other AttributeError is left as it is
        t2t.convert_module(buggy, module, [torch.zeros(1)])
    assert t2t.convert_module(lambda m, i, **o: ("trt", o), module, [], fp16_mode=True) == (
        "trt",
        {"fp16_mode": True},
    )


def test_flipped_and_read_only_frames_are_taken_as_by_the_other_backends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A negative-stride view (rgb[..., ::-1]) made torch.from_numpy raise ValueError in both
    TensorRT backends; torch, ONNX Runtime and OpenVINO take it (here on CPU, for the wrapping)."""
    rgb = np.random.default_rng(0).integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    bgr = rgb[..., ::-1]
    frozen = np.ascontiguousarray(bgr)
    frozen.flags.writeable = False
    expected = torch.from_numpy(frozen.copy()[None])
    engine = types.SimpleNamespace(device=torch.device("cpu"))
    for image in (bgr, frozen):
        assert torch.equal(tb.TensorRTEngine._device(engine, image[None]), expected)

    seen: list[torch.Tensor] = []
    t2t_engine = object.__new__(t2t.Torch2TrtEngine)
    t2t_engine.info = types.SimpleNamespace(input_size=SIZE, backend="torch2trt")  # type: ignore[assignment]
    t2t_engine.device = torch.device("cpu")
    t2t_engine._low_names = ("x",)
    t2t_engine._low = lambda x: seen.append(x) or x
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    for image in (bgr, frozen):
        t2t_engine.run_low(image)
    assert len(seen) == 2 and all(torch.equal(x, expected.float()) for x in seen)


def test_torch2trt_leaves_the_callers_network_where_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """Module.to moves in place: the engine moved the caller's network to the GPU (auto's other
    candidates, or the caller's own use of it, then found it there). 'meta' stands in for 'cuda':
    Module.to moves parameters in place either way; the conversion, on meta tensors, fails after."""
    torch.manual_seed(0)
    net = get_model("espnet")
    before = list(net.parameters())
    monkeypatch.setattr(t2t, "_torch2trt", lambda: lambda module, inputs, **options: module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    with contextlib.suppress(RuntimeError):
        t2t.Torch2TrtEngine(net, input_size=SIZE, precision="fp32", device="meta")
    after = list(net.parameters())
    assert all(p.device.type == "cpu" for p in after)
    assert all(a is b for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("option", [{"threads": 2}, {"int8_mode": "qdq"}])
def test_torch2trt_names_the_options_it_takes(
    monkeypatch: pytest.MonkeyPatch, net: StagedSegmenter, tmp_path: Path, option: dict
) -> None:
    """Others were passed on to Torch2TrtEngine, which raised a bare TypeError."""
    monkeypatch.setattr(t2t, "_torch2trt", lambda: lambda module, inputs, **options: module)
    message = r"the torch2trt backend has no option\(s\) .*; it takes workspace_gb$"
    with pytest.raises(ConfigError, match=message):
        load(net, backend="torch2trt", device="cuda", input_size=SIZE, engine_dir=tmp_path, **option)


def test_the_tensorrt_extra_installs_only_what_rtseg_imports() -> None:
    """It listed cuda-python, which nothing imports (the CUDA work goes through torch)."""
    repo = Path(__file__).resolve().parents[2]
    setup = ast.parse((repo / "setup.py").read_text(encoding="utf-8"))
    extras = next(
        n.value for n in ast.walk(setup) if isinstance(n, ast.keyword) and n.arg == "extras_require"
    )
    wanted = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in ast.literal_eval(extras)["tensorrt"]}
    imported: set[str] = set()
    for path in (repo / "rtseg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    assert wanted and wanted <= imported, f"in the tensorrt extra, not imported: {sorted(wanted - imported)}"
    assert "cuda-python" not in INSTALL
