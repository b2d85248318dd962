"""Engines that run the cached ONNX stage graphs: ONNX Runtime and OpenVINO, fp32 or int8."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..models.base import StagedSegmenter
from .base import Engine
from .cache import ArtifactCache, ArtifactKey
from .calibration import CalibrationList
from .onnx_export import OnnxStages, ensure_onnx


def int8_stages(
    net: StagedSegmenter,
    fp32: OnnxStages,
    cache: ArtifactCache,
    calibration: CalibrationList | None,
    *,
    flavour: str,
) -> OnnxStages:
    """The QDQ graphs for ``calibration``, or the single int8 build already cached for ``fp32``."""
    from .ort_backend import OrtEngine
    from .quantize import ensure_int8_onnx, find_int8_keys

    def reference() -> OrtEngine:
        return OrtEngine(
            fp32.files,
            meta=net.meta,
            stage_spec=net.stage_spec,
            head_low_inputs=fp32.head_low_inputs,
            input_size=fp32.key.input_size,
        )

    key: ArtifactKey | None = None
    if calibration is None:
        keys = find_int8_keys(fp32, cache, flavour)
        if not keys:
            w, h = fp32.key.input_size
            raise ConfigError(
                f"int8 needs calibration and {cache.directory} holds no int8 build of {net.meta.model} "
                f"with these weights at {w}x{h}: run `rtseg calibrate --model {net.meta.model} "
                f"--weights ... --images DIR --num 64 --size {w}x{h}` (it builds them there, and every "
                "command then finds them), or pass the list (`rtseg eval`/`rtseg export` --calibration "
                "LIST, calibration= in Python)"
            )
        if len(keys) > 1:
            raise ConfigError(
                f"{cache.directory} holds {len(keys)} int8 builds for these weights "
                f"({', '.join(k.variant for k in keys)}); pick one by passing its calibration list"
            )
        key = keys[0]
    return ensure_int8_onnx(
        net, fp32, cache, reference=reference, calibration=calibration, flavour=flavour, key=key
    )


def load_onnx_engine(
    net: StagedSegmenter,
    *,
    backend: str,
    size: tuple[int, int],
    precision: str,
    device: str,
    cache: ArtifactCache,
    calibration: CalibrationList | None = None,
    exporter: str = "auto",
    wh: str | None = None,
    **options: Any,
) -> Engine:
    if calibration is not None and precision != "int8":
        raise ConfigError(f"calibration applies to int8 engines, not {precision}")
    # Fail on a missing library or device before exporting anything.
    if backend == "onnxruntime":
        from .ort_backend import OrtEngine, providers_for

        providers_for(device, precision)
    else:
        from .openvino_backend import check_target, shared_core

        check_target(shared_core(), device, precision)
    stages = ensure_onnx(net, size, cache, exporter=exporter, wh=wh)
    if precision == "int8":
        stages = int8_stages(net, stages, cache, calibration, flavour="cpu")
    common = dict(
        meta=net.meta,
        stage_spec=net.stage_spec,
        head_low_inputs=stages.head_low_inputs,
        input_size=size,
        precision=precision,
        device=device,
    )
    notes = ()
    if precision == "int8":
        schemes = [
            f"{s}: {stages.sidecars[s].get('quantization', {}).get('scheme', '?')}" for s in stages.files
        ]
        notes = (f"int8 schemes ({', '.join(schemes)})",)
    if backend == "onnxruntime":
        provider_cache = cache.directory / "ort-trt" if device.startswith("cuda") else None
        return OrtEngine(stages.files, provider_cache=provider_cache, notes=notes, **common, **options)
    from .openvino_backend import OpenVinoEngine

    return OpenVinoEngine(stages.files, notes=notes, **common, **options)
