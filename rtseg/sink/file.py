"""Files: a video (mp4, avi, mkv, mov) or one image per frame (a printf pattern like out/%06d.png)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from ..errors import SinkError
from .base import Policy, Sink
from .packet import Packet

# OpenCV's pip wheels ship FFmpeg without an H.264 encoder: mp4v (MPEG-4 part 2) is what works.
VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
Content = Literal["overlay", "labels"]
# One printf conversion (or a literal %%) in an image pattern.
_FIELD = re.compile(r"%%|%[-+ #0]*\d*(?:\.\d+)?([diouxX])")
_BASES = {"d": 10, "i": 10, "u": 10, "o": 8, "x": 16, "X": 16}


def check_pattern(text: str, uri: str) -> None:
    """An image pattern names each frame by its index: exactly one integer field (%06d)."""
    fields = [m for m in _FIELD.finditer(text) if m.group() != "%%"]
    if len(fields) != 1 or "%" in _FIELD.sub("", text):
        raise SinkError(f"{uri}: {text!r} is not a valid pattern; use one integer field like %06d")


def prepare_folder(folder: Path, uri: str) -> None:
    """Create the output folder and check that it takes files: fail now, not after the first
    frame has been computed for nothing."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(f"{uri}: cannot create the folder {folder}: {exc.strerror or exc}") from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise SinkError(f"{uri}: cannot write in {folder}: {exc.strerror or exc}") from None


def check_image_pattern(text: str, uri: str) -> None:
    """An image pattern: a format OpenCV writes (else imwrite raises cv2.error, not SinkError, at
    the first frame) and one integer field."""
    suffix = Path(text).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise SinkError(f"{uri}: an image pattern must end in one of {', '.join(IMAGE_SUFFIXES)}")
    check_pattern(text, uri)


def prepare_video(path: Path, uri: str) -> None:
    """Refuse a video path that is a folder and make its folder, before the first frame: a
    VideoWriter refused there would be found only once a frame had been computed."""
    if path.is_dir():
        raise SinkError(f"{uri}: {path} is a folder; name a video file in it, such as {path / 'out.mp4'}")
    prepare_folder(path.parent, uri)


def write_image(path: str, image: np.ndarray) -> None:
    """Write one image file; cv2.imwrite reports a failure (a removed folder, a full disk) only by
    returning False."""
    if not cv2.imwrite(path, image):
        raise SinkError(f"cannot write {path}")


log = logging.getLogger(__name__)

VIDEO_RESERVE_BYTES = 1 << 20  # for the container's index, written when the video is closed


def check_room_for_frame(video: Path, image: np.ndarray) -> None:
    """SinkError when the disk holding ``video`` has no room for another frame and the index.

    OpenCV's VideoWriter reports no write errors: on a full disk it logs and goes on, and the
    video silently lacks frames (or, unclosable, its index and with it every frame)."""
    free = shutil.disk_usage(video.parent).free
    if free < 2 * image.nbytes + VIDEO_RESERVE_BYTES:
        raise SinkError(
            f"{video}: the disk is full ({free / 2**20:.1f} MiB left): frame skipped; the frames "
            "before it stay readable"
        )


class VideoFile:
    """One video file, opened at its first frame (whose size becomes the video's): the single
    implementation of video writing, used by ``FileSink`` and ``rtseg view --out``.

    A frame of another size is an error (skipped, the video goes on) or, with ``fit=True``, resized
    to the video's size. Every frame is checked against the free disk space first (OpenCV reports
    no write errors); ``close()`` writes the container's index, without which an .mp4 is unreadable.
    """

    def __init__(self, path: Path, fps: float, fourcc: str | None = None, *, fit: bool = False) -> None:
        self.path = path
        self.fps = fps
        self.fourcc = fourcc or VIDEO_FOURCC[path.suffix.lower()]
        self.fit = fit
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None

    def _open(self, size: tuple[int, int]) -> cv2.VideoWriter:
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, size)
        if not writer.isOpened():
            raise SinkError(
                f"OpenCV cannot write {self.path}: its VideoWriter refused fourcc {self.fourcc!r} at "
                f"{size[0]}x{size[1]} and {self.fps:g} FPS (try .avi, which uses MJPG)"
            )
        if size[0] % 2 or size[1] % 2:
            log.warning(
                "%s: FFmpeg's encoders store %dx%d frames as %dx%d (even sizes only): the last "
                "column/row is dropped; give the source --resize with even numbers to keep them",
                self.path,
                *size,
                size[0] // 2 * 2,
                size[1] // 2 * 2,
            )
        return writer

    def write(self, image: np.ndarray) -> None:
        size = (image.shape[1], image.shape[0])
        if self._writer is None:
            self._writer, self.size = self._open(size), size
        elif size != self.size:
            if not self.fit:
                raise SinkError(
                    f"{self.path}: a {size[0]}x{size[1]} frame in a {self.size[0]}x{self.size[1]} video "
                    "was skipped (a video has one frame size: give the source --resize WxH, or write an "
                    "image pattern such as out/%06d.png)"
                )
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        check_room_for_frame(self.path, image)
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        """Write the index and close the file; idempotent."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.release()


class FileSink(Sink):
    """Writes the overlay of every packet (or, for image patterns, optionally the raw label map)."""

    def __init__(
        self,
        uri: str,
        path: str | os.PathLike[str],
        *,
        fps: float = 30.0,
        fourcc: str | None = None,
        content: Content = "overlay",
        queue_size: int = 8,
        policy: Policy = "block",
    ) -> None:
        self.path = Path(path)
        text = str(self.path)
        self.pattern = "%" in text
        suffix = self.path.suffix.lower()
        if content not in ("overlay", "labels"):
            raise SinkError(f"{uri}: content must be 'overlay' or 'labels', got {content!r}")
        if not fps > 0:
            raise SinkError(f"{uri}: fps must be positive, got {fps}")
        if self.pattern:
            check_image_pattern(text, uri)
        else:
            if suffix not in VIDEO_FOURCC and "?" in suffix:
                codecs = ", ".join(f"{k} {v}" for k, v in VIDEO_FOURCC.items())
                raise SinkError(
                    f"{uri}: file outputs take no ?options; the codec follows the suffix ({codecs}) "
                    "and the frame rate is the source's"
                )
            if suffix not in VIDEO_FOURCC:
                raise SinkError(
                    f"{uri}: cannot tell the format from {suffix or 'no suffix'!r}; use a video "
                    f"({', '.join(VIDEO_FOURCC)}) or an image pattern such as out/%06d.png"
                )
            if content == "labels":
                raise SinkError(f"{uri}: label maps are written losslessly only as PNG images (out/%06d.png)")
        if fourcc is not None and len(fourcc) != 4:
            raise SinkError(f"{uri}: fourcc must be 4 characters, got {fourcc!r}")
        self.fourcc = fourcc or VIDEO_FOURCC.get(suffix, "")
        self.fps = fps
        self.content = content
        if self.pattern:
            prepare_folder(self.path.parent, uri)
        else:
            prepare_video(self.path, uri)
        self._video: VideoFile | None = None if self.pattern else VideoFile(self.path, fps, self.fourcc)
        super().__init__(uri, queue_size=queue_size, policy=policy)

    def first_overwrite(self, paths: set[Path], frames: int | None) -> Path | None:
        """The first of ``paths`` (resolved) that frames 0..frames-1 would write over; with
        ``frames=None`` (a looping source: indices without end) any path the pattern can name."""
        if not self.pattern:
            target = self.path.resolve()
            return target if target in paths else None
        if frames is not None:
            targets = (Path(str(self.path) % i).resolve() for i in range(frames))
            return next((t for t in targets if t in paths), None)
        text = str(self.path.resolve())  # a coarse filter; each match is checked exactly below
        parts, kinds, pos = [], [], 0
        for m in _FIELD.finditer(text):
            parts.append(re.escape(text[pos : m.start()]))
            if m.group() == "%%":
                parts.append("%")
            else:
                parts.append(r"\s*([-+]?[0-9a-fA-F]+)")
                kinds.append(m.group(1))
            pos = m.end()
        parts.append(re.escape(text[pos:]))
        regex = re.compile("".join(parts))
        for path in sorted(paths):
            m = regex.fullmatch(str(path))
            if m is None:
                continue
            try:
                index = int(m.group(1), _BASES[kinds[0]])
            except ValueError:
                continue
            if index >= 0 and Path(str(self.path) % index).resolve() == path:
                return path
        return None

    def emit(self, packet: Packet) -> None:
        if self.content == "labels":
            image = packet.result.labels
        else:
            image = packet.overlay()
        if self._video is None:
            write_image(str(self.path) % packet.frame.index, image)
        else:
            self._video.write(image)

    def release(self) -> None:
        if self._video is not None:
            self._video.close()
