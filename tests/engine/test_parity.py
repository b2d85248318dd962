"""Acceptance 1: every stage of every model on every CPU backend matches the torch reference.

fp32 criteria (issue 3): max |logit error| <= 1e-3 of the logit range, label agreement >= 99.9 %.
Each stage is checked in isolation (fed the reference's own inputs), then the whole ``run``.
Random-init models have their BatchNorm statistics primed; ESPNet also runs with the real CamVid
weights. ESPNetv2's export goes through the slow dynamo exporter, so it is in the slow matrix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rtseg.engine import TorchEngine, load
from rtseg.models import get_model, list_models

SIZE = (256, 128)
BACKENDS = ("onnxruntime", "openvino")
SLOW_MODELS = {"espnetv2"}
FAST_MODELS = [m for m in list_models() if m not in SLOW_MODELS]


def _np(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def check_close(name: str, ref, out) -> None:
    ref, out = _np(ref), _np(out)
    assert ref.shape == out.shape, f"{name}: shape {out.shape} != reference {ref.shape}"
    if ref.dtype.kind in "iub":
        assert np.array_equal(ref, out), f"{name}: integer outputs differ"
        return
    span = float(ref.max() - ref.min()) or 1.0
    error = float(np.abs(out.astype(np.float64) - ref).max())
    assert error <= 1e-3 * span, f"{name}: max error {error:.3g} > 1e-3 x range {span:.3g}"


def check_labels(name: str, ref, out) -> None:
    ref, out = _np(ref), _np(out)
    assert out.dtype == np.uint8 and ref.shape == out.shape
    agreement = float(np.mean(ref == out))
    assert agreement >= 0.999, f"{name}: label agreement {100 * agreement:.3f} % < 99.9 %"


def check_all_stages(reference: TorchEngine, engine, image: np.ndarray) -> None:
    tag = f"{engine.info.model}/{engine.info.backend}"
    ref_low = reference.run_low(image)
    low = engine.run_low(image)
    assert set(low) == set(ref_low)
    for name in ref_low:
        check_close(f"{tag} low.{name}", ref_low[name], low[name])
    ref_deep = reference.run_deep(ref_low)
    deep = engine.run_deep(ref_low)
    for name in ref_deep:
        check_close(f"{tag} deep.{name}", ref_deep[name], deep[name])
    ref_labels, ref_logits = reference.run_head(ref_low, ref_deep, logits=True)
    labels, logits = engine.run_head(ref_low, ref_deep, logits=True)
    check_close(f"{tag} head logits", ref_logits, logits)
    check_labels(f"{tag} head labels", ref_labels, labels)
    check_labels(f"{tag} head labels (no logits)", ref_labels, engine.run_head(ref_low, ref_deep))
    full_labels, full_logits = engine.run(image, logits=True)
    check_close(f"{tag} run logits", ref_logits, full_logits)
    check_labels(f"{tag} run labels", ref_labels, full_labels)
    assert _np(engine.run(image)).shape == (1, *engine.output_size[::-1])


def _matrix(name: str, engine_dir: Path, make_model, make_image) -> None:
    model = make_model(name, SIZE)
    reference = TorchEngine(model, input_size=SIZE)
    image = make_image(SIZE)
    for backend in BACKENDS:
        engine = load(model, backend=backend, input_size=SIZE, engine_dir=engine_dir)
        check_all_stages(reference, engine, image)


@pytest.mark.parametrize("name", FAST_MODELS)
def test_every_stage_matches_torch(name: str, shared_engine_dir: Path, make_model, make_image) -> None:
    _matrix(name, shared_engine_dir, make_model, make_image)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_MODELS))
def test_every_stage_matches_torch_slow_export(
    name: str, shared_engine_dir: Path, make_model, make_image
) -> None:
    _matrix(name, shared_engine_dir, make_model, make_image)


@pytest.mark.data
@pytest.mark.parametrize("backend", BACKENDS)
def test_espnet_camvid_weights_on_real_frames(
    backend: str, espnet_camvid_weights: Path, camvid_root: Path, shared_engine_dir: Path
) -> None:
    import cv2

    model = get_model("espnet", weights=espnet_camvid_weights)
    size = (240, 184)  # half the training size, rounded to the model's multiple of 8
    reference = TorchEngine(model, input_size=size)
    engine = load(model, backend=backend, input_size=size, engine_dir=shared_engine_dir)
    for path in sorted((camvid_root / "test").glob("*.png"))[:3]:
        image = cv2.resize(cv2.imread(str(path)), size, interpolation=cv2.INTER_LINEAR)
        check_all_stages(reference, engine, image)
