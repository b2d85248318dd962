from __future__ import annotations

import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rtseg import Segmenter
from rtseg.engine import load
from rtseg.errors import ConfigError, InputTypeError
from rtseg.models import get_model
from rtseg.schedule import Clockwork, make_scheduler
from rtseg.source import Frame, open_source


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return load(get_model("espnet"), input_size=(64, 48), backend="torch")


def test_resizes_any_frame_and_times_it(engine) -> None:
    seg = Segmenter(engine=engine)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    r = seg(image)
    assert r.labels.shape == (48, 64) and r.is_keyframe and r.deep_age == 0
    assert list(r.timings)[:2] == ["preprocess", "low"] and r.timings["preprocess"] > 0
    small = cv2.resize(image, (64, 48), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(r.labels, engine.run(small)[0])
    exact = seg(small)
    assert exact.timings["preprocess"] < 1.0  # already the input size: no resize


def test_frames_keep_their_index_and_scheduler_options(engine) -> None:
    seg = Segmenter(engine=engine, scheduler=Clockwork(2))
    image = np.zeros((48, 64, 3), np.uint8)
    results = [seg(Frame(image, i, 0.0, 0.0, "t")) for i in (10, 11, 13)]
    assert [r.frame_index for r in results] == [10, 11, 13]
    assert [r.is_keyframe for r in results] == [True, False, True]
    seg.use_scheduler("every")
    assert seg(image).is_keyframe and seg(image).is_keyframe
    seg.reset()
    assert "every" in repr(seg)


def test_a_frame_after_a_jump_in_its_stream_starts_the_schedule_afresh(engine) -> None:
    """A looped file's new pass or a reconnect: the cache is of another scene."""
    seg = Segmenter(engine=engine, scheduler=Clockwork(4))
    image = np.zeros((48, 64, 3), np.uint8)
    results = [seg(Frame(image, i, 0.0, 0.0, "t", discontinuity=i == 2)) for i in range(4)]
    assert [r.is_keyframe for r in results] == [True, False, True, False]
    assert [r.deep_age for r in results] == [0, 1, 0, 1]
    assert seg.scheduler.stats.frames == 4  # the same stream goes on: its statistics too
    seg.jump()  # the same for bare images, whose jumps the caller knows
    assert seg(image).is_keyframe and seg.scheduler.stats.frames == 5


@pytest.mark.parametrize("name", ["adaptive", "async"])
def test_a_jump_keeps_the_calibrated_threshold_and_the_statistics(engine, name: str) -> None:
    """Reset at every pass, a looped clip shorter than the calibration never calibrated (every
    frame scored up to nine flows) and the statistics counted the last pass only."""
    from rtseg.schedule import AsyncAdaptive
    from rtseg.schedule.policies import Adaptive

    kind = Adaptive if name == "adaptive" else AsyncAdaptive
    seg = Segmenter(engine=engine, scheduler=kind(target_keyframe_rate=0.5, calibration_frames=4, warp=None))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    frames = [Frame(images[i % 3], i, 0.0, 0.0, "t", discontinuity=i % 3 == 0 and i > 0) for i in range(9)]
    results = [seg(f) for f in frames]
    assert seg.scheduler.threshold is not None  # calibrated on frames 0-3, across the first jump
    assert all(results[i].is_keyframe and results[i].deep_age == 0 for i in (3, 6))
    assert seg.scheduler.stats.frames == 9


def test_deep_age_counts_results_not_source_frames(engine) -> None:
    """As the README says: a live source skips indices; deep_age steps back in results."""
    seg = Segmenter(engine=engine, scheduler=Clockwork(3))
    image = np.zeros((48, 64, 3), np.uint8)
    frames = [Frame(image, i, 100.0 + i / 30, i / 30, "t") for i in (0, 4, 9, 10, 17, 25)]
    results = [seg(f) for f in frames]
    assert [r.deep_age for r in results] == [0, 1, 2, 0, 1, 2]
    for n, r in enumerate(results):
        key = frames[n - r.deep_age]  # the frame segmented deep_age results earlier
        assert key.index == (0 if n < 3 else 10)
        assert frames[n].monotonic - key.monotonic == pytest.approx((r.frame_index - key.index) / 30)
    assert results[2].frame_index - results[2].deep_age == 7  # not the keyframe's index, 0


def test_bad_images_are_rejected(engine) -> None:
    seg = Segmenter(engine=engine)
    # RtsegErrors (a robot's loop catching RtsegError missed builtins ValueError/TypeError), still
    # a ValueError and a TypeError for code that caught those.
    with pytest.raises(ConfigError, match="HxWx3 uint8"):
        seg(np.zeros((48, 64), np.uint8))
    with pytest.raises(ConfigError, match="HxWx3 uint8"):
        seg(np.zeros((48, 64, 3), np.float32))
    with pytest.raises(ConfigError, match=r"non-empty image, got shape \(0, 64, 3\)"):
        seg(np.zeros((0, 64, 3), np.uint8))
    with pytest.raises(InputTypeError, match="NumPy array, got list"):
        seg([[[0, 0, 0]]])


def test_views_at_the_input_size_work(engine) -> None:
    """image[..., ::-1] (RGB <-> BGR) has negative strides, which torch cannot wrap without a copy."""
    seg = Segmenter(engine=engine, scheduler="every")
    rgb = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    assert np.array_equal(seg(rgb[..., ::-1]).labels, seg(np.ascontiguousarray(rgb[..., ::-1])).labels)


@pytest.mark.parametrize("scheduler", [Clockwork(3), "adaptive"], ids=["clockwork", "adaptive"])
def test_a_camera_buffer_refilled_in_place_is_segmented_as_each_new_frame(engine, scheduler) -> None:
    """A frame at the input size is used as given, without a copy: the flow and the change score
    must be this frame's, not those of the picture the same array held before."""
    with open_source("synthetic://drive?size=64x48&seed=2&frames=12") as source:
        frames = [f.image for f in source]
    frames[6:] = [255 - im for im in frames[6:]]  # a cut
    make = (lambda: make_scheduler("adaptive")) if scheduler == "adaptive" else (lambda: Clockwork(3))
    with Segmenter(engine=engine, scheduler=make()) as seg:
        fresh = [seg(im.copy()) for im in frames]
    buffer = np.empty_like(frames[0])
    refilled = []
    with Segmenter(engine=engine, scheduler=make()) as seg:
        for image in frames:
            np.copyto(buffer, image)
            refilled.append(seg(buffer))
    assert [r.change for r in refilled] == [r.change for r in fresh]
    assert [r.is_keyframe for r in refilled] == [r.is_keyframe for r in fresh]
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(refilled, fresh, strict=True))


def test_thread_safe_calls_share_one_schedule(engine) -> None:
    seg = Segmenter(engine=engine, scheduler="adaptive")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(4)]
    results, errors = [], []

    def worker(k: int) -> None:
        try:
            for i in range(5):
                results.append(seg(images[(k + i) % 4]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.frame_index for r in results) == list(range(20))  # serialised, none lost or doubled
    assert seg.scheduler.stats.frames == 20


def test_model_name_without_weights_is_explained() -> None:
    with pytest.raises(ConfigError, match=r"needs weights="):
        Segmenter("enet")


@pytest.mark.data
def test_real_checkpoint_from_weights_alone(espnet_camvid_weights: Path, camvid_root: Path) -> None:
    seg = Segmenter(weights=espnet_camvid_weights, backend="torch", scheduler="every")
    assert seg.input_size == (480, 360) and seg.classes.name == "camvid"
    image = cv2.imread(str(sorted((camvid_root / "val").glob("*.png"))[0]))
    r = seg(image)
    assert r.labels.shape == (360, 480)
    assert np.bincount(r.labels.ravel(), minlength=11)[3] > 0.2 * r.labels.size  # a road scene: lots of road


def test_calls_after_close_are_refused(engine) -> None:
    """A closed Segmenter says so, rather than a KeyError from an ONNX/OpenVINO engine's cleared
    sessions (or, on torch, silently running on)."""
    with Segmenter(engine=engine, scheduler="async") as seg:
        seg(np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ConfigError, match="Segmenter is closed"):
        seg(np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ConfigError, match="Segmenter is closed"):
        seg.use_scheduler("every")
    seg.close()  # idempotent


def test_close_from_a_signal_handler_during_a_call_ends_it(monkeypatch, outcome_in_thread) -> None:
    """A SIGTERM handler (a robot node's shutdown hook) that closes the Segmenter while this
    thread is inside seg(frame): close() waited for the lock the call held, and the process hung.
    The call finishes its frame, then the Segmenter is closed, its engine with it."""
    seg = Segmenter(get_model("espnet"), backend="torch", input_size=(64, 48))
    events: list[str] = []
    monkeypatch.setattr(seg.engine, "close", lambda: events.append("engine closed"))
    step = seg.scheduler.step

    def interrupted(*args, **kwargs):  # as if a signal arrived here and its handler closed seg
        seg.close()
        events.append("handler returned")
        result = step(*args, **kwargs)
        events.append("frame done")
        return result

    monkeypatch.setattr(seg.scheduler, "step", interrupted)
    outcome = outcome_in_thread(
        lambda: seg(np.zeros((48, 64, 3), np.uint8)), 10, "seg(frame) and close() deadlocked"
    )
    assert len(outcome) == 1 and outcome[0].labels.shape == (48, 64), outcome
    assert events == ["handler returned", "frame done", "engine closed"]
    with pytest.raises(ConfigError, match="Segmenter is closed"):
        seg(np.zeros((48, 64, 3), np.uint8))
    seg.close()  # idempotent
    assert events.count("engine closed") == 1


def test_close_leaves_a_shared_engine_open(engine, monkeypatch) -> None:
    closed: list[str] = []
    monkeypatch.setattr(engine, "close", lambda: closed.append("shared"))
    first, second = Segmenter(engine=engine), Segmenter(engine=engine)
    first.close()
    assert closed == [] and second(np.zeros((48, 64, 3), np.uint8)).labels.shape == (48, 64)
    own = Segmenter(get_model("espnet"), backend="torch", input_size=(64, 48))
    monkeypatch.setattr(own.engine, "close", lambda: closed.append("own"))
    own.close()
    assert closed == ["own"]  # the engine it loaded itself is closed with it


def test_engine_with_loading_options_is_refused(engine) -> None:
    """weights= (or model, backend, input_size) beside engine= would be silently ignored."""
    with pytest.raises(ConfigError, match=r"weights would be ignored"):
        Segmenter(engine=engine, weights="mine.pt")
    with pytest.raises(ConfigError, match=r"input_size, backend would be ignored"):
        Segmenter(engine=engine, input_size=(128, 96), backend="onnxruntime")
    with pytest.raises(InputTypeError, match=r"engine must be an rtseg Engine.*got str"):
        Segmenter(engine="torch")


def test_scheduler_must_be_a_name_or_a_scheduler(engine) -> None:
    with pytest.raises(InputTypeError, match=r"scheduler must be a name .* got int"):
        Segmenter(engine=engine, scheduler=4)
    seg = Segmenter(engine=engine, scheduler="clockwork")
    with pytest.raises(TypeError, match="scheduler must be a name"):
        seg.use_scheduler(Clockwork)  # the class, not an instance
    assert seg.scheduler.name == "clockwork"  # the old one is kept, still usable
    assert seg(np.zeros((48, 64, 3), np.uint8)).is_keyframe


def test_a_scheduler_that_cannot_run_on_the_engine_fails_at_construction(engine) -> None:
    bad = make_scheduler("adaptive", warp=False, change_feature="nope")
    with pytest.raises(ConfigError, match="change feature 'nope'"):
        Segmenter(engine=engine, scheduler=bad)
    seg = Segmenter(engine=engine, scheduler="clockwork")
    with pytest.raises(ConfigError, match="change feature 'nope'"):
        seg.use_scheduler(bad)
    assert seg.scheduler.name == "clockwork"  # the working one is kept


def test_a_bad_scheduler_fails_before_any_engine_is_loaded(monkeypatch) -> None:
    """The engine was loaded (and `auto` timed the backends, seconds) first, then left unclosed."""
    import rtseg.segmenter as segmenter_module

    def no_loading(*args, **kwargs):
        raise AssertionError("the engine was loaded before the scheduler was checked")

    monkeypatch.setattr(segmenter_module, "load_engine", no_loading)
    with pytest.raises(ConfigError, match="unknown scheduler 'adaptve'"):
        Segmenter(scheduler="adaptve")
    with pytest.raises(TypeError, match="scheduler must be a name"):
        Segmenter(scheduler=4)


def test_a_flow_stride_too_large_for_the_input_fails_before_the_engine_is_built(monkeypatch) -> None:
    """Refused by Scheduler.check after the build (seconds; `auto` also timed every backend)."""
    import rtseg.engine

    def no_build(*args, **kwargs):
        raise AssertionError("the engine was built before the scheduler's flow stride was checked")

    monkeypatch.setattr(rtseg.engine, "load", no_build)
    with pytest.raises(ConfigError, match=r"^flow_stride 8 leaves a 8x6 flow image at input 64x48"):
        Segmenter(input_size=(64, 48), scheduler=make_scheduler("clockwork", flow_stride=8))
    # without input_size: the size stored with the (shipped) weights
    with pytest.raises(ConfigError, match=r"^flow_stride 100 leaves a 4x3 flow image at input 480x360"):
        Segmenter(scheduler=make_scheduler("adaptive", flow_stride=100))


def test_scheduler_options_are_pointed_to_make_scheduler(engine, monkeypatch) -> None:
    """threshold= and the like reached the backend, which called them unknown backend options."""
    import rtseg.segmenter as segmenter_module
    from rtseg.schedule import SCHEDULER_OPTIONS

    def no_loading(*args, **kwargs):
        raise AssertionError("the engine was loaded before the options were checked")

    monkeypatch.setattr(segmenter_module, "load_engine", no_loading)
    assert {"interval", "threshold", "max_interval", "warp", "flow_stride", "change"} <= set(
        SCHEDULER_OPTIONS
    )
    with pytest.raises(
        ConfigError,
        match=r"^threshold: a scheduler option .* pass "
        r"scheduler=rtseg\.schedule\.make_scheduler\('adaptive', threshold=0\.1\)$",
    ):
        Segmenter(scheduler="adaptive", threshold=0.1)
    with pytest.raises(
        ConfigError,
        match=r"^interval, warp: scheduler options .*make_scheduler\('clockwork', interval=8, warp=False\)",
    ):
        Segmenter(scheduler="clockwork", interval=8, warp=False, threads=2)
    with pytest.raises(ConfigError, match=r"max_interval: a scheduler option"):
        Segmenter(engine=engine, scheduler=make_scheduler("adaptive"), max_interval=5)
    # The default scheduler's name in the call suggested, and why that call would fail too.
    with pytest.raises(
        ConfigError, match=r"make_scheduler\('every', threshold=0\.1\), which as it stands fails"
    ):
        Segmenter(threshold=0.1)


def test_weights_beside_a_built_network_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"weights= would be ignored: model is an already built network"):
        Segmenter(get_model("espnet"), weights="mine.pt", backend="torch")


def test_model_errors_speak_python() -> None:
    """A Python caller was told about "--weights" and "--model"; an unknown name got the same advice."""
    with pytest.raises(ConfigError, match=r"unknown model 'segformer'; available: enet"):
        Segmenter("segformer")
    with pytest.raises(ConfigError, match=r"Segmenter\('enet'\) needs weights=.*get_model\('enet'\)"):
        Segmenter("enet")
    with pytest.raises(InputTypeError, match=r"model must be a registry name .* got int"):
        Segmenter(3)


@pytest.mark.parametrize("size", [(64.0, 48), (True, 48), np.array([64.0, 48.0]), (64,), "64x48"])
def test_input_size_must_be_two_whole_numbers(size) -> None:
    with pytest.raises(ConfigError, match=r"input_size must be \(width, height\) in whole pixels"):
        Segmenter(get_model("espnet"), backend="torch", input_size=size)


def test_size_is_pointed_to_input_size() -> None:
    """size= (the CLI's --size) met load_backend's own size: a raw TypeError."""
    with pytest.raises(
        ConfigError, match=r"size=\(64, 48\) is not an engine option: the input size is input_size"
    ):
        Segmenter(get_model("espnet"), backend="torch", size=(64, 48))


def test_input_size_of_numpy_integers_is_accepted() -> None:
    seg = Segmenter(get_model("espnet"), backend="torch", input_size=(np.int64(64), np.int32(48)))
    assert seg.input_size == (64, 48) and seg(np.zeros((10, 10, 3), np.uint8)).labels.shape == (48, 64)


class _FailingClose(Clockwork):
    """A scheduler whose close raises, as AsyncAdaptive does with an uncollected worker failure."""

    def close(self) -> None:
        raise RuntimeError("the deep worker failed")


def test_close_closes_the_engine_even_when_the_scheduler_raises(monkeypatch) -> None:
    """Segmenter.close left its own engine open when the scheduler's close raised."""
    closed: list[str] = []
    own = Segmenter(get_model("espnet"), backend="torch", input_size=(64, 48), scheduler=_FailingClose(2))
    monkeypatch.setattr(own.engine, "close", lambda: closed.append("own"))
    with pytest.raises(RuntimeError, match="the deep worker failed"):
        own.close()
    assert closed == ["own"]
    with pytest.raises(ConfigError, match="Segmenter is closed"):
        own(np.zeros((48, 64, 3), np.uint8))


def test_use_scheduler_installs_the_new_one_when_the_old_close_raises(engine) -> None:
    seg = Segmenter(engine=engine, scheduler=_FailingClose(2))
    with pytest.raises(RuntimeError, match="the deep worker failed"):
        seg.use_scheduler("every")
    assert seg.scheduler.name == "every" and seg(np.zeros((48, 64, 3), np.uint8)).is_keyframe


def test_one_scheduler_cannot_serve_two_segmenters(engine) -> None:
    """A scheduler is one stream's state: given to two Segmenters (two cameras) it answered one
    camera's frames from the other's deep features, silently, and raced under threads."""
    shared = Clockwork(4)
    first = Segmenter(engine=engine, scheduler=shared)
    with pytest.raises(ConfigError, match="already serves another Segmenter"):
        Segmenter(engine=engine, scheduler=shared)
    other = Segmenter(engine=engine)
    with pytest.raises(ConfigError, match="already serves another Segmenter"):
        other.use_scheduler(shared)
    assert other.scheduler.name == "every"
    first.use_scheduler(shared)  # the same Segmenter may reinstall its own
    first.use_scheduler("every")  # replaced: free for another Segmenter
    second = Segmenter(engine=engine, scheduler=shared)
    second.close()  # closed: free again
    Segmenter(engine=engine, scheduler=shared).close()


def test_a_scheduler_handed_on_starts_a_new_stream(engine) -> None:
    """It kept the closed Segmenter's deep cache: the new one's first frame came back as a
    cached frame of age 3 (from another engine's features; with a warp and another input size,
    OpenCV's DIS failed on frames of two sizes)."""
    image = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    handed = make_scheduler("clockwork", interval=10, warp=False)
    first = Segmenter(engine=engine, scheduler=handed)
    assert [first(image).deep_age for _ in range(3)] == [0, 1, 2]
    first.close()
    second = Segmenter(engine=engine, scheduler=handed)
    result = second(image)
    assert result.is_keyframe and result.deep_age == 0 and result.frame_index == 0
    second.close()
    with pytest.raises(ConfigError, match="this Segmenter is closed"):
        second.reset()  # as every other call after close


def test_a_read_only_frame_is_segmented_without_a_warning(engine) -> None:
    image = np.random.default_rng(2).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    frozen = np.frombuffer(image.tobytes(), np.uint8).reshape(image.shape)
    assert not frozen.flags.writeable
    seg = Segmenter(engine=engine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warned that the array is not writable
        labels = seg(frozen).labels
    assert np.array_equal(labels, engine.run(image)[0])


FORK_CHECK = """
import multiprocessing, os, sys, time
import numpy as np, torch
import rtseg
from rtseg.errors import ConfigError
from rtseg.models import get_model

backend = sys.argv[1]
torch.manual_seed(0)
seg = rtseg.Segmenter(get_model("espnet"), backend=backend, input_size=(64, 48))
image = np.zeros((48, 64, 3), np.uint8)
expected = seg(image).labels


def refused(call):
    try:
        call()
    except ConfigError as e:
        return f"built in process {os.getppid()}" in str(e) and "'spawn'" in str(e)
    return False


def child():
    ok = refused(lambda: seg(image)) and refused(lambda: seg.engine.run(image))
    seg.close()
    seg.close()
    sys.exit(0 if ok else 3)


def waited(pid):
    for _ in range(600):
        if os.waitpid(pid, os.WNOHANG)[0]:
            return True
        time.sleep(0.1)
    os.kill(pid, 9)
    return False


process = multiprocessing.get_context("fork").Process(target=child)
process.start()
process.join(60)
if process.is_alive():
    process.kill()
    sys.exit("the forked child hung")
if process.exitcode != 0:
    sys.exit(f"the forked child: exit code {process.exitcode}")
if backend != "onnxruntime":  # any forked child that imported onnxruntime hangs at exit (upstream)
    pid = os.fork()
    if pid == 0:  # a child that goes through the interpreter's teardown, the parent's engine in it
        sys.exit(0)
    if not waited(pid):
        sys.exit("a forked child hung at exit")
assert np.array_equal(seg(image).labels, expected)  # the parent's Segmenter runs on
seg.close()
print("ok")
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork is POSIX")
@pytest.mark.parametrize("backend", ["onnxruntime", "torch", "openvino"])
def test_a_forked_child_is_refused_the_parents_segmenter_and_does_not_hang(
    backend: str, tmp_path: Path
) -> None:
    """Built before os.fork, a Segmenter hung the child: ONNX Runtime in close(), torch (GNU
    OpenMP) on the first frame, OpenVINO at the child's exit (the parent's Core destroyed). In
    another process it raises ConfigError saying so, and close() and exit leave the handles alone."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"needs {backend}")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env["RTSEG_ENGINE_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", FORK_CHECK, backend], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.stdout + done.stderr)[-2000:]


def test_the_shipped_segmenter_leaves_the_callers_torch_generator_alone() -> None:
    """rtseg.Segmenter() built its network with a random init before loading the shipped weights,
    moving the host's seeded torch generator (a robot's own sampling then drew other numbers)."""
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    Segmenter(backend="torch").close()
    assert torch.equal(torch.rand(4), expected)
