"""Frame sources: files, image folders, cameras, network streams and a synthetic scene, by URI."""

from .base import Source, SourceInfo, SourceOptions, SourceStats, redacted
from .frame import Frame
from .live import Capture, CaptureFactory
from .uri import SCHEMES, SUPPORTED, open_source

__all__ = [
    "SCHEMES",
    "SUPPORTED",
    "Capture",
    "CaptureFactory",
    "Frame",
    "Source",
    "SourceInfo",
    "SourceOptions",
    "SourceStats",
    "open_source",
    "redacted",
]
