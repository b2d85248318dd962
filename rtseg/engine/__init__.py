"""One inference interface over several backends: ``load(...)`` returns an ``Engine``.

Backends: ``torch`` (the reference), ``onnxruntime``, ``openvino``, ``tensorrt``, ``torch2trt``
and ``auto``, which times the available ones once for this model, weights, size, precision and
device, stores the choice in the engine cache and loads the winner directly afterwards.
Engines built from ONNX read per-stage artifacts from the engine cache (see ``cache``).
What each backend runs and takes, and its loader, is one entry of ``backends.BACKEND_SPECS``.
"""

from __future__ import annotations

import functools
import logging
import numbers
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError, EngineClosedError
from ..models import StagedSegmenter, get_model
from ..models.base import module_modes, restore_modes
from ..models.checkpoint import SUBNORMAL_REASON, without_subnormal_weights
from .backends import BACKEND_SPECS, BACKENDS, PRECISIONS, default_device
from .base import Engine, EngineInfo
from .cache import ArtifactCache, default_engine_dir, weights_hash
from .calibration import CalibrationList
from .torch_backend import TorchEngine

log = logging.getLogger(__name__)


def check_precision(backend: str, precision: str) -> None:
    allowed = PRECISIONS[backend]
    if precision not in allowed:
        raise ConfigError(
            f"the {backend} backend cannot run precision {precision!r}; it supports {', '.join(allowed)}"
        )


def _calibration(value: str | os.PathLike[str] | CalibrationList | None) -> CalibrationList | None:
    if value is None or isinstance(value, CalibrationList):
        return value
    return CalibrationList.load(Path(value))


def check_input_size(size: object) -> tuple[int, int] | None:
    """(w, h) as two ints: a float or NumPy array here failed deep inside an engine build."""
    if size is None:
        return None
    try:
        w, h = size  # type: ignore[misc]
    except (TypeError, ValueError):
        w = h = None
    if isinstance(size, str) or not all(
        isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in (w, h)
    ):
        raise ConfigError(f"input_size must be (width, height) in whole pixels, both positive, got {size!r}")
    return int(w), int(h)  # type: ignore[arg-type]


def load(
    model: str | StagedSegmenter,
    *,
    weights: str | os.PathLike[str] | None = None,
    backend: str = "auto",
    precision: str = "fp32",
    input_size: tuple[int, int] | None = None,
    device: str | None = None,
    engine_dir: str | os.PathLike[str] | None = None,
    calibration: str | os.PathLike[str] | CalibrationList | None = None,
    **options: Any,
) -> Engine:
    """Build (or fetch from the engine cache) an engine for ``model`` with ``weights``.

    ``model`` is a registry name or an already-built network (its ``.meta`` says what it is).
    ``input_size`` (w, h) defaults to the size the weights were trained at. ``device`` defaults to
    'cuda' for tensorrt and torch2trt (they run nowhere else), otherwise 'cpu'. ``engine_dir``
    defaults to $RTSEG_ENGINE_DIR, the checkout's engines/ or ~/.cache/rtseg/engines.
    ``calibration`` (int8 only) is a list written by ``rtseg calibrate``; without it, the one
    int8 build already in the cache for this model, weights and size is used. Other keyword
    options go to the backend (torch: channels_last, compile; onnxruntime: threads,
    io_binding; openvino: threads; tensorrt: workspace_gb, int8_mode; torch2trt: workspace_gb;
    onnx backends: exporter).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if "size" in options:  # the CLI's word; passed on, it met load_backend's own size (a TypeError)
        raise ConfigError(
            f"size={options['size']!r} is not an engine option: the input size is input_size=(W, H)"
        )
    if device is None:
        device = default_device(backend)
    check_device(device)
    threads = options.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0):
        # OpenVINO fails on these inside compile_model with an untyped RuntimeError, which also
        # stopped auto from timing the backends that could run.
        raise ConfigError(
            "threads must be a positive whole number (None: the physical cores this process may "
            f"use), got {threads!r}"
        )
    if isinstance(model, StagedSegmenter) and weights is not None:
        raise ConfigError(
            "weights= would be ignored: model is an already built network; pass the registry name "
            "with weights=, or load them with rtseg.models.get_model(name, weights=...)"
        )
    size = check_input_size(input_size)
    if isinstance(model, StagedSegmenter):
        net, subnormal = without_subnormal_weights(model)
        if subnormal:
            log.info(
                "%s: %d subnormal weights set to 0 in the engine's copy of the network (%s)",
                model.meta.model,
                subnormal,
                SUBNORMAL_REASON,
            )
    else:
        net = get_model(model, weights=weights)
    from_weights = size is None
    size = size or tuple(net.meta.preprocessing.input_size)
    if max(size) > MAX_INPUT_SIDE:
        raise ConfigError(
            f"input_size {size[0]}x{size[1]} is larger than rtseg builds engines for (at most "
            f"{MAX_INPUT_SIDE} pixels a side); the models run at 480x360 to 2048x1024"
        )
    spec = net.stage_spec
    if size[0] % spec.input_multiple or size[1] % spec.input_multiple:
        got = f"got {size[0]}x{size[1]}"
        if from_weights:  # the user gave no size: say where this one came from
            source = f"the weights {net.weights_path}" if net.weights_path else "the model's metadata"
            got = (
                f"but {source} store input size {size[0]}x{size[1]} and no input size was given; "
                "pass one (--size WxH / input_size=)"
            )
        raise ConfigError(f"{net.meta.model} needs an input size divisible by {spec.input_multiple}, {got}")
    cache = ArtifactCache(engine_dir)
    calib = _calibration(calibration)
    modes = module_modes(net)
    if backend == "auto":
        from .auto import load_auto

        build: Callable[..., Engine] = load_auto
    else:
        build = functools.partial(load_backend, backend=backend)
    engine = build(
        net, size=size, precision=precision, device=device, cache=cache, calibration=calib, **options
    )
    # Every engine runs its own copy or export of the network; building one put a network being
    # trained in eval mode (BatchNorm statistics frozen, dropout off).
    restore_modes(modes)
    return engine


# Which backend runs where is each backend's business; this only catches what no backend takes.
DEVICE_PATTERN = re.compile(r"cpu|gpu|cuda(:\d+)?")


# 8K-wide frames are the largest a camera delivers; past this the engine's buffers alone need tens of GB.
MAX_INPUT_SIDE = 8192


def check_device(device: str) -> None:
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or (openvino, an Intel GPU) 'gpu', got {device!r}"
        )


def load_backend(
    net: StagedSegmenter,
    *,
    backend: str,
    size: tuple[int, int],
    precision: str,
    device: str,
    cache: ArtifactCache,
    calibration: CalibrationList | None = None,
    wh: str | None = None,
    **options: Any,
) -> Engine:
    """``load`` for one named backend and an already-built network."""
    spec = BACKEND_SPECS.get(backend)
    if spec is None:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_SPECS)}")
    check_precision(backend, precision)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ConfigError(
            f"the {backend} backend has no option(s) {', '.join(unknown)}; "
            f"it takes {', '.join(spec.options) or 'none'}"
        )
    return spec.loader(
        net,
        size=size,
        precision=precision,
        device=device,
        cache=cache,
        calibration=calibration,
        wh=wh,
        **options,
    )


def with_note(engine: Engine, note: str) -> Engine:
    """Append a note to ``engine.info`` (EngineInfo is frozen)."""
    engine.info = replace(engine.info, notes=(*engine.info.notes, note))
    return engine


__all__ = [
    "BACKENDS",
    "BACKEND_SPECS",
    "PRECISIONS",
    "ArtifactCache",
    "CalibrationList",
    "Engine",
    "EngineClosedError",
    "EngineInfo",
    "TorchEngine",
    "check_input_size",
    "default_device",
    "default_engine_dir",
    "load",
    "load_backend",
    "weights_hash",
]
