"""Engine cache: names, sidecars, stale and corrupt artifacts, concurrent builders, default folder."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
import time
from pathlib import Path

import onnx
import pytest
import torch

from rtseg.engine import cache as cache_mod
from rtseg.engine import onnx_export
from rtseg.engine.cache import ArtifactCache, ArtifactKey, default_engine_dir, weights_hash
from rtseg.engine.onnx_export import STAGES, ensure_onnx, read_metadata
from rtseg.errors import ConfigError
from rtseg.models import get_model

SIZE = (64, 48)


def _model(name: str = "espnet", seed: int = 0):
    torch.manual_seed(seed)
    return get_model(name)


def _key(**kw) -> ArtifactKey:
    base = dict(
        model="espnet",
        weights="abc123",
        input_size=(480, 360),
        precision="fp32",
        backend="onnx",
        device="any",
        library="torch2.13.0+cpu",
    )
    return ArtifactKey(**{**base, **kw})


def test_stem_names_every_dependency() -> None:
    key = _key()
    assert key.stem == "espnet-abc123-480x360-fp32-onnx-any-torch2.13.0+cpu"
    int8 = _key(variant="1234abcdu", precision="int8")
    assert int8.stem == "espnet-abc123-480x360-int8_1234abcdu-onnx-any-torch2.13.0+cpu"
    stems = {
        _key(**change).stem
        for change in (
            {},
            {"weights": "ffff"},
            {"input_size": (240, 180)},
            {"precision": "fp16"},
            {"backend": "tensorrt"},
            {"device": "h100-sm90"},
            {"library": "torch2.14.0"},
            {"variant": "x"},
        )
    }
    assert len(stems) == 8


def test_key_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"ArtifactKey\.input_size"):
        _key(input_size=(0, 360))
    with pytest.raises(ValueError, match=r"ArtifactKey\.library"):
        _key(library="")


def test_weights_hash_follows_weights_and_metadata() -> None:
    a = _model("espnet-c")
    b = _model("espnet-c")
    assert weights_hash(a) == weights_hash(b)
    with torch.no_grad():
        next(b.parameters()).add_(1e-3)
    assert weights_hash(a) != weights_hash(b)


def test_default_dir_env_then_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RTSEG_ENGINE_DIR", str(tmp_path / "x"))
    assert default_engine_dir() == tmp_path / "x"
    monkeypatch.delenv("RTSEG_ENGINE_DIR")
    checkout = cache_mod._PACKAGE_DIR.parent / "engines"
    user = Path.home() / ".cache" / "rtseg" / "engines"
    assert default_engine_dir() == (checkout if (checkout / "README.md").is_file() else user)
    monkeypatch.setattr(cache_mod, "_PACKAGE_DIR", tmp_path / "site-packages" / "rtseg")
    assert default_engine_dir() == Path.home() / ".cache" / "rtseg" / "engines"


def test_no_home_directory_asks_for_the_engine_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A uid without a passwd entry and HOME unset (a container's --user): Path.home() raised a
    RuntimeError traceback from wherever the cache was first needed."""

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("RTSEG_ENGINE_DIR", raising=False)
    monkeypatch.setattr(cache_mod, "_PACKAGE_DIR", tmp_path / "site-packages" / "rtseg")  # not a checkout
    monkeypatch.setattr(Path, "home", no_home)
    asked = r"~/.cache/rtseg/engines: Could not determine .*; set RTSEG_ENGINE_DIR or pass --engine-dir$"
    with pytest.raises(ConfigError, match=asked):
        ArtifactCache()


def test_put_writes_sidecar_and_get_validates(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    key = _key()
    art = cache.put(key, "low", "bin", b"payload", {"classes": ["a"]})
    sidecar = json.loads(Path(str(art.path) + ".json").read_text())
    assert sidecar["key"] == key.to_dict() and sidecar["size"] == 7 and sidecar["classes"] == ["a"]
    assert "built_at" in sidecar and sidecar["rtseg_version"]
    assert cache.get(key, "low", "bin").path == art.path
    assert cache.get(_key(weights="other"), "low", "bin") is None
    assert not list(tmp_path.glob("*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    assert art.path.stat().st_mode & 0o777 == 0o666 & ~umask  # as any file this process makes


@pytest.mark.parametrize("text", ["[1, 2]", '"text"', "null", "7"])
def test_a_sidecar_that_is_not_a_json_object_is_corrupt(tmp_path: Path, text: str) -> None:
    cache = ArtifactCache(tmp_path)
    art = cache.put(_key(), "low", "bin", b"payload", {})
    cache.sidecar_path(art.path).write_text(text)
    assert cache.problem(_key(), art.path).startswith("corrupt: its sidecar holds a JSON")
    assert cache.get(_key(), "low", "bin") is None  # rebuilt, not an AttributeError


def test_unwritable_cache_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = ArtifactCache(blocker / "engines")  # a folder under a file cannot exist
    with pytest.raises(ConfigError, match=r"cannot write to the engine cache .*engines.*--engine-dir"):
        cache.put(_key(), "low", "bin", b"x", {})
    with pytest.raises(ConfigError, match="cannot write to the engine cache"), cache.lock(_key()):
        pass


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    model = _model()
    cache = ArtifactCache(tmp_path_factory.mktemp("cache"))
    return model, cache, ensure_onnx(model, SIZE, cache)


def test_onnx_artifacts_carry_metadata(exported) -> None:
    model, cache, stages = exported
    assert set(stages.files) == set(STAGES)
    for stage, path in stages.files.items():
        assert path.name.startswith(f"espnet-{weights_hash(model)}-64x48-fp32-onnx-any-torch")
        meta = read_metadata(path)
        assert meta["stage"] == stage and meta["classes"]["name"] == "cityscapes"
        assert meta["preprocessing"]["channel_order"] == "BGR"
        sidecar = stages.sidecars[stage]
        assert sidecar["io"] == meta["io"] and sidecar["build_seconds"] >= 0
    head_io = stages.sidecars["head"]["io"]
    assert [o["name"] for o in head_io["outputs"]] == ["labels", "logits"]
    assert head_io["outputs"][0] == {"name": "labels", "shape": [1, 48, 64], "dtype": "uint8"}
    image = {"name": "image", "shape": [1, 48, 64, 3], "dtype": "uint8"}
    assert stages.sidecars["low"]["io"]["inputs"] == [image]
    assert not list(cache.directory.glob("*.onnx.data"))  # weights inline


def test_truncated_onnx_is_rebuilt_with_a_log(exported, caplog: pytest.LogCaptureFixture) -> None:
    model, cache, stages = exported
    path = stages.files["deep"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="rtseg.engine.cache"):
        again = ensure_onnx(model, SIZE, cache)
    assert "corrupt" in caplog.text and path.name in caplog.text
    # said once: the lookup before the lock and the one under it both saw the file (it said it twice)
    assert sum("corrupt" in r.getMessage() for r in caplog.records) == 1
    assert again.files["deep"] == path and len(path.read_bytes()) == len(data)
    onnx.checker.check_model(onnx.load(str(path)))


def test_an_onnx_changed_in_place_is_caught_by_its_digest_and_rebuilt(exported, caplog) -> None:
    # A flipped byte (a bad sector, a stray write) keeps the size: only the SHA-256 tells.
    model, cache, stages = exported
    path = stages.files["head"]
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    assert path.stat().st_size == len(data)
    with caplog.at_level(logging.WARNING, logger="rtseg.engine.cache"):
        again = ensure_onnx(model, SIZE, cache)
    assert "SHA-256 differs" in caplog.text and path.name in caplog.text
    assert again.files["head"] == path and path.read_bytes() != bytes(flipped)
    assert cache_mod.file_sha256(path) == again.sidecars["head"]["sha256"]
    onnx.checker.check_model(onnx.load(str(path)))


def test_missing_sidecar_and_stale_version_rebuild(exported, caplog, monkeypatch) -> None:
    model, cache, stages = exported
    Path(str(stages.files["low"]) + ".json").unlink()
    monkeypatch.setattr(cache_mod, "__version__", "999.0")
    with caplog.at_level(logging.WARNING, logger="rtseg.engine.cache"):
        ensure_onnx(model, SIZE, cache)
    assert "sidecar" in caplog.text and "stale: built by rtseg" in caplog.text
    assert json.loads(Path(str(stages.files["head"]) + ".json").read_text())["rtseg_version"] == "999.0"


def test_graphs_exported_by_other_rtseg_code_are_rebuilt(exported, caplog, monkeypatch) -> None:
    """The version number stays 0.1.0 from commit to commit: a checkout updated in place must not
    keep running graphs its older export code made."""
    model, cache, stages = exported
    built = stages.files["head"].stat().st_mtime_ns
    monkeypatch.setattr(onnx_export, "export_code_digest", lambda model: "0123456789ab")
    with caplog.at_level(logging.WARNING, logger="rtseg.engine.cache"):
        again = ensure_onnx(model, SIZE, cache)
    assert "source: built" in caplog.text and "'0123456789ab'" in caplog.text
    assert again.files["head"] == stages.files["head"] and again.files["head"].stat().st_mtime_ns != built


def test_the_export_code_digest_covers_the_model_and_its_backbone_modules(monkeypatch) -> None:
    from rtseg.data import preprocess
    from rtseg.models import enet, resnet

    icnet = get_model("icnet-r18")
    digests = {name: onnx_export.export_code_digest(get_model(name)) for name in ("enet", "espnet")}
    assert len(set(digests.values())) == 2 and digests["espnet"] == onnx_export.export_code_digest(_model())
    before = onnx_export.export_code_digest(icnet)
    real = Path.read_bytes
    # A backbone's file changes the digest, and so does the in-graph normalisation's (an edit to it
    # kept running stale graphs, off by half the logit range); an unused model's file does not.
    for module in (resnet, preprocess, enet):
        changed = Path(module.__file__).resolve()
        monkeypatch.setattr(Path, "read_bytes", lambda p, c=changed: real(p) + (b"#" if p == c else b""))
        assert (onnx_export.export_code_digest(icnet) != before) == (module is not enet), module


@pytest.mark.parametrize("io", [None, {"inputs": "image"}, {"inputs": [{"shape": [1]}]}])
def test_a_sidecar_without_a_valid_io_list_is_rebuilt(tmp_path: Path, caplog, io) -> None:
    """A sidecar edited by hand (its graph's hash still right) raised KeyError: 'io' at load."""
    model, cache = _model(), ArtifactCache(tmp_path)
    stages = ensure_onnx(model, SIZE, cache)
    sidecar_path = Path(str(stages.files["head"]) + ".json")
    sidecar = json.loads(sidecar_path.read_text())
    good = sidecar["io"]
    if io is None:
        del sidecar["io"]
    else:
        sidecar["io"] = io
    sidecar_path.write_text(json.dumps(sidecar))
    with caplog.at_level(logging.WARNING, logger="rtseg.engine.cache"):
        again = ensure_onnx(model, SIZE, cache)
    assert "no valid io.inputs list" in caplog.text
    assert again.sidecars["head"]["io"] == good and again.head_low_inputs == stages.head_low_inputs


def test_other_weights_get_other_artifacts(exported) -> None:
    _, cache, stages = exported
    other = _model()
    with torch.no_grad():
        next(other.parameters()).mul_(0.5)
    fresh = ensure_onnx(other, SIZE, cache)
    assert fresh.files["low"] != stages.files["low"] and fresh.files["low"].is_file()
    assert stages.files["low"].is_file()


def _build(directory: str, results) -> None:
    torch.set_num_threads(1)
    model = _model()
    stages = ensure_onnx(model, SIZE, ArtifactCache(directory))
    results.put({s: str(p) for s, p in stages.files.items()})


def test_concurrent_builders_both_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_build, args=(str(tmp_path), results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    first, second = results.get(timeout=5), results.get(timeout=5)
    assert first == second
    cache = ArtifactCache(tmp_path)
    key = ensure_onnx(_model(), SIZE, cache).key
    for stage in STAGES:
        path = Path(first[stage])
        assert cache.problem(key, path) is None
        onnx.checker.check_model(onnx.load(str(path)))
    assert not list(tmp_path.glob("*.tmp"))


def test_an_exporter_asked_for_by_name_is_the_one_that_made_the_files(tmp_path: Path, caplog) -> None:
    """The exporter is not in the artifact name: `--exporter torchscript` after a dynamo export
    silently returned the dynamo graphs (and the other way round). The sidecar is relabelled
    instead of running the dynamo exporter, which takes seconds even for a tiny head."""
    model, cache, head = _model("espnet-c"), ArtifactCache(tmp_path), ("head",)
    path = ensure_onnx(model, SIZE, cache, stages=head, exporter="torchscript").files["head"]
    sidecar = cache.sidecar_path(path)
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "exporter": "dynamo"}))
    assert ensure_onnx(model, SIZE, cache, stages=head).sidecars["head"]["exporter"] == "dynamo"  # auto: any
    with caplog.at_level(logging.WARNING, logger="rtseg.engine.cache"):
        again = ensure_onnx(model, SIZE, cache, stages=head, exporter="torchscript")
    assert again.sidecars["head"]["exporter"] == "torchscript"
    assert "exported by 'dynamo', and exporter 'torchscript' was asked for" in caplog.text


def test_an_unreadable_artifact_is_corrupt_and_rebuilt(tmp_path: Path, monkeypatch, caplog) -> None:
    cache = ArtifactCache(tmp_path)
    art = cache.put(_key(), "low", "bin", b"payload", {})

    def failing_read(path: Path) -> str:
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(cache_mod, "file_sha256", failing_read)
    assert cache.problem(_key(), art.path) == "corrupt: unreadable (Input/output error)"
    with caplog.at_level(logging.WARNING):
        assert cache.get(_key(), "low", "bin") is None  # rebuilt, not a bare OSError out of the load
    assert "unreadable" in caplog.text and art.path.name in caplog.text


def test_a_held_lock_is_reported_once_then_waited_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The wait was silent: an export behind another process's build looked like a hang."""
    fcntl = pytest.importorskip("fcntl")
    cache, key = ArtifactCache(tmp_path), _key()
    lock_path = tmp_path / f".{key.stem}.lock"
    done = threading.Event()

    def build(todo: tuple[str, ...]) -> dict[str, tuple[bytes, dict]]:
        return {s: (b"x", {}) for s in todo}

    with open(lock_path, "a+b") as held, caplog.at_level(logging.INFO, logger="rtseg.engine.cache"):
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another open file: this process's flock blocks too
        worker = threading.Thread(
            target=lambda: (cache.get_or_build(key, ("low",), "onnx", build), done.set())
        )
        worker.start()
        deadline = time.monotonic() + 10
        while (
            not [r for r in caplog.records if "waiting for" in r.getMessage()] and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        assert not done.is_set()  # still waiting for the lock
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
        worker.join(10)
    assert done.is_set()
    waits = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert waits == [f"waiting for another process building {key.stem} (lock {lock_path})"]


def test_a_free_lock_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), cache_mod.file_lock(tmp_path / ".x.lock", waiting_for="x"):
        pass
    assert not [r for r in caplog.records if "waiting for" in r.getMessage()]
