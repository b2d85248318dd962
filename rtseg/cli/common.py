"""Argument helpers shared by sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..models import DEFAULT_MODEL, DEFAULT_WEIGHTS, StagedSegmenter, get_model, list_models
from ..models.catalog import find_known
from ..models.checkpoint import read_checkpoint, sha256_of


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H); argparse shows the ValueError's message."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must look like 1024x512 (WIDTHxHEIGHT), got {text!r}"
        ) from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def positive_float(text: str) -> float:
    """An argparse type for seconds and rates, which must be finite and above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value:g}")
    return value


def positive_int(text: str) -> int:
    """An argparse type for counts that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        choices=list_models(),
        default=None,
        help=f"architecture (default: {DEFAULT_MODEL} with rtseg's shipped CamVid weights)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="checkpoint: rtseg's format or an upstream state dict rtseg recognises",
    )


def model_name_for(weights: Path) -> str:
    """The architecture a checkpoint is for, read from its metadata or its content hash."""
    known = find_known(sha256_of(weights)) if weights.is_file() else None
    if known is not None:
        return known.model
    meta = read_checkpoint(weights).meta
    if meta is None:
        raise CheckpointError(
            f"{weights} is a plain state dict rtseg does not recognise: name its architecture with --model"
        )
    return meta.model


def load_model(model: str | None, weights: str | None) -> StagedSegmenter:
    """Resolve --model/--weights: neither -> the shipped default; weights alone -> its own model."""
    if weights is None:
        if model not in (None, DEFAULT_MODEL):
            raise ConfigError(
                f"--weights is required with --model {model}: rtseg ships trained weights only for "
                f"{DEFAULT_MODEL}; train some with `rtseg train --model {model}`"
            )
        if not DEFAULT_WEIGHTS.is_file():
            raise CheckpointError(f"the shipped default weights are missing: {DEFAULT_WEIGHTS}")
        return get_model(DEFAULT_MODEL, weights=DEFAULT_WEIGHTS)
    path = Path(weights)
    return get_model(model or model_name_for(path), weights=path)
