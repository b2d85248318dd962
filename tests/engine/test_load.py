"""``rtseg.engine.load``: what it refuses, and that the refusal says what would be accepted."""

from __future__ import annotations

import gc
import re
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rtseg.engine import load
from rtseg.errors import BackendUnavailableError, ConfigError, EngineClosedError, InputTypeError
from rtseg.models import get_model, save_checkpoint

SIZE = (64, 48)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backend": "tflite"}, r"unknown backend 'tflite'; choose one of auto, torch, onnxruntime"),
        ({"backend": "torch", "precision": "int8"}, r"torch backend cannot run precision 'int8'"),
        (
            {"backend": "torch", "threads": 2},
            r"torch backend has no option\(s\) threads; it takes channels_last",
        ),
        (
            {"backend": "onnxruntime", "channels_last": True},
            r"no option\(s\) channels_last; it takes threads",
        ),
        ({"backend": "torch", "input_size": (65, 48)}, r"input size divisible by 8, got 65x48"),
        ({"backend": "torch", "input_size": (0, 0)}, r"input_size must be \(width, height\) in whole pixels"),
        ({"backend": "torch", "input_size": (64.0, 48.0)}, r"positive, got \(64\.0, 48\.0\)"),
        ({"backend": "torch", "input_size": (True, 48)}, r"whole pixels, both positive, got \(True, 48\)"),
        ({"backend": "torch", "input_size": "64x48"}, r"whole pixels, both positive, got '64x48'"),
        ({"backend": "torch", "weights": "x.pt"}, r"weights= would be ignored: model is an already built"),
        ({"backend": "torch", "input_size": (100_000, 100_000)}, r"at most 8192 pixels a side"),
        ({"backend": "auto", "device": "cuda:x"}, r"device must be 'cpu', 'cuda', 'cuda:N'"),
        ({"backend": "torch", "device": "tpu"}, r"device must be 'cpu', 'cuda', 'cuda:N'"),
        ({"backend": "torch", "device": "gpu"}, r"torch backend device must be 'cpu' or 'cuda\[:N\]'"),
        ({"backend": "openvino", "threads": -1}, r"threads must be a positive whole number .* got -1"),
        ({"backend": "auto", "threads": 0}, r"threads must be a positive whole number .* got 0"),
        ({"backend": "onnxruntime", "threads": 1.5}, r"threads must be a positive whole number .* got 1\.5"),
    ],
)
def test_bad_requests_name_what_is_accepted(kwargs: dict, message: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    options = {"input_size": SIZE, "engine_dir": tmp_path, **kwargs}
    with pytest.raises(ConfigError, match=message):
        load(get_model("espnet"), **options)


def test_an_openvino_device_this_machine_lacks_is_refused_before_any_export(tmp_path) -> None:
    ov = pytest.importorskip("openvino")
    if "GPU" in ov.Core().available_devices:
        pytest.skip("this machine has an OpenVINO GPU device")
    with pytest.raises(
        BackendUnavailableError, match=r"openvino device GPU is not available on this machine"
    ):
        load(get_model("espnet"), backend="openvino", device="gpu", input_size=SIZE, engine_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"openvino device must be one of cpu, gpu .* got 'cuda'"):
        load(get_model("espnet"), backend="openvino", device="cuda", input_size=SIZE, engine_dir=tmp_path)
    assert not list(tmp_path.rglob("*.onnx"))  # nothing was exported for an engine that cannot run


def test_the_torch_backend_leaves_the_callers_network_as_it_was(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Module.to converts in place: auto's "torch channels_last" candidate turned the shared network
    channels_last, so the plain "torch" candidate was timed with channels_last weights (and on a
    GPU the network moved to CUDA before the other candidates exported it from CPU)."""
    import numpy as np

    model = get_model("espnet")
    weights = [p for p in model.parameters() if p.dim() == 4]
    engine = load(model, backend="torch", channels_last=True, input_size=SIZE, engine_dir=tmp_path)
    assert all(p.is_contiguous() for p in weights)
    assert all(a is b for a, b in zip(weights, (p for p in model.parameters() if p.dim() == 4), strict=True))
    image = np.random.default_rng(0).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    plain = load(model, backend="torch", input_size=SIZE, engine_dir=tmp_path)
    np.testing.assert_array_equal(engine.run(image), plain.run(image))


def test_a_torch_engine_is_a_snapshot_of_the_callers_network(tmp_path, make_model, make_image) -> None:  # type: ignore[no-untyped-def]
    """The torch engine ran the caller's module itself, switched to eval mode: a user who went on
    training it (net.train(), optimizer steps) got labels from batch statistics (12 % agreement
    with ESPNet's own), seg() moved the network's BatchNorm running statistics, and its training
    flags (some BatchNorm frozen) were lost. It runs a copy, as the exported backends do."""
    import torch

    model = make_model("espnet", SIZE).train()
    frozen = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][:3]
    for module in frozen:  # fine-tuning with some BatchNorm frozen
        module.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    image = make_image(SIZE)
    engine = load(model, backend="torch", input_size=SIZE, engine_dir=tmp_path)
    assert {name: m.training for name, m in model.named_modules()} == modes
    expected = engine.run(image)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    np.testing.assert_array_equal(engine.run(image), expected)  # the network in training mode
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # statistics kept
    with torch.no_grad():  # an optimizer step
        for p in model.parameters():
            p.mul_(-1)
    np.testing.assert_array_equal(engine.run(image), expected)
    assert {name: m.training for name, m in model.named_modules()} == modes


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_engines_run_as_usual_under_a_float64_default_dtype(
    backend: str, tmp_path, make_model, make_image, request
) -> None:  # type: ignore[no-untyped-def]
    """After torch.set_default_dtype(torch.float64) in the caller's process, rtseg.Segmenter()
    failed inside the ONNX export: get_model built float64 parameters for a float32 image."""
    model = make_model("espnet", SIZE)
    path = save_checkpoint(tmp_path / "espnet.pt", model.state_dict(), model.meta)
    image = make_image(SIZE)
    expected = load(
        get_model("espnet", weights=path), backend=backend, input_size=SIZE, engine_dir=tmp_path / "32"
    )
    request.getfixturevalue("float64_default")
    net = get_model("espnet", weights=path)
    engine = load(net, backend=backend, input_size=SIZE, engine_dir=tmp_path / "64")
    np.testing.assert_array_equal(engine.run(image), expected.run(image))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_a_frame_an_engine_cannot_take_is_an_rtseg_error(backend: str, shared_engine_dir) -> None:  # type: ignore[no-untyped-def]
    """engine.run() raised a builtin ValueError for a wrong size or dtype and an AttributeError
    ('list' object has no attribute 'shape') for a list: a loop catching RtsegError missed them."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    engine = load(get_model("espnet"), backend=backend, input_size=SIZE, engine_dir=shared_engine_dir)
    w, h = SIZE
    cases = [
        (np.zeros((h + 1, w, 3), np.uint8), ConfigError, "engine expects uint8 BGR images"),
        (np.zeros((h, w, 3), np.float32), ConfigError, "engine input must be uint8, got float32"),
        ([[0]], InputTypeError, "engine expects a uint8 BGR NumPy array (or torch tensor), got list"),
    ]
    for image, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            engine.run(image)
    engine.close()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_a_batch_is_run_by_torch_and_refused_as_an_rtseg_error_elsewhere(
    backend: str, shared_engine_dir
) -> None:  # type: ignore[no-untyped-def]
    """A 2xHxWx3 batch passed the documented NxHxWx3 check and then raised a builtin ValueError on
    onnxruntime and openvino (engines built for batch 1): a loop catching RtsegError missed it."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    engine = load(get_model("espnet"), backend=backend, input_size=SIZE, engine_dir=shared_engine_dir)
    assert engine.batch == (None if backend == "torch" else 1)
    w, h = SIZE
    batch = np.zeros((2, h, w, 3), np.uint8)
    if backend == "torch":
        assert engine.run(batch).shape == (2, h, w)
    else:
        message = (
            f"{backend} engines take a batch of 1 (one HxWx3 image per call; "
            "the torch backend takes N), got a batch of 2"
        )
        for call in (engine.run, engine.run_low):
            with pytest.raises(ConfigError, match=re.escape(message)):
                call(batch)
        assert engine.run(batch[:1]).shape == (1, h, w)
    engine.close()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_a_closed_engine_refuses_to_run_on_every_backend(backend: str, shared_engine_dir) -> None:  # type: ignore[no-untyped-def]
    """ONNX Runtime and OpenVINO gave a bare KeyError: 'low'; torch ran on. close() is final."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    engine = load(get_model("espnet"), backend=backend, input_size=SIZE, engine_dir=shared_engine_dir)
    image = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    low = engine.run_low(image)
    deep = engine.run_deep(low)
    engine.close()
    engine.close()  # twice is harmless
    assert engine.closed
    for call in (lambda: engine.run(image), lambda: engine.run_deep(low), lambda: engine.run_head(low, deep)):
        with pytest.raises(
            EngineClosedError, match=rf"this {backend} engine \(espnet\) is closed; load a new"
        ):
            call()


def test_an_unusable_input_size_from_the_weights_names_the_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No size was given: saying only "got 481x361" blamed the user for a size they never passed."""
    model = get_model("espnet", num_classes=11)
    meta = replace(model.meta, preprocessing=model.meta.preprocessing.with_input_size((481, 361)))
    path = save_checkpoint(tmp_path / "odd.pt", model.state_dict(), meta)
    with pytest.raises(
        ConfigError,
        match=rf"divisible by 8, but the weights {re.escape(str(path))} store input size 481x361 and no "
        r"input size was given; pass one \(--size WxH / input_size=\)",
    ):
        load("espnet", weights=path, backend="torch", engine_dir=tmp_path)
    assert (
        load("espnet", weights=path, backend="torch", input_size=SIZE, engine_dir=tmp_path).input_size == SIZE
    )


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_an_in_memory_network_with_subnormal_weights_runs_on_a_clean_copy(
    backend: str, shared_engine_dir, make_model, make_image, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    """Weights loaded from a file lose their subnormals in get_model; a network built in memory
    kept them, and with them the several-fold slowdown on x86."""
    import torch

    model = make_model("espnet", SIZE)
    weight = model.encoder.level2[0].c1.conv.weight
    with torch.no_grad():
        weight[:3] = torch.finfo(torch.float32).tiny / 16
    before = {k: v.clone() for k, v in model.state_dict().items()}
    image = make_image(SIZE)
    with torch.inference_mode():
        expected = load(model, backend="torch", input_size=SIZE).run(image)
    with caplog.at_level("INFO", logger="rtseg.engine"):
        engine = load(model, backend=backend, input_size=SIZE, engine_dir=shared_engine_dir)
    assert f"espnet: {3 * weight[0].numel()} subnormal weights set to 0 in the engine's copy" in caplog.text
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the caller's, untouched
    assert np.mean(engine.run(image) == np.asarray(expected)) >= 0.999
    if backend == "torch":
        engine_weight = engine._low.model.encoder.level2[0].c1.conv.weight
        assert not engine_weight[:3].any()


def test_a_closed_torch_engine_lets_its_copy_of_the_network_go(tmp_path: Path) -> None:
    # close() marked it closed and kept the copy (on CUDA, its memory) while the engine was held.
    engine = load(
        get_model("espnet"), backend="torch", input_size=SIZE, engine_dir=tmp_path, channels_last=True
    )
    copy = weakref.ref(engine._low.model)
    engine.close()
    gc.collect()
    assert copy() is None and engine.closed
