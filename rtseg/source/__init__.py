"""Frame sources: files, image folders, cameras, network streams and a synthetic scene, by URI."""

from .base import Source, SourceInfo, SourceOptions, SourceStats, redacted
from .frame import Frame
from .live import Capture, CaptureFactory
from .uri import SCHEMES, SUPPORTED, is_live_uri, open_source

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
    "is_live_uri",
    "open_source",
    "redacted",
]
