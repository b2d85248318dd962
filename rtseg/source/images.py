"""Still images as a sequence: a folder, a glob pattern, or one file (a one-frame sequence)."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import SourceError
from ..image_file import UnreadableImage, read_bgr
from .base import MediaSource, SourceInfo, SourceOptions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
NOMINAL_FPS = 30.0  # images have no frame rate; used for realtime pacing unless rate= is given


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def frame_order(path: Path) -> list[str | int]:
    """Name order with numbers by value: frame_2 before frame_10, as a sequence is meant to play
    (zero-padded names sort the same either way)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def is_glob(text: str) -> bool:
    """A pattern, unless a file or folder of that very name exists ('clip [1080p].mp4')."""
    return any(c in text for c in "*?[") and not Path(text).expanduser().exists()


def list_images(spec: str) -> list[Path]:
    """Sorted image files for a folder, a glob pattern or a single image path; '~' is the home
    folder, as in a plain path (glob.glob and Path leave it alone)."""
    if not spec:  # Path("") is the working folder: its images were read without a word
        raise SourceError("empty image path: give a folder, a glob pattern or an image file")
    spec = os.path.expanduser(spec)
    if is_glob(spec):
        files = sorted(
            (Path(p) for p in glob.glob(spec) if is_image_path(p) and Path(p).is_file()), key=frame_order
        )
        if not files:
            raise SourceError(f"no image files match {spec!r} (suffixes: {', '.join(IMAGE_SUFFIXES)})")
        return files
    path = Path(spec)
    if path.is_dir():
        # Hidden files are left out, as a glob leaves them: a folder copied from a Mac holds a
        # "._frame.png" beside each frame, and it is no image.
        files = sorted(
            (p for p in path.iterdir() if p.is_file() and is_image_path(p) and not p.name.startswith(".")),
            key=frame_order,
        )
        if not files:
            raise SourceError(f"no image files in folder {path} (suffixes: {', '.join(IMAGE_SUFFIXES)})")
        return files
    if path.is_file():
        if not is_image_path(path):
            raise SourceError(f"{path} is not an image file (suffixes: {', '.join(IMAGE_SUFFIXES)})")
        return [path]
    raise SourceError(f"image folder or file not found: {path}")


class ImageSource(MediaSource):
    def __init__(self, uri: str, spec: str, options: SourceOptions) -> None:
        self._files = list_images(spec)
        super().__init__(uri, options, fps=options.rate or NOMINAL_FPS)
        self._position = 0
        first = self._load(self._files[0])
        self._single = first if len(self._files) == 1 else None  # decoded once, copied per frame
        self.info = SourceInfo(
            uri=uri,
            kind="images",
            live=options.realtime,
            fps=None,
            size=self._output_size((first.shape[1], first.shape[0])),
            frame_count=len(self._files),
        )

    @property
    def files(self) -> Sequence[Path]:
        return self._files

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        try:
            return read_bgr(path)
        except FileNotFoundError:  # listed when the source opened
            raise SourceError(f"image file not found: {path} (removed during the run)") from None
        except UnreadableImage as error:
            raise SourceError(f"cannot read image {path}: {error}") from None

    def _read(self) -> np.ndarray | None:
        if self._position >= len(self._files):
            return None
        self._position += 1
        if self._single is not None:
            return self._single.copy()  # consumers own their frames
        return self._load(self._files[self._position - 1])

    def _skip(self) -> bool:
        if self._position >= len(self._files):
            return False
        self._position += 1
        return True

    def _rewind(self) -> bool:
        self._position = 0
        return True
