"""``backend="auto"``: time the available backends once, store the choice with the engines, reuse
it, measure again when the libraries change or when asked, and skip backends that are missing."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rtseg.engine import TorchEngine, load
from rtseg.engine.auto import (
    CHOICE_FORMAT,
    Candidate,
    _read_choice,
    candidates,
    choice_path,
    libraries,
    pick,
    time_engines,
)
from rtseg.engine.base import Engine, Features
from rtseg.engine.cache import ArtifactCache, weights_hash
from rtseg.engine.onnx_export import ensure_onnx
from rtseg.errors import BackendUnavailableError, ConfigError
from rtseg.hardware import signature
from rtseg.models import StagedSegmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (64, 48)
QUICK = {"runs": 3, "warmup": 1}
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None  # importing it here would send telemetry


@pytest.fixture(scope="module")
def model(make_model: Callable[..., StagedSegmenter]) -> StagedSegmenter:
    return make_model("espnet", SIZE)


@pytest.fixture(scope="module")
def exported(model: StagedSegmenter, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("auto-onnx")
    ensure_onnx(model, SIZE, ArtifactCache(directory))
    return directory


@pytest.fixture
def engine_dir(exported: Path, tmp_path: Path) -> Path:
    """A fresh engine cache per test (no stored choice), already holding the fp32 ONNX graphs."""
    return Path(shutil.copytree(exported, tmp_path / "engines"))


def _choice(model: StagedSegmenter, engine_dir: Path, precision: str = "fp32") -> Path:
    return choice_path(ArtifactCache(engine_dir), model, weights_hash(model), SIZE, precision, "cpu")


def _auto(model: StagedSegmenter, engine_dir: Path, **options: Any) -> Engine:
    return load(model, backend="auto", input_size=SIZE, engine_dir=engine_dir, **{**QUICK, **options})


def _expected_labels() -> set[str]:
    labels = {c.label for c in candidates("fp32", "cpu")}
    return labels if HAS_OPENVINO else labels - {"openvino"}


def test_measures_stores_the_choice_and_reuses_it(model: StagedSegmenter, engine_dir: Path) -> None:
    engine = _auto(model, engine_dir)
    path = _choice(model, engine_dir)
    assert path.name == f"auto-espnet-{weights_hash(model)}-64x48-fp32-cpu.json"
    record = json.loads(path.read_text())
    assert record["format"] == CHOICE_FORMAT and record["runs"] == 3 and record["warmup"] == 1
    assert set(record["median_ms"]) == _expected_labels()
    assert all(ms > 0 for ms in record["median_ms"].values())
    assert record["libraries"] == libraries() and record["libraries"]["torch"] == torch.__version__
    assert record["model"] == "espnet" and record["input_size"] == list(SIZE)
    best = Candidate(record["backend"], record["options"]).label
    assert record["median_ms"][best] == min(record["median_ms"].values())  # the fastest median
    assert engine.info.backend == record["backend"]
    assert engine.info.notes[-1].startswith(f"auto: picked {best} (")  # it says what it picked
    image = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    assert engine.run(image).shape == (1, SIZE[1], SIZE[0])

    stored = path.read_bytes()
    again = _auto(model, engine_dir)
    assert again.info.notes[-1] == f"auto: {best} (stored choice)"  # no measurement this time
    assert again.info.backend == record["backend"] and path.read_bytes() == stored
    if record["options"].get("channels_last"):
        assert "channels_last" in again.info.notes  # the stored options come back too


def test_other_library_versions_measure_again(model: StagedSegmenter, engine_dir: Path) -> None:
    _auto(model, engine_dir)
    path = _choice(model, engine_dir)
    record = json.loads(path.read_text())
    record["libraries"]["onnxruntime"] = "0.0.1"
    path.write_text(json.dumps(record))
    engine = _auto(model, engine_dir)
    assert engine.info.notes[-1].startswith("auto: picked ")
    assert json.loads(path.read_text())["libraries"] == libraries()


def test_a_corrupt_choice_file_is_measured_again(
    model: StagedSegmenter, engine_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _choice(model, engine_dir)
    path.write_text('{"format": "rtseg.auto-choice", "backend": ')
    with caplog.at_level(logging.WARNING, logger="rtseg.engine.auto"):
        engine = _auto(model, engine_dir)
    assert f"auto: cannot read {path.name} (Expecting value" in caplog.text  # said, not silent
    assert engine.info.notes[-1].startswith("auto: picked ")
    assert json.loads(path.read_text())["format"] == CHOICE_FORMAT


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda r: [r],  # valid JSON, not an object
        lambda r: {k: v for k, v in r.items() if k != "backend"},
        lambda r: {**r, "backend": "nosuch"},
        lambda r: {**r, "options": "channels_last"},
        lambda r: {**r, "backend": ["torch"]},  # unhashable: a TypeError from the lookup
        lambda r: {**r, "hardware": {"flags": 3, "cores": 4}},  # and from describing it
        lambda r: {**r, "hardware": {"flags": [1, 2], "cores": {"a": 1}, "cpu": None}},
    ],
    ids=[
        "list",
        "no-backend",
        "unknown-backend",
        "options-not-an-object",
        "backend-not-a-string",
        "hardware-fields-not-lists",
        "hardware-fields-wrong-items",
    ],
)
def test_a_choice_file_with_a_bad_record_is_measured_again(
    tmp_path: Path, corrupt: Callable[[dict], Any]
) -> None:
    path = tmp_path / "auto-choice.json"
    record = {"format": CHOICE_FORMAT, "libraries": libraries(), "hardware": signature("cpu")}
    path.write_text(json.dumps({**record, "backend": "torch", "options": {"channels_last": True}}))
    assert _read_choice(path, "cpu") == Candidate("torch", {"channels_last": True})
    path.write_text(json.dumps(corrupt({**record, "backend": "torch", "options": {}})))
    assert _read_choice(path, "cpu") is None  # not an AttributeError, KeyError or ConfigError


def test_a_file_of_another_format_is_named_when_measured_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "auto-choice.json"
    path.write_text(json.dumps({"format": "rtseg.auto-choice.v0", "backend": "torch"}))
    with caplog.at_level(logging.WARNING, logger="rtseg.engine.auto"):
        assert _read_choice(path, "cpu") is None
    assert (
        "auto-choice.json is not a stored choice of this rtseg (format 'rtseg.auto-choice.v0'" in caplog.text
    )
    caplog.clear()
    assert _read_choice(tmp_path / "absent.json", "cpu") is None and not caplog.text  # none yet: silent


def test_remeasure_ignores_the_stored_choice(model: StagedSegmenter, engine_dir: Path) -> None:
    _auto(model, engine_dir)
    engine = _auto(model, engine_dir, remeasure=True)
    assert engine.info.notes[-1].startswith("auto: picked ")


def test_a_missing_backend_is_skipped(
    model: StagedSegmenter, engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    engine = _auto(model, engine_dir)
    record = json.loads(_choice(model, engine_dir).read_text())
    assert "openvino" not in record["median_ms"] and len(record["median_ms"]) == 3
    assert "pip install openvino" in record["skipped"]["openvino"]
    assert "openvino" not in record["libraries"]
    assert engine.info.backend in ("torch", "onnxruntime")


def test_no_available_backend_is_one_clear_error(
    model: StagedSegmenter, engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(
        BackendUnavailableError, match=r"auto: no backend can run espnet at fp16 on cpu: openvino: "
    ):
        _auto(model, engine_dir, precision="fp16")
    assert not _choice(model, engine_dir, "fp16").exists()


def test_backend_options_reach_only_the_backends_that_take_them(
    model: StagedSegmenter, engine_dir: Path
) -> None:
    """`rtseg export --backend auto` passes exporter=...: torch must not receive it."""
    _auto(model, engine_dir, exporter="torchscript", threads=1, io_binding=False)
    path = _choice(model, engine_dir)
    record = json.loads(path.with_name(path.name.replace(".json", "-threads1.json")).read_text())
    assert set(record["median_ms"]) == _expected_labels() and record["skipped"] == {}
    again = _auto(model, engine_dir, exporter="torchscript", threads=1)  # the stored-choice path
    assert again.info.notes[-1].endswith("(stored choice)")
    with pytest.raises(ConfigError, match=r"auto: unknown backend options \['thread'\]"):
        _auto(model, engine_dir, thread=1)


def test_torch_is_not_timed_against_a_thread_count_it_cannot_take(
    model: StagedSegmenter, engine_dir: Path
) -> None:
    # threads=2 reached ONNX Runtime and OpenVINO only: torch ran on torch's own (process-wide)
    # count, and the choice was stored where a load with another thread count found it.
    assert torch.get_num_threads() == 1  # the module's fixture
    _auto(model, engine_dir, threads=2)
    path = choice_path(ArtifactCache(engine_dir), model, weights_hash(model), SIZE, "fp32", "cpu", 2)
    assert path.name.endswith("-fp32-cpu-threads2.json") and not _choice(model, engine_dir).exists()
    record = json.loads(path.read_text())
    torch_labels = {c.label for c in candidates("fp32", "cpu") if c.backend == "torch"}
    assert set(record["skipped"]) == torch_labels and set(record["median_ms"]).isdisjoint(torch_labels)
    assert all("not threads=2" in why for why in record["skipped"].values())
    _auto(model, engine_dir, threads=1)  # torch's own count: timed with the others, stored apart
    record = json.loads(
        _choice(model, engine_dir).with_name(path.name.replace("2.json", "1.json")).read_text()
    )
    assert torch_labels <= set(record["median_ms"]) and record["skipped"] == {}


class Recorded(Engine):
    """A real engine that logs each run into a shared list, optionally ``delay`` seconds slower."""

    def __init__(self, inner: Engine, name: str, log: list[str], delay: float = 0.0) -> None:
        self.inner, self.name, self.log, self.delay = inner, name, log, delay
        self.info, self.meta = inner.info, inner.meta
        self.stage_spec, self.head_low_inputs = inner.stage_spec, inner.head_low_inputs

    def run_low(self, image: Any) -> Features:
        self.log.append(self.name)
        if self.delay:
            time.sleep(self.delay)
        return self.inner.run_low(image)

    def run_deep(self, low: Features) -> Features:
        return self.inner.run_deep(low)

    def run_head(self, low: Features, deep: Features, *, logits: bool = False) -> Any:
        return self.inner.run_head(low, deep, logits=logits)


def test_time_engines_interleaves_after_warmup_and_the_fastest_median_wins(model: StagedSegmenter) -> None:
    reference = TorchEngine(model, input_size=SIZE)
    calls: list[str] = []
    engines = {
        "fast": Recorded(reference, "fast", calls),
        "slow": Recorded(reference, "slow", calls, delay=0.03),
    }
    times = time_engines(engines, runs=3, warmup=2)
    assert calls == ["fast", "fast", "slow", "slow", *["fast", "slow"] * 3]
    assert set(times) == {"fast", "slow"} and all(len(v) == 3 for v in times.values())
    assert min(times["slow"]) >= 30  # milliseconds
    best, medians = pick(times)
    assert best == "fast" and medians["fast"] < medians["slow"]
    with pytest.raises(ConfigError, match="runs must be positive"):
        time_engines(engines, runs=0, warmup=0)


def test_pick_uses_the_median_not_the_mean() -> None:
    best, medians = pick({"spiky": [1.0, 100.0, 2.0], "steady": [3.0, 3.0, 3.0]})
    assert best == "spiky" and medians == {"spiky": 2.0, "steady": 3.0}
    with pytest.raises(ConfigError):
        pick({})


def test_candidates_per_precision_and_device() -> None:
    cpu = [c.label for c in candidates("fp32", "cpu")]
    assert cpu == ["torch", "torch channels_last", "onnxruntime", "openvino"]
    assert [c.label for c in candidates("fp32", "cuda:0")] == ["torch", "tensorrt", "onnxruntime"]
    assert [c.label for c in candidates("int8", "cpu")] == ["onnxruntime", "openvino"]
    assert [c.label for c in candidates("int8", "cuda")] == ["tensorrt"]
    assert [c.label for c in candidates("fp16", "cpu")] == ["openvino"]
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        candidates("fp8", "cpu")


def test_a_choice_measured_on_other_hardware_is_measured_again(
    model: StagedSegmenter, engine_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _auto(model, engine_dir)
    path = _choice(model, engine_dir)
    record = json.loads(path.read_text())
    assert record["hardware"] == signature("cpu") and record["hardware"]["cores"][1] >= 1
    # The same checkout moved to a CPU that reports the same name but other vector units.
    record["hardware"]["flags"] = ["avx2", "fma"] if "avx512f" in record["hardware"]["flags"] else ["avx512f"]
    path.write_text(json.dumps(record))
    with caplog.at_level("INFO", logger="rtseg.engine.auto"):
        engine = _auto(model, engine_dir)
    assert engine.info.notes[-1].startswith("auto: picked ")
    assert "measured on other hardware" in caplog.text
    assert json.loads(path.read_text())["hardware"] == signature("cpu")
    # A choice written before the hardware was recorded is measured again too.
    record = json.loads(path.read_text())
    del record["hardware"]
    path.write_text(json.dumps(record))
    assert _auto(model, engine_dir).info.notes[-1].startswith("auto: picked ")


def test_an_unwritable_cache_still_returns_the_measured_engine(
    model: StagedSegmenter,
    engine_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A shared read-only cache (all artifacts valid) or a full disk: `rtseg run`'s default
    backend measured, then died with a PermissionError traceback writing the choice."""
    import errno

    from rtseg.engine import auto

    def refuse(path: Path, text: str) -> Path:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(auto, "atomic_write_text", refuse)
    with caplog.at_level("WARNING", logger="rtseg.engine.auto"):
        engine = _auto(model, engine_dir)
    assert engine.info.notes[-1].startswith("auto: picked ")
    assert engine.info.notes[-1].endswith("; not stored: Permission denied")
    assert "cannot store the choice" in caplog.text and "measures again" in caplog.text
    assert not _choice(model, engine_dir).exists()
    image = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    assert engine.run(image).shape == (1, SIZE[1], SIZE[0])


def test_a_choice_made_while_the_cache_was_full_is_not_stored(
    model: StagedSegmenter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the disk full, the ONNX candidates could not write their graphs and were skipped, the
    1 kB choice still fit, and torch stayed the stored choice after space was freed."""
    import errno

    from rtseg.engine import cache as cache_mod

    def full(path: Path, data: bytes) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    engine_dir = tmp_path / "engines"
    monkeypatch.setattr(cache_mod, "atomic_write_bytes", full)
    engine = _auto(model, engine_dir)
    assert engine.info.backend == "torch"
    assert engine.info.notes[-1].endswith("No space left on device, so not every candidate ran")
    assert not _choice(model, engine_dir).exists()
    monkeypatch.undo()
    assert _auto(model, engine_dir).info.notes[-1].startswith("auto: picked ")  # measured again
