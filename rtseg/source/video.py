"""Video files through OpenCV (FFmpeg): every frame in order, optionally looped or paced.

A recorded video served over HTTP(S) (a URL to an .mp4, say) is read the same way: it is a file
that happens to be remote, not a live stream, so no frame is dropped to stay current.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import SourceError
from ..paths import opencv_path
from .base import MediaSource, SourceInfo, SourceOptions, redacted
from .diagnose import http_problem, time_left
from .live import open_interruptibly, open_network

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0  # when a container does not say


def _open(target: Path | str, timeout: float) -> cv2.VideoCapture:
    """A local file (a Path) or a URL (a str), opened; SourceError saying why when it cannot be."""
    if isinstance(target, Path):
        cap = cv2.VideoCapture(opencv_path(target, SourceError))
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"cannot open {target} as a video: OpenCV's FFmpeg cannot read it. It may not be a video, "
                "or it is truncated (an .mp4 cut off before its index, the 'moov' atom, was written "
                "cannot be opened)"
            )
        return cap
    started = time.perf_counter()
    cap = open_interruptibly(lambda: open_network(target, timeout), cv2.VideoCapture.release)
    if not cap.isOpened():
        cap.release()
        # The diagnosis gets what is left of the one timeout; none once FFmpeg's open used it all.
        left = time_left(timeout, started)
        if left is None:
            reason = f"nothing answered within {timeout:g} s; check the URL and that the server is up"
        else:
            reason = http_problem(target, left) or (
                "FFmpeg could not open it as a video; check the URL and that it names a video"
            )
        raise SourceError(f"cannot open {redacted(target)} as a video: {reason}")
    return cap


def _frame_rate(reported: float, uri: str) -> float:
    """The container's frame rate; DEFAULT_FPS, with a warning, when it reports none usable (0,
    negative, NaN or infinite). No upper bound: high-speed video (1000 fps and more) is real, and
    FFmpeg already reports the average rate for a millisecond time base (WebM, Matroska). A 1000
    fps clip was silently taken as 30 fps: played 33 times too slowly, recorded at 30 fps."""
    if math.isfinite(reported) and reported > 0:
        return float(reported)
    log.warning("%s reports a frame rate of %g; %g fps is assumed", uri, reported, DEFAULT_FPS)
    return DEFAULT_FPS


class VideoFileSource(MediaSource):
    """A local video file (``target`` a Path) or a recorded video at an http(s) URL (a str)."""

    def __init__(self, uri: str, target: Path | str, options: SourceOptions) -> None:
        if isinstance(target, Path) and not target.is_file():
            raise SourceError(f"video file not found: {target}")
        self.target = target
        self._cap = _open(target, options.timeout)
        super().__init__(uri, options, fps=_frame_rate(self._cap.get(cv2.CAP_PROP_FPS), uri))
        self._timed = True  # the container gives each frame's time; False once it proved it does not
        self._reset_times()
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        native = (int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        self.info = SourceInfo(
            uri=uri,
            kind="video",
            live=options.realtime,
            fps=self.fps,
            size=self._output_size(native if min(native) > 0 else None),
            frame_count=count if count > 0 else None,
        )

    @property
    def files(self) -> Sequence[Path]:
        return (self.target,) if isinstance(self.target, Path) else ()  # a URL is no local file

    def _reset_times(self) -> None:
        self._times_index = -1  # the frame of this pass whose time is _times_last
        self._times_last = 0.0
        self._times_step = 1.0 / self.fps  # the last interval between frames: predicts the next

    def _note_time(self) -> None:
        """Record the time of the frame just read or skipped: the container's timestamp
        (CAP_PROP_POS_MSEC: 0.2 us a frame), which variable-frame-rate video needs
        (index/fps put frame 15 of a clip, at 0.6 s, at 1.2 s). Index/fps when the container has
        none (0 after the first frame); the previous time plus the last interval when a time does
        not increase, so that time never runs backwards."""
        index = self._times_index + 1
        measured = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if self._timed else math.nan
        if self._timed and index > 0 and not measured > 0:
            self._timed = False
            log.debug("%s: no frame timestamps; frame times are index/fps", self.uri)
        if not self._timed or not math.isfinite(measured) or measured < 0:
            t = index / self.fps
        elif index > 0 and measured <= self._times_last:
            t = self._times_last + self._times_step
        else:
            t = measured
        if index > 0 and t > self._times_last:
            self._times_step = t - self._times_last
        self._times_index, self._times_last = index, t

    def _media_time(self, media_index: int) -> float:
        if media_index == self._times_index:
            return self._times_last
        if media_index == self._times_index + 1 and self._times_index >= 0:
            return self._times_last + self._times_step  # a prediction: the frame is not read yet
        return super()._media_time(media_index)

    def _read(self) -> np.ndarray | None:
        ok, image = self._cap.read()
        if ok and image is not None:
            self._note_time()
            return image
        self._end_of_pass()
        return None

    def _skip(self) -> bool:
        if self._cap.grab():  # demux and decode state only: no colour conversion or copy
            self._note_time()
            return True
        self._end_of_pass()
        return False

    def _retrieve_skipped(self) -> np.ndarray | None:
        ok, image = self._cap.retrieve()  # decodes the frame grab() took
        return image if ok and image is not None else None

    def _end_of_pass(self) -> None:
        """A SourceError when not one frame decoded: an empty run that ends "complete" would hide a
        broken file. A file that ends early after some frames is only warned about."""
        name = self.target if isinstance(self.target, Path) else self.uri
        expected = self.info.frame_count
        if self._index_offset == 0 and self._pass_frames == 0:  # the first pass, nothing delivered
            announced = f" (its header announces {expected})" if expected is not None else ""
            raise SourceError(
                f"{name}: no frame could be decoded{announced}; the file is truncated or corrupt"
            )
        if expected is not None and self._pass_frames < expected - 1:
            log.warning(
                "%s ended after %d of the %d frames its header announces (truncated or corrupt file)",
                name,
                self._pass_frames,
                expected,
            )

    def _rewind(self) -> bool:
        # Reopening is reliable for every container; seeking to frame 0 is not.
        self._cap.release()
        if isinstance(self.target, Path) and not self.target.is_file():
            # It was there when the run began: "cannot open ... as a video" sent users looking for
            # a corrupt file.
            raise SourceError(f"video file not found: {self.target} (removed while looping over it)")
        self._cap = _open(self.target, self.options.timeout)
        self._reset_times()
        return True

    def _release(self) -> None:
        self._cap.release()
