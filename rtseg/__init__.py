"""rtseg: real-time video semantic segmentation.

    seg = rtseg.Segmenter(scheduler="adaptive")
    with rtseg.open_source("camera://0") as frames:
        for frame in frames:
            result = seg(frame)

The public names load on first use, so ``import rtseg`` (and the CLI's start-up) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS = {
    "Segmenter": "rtseg.segmenter",
    "Pipeline": "rtseg.pipeline",
    "open_source": "rtseg.source",
    "open_sink": "rtseg.sink",
    "annotate": "rtseg.overlay",
    "SegResult": "rtseg.result",
    "Frame": "rtseg.source",
}

# Subpackages the README and error messages call through ``rtseg.`` (``rtseg.models.list_models()``,
# ``rtseg.engine.load(...)``): without this they raised AttributeError unless already imported.
_SUBPACKAGES = frozenset({"data", "engine", "models", "overlay", "schedule", "sink", "source", "stream"})

if TYPE_CHECKING:
    from .overlay import annotate
    from .pipeline import Pipeline
    from .result import SegResult
    from .segmenter import Segmenter
    from .sink import open_sink
    from .source import Frame, open_source


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rtseg' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBPACKAGES})


__all__ = [
    "Frame",
    "Pipeline",
    "SegResult",
    "Segmenter",
    "__version__",
    "annotate",
    "open_sink",
    "open_source",
]
