"""The shipped default weights: small, self-describing, and as good as their metadata says."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtseg.data.labels import CAMVID
from rtseg.evaluate import evaluate, torch_logits_fn
from rtseg.models import DEFAULT_MODEL, DEFAULT_WEIGHTS, get_model, read_checkpoint


def test_metadata_schema() -> None:
    assert DEFAULT_WEIGHTS.stat().st_size < 3_000_000, "the package ships a few MB at most"
    meta = read_checkpoint(DEFAULT_WEIGHTS).meta
    assert meta is not None and meta.model == DEFAULT_MODEL
    assert meta.classes == CAMVID  # names and palette
    pre = meta.preprocessing
    assert pre.channel_order in ("BGR", "RGB") and len(pre.mean) == len(pre.std) == 3
    assert pre.input_size == (480, 360)
    provenance = meta.provenance
    assert provenance["source"] == "rtseg train"
    assert provenance["dataset"].startswith("camvid train")
    recipe = provenance["recipe"]
    for key in ("epochs", "batch", "lr", "optimizer", "scale_range", "class_weight_c", "size"):
        assert key in recipe, key
    if recipe.get("init"):  # what it was fine-tuned from, with that checkpoint's licence
        assert {"file", "source", "licence"} <= set(provenance["initialised_from"])
    test = meta.metrics["camvid/test"]
    assert test["by"].startswith("rtseg eval") and test["miou"] >= 50.0
    assert meta.metrics["camvid/val"]["miou"] >= test["miou"]


def test_the_shipped_file_carries_checksums_of_its_weights_and_metadata() -> None:
    import torch

    from rtseg.models.checkpoint import meta_sha256, tensors_sha256

    raw = torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)
    assert raw["tensors_sha256"] == tensors_sha256(raw["state_dict"])
    assert raw["meta_sha256"] == meta_sha256(raw["meta"])  # a corrupt mean or class list is caught


def test_default_is_what_the_cli_loads() -> None:
    from rtseg.models import load_model

    model = load_model(None, None)
    assert model.meta.classes == CAMVID and model.num_outputs == len(CAMVID)


@pytest.mark.slow
@pytest.mark.data
def test_recorded_test_miou_is_reproduced(camvid_root: Path) -> None:
    from rtseg.data.datasets import camvid

    model = get_model(DEFAULT_MODEL, weights=DEFAULT_WEIGHTS)
    meta = model.meta
    report = evaluate(
        torch_logits_fn(model, meta.preprocessing),
        camvid(camvid_root, "test"),
        classes=meta.classes,
        input_size=meta.preprocessing.input_size,
        progress=False,
    )
    assert 100 * report.scores.miou == pytest.approx(meta.metrics["camvid/test"]["miou"], abs=0.05)
