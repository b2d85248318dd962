"""Segmentation networks split into low / deep / head stages, behind one flat registry."""

from .base import FeatureInfo, StagedSegmenter, StageSpec
from .checkpoint import WeightsMeta, read_checkpoint, save_checkpoint
from .loading import check_model_args, load_model, model_name_for
from .registry import (
    DEFAULT_MODEL,
    DEFAULT_WEIGHTS,
    ModelSpec,
    PublishedResult,
    get_model,
    get_spec,
    list_models,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_WEIGHTS",
    "FeatureInfo",
    "ModelSpec",
    "PublishedResult",
    "StageSpec",
    "StagedSegmenter",
    "WeightsMeta",
    "check_model_args",
    "get_model",
    "get_spec",
    "list_models",
    "load_model",
    "model_name_for",
    "read_checkpoint",
    "save_checkpoint",
]
