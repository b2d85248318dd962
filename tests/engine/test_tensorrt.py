"""TensorRT and torch2trt on a machine without them: clear errors that name what is missing and
how to install it, argument checks before any GPU is needed, and the plan and timing-cache names.
(The build and run paths need TensorRT 10 and a GPU; the graph rewrite they parse through is
tested in test_onnx_rewrite.py, the calibrator in test_calibration.py.)"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from rtseg.engine import load
from rtseg.engine.cache import ArtifactCache, ArtifactKey, weights_hash
from rtseg.engine.onnx_export import onnx_key
from rtseg.engine.tensorrt_backend import (
    INSTALL,
    _trt,
    cuda_index,
    device_tag,
    load_tensorrt,
    plan_key,
    require_cuda,
    timing_cache_path,
)
from rtseg.errors import BackendUnavailableError, ConfigError
from rtseg.models import StagedSegmenter, get_model

SIZE = (64, 48)
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_TORCH2TRT = importlib.util.find_spec("torch2trt") is not None
no_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")


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
    assert "needs TensorRT" in message and 'pip install "rtseg[tensorrt]"' in message
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
    assert INSTALL in message
    with pytest.raises(ConfigError):  # a malformed device is reported as such, GPU or not
        require_cuda("cpu")


def _fake_tensorrt(monkeypatch: pytest.MonkeyPatch, version: str) -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    module.__version__ = version  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0", "11.0.0"])
def test_only_tensorrt_10_is_accepted(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    _fake_tensorrt(monkeypatch, version)
    with pytest.raises(BackendUnavailableError) as info:
        _trt()
    message = str(info.value)
    assert f"written for TensorRT 10, found {version}" in message and INSTALL in message


def test_tensorrt_10_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _fake_tensorrt(monkeypatch, "10.3.0")
    assert _trt() is module


def test_an_absent_tensorrt_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"needs TensorRT: pip install \"rtseg\[tensorrt\]\""):
        _trt()


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
