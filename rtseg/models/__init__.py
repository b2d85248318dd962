"""Segmentation networks split into low / deep / head stages, behind one flat registry."""

from .base import FeatureInfo, StagedSegmenter, StageSpec
from .checkpoint import WeightsMeta, read_checkpoint, save_checkpoint
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
    "get_model",
    "get_spec",
    "list_models",
    "read_checkpoint",
    "save_checkpoint",
]
