"""Video files through OpenCV (FFmpeg): every frame in order, optionally looped or paced."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import SourceError
from .base import MediaSource, SourceInfo, SourceOptions

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0  # when a container does not say


def _open(path: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise SourceError(
            f"cannot open {path} as a video: OpenCV's FFmpeg cannot read it. It may not be a video, or "
            "it is truncated (an .mp4 cut off before its index, the 'moov' atom, was written cannot "
            "be opened)"
        )
    return cap


class VideoFileSource(MediaSource):
    def __init__(self, uri: str, path: Path, options: SourceOptions) -> None:
        if not path.is_file():
            raise SourceError(f"video file not found: {path}")
        self.path = path
        self._cap = _open(path)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        fps = float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS
        super().__init__(uri, options, fps=fps)
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        native = (int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.info = SourceInfo(
            uri=uri,
            kind="video",
            live=options.realtime,
            fps=fps,
            size=self._output_size(native if min(native) > 0 else None),
            frame_count=count if count > 0 else None,
        )

    @property
    def files(self) -> Sequence[Path]:
        return (self.path,)

    def _read(self) -> np.ndarray | None:
        ok, image = self._cap.read()
        if ok and image is not None:
            return image
        self._warn_if_short()
        return None

    def _skip(self) -> bool:
        if self._cap.grab():  # demux and decode state only: no colour conversion or copy
            return True
        self._warn_if_short()
        return False

    def _warn_if_short(self) -> None:
        expected = self.info.frame_count
        if expected is not None and self._pass_frames < expected - 1:
            log.warning(
                "%s ended after %d of the %d frames its header announces (truncated or corrupt file)",
                self.path,
                self._pass_frames,
                expected,
            )

    def _rewind(self) -> bool:
        # Reopening is reliable for every container; seeking to frame 0 is not.
        self._cap.release()
        self._cap = _open(self.path)
        return True

    def _release(self) -> None:
        self._cap.release()
