"""A network from a model name and/or a weights file, as ``rtseg``'s commands and ``Segmenter``
take them: neither is the shipped default, weights alone name their own architecture."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, ConfigError
from .base import StagedSegmenter
from .catalog import find_known
from .checkpoint import read_checkpoint, sha256_of, tensors_sha256
from .registry import DEFAULT_MODEL, DEFAULT_WEIGHTS, get_model, list_models


def model_name_for(weights: Path) -> str:
    """The architecture a checkpoint is for, read from its metadata or recognised by its file or
    tensor digest (a re-saved or DataParallel copy of an authors' release has another file hash)."""
    known = find_known(sha256_of(weights)) if weights.is_file() else None
    if known is not None:
        return known.model
    ckpt = read_checkpoint(weights)
    meta = ckpt.meta
    if meta is None:  # a plain state dict: perhaps a re-saved copy of a release (hashed only then)
        known = find_known(tensors_sha256(ckpt.state_dict))
        if known is not None:
            return known.model
        raise CheckpointError(
            f"{weights} is a plain state dict rtseg does not recognise: name its architecture with --model"
        )
    if meta.model not in list_models():
        raise CheckpointError(
            f"{weights} is for model {meta.model!r}, which this rtseg does not have "
            f"(it has {', '.join(list_models())}); was it written by another rtseg version?"
        )
    return meta.model


def check_model_args(model: str | None, weights: str | None) -> None:
    """Refuse --model without --weights for a model rtseg ships no weights for, in the command's
    terms (the Python API's own message names Segmenter(weights=...))."""
    if weights is None and model not in (None, DEFAULT_MODEL):
        raise ConfigError(
            f"--weights is required with --model {model}: rtseg ships trained weights only for "
            f"{DEFAULT_MODEL}; train some with `rtseg train --model {model}`"
        )


def load_model(model: str | None, weights: str | None) -> StagedSegmenter:
    """Resolve --model/--weights: neither -> the shipped default; weights alone -> its own model."""
    check_model_args(model, weights)
    if weights is None:
        if not DEFAULT_WEIGHTS.is_file():
            raise CheckpointError(f"the shipped default weights are missing: {DEFAULT_WEIGHTS}")
        return get_model(DEFAULT_MODEL, weights=DEFAULT_WEIGHTS)
    path = Path(weights)
    return get_model(model or model_name_for(path), weights=path)
