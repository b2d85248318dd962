"""Files: a video (mp4, avi, mkv, mov) or one image per frame (a printf pattern like out/%06d.png)."""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from ..errors import SinkError
from ..paths import opencv_path
from . import DEFAULT_FPS
from .base import Policy, Sink
from .packet import Packet

# OpenCV's pip wheels ship FFmpeg without an H.264 encoder: mp4v (MPEG-4 part 2) is what works.
VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LABEL_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")  # lossless for one channel: a class id stays itself
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
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if blocker is None:
            why = exc.strerror or exc
        elif blocker == folder:
            why = "a file of that name is in the way"
        else:
            why = f"{blocker} is a file, not a folder"
        raise SinkError(f"{uri}: cannot create the folder {folder}: {why}") from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise SinkError(f"{uri}: cannot write in {folder}: {exc.strerror or exc}") from None


def check_image_pattern(text: str, uri: str) -> None:
    """An image pattern: a format OpenCV writes (else imwrite raises cv2.error, not SinkError, at
    the first frame) and one integer field, in the file name: the whole path is formatted, so a
    '%' in a folder would name another folder than the one made for the images."""
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise SinkError(f"{uri}: an image pattern must end in one of {', '.join(IMAGE_SUFFIXES)}")
    if "%" in str(path.parent):
        raise SinkError(
            f"{uri}: the folder {str(path.parent)!r} holds a '%'; only the file name of an image "
            "pattern may (the frame number field, as in out/%06d.png)"
        )
    check_pattern(text, uri)


def has_index_field(text: str) -> bool:
    """Whether ``text`` holds a printf integer field (%06d), the mark of an image pattern."""
    return any(m.group() != "%%" for m in _FIELD.finditer(text))


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file, None otherwise: two names of one file (a hard link)
    have one identity, which comparing resolved paths misses."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def file_clash(path: Path, files: Iterable[str | os.PathLike[str]]) -> Path | None:
    """The one of ``files`` (resolved) that writing ``path`` would replace: the same resolved path
    (./, .., a symbolic link), or the same file under another name (a hard link)."""
    inputs = {Path(p).resolve() for p in files}
    target = path.resolve()
    if target in inputs:
        return target
    same = file_identity(target)
    if same is None:
        return None
    return next((p for p in sorted(inputs) if file_identity(p) == same), None)


def prepare_video(path: Path, uri: str) -> None:
    """Refuse a video path that is a folder and make its folder, before the first frame: a
    VideoWriter refused there would be found only once a frame had been computed."""
    if path.is_dir():
        raise SinkError(f"{uri}: {path} is a folder; name a video file in it, such as {path / 'out.mp4'}")
    prepare_folder(path.parent, uri)


def write_image(path: str, image: np.ndarray) -> None:
    """Write one image file whole or not at all: encoded in memory (the bytes cv2.imwrite writes),
    written under a hidden temporary name in the same folder, then renamed to ``path``.

    cv2.imwrite reports a failure (a removed folder, a full disk) only by returning False, and a
    TIFF it had begun stayed behind, truncated and unreadable, under the frame's name. Here no
    file named as a frame is ever partial, for a reader watching the folder either; the rename
    costs microseconds a frame."""
    target = Path(path)
    ok, data = cv2.imencode(target.suffix, image)
    if not ok:
        raise SinkError(
            f"cannot write {path}: OpenCV could not encode a {image.shape} {image.dtype} image "
            f"as {target.suffix}"
        )
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        # 0o666 less the umask, as cv2.imwrite creates files (mkstemp would make them 0600)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise SinkError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


log = logging.getLogger(__name__)

# A timed video's sink further behind the source than this has no time to fill gaps (see emit).
TIMED_LAG_S = 2.0
VIDEO_RESERVE_BYTES = 1 << 20  # for the container's index, written when the video is closed
INDEX_BYTES_PER_FRAME = 64  # an mp4 index grows with the frames (sample sizes, offsets, times)
# FFmpeg writes in 256 KiB blocks: up to that much of the video is not in the file's size yet.
UNWRITTEN_BYTES = 1 << 20
FAT_FILE_LIMIT = 2**32 - 1  # FAT32: SD cards and USB sticks, dashcam and robot logging media
FAT_TYPES = frozenset({"vfat", "msdos", "fat"})


def _kept(frames: int, condition: str = "") -> str:
    """What a video refusing a frame still holds: said of the ``frames`` already in it, and only
    when there are some (a video that refused its first frame has nothing to stay readable)."""
    if not frames:
        return "nothing is written yet"
    held = "the 1 frame already in it stays" if frames == 1 else f"the {frames} frames already in it stay"
    return f"{held} readable{condition}"


def check_room_for_frame(video: Path, image: np.ndarray, frames: int) -> None:
    """SinkError when the disk holding ``video`` has no room for another frame and the index;
    ``frames``: how many the video holds already.

    OpenCV's VideoWriter reports no write errors: on a full disk it logs and goes on, and the
    video silently lacks frames (or, unclosable, its index and with it every frame)."""
    free = shutil.disk_usage(video.parent).free
    need = 2 * image.nbytes + VIDEO_RESERVE_BYTES
    if free < need:
        # Not "the disk is full": the reserve is refused before the disk is. And the frames before
        # stay readable only if the index still fits at the close (another program may take the room).
        raise SinkError(
            f"{video}: too little free space for another frame ({free / 2**20:.1f} MiB free, "
            f"{need / 2**20:.1f} MiB needed: 2 frames and 1 MiB for the video's index, written when it "
            f"is closed): frame skipped; {_kept(frames, ' if the index still fits then')}"
        )


def mount_type(path: Path, mounts: str) -> str | None:
    """The filesystem type of the mount holding ``path`` (resolved), from /proc/mounts text."""
    best, kind = -1, None
    target = str(path)
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), fields[2]
    return kind


def file_size_limit(folder: Path) -> int | None:
    """The largest file this process can write in ``folder``, where something other than free
    space sets one: ``ulimit -f`` (RLIMIT_FSIZE) and FAT's 4 GiB. Past either, FFmpeg's writes
    fail without telling OpenCV, and an .mp4 loses its index and with it every frame."""
    limits = []
    try:
        import resource
    except ImportError:  # not on Windows
        resource = None  # type: ignore[assignment]
    if resource is not None:
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            limits.append(soft)
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        mounts = ""
    if mount_type(folder.resolve(), mounts) in FAT_TYPES:
        limits.append(FAT_FILE_LIMIT)
    return min(limits) if limits else None


def check_size_limit(video: Path, image: np.ndarray, frames: int, limit: int | None) -> None:
    """SinkError when another frame and the index may not fit under the file size limit."""
    if limit is None:
        return
    try:
        size = video.stat().st_size
    except FileNotFoundError:  # FFmpeg has not created it yet
        size = 0
    index = INDEX_BYTES_PER_FRAME * (frames + 1) + (64 << 10)
    if size + UNWRITTEN_BYTES + 2 * image.nbytes + index > limit:
        raise SinkError(
            f"{video}: the file size limit ({limit / 2**20:.1f} MiB: ulimit -f, or FAT's 4 GiB) is "
            f"reached: frame skipped; {_kept(frames)} (write an image pattern, "
            + ("or split the recording)" if frames else "or raise the limit)")
        )


def check_finished(video: Path, frames: int) -> None:
    """SinkError unless the closed video opens and holds the frames written to it: the last word
    on write failures nothing else saw (a quota, another writer filling the disk, an I/O error)."""
    capture = cv2.VideoCapture(opencv_path(video, SinkError))
    try:
        opened = capture.isOpened()
        held = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if opened else 0
    finally:
        capture.release()
    if not opened or held < frames:
        found = "it does not open" if not opened else f"it holds {held} of the {frames} frames written"
        raise SinkError(
            f"{video}: the video was not written whole ({found}): FFmpeg's writes failed (a disk "
            "quota, a file size limit or an I/O error; OpenCV does not report them)"
        )


class VideoFile:
    """One video file, opened at its first frame (whose size becomes the video's): the single
    implementation of video writing, used by ``FileSink`` and ``rtseg view --out``.

    A frame of another size is an error (skipped, the video goes on) or, with ``fit=True``, resized
    to the video's size. Every frame is checked against the free disk space and the file size
    limit first (OpenCV reports no write errors); ``close()`` writes the container's index, without
    which an .mp4 is unreadable, and reads the video back to check that it holds every frame.
    """

    def __init__(self, path: Path, fps: float, fourcc: str | None = None, *, fit: bool = False) -> None:
        self.path = path
        # Checked now, not at the first frame: the VideoWriter opens there, after the run began.
        self._cv_path = opencv_path(path, SinkError)
        self.fps = fps
        self.fourcc = fourcc or VIDEO_FOURCC[path.suffix.lower()]
        self.fit = fit
        self.size: tuple[int, int] | None = None
        self.frames = 0  # in the video: repeats (write_at) included
        self._writer: cv2.VideoWriter | None = None
        self._size_limit: int | None = None
        self._start: float | None = None  # write_at: the first frame's time, slot 0
        self._slot = -1  # write_at: the slot of the last frame written
        self._last: np.ndarray | None = None

    def _open(self, size: tuple[int, int]) -> cv2.VideoWriter:
        writer = cv2.VideoWriter(self._cv_path, cv2.VideoWriter_fourcc(*self.fourcc), self.fps, size)
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
            self._size_limit = file_size_limit(self.path.parent)
            self._writer, self.size = self._open(size), size
        elif size != self.size:
            if not self.fit:
                raise SinkError(
                    f"{self.path}: a {size[0]}x{size[1]} frame in a {self.size[0]}x{self.size[1]} video "
                    "was skipped (a video has one frame size: give the source --resize WxH, or write an "
                    "image pattern such as out/%06d.png)"
                )
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        check_room_for_frame(self.path, image, self.frames)
        check_size_limit(self.path, image, self.frames, self._size_limit)
        self._writer.write(image)
        self.frames += 1

    def write_at(self, image: np.ndarray, seconds: float, *, fill: bool = True) -> None:
        """Write ``image`` in the slot of the video's frame grid that its capture time ``seconds``
        falls in (counted from the first frame's), the previous frame repeated over the slots
        between, as FFmpeg's constant-frame-rate output does: a recording of a source that drops
        frames to stay live then lasts as long as the run did. A frame is never skipped: one that
        comes early (jitter) takes the next slot, and the next gap is shorter by as much.
        ``fill=False`` leaves the gap out (the video is that much shorter)."""
        if self._start is None:
            self._start, slot = seconds, 0
        else:
            slot = max(round((seconds - self._start) * self.fps), self._slot + 1)
            if self._last is not None and fill:
                for _ in range(slot - self._slot - 1):
                    self.write(self._last)
            self._slot = slot - 1  # filled or left out: a failure of this frame is not filled again
        self.write(image)
        self._slot, self._last = slot, image

    def close(self) -> None:
        """Write the index, close the file and check it holds every frame; idempotent."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.release()
            if self.frames:  # none written is said as such ("nothing written"), not as a failure
                check_finished(self.path, self.frames)


class FileSink(Sink):
    """Writes the overlay of every packet (or, for image patterns, optionally the raw label map).

    ``timed`` (the pipeline sets it for live sources and realtime files, whose frames may be
    dropped): a video places each frame by its capture time at ``fps``, repeating the previous
    one over the gaps (``VideoFile.write_at``), so that it plays as long as the run lasted.
    ``fit``: a video resizes a frame of another size than its first to that size, instead of
    skipping it as an error (``rtseg view --out``: a received stream's frame size may change).

    ``policy``, ``fps`` and ``timed`` left None are set by a ``Pipeline`` from its source, as for
    a sink it opens from a URI; used alone the sink blocks (``standalone_policy``: every frame
    written), writes 30 FPS (``DEFAULT_FPS``) and is not timed."""

    standalone_policy = "block"

    def __init__(
        self,
        uri: str,
        path: str | os.PathLike[str],
        *,
        fps: float | None = None,
        fourcc: str | None = None,
        content: Content = "overlay",
        queue_size: int = 8,
        policy: Policy | None = None,
        timed: bool | None = None,
        fit: bool = False,
    ) -> None:
        self.path = Path(path).expanduser()  # as source paths are: "~/out.mp4" is not ./~/out.mp4
        text = str(self.path)
        suffix = self.path.suffix.lower()
        # A video is one file, whatever its name holds ("o_100%.mp4"); a '%' elsewhere makes a pattern.
        self.pattern = "%" in text and suffix not in VIDEO_FOURCC
        if content not in ("overlay", "labels"):
            raise SinkError(f"{uri}: content must be 'overlay' or 'labels', got {content!r}")
        if not isinstance(fit, bool):
            raise SinkError(f"{uri}: fit must be True or False, got {fit!r}")
        if fps is not None and not (
            isinstance(fps, numbers.Real) and not isinstance(fps, bool) and 0 < fps < math.inf
        ):
            raise SinkError(f"{uri}: fps must be None or a positive finite number, got {fps!r}")
        if self.pattern:
            check_image_pattern(text, uri)
            if content == "labels" and suffix not in LABEL_SUFFIXES:
                raise SinkError(
                    f"{uri}: a {suffix} image is compressed with loss, which changes class ids; write "
                    f"label maps as {', '.join(LABEL_SUFFIXES)} (out/%06d.png)"
                )
        else:
            if suffix in VIDEO_FOURCC and has_index_field(self.path.name):
                raise SinkError(
                    f"{uri}: {self.path.name!r} holds a frame number field but a {suffix} is one video "
                    f"file: an image pattern must end in one of {', '.join(IMAGE_SUFFIXES)} (out/%06d.png)"
                )
            if suffix not in VIDEO_FOURCC and "?" in suffix:
                codecs = ", ".join(f"{k} {v}" for k, v in VIDEO_FOURCC.items())
                raise SinkError(
                    f"{uri}: file outputs take no ?options; the codec follows the suffix ({codecs}) "
                    "and the frame rate is the source's"
                )
            if suffix in IMAGE_SUFFIXES:
                raise SinkError(
                    f"{uri}: an image output writes one file per frame, so its name needs a frame "
                    f"number field: {self.path.with_name(self.path.stem + '_%06d' + self.path.suffix)}"
                )
            if suffix not in VIDEO_FOURCC:
                raise SinkError(
                    f"{uri}: cannot tell the format from {suffix or 'no suffix'!r}; use a video "
                    f"({', '.join(VIDEO_FOURCC)}) or an image pattern such as out/%06d.png"
                )
            if content == "labels":
                raise SinkError(
                    f"{uri}: label maps are written losslessly only as images ({', '.join(LABEL_SUFFIXES)}: "
                    "out/%06d.png), not as a video"
                )
        if fourcc is not None and len(fourcc) != 4:
            raise SinkError(f"{uri}: fourcc must be 4 characters, got {fourcc!r}")
        self.fourcc = fourcc or VIDEO_FOURCC.get(suffix, "")
        # Not given (None): the pipeline's choice, else 30 FPS and untimed (see follow_pipeline).
        self._fps_given, self._timed_given = fps is not None, timed is not None
        self.fps = DEFAULT_FPS if fps is None else fps
        # A video of a source that drops frames (live, realtime): each frame at its capture time.
        self.timed = bool(timed)
        self._lag_warned = False
        self.content = content
        # Before the folder is made: VideoFile refuses a name OpenCV cannot take.
        self._video: VideoFile | None = (
            None if self.pattern else VideoFile(self.path, self.fps, self.fourcc, fit=fit)
        )
        if self.pattern:
            prepare_folder(self.path.parent, uri)
        else:
            prepare_video(self.path, uri)
        super().__init__(uri, queue_size=queue_size, policy=policy)

    def follow_pipeline(self, *, policy: Policy, fps: float | None, timed: bool) -> None:
        """The pipeline's policy, frame rate (None: not known, 30 FPS) and timing, each where
        none was given."""
        super().follow_pipeline(policy=policy, fps=fps, timed=timed)
        if not self._fps_given:
            self.fps = DEFAULT_FPS if fps is None else fps
            if self._video is not None:
                self._video.fps = self.fps  # not opened yet: that happens at the first frame
        if not self._timed_given:
            self.timed = bool(timed)

    def first_overwrite(self, paths: set[Path], frames: int | None) -> Path | None:
        """The first of ``paths`` (resolved) that frames 0..frames-1 would write over, by name or
        by identity (a hard link to it); with ``frames=None`` (a looping source: indices without
        end) any path the pattern can name."""
        ids = {i: p for p in sorted(paths) if (i := file_identity(p)) is not None}

        def clash(target: Path) -> Path | None:
            resolved = target.resolve()
            if resolved in paths:
                return resolved
            same = file_identity(resolved)
            return None if same is None else ids.get(same)

        if not self.pattern:
            return clash(self.path)
        if frames is not None:
            targets = (clash(Path(str(self.path) % i)) for i in range(frames))
            return next((t for t in targets if t is not None), None)
        resolved = self.path.resolve()
        for path in sorted(paths):
            if self._index_of(resolved, path) is not None:
                return path
        folder = resolved.parent
        if not ids or not folder.is_dir():
            return None
        # A file the pattern names that is a hard or symbolic link to an input: the name differs.
        for entry in sorted(folder.iterdir()):
            if self._index_of(resolved, entry) is not None and (found := clash(entry)) is not None:
                return found
        return None

    def shared_image(self, other: FileSink) -> Path | None:
        """A file that this image pattern and ``other`` both write, at any frame index, or None.
        Compared by the names they produce, not by their text: dd/%d.png and dd/%01d.png, or
        %06d and %06i, write the same files; %d and %03d share every name from frame 100 on. The
        indices 0-10 and the powers of ten up to 10^9 sample the widths a field can pad to."""
        if not (self.pattern and other.pattern):
            return None
        mine, theirs = self.path.resolve(), other.path.resolve()
        if mine.parent != theirs.parent:
            return None
        for a, pattern_a, b in ((mine, self, theirs), (theirs, other, mine)):
            for index in (*range(11), *(10**k for k in range(2, 10))):
                name = b.parent / (b.name % index)
                if pattern_a._index_of(a, name) is not None:
                    return name
        return None

    def _index_of(self, resolved: Path, path: Path) -> int | None:
        """The frame index >= 0 at which the pattern (``resolved``, the pattern's resolved path)
        writes ``path``, or None."""
        text = str(resolved)  # a coarse filter; each match is checked exactly below
        parts, kinds, pos = [], [], 0
        for m in _FIELD.finditer(text):
            parts.append(re.escape(text[pos : m.start()]))
            if m.group() == "%%":
                parts.append("%")
            else:
                parts.append(r"\s*([-+]?[0-9a-fA-F]+)\s*")  # padded either side (%5d, %-5d)
                kinds.append(m.group(1))
            pos = m.end()
        parts.append(re.escape(text[pos:]))
        m = re.fullmatch("".join(parts), str(path))
        if m is None:
            return None
        try:
            index = int(m.group(1), _BASES[kinds[0]])
        except ValueError:
            return None
        if index < 0 or str(resolved.parent / (resolved.name % index)) != str(path):
            return None
        return index

    @property
    def draws(self) -> bool:
        return self.content != "labels"

    def emit(self, packet: Packet) -> None:
        if self.content == "labels":
            image = packet.result.labels
        else:
            image = packet.overlay()
        if self._video is None:
            write_image(str(self.path) % packet.frame.index, image)
        elif self.timed:
            # Frame.monotonic: every source sets it (position_s is None for cameras and streams
            # and restarts on each loop pass), it is the capture time, spaced as the wall clock.
            # A sink more than TIMED_LAG_S behind the results handed to it cannot encode fps
            # frames a second (a large frame, a slow codec): filling the gaps would put it further
            # behind every time, and at the end its close would time out with the video
            # unfinished. It then writes each frame once, without the gaps, until it has caught
            # up. A slow model or a source's stall (a reconnect) is a gap in fresh frames, not a
            # backlog here: it is filled (measured from capture, a model slower than 2 s a frame
            # turned every gap off).
            behind = time.perf_counter() - packet.handed
            fill = behind <= TIMED_LAG_S
            if not fill and not self._lag_warned:
                self._lag_warned = True
                log.warning(
                    "%s: writing %.1f s behind the results, too slow to fill the gaps of a %g fps "
                    "video; frames are written once until it catches up (the video will be shorter "
                    "than the run)",
                    self.uri,
                    behind,
                    self.fps,
                )
            self._video.write_at(image, packet.frame.monotonic, fill=fill)
        else:
            self._video.write(image)

    @property
    def video_frames(self) -> int | None:
        """The frames in the video (with ``timed``, repeats included); None for an image pattern."""
        return None if self._video is None else self._video.frames

    def release(self) -> None:
        if self._video is not None:
            self._video.close()
