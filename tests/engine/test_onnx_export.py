"""``export_graph``: the exporters' own output is captured, a fallback is one info line, and a
final failure quotes the end of what the exporters wrote."""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings

import pytest
import torch
from torch import nn

from rtseg.engine import onnx_export
from rtseg.engine.onnx_export import StageGraph, export_graph
from rtseg.errors import EngineBuildError


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def _graph() -> StageGraph:
    return StageGraph("deep", _Double().eval(), (torch.zeros(1, 3, 4, 4),), ("x",), ("y",))


def _noisy(tag: str) -> None:
    """Writes like the real exporters do: C++ to both descriptors, Python prints and logging."""
    os.write(1, f"{tag} Torch IR graph at exception: graph(...)\n".encode())
    os.write(2, f"{tag} C++ warning on stderr\n".encode())
    print(f"{tag} python stdout")
    print(f"{tag} python stderr", file=sys.stderr)
    logging.getLogger("onnxscript.version_converter").warning("%s version converter failed", tag)
    logging.getLogger("onnx_ir.passes.common").info("%s removed 630 unused nodes", tag)


def test_a_fallback_prints_nothing_but_one_info_line(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    real = onnx_export._export_torchscript

    def torchscript_fails(graph: StageGraph, opset: int):  # type: ignore[no-untyped-def]
        _noisy("ts")
        raise RuntimeError("Unsupported: ONNX export of operator adaptive_avg_pool2d")

    def dynamo_works(graph: StageGraph, opset: int):  # type: ignore[no-untyped-def]
        _noisy("dynamo")
        return real(graph, 18)  # as dynamo does when it cannot write the opset asked for

    monkeypatch.setattr(onnx_export, "_export_torchscript", torchscript_fails)
    monkeypatch.setattr(onnx_export, "_export_dynamo", dynamo_works)
    with caplog.at_level(logging.DEBUG):
        _, used = export_graph(_graph(), opset=17)
    assert used == "dynamo"
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    mine = [r for r in caplog.records if r.name == "rtseg.engine.onnx_export" and r.levelno >= logging.INFO]
    assert len(mine) == 1
    assert "torchscript: Unsupported" in mine[0].getMessage()
    assert "exported with dynamo instead (opset 18, 17 was asked for)" in mine[0].getMessage()
    assert not [r for r in caplog.records if r.name.startswith(("onnxscript", "onnx_ir"))]
    debug = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    for line in ("ts Torch IR graph", "ts C++ warning", "ts python stderr", "ts version converter failed"):
        assert line in debug  # kept for --verbose
    # the loggers are back as they were
    assert logging.getLogger("onnxscript").propagate and not logging.getLogger("onnxscript").handlers


def test_a_final_failure_quotes_the_end_of_what_the_exporters_wrote(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    def fails(graph: StageGraph, opset: int):  # type: ignore[no-untyped-def]
        _noisy("x")
        raise RuntimeError("nope")

    monkeypatch.setattr(onnx_export, "_export_torchscript", fails)
    monkeypatch.setattr(onnx_export, "_export_dynamo", fails)
    with pytest.raises(EngineBuildError) as info:
        export_graph(_graph())
    message = str(info.value)
    assert message.splitlines()[0] == "cannot export stage deep to ONNX: torchscript: nope; dynamo: nope"
    assert "lines the exporters wrote:" in message and "x version converter failed" in message
    assert capfd.readouterr() == ("", "")


def test_overlapping_exports_leave_the_process_streams_as_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two Segmenters built at once on a cold cache: two captures overlapped, each restored the
    other's temporary file as the original, and the process wrote its stdout and stderr into a
    deleted file for good (sys.stdout a StringIO, every warning ignored). The second export now
    waits for the first: the first ends while the second is inside, or waiting to get in."""
    real = onnx_export._export_torchscript
    first_in, second_here, first_out = threading.Event(), threading.Event(), threading.Event()
    lock = onnx_export._CAPTURE_LOCK

    class Announcing:  # says when the second export asks for the capture
        def __enter__(self) -> object:
            if threading.current_thread().name == "second":
                second_here.set()
            return lock.__enter__()

        def __exit__(self, *exc: object) -> None:
            lock.__exit__(*exc)

    def export(graph: StageGraph, opset: int):  # type: ignore[no-untyped-def]
        _noisy(threading.current_thread().name)
        if threading.current_thread().name == "first":
            first_in.set()
            assert second_here.wait(10)  # the second export is inside, or waiting to be
        else:
            second_here.set()
            assert first_out.wait(10)  # the first export ends while this one is (or was) in
        return real(graph, opset)

    def run(name: str, done: threading.Event | None) -> None:
        try:
            results[name] = export_graph(_graph(), exporter="torchscript")[1]
        finally:
            if done is not None:
                done.set()

    monkeypatch.setattr(onnx_export, "_CAPTURE_LOCK", Announcing())
    monkeypatch.setattr(onnx_export, "_export_torchscript", export)
    results: dict[str, str] = {}
    before = [os.fstat(fd) for fd in (1, 2)]
    copies = [os.dup(fd) for fd in (1, 2)]
    streams, filters = (sys.stdout, sys.stderr), list(warnings.filters)
    try:
        with warnings.catch_warnings():  # the filters come back whatever happens
            first = threading.Thread(target=run, args=("first", first_out), name="first")
            second = threading.Thread(target=run, args=("second", None), name="second")
            first.start()
            assert first_in.wait(10)
            second.start()
            first.join(10)
            second.join(10)
            assert results == {"first": "torchscript", "second": "torchscript"}
            after = [os.fstat(fd) for fd in (1, 2)]
            assert [(s.st_dev, s.st_ino) for s in after] == [(s.st_dev, s.st_ino) for s in before]
            assert (sys.stdout, sys.stderr) == streams
            assert warnings.filters == filters
            assert logging.getLogger("onnxscript").propagate and not logging.getLogger("onnxscript").handlers
    finally:  # a failure here must not leave pytest without its own streams
        for fd, copy in zip((1, 2), copies, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        sys.stdout, sys.stderr = streams


@pytest.mark.parametrize(("channels", "slices"), [(11, 0), (20, 1)])
def test_the_labels_slice_the_logits_only_to_cut_channels(channels: int, slices: int) -> None:
    """A slice of all channels is a copy of the full-resolution logits in the exported graph."""
    from rtseg.engine.graphs import labels_from

    class Labels(nn.Module):
        def forward(self, logits: torch.Tensor) -> torch.Tensor:
            return labels_from(logits, 11)

    logits = torch.randn(1, channels, 6, 8)
    proto, _ = export_graph(StageGraph("head", Labels().eval(), (logits,), ("logits",), ("labels",)))
    assert [n.op_type for n in proto.graph.node].count("Slice") == slices
    assert torch.equal(Labels()(logits), logits[:, :11].argmax(1).to(torch.uint8))


@pytest.mark.parametrize("training", [True, False])
def test_exporting_hands_the_network_back_in_its_own_mode(training: bool, tmp_path) -> None:
    """Built into an engine to validate on, a network being trained went on in eval mode (BatchNorm
    statistics frozen, dropout off)."""
    from rtseg.engine.cache import ArtifactCache
    from rtseg.engine.onnx_export import ensure_onnx
    from rtseg.models import get_model

    torch.manual_seed(0)
    net = get_model("espnet", num_classes=11).train(training)
    frozen = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)][:3]
    for module in frozen:  # fine-tuning with some BatchNorm frozen
        module.eval()
    before = {name: m.training for name, m in net.named_modules()}
    ensure_onnx(net, (64, 48), ArtifactCache(tmp_path))
    assert {name: m.training for name, m in net.named_modules()} == before


def test_a_network_comes_back_in_training_mode_from_every_engine(tmp_path, monkeypatch) -> None:
    """auto builds a torch candidate from the caller's network, which switched it to eval mode
    whichever backend was picked; the torch engine itself left it in eval mode."""
    from rtseg.engine import auto, load
    from rtseg.models import get_model

    def onnxruntime_wins(times):
        return "onnxruntime", {label: 1.0 for label in times}

    monkeypatch.setattr(
        auto, "candidates", lambda *_: [auto.Candidate("torch"), auto.Candidate("onnxruntime")]
    )
    monkeypatch.setattr(auto, "pick", onnxruntime_wins)
    torch.manual_seed(0)
    net = get_model("espnet", num_classes=11).train()
    frozen = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d)).eval()
    engine = load(net, backend="auto", input_size=(64, 48), engine_dir=tmp_path, threads=1)
    assert engine.info.backend == "onnxruntime" and net.training and not frozen.training
    engine.close()
    engine = load(net, backend="torch", input_size=(64, 48), engine_dir=tmp_path)
    assert net.training and not frozen.training  # the torch engine runs its own copy
    engine.close()


def test_a_network_that_is_not_float32_is_refused_naming_its_dtype(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The exporter failed with "Input type (torch.FloatTensor) and weight type
    (torch.DoubleTensor) should be the same"."""
    from rtseg.engine import load
    from rtseg.errors import ConfigError
    from rtseg.models import get_model

    with pytest.raises(
        ConfigError,
        match=r"espnet: the exported engines are built from a float32 network, but parameter "
        r"\S+ is torch\.float64; pass the network as net\.float\(\)",
    ):
        load(get_model("espnet").double(), backend="onnxruntime", input_size=(64, 48), engine_dir=tmp_path)
