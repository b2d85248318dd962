"""INT8 calibration data: which frames (a list file), how they reach each stage, and the
TensorRT entropy calibrator's batching and cache I/O.

A calibration list is a small text file (``calibration/*.txt``): a header naming the source
(an image folder or a video) and one entry per sampled frame (a path relative to the folder, or
a frame index). Its content hash names the int8 artifacts built from it, so another list builds
other artifacts. Frames are resized to the engine input like every frame at run time; the rest
of the model's preprocessing is inside the graphs, so calibration feeds the same uint8 images.

``EntropyCalibrator`` implements the four methods of TensorRT's ``IInt8EntropyCalibrator2``
without importing TensorRT; ``tensorrt_backend`` wraps it in the real base class on GPU machines.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import ConfigError, DatasetError, add_note
from ..image_file import UnreadableImage, read_bgr
from ..paths import opencv_path
from .base import Engine
from .cache import CacheUnwritableError, user_cache_dir

log = logging.getLogger(__name__)

LIST_HEADER = "# rtseg calibration list v1"
ENV_CALIBRATION_DIR = "RTSEG_CALIBRATION_DIR"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def default_calibration_dir() -> Path:
    """$RTSEG_CALIBRATION_DIR, else the checkout's calibration/, else ~/.cache/rtseg/calibration."""
    env = os.environ.get(ENV_CALIBRATION_DIR)
    if env:
        return Path(env).expanduser()
    checkout = _PACKAGE_DIR.parent / "calibration"
    if (checkout / "README.md").is_file():
        return checkout
    return user_cache_dir("calibration", f"set {ENV_CALIBRATION_DIR} to a folder for calibration lists")


def calibration_cache_unwritable(path: Path, exc: OSError) -> CacheUnwritableError:
    """The typed error for a calibration cache file (TensorRT's, or the ranges) that cannot be
    written: it names the file and where to point the cache instead."""
    reason = f"cannot write the calibration cache {path}: {exc.strerror or exc}"
    return CacheUnwritableError(
        f"{reason}; point {ENV_CALIBRATION_DIR} at a writable folder (calibration caches go to its cache/)",
        reason,
    )


def calibration_cache_is_a_folder(path: Path) -> CacheUnwritableError:
    """The typed error for a folder where a calibration cache file belongs: the new cache could
    never replace it, so this is raised before calibrating, not after."""
    reason = f"cannot write the calibration cache {path}: a folder is in its place"
    return CacheUnwritableError(
        f"{reason}; remove it, or point {ENV_CALIBRATION_DIR} at another folder", reason
    )


def _evenly(count: int, num: int) -> list[int]:
    """``num`` indices spread evenly over ``range(count)`` (deterministic, covers the whole source)."""
    if num <= 0:
        raise ConfigError(f"the number of calibration frames must be positive, got {num}")
    if num > count:
        raise ConfigError(f"asked for {num} calibration frames but the source has only {count}")
    return [int(i * count / num) for i in range(num)]


def _is_frame_number(entry: str) -> bool:
    """A video list entry must be a plain non-negative decimal index ("7", not "-5", "1.5" or "+3")."""
    return entry.isascii() and entry.isdigit()


def _hash_file(digest: Any, path: Path, what: str) -> None:
    """Feed ``path``'s length and bytes to ``digest`` in 1 MiB chunks (a video is not read whole)."""
    try:
        with open(path, "rb") as f:
            digest.update(f"\n{os.fstat(f.fileno()).st_size}\n".encode())
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DatasetError(f"cannot read {what} {path} to identify the list: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class CalibrationList:
    """Frames to calibrate on: ``kind`` images (entries are relative paths) or video (frame indices)."""

    kind: Literal["images", "video"]
    source: Path
    entries: tuple[str, ...]
    # The id the list file records (``# id: ID entries NAMES``), used when the listed files are not
    # there and the entries are still those it was recorded for (NAMES, ``names_digest``): lists
    # are committed and images are not, and cached int8 builds are found by the id alone.
    recorded_id: str | None = field(default=None, compare=False)
    recorded_names: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("images", "video"):
            raise ValueError(f"CalibrationList.kind must be 'images' or 'video', got {self.kind!r}")
        if not self.entries:
            raise ValueError("CalibrationList.entries must not be empty")
        if self.kind == "video":
            for entry in self.entries:
                if not _is_frame_number(entry):
                    raise ConfigError(
                        f"CalibrationList.entries: {entry!r} is not a frame number "
                        "(expected a whole number >= 0)"
                    )
        # A name OpenCV cannot take is refused with the list, not when the build reads it.
        for file in [self.source] if self.kind == "video" else [self.source / e for e in self.entries]:
            opencv_path(file, DatasetError)

    def text(self, relative_to: Path | None = None) -> str:
        """The list file; with ``relative_to`` (its folder) the source is written relative to it."""
        source = Path(os.path.relpath(self.source, relative_to)) if relative_to else self.source
        lines = [LIST_HEADER, f"# {self.kind}: {source.as_posix()}"]
        with contextlib.suppress(DatasetError):  # the files are not here to identify it: no id line
            lines.append(f"# id: {self.id} entries {self.names_digest}")
        return "\n".join([*lines, *self.entries]) + "\n"

    @functools.cached_property
    def id(self) -> str:
        """Short content hash, part of the int8 artifacts' and calibration caches' names.

        It covers the listed files' bytes (each image, or the whole video), not only their
        names: an image replaced by another of the same name gives another id, so ranges and
        caches calibrated on the old picture are not reused. The same on every machine (the
        source's folder name, not its absolute path). Computed once per list object. Where the
        files are missing, the id the list file recorded when it was written stands in: the cached
        builds are found, and only a rebuild needs the files.
        """
        digest = hashlib.blake2b(digest_size=16)
        digest.update(self._names())
        try:
            if self.kind == "images":
                for entry in self.entries:
                    _hash_file(digest, self.source / entry, "calibration image")
            else:
                _hash_file(digest, self.source, "calibration video")
        except DatasetError as exc:
            if self.recorded_id is None:
                raise
            if self.recorded_names != self.names_digest:
                add_note(exc, f"the list's entries changed since it recorded its id {self.recorded_id}")
                raise
            log.info(
                "calibration list %s: files missing; using the id it recorded, %s",
                self.source,
                self.recorded_id,
            )
            return self.recorded_id
        return digest.hexdigest()[:8]

    def _names(self) -> bytes:
        return "\n".join([self.kind, self.source.name, *self.entries]).encode()

    @property
    def names_digest(self) -> str:
        """A digest of what the list names (kind, source folder name, entries), not of the files."""
        return hashlib.blake2b(self._names(), digest_size=4).hexdigest()

    def __len__(self) -> int:
        return len(self.entries)

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        # Relative, so that a list committed to a checkout works wherever the data sits beside it.
        atomic_write_text(path, self.text(relative_to=path.resolve().parent))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationList:
        path = Path(path)
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        except OSError as exc:
            raise ConfigError(f"cannot read calibration list {path}: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(
                f"{path} is not an rtseg calibration list (a binary file; lists are text written "
                "by `rtseg calibrate`)"
            ) from None
        if not lines or lines[0] != LIST_HEADER:
            raise ConfigError(f"{path} is not an rtseg calibration list (first line must be {LIST_HEADER!r})")
        kind, source, recorded, names = None, None, None, None
        for line in lines[1:]:
            for k in ("images", "video"):
                if line.startswith(f"# {k}: "):
                    kind, source = k, path.resolve().parent / line[len(f"# {k}: ") :]
            if line.startswith("# id: "):
                recorded, _, names = line[len("# id: ") :].partition(" entries ")
                recorded, names = recorded.strip() or None, names.strip() or None
        if kind is None or source is None:
            raise ConfigError(f"{path}: missing the '# images: DIR' or '# video: FILE' source line")
        numbered = [(n, ln) for n, ln in enumerate(lines[1:], start=2) if ln and not ln.startswith("#")]
        if not numbered:
            raise ConfigError(f"{path} lists no frames")
        if kind == "video":
            # Checked here, naming the line: a bad entry found while decoding would surface as
            # "no calibration data" after the whole video was read.
            for number, entry in numbered:
                if not _is_frame_number(entry):
                    raise ConfigError(
                        f"{path} line {number}: {entry!r} is not a frame number "
                        "(expected a whole number >= 0)"
                    )
        entries = tuple(ln for _, ln in numbered)
        return cls(kind, source.resolve(), entries, recorded, names)  # type: ignore[arg-type]

    @classmethod
    def from_images(cls, directory: str | os.PathLike[str], num: int) -> CalibrationList:
        directory = Path(directory).resolve()
        if directory.is_file():
            raise DatasetError(
                f"calibration images: {directory} is a file; give the folder that holds the images "
                "(or --video for a video)"
            )
        if not directory.is_dir():
            raise DatasetError(f"calibration image folder not found: {directory}")
        files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
        picked = [files[i] for i in _evenly(len(files), num)]
        return cls("images", directory, tuple(p.relative_to(directory).as_posix() for p in picked))

    @classmethod
    def from_video(cls, video: str | os.PathLike[str], num: int) -> CalibrationList:
        video = Path(video).resolve()
        capture = cv2.VideoCapture(opencv_path(video, DatasetError))
        try:
            if not capture.isOpened():
                raise DatasetError(f"cannot open calibration video {video}")
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        finally:
            capture.release()
        if count <= 0:
            raise DatasetError(
                f"{video}: the container does not say how many frames it has (is it a video? for "
                "still images give their folder with --images)"
            )
        return cls("video", video, tuple(str(i) for i in _evenly(count, num)))

    def frames(self, input_size: tuple[int, int]) -> Iterator[np.ndarray]:
        """The listed frames as HxWx3 uint8 BGR at ``input_size`` = (w, h): images in list order,
        a video's in frame order (it is decoded once, front to back)."""
        for image in self._decoded():
            if (image.shape[1], image.shape[0]) != tuple(input_size):
                image = cv2.resize(image, tuple(input_size), interpolation=cv2.INTER_LINEAR)
            yield image

    def _decoded(self) -> Iterator[np.ndarray]:
        if self.kind == "images":
            for entry in self.entries:
                path = self.source / entry
                try:
                    image = read_bgr(path)
                except FileNotFoundError:
                    raise DatasetError(
                        f"calibration image {path} is missing or unreadable: not found"
                    ) from None
                except UnreadableImage as error:
                    raise DatasetError(
                        f"calibration image {path} is missing or unreadable: {error}"
                    ) from None
                yield image
            return
        wanted = sorted(int(e) for e in self.entries)
        capture = cv2.VideoCapture(opencv_path(self.source, DatasetError))
        try:
            if not capture.isOpened():
                raise DatasetError(f"cannot open calibration video {self.source}")
            index, position = 0, 0
            while index < len(wanted):
                ok, frame = capture.read()  # sequential decode: seeking is inexact in many codecs
                if not ok:
                    raise DatasetError(
                        f"{self.source} ended at frame {position}; the list wants {wanted[index]}"
                    )
                while index < len(wanted) and wanted[index] == position:
                    yield frame
                    index += 1
                position += 1
        finally:
            capture.release()


def stage_feeds(
    reference: Engine, frames: Iterable[np.ndarray], stage: str, inputs: tuple[str, ...]
) -> Iterator[dict[str, np.ndarray]]:
    """Each frame's inputs to ``stage`` (batch 1), computed by a full-precision ``reference`` engine.

    Every stage is calibrated on the activations the fp32 network produces, so a stage's ranges
    do not depend on how its predecessor was quantised.
    """
    for frame in frames:
        if stage == "low":
            yield {inputs[0]: frame[None]}
            continue
        low = reference.run_low(frame)
        values: dict[str, Any] = dict(low)
        if stage == "head":
            values.update(reference.run_deep(low))
        yield {n: _host(values[n]) for n in inputs}


def _host(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    return value.detach().cpu().numpy()


def batches(feeds: Iterable[Mapping[str, np.ndarray]], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Stack batch-1 feeds into batches of ``batch_size`` along axis 0; a last partial batch is
    dropped, because a TensorRT calibration batch must fill the network's batch dimension."""
    if batch_size <= 0:
        raise ConfigError(f"calibration batch_size must be positive, got {batch_size}")
    group: list[Mapping[str, np.ndarray]] = []
    for feed in feeds:
        group.append(feed)
        if len(group) == batch_size:
            yield {n: np.ascontiguousarray(np.concatenate([g[n] for g in group], axis=0)) for n in group[0]}
            group = []
    if group:
        log.info("calibration: dropped a last partial batch of %d (batch size %d)", len(group), batch_size)


# host array -> device address for TensorRT; the returned handle must stay alive until the next batch
DeviceUpload = Callable[[np.ndarray], tuple[int, Any]]


def cuda_upload(array: np.ndarray) -> tuple[int, Any]:
    """Copy ``array`` to the current CUDA device with torch; returns (address, keep-alive tensor)."""
    import torch

    tensor = torch.from_numpy(array).to("cuda", non_blocking=False)
    return int(tensor.data_ptr()), tensor


class EntropyCalibrator:
    """The IInt8EntropyCalibrator2 protocol, testable without TensorRT.

    ``feeds`` yields batch-1 dicts of the stage's input arrays; ``upload`` puts a batch where
    TensorRT reads it (CUDA memory by default). The cache file is TensorRT's own format: it is
    read back verbatim on later builds, so the calibration data is needed only once.
    """

    def __init__(
        self,
        feeds: Callable[[], Iterable[Mapping[str, np.ndarray]]],
        *,
        cache_path: str | os.PathLike[str],
        batch_size: int = 1,
        upload: DeviceUpload = cuda_upload,
    ) -> None:
        if batch_size <= 0:
            raise ConfigError(f"EntropyCalibrator.batch_size must be positive, got {batch_size}")
        self.cache_path = Path(cache_path)
        self.batch_size = batch_size
        self._feeds = feeds
        self._upload = upload
        self._iterator: Iterator[dict[str, np.ndarray]] | None = None
        self._alive: list[Any] = []
        self.batches_served = 0

    def get_batch_size(self) -> int:
        return self.batch_size

    def get_batch(self, names: list[str]) -> list[int] | None:
        """Device addresses of the next batch's inputs in ``names`` order; None when exhausted."""
        if self._iterator is None:
            self._iterator = batches(self._feeds(), self.batch_size)
        batch = next(self._iterator, None)
        if batch is None:
            self._alive = []
            return None
        missing = [n for n in names if n not in batch]
        if missing:
            raise ConfigError(f"calibration batch lacks inputs {missing}; it has {sorted(batch)}")
        pointers, alive = [], []
        for name in names:
            address, handle = self._upload(batch[name])
            pointers.append(address)
            alive.append(handle)
        self._alive = alive  # TensorRT reads the memory after get_batch returns
        self.batches_served += 1
        return pointers

    def read_calibration_cache(self) -> bytes | None:
        # The cache only saves time: one that cannot be read (permissions, an I/O error) means
        # calibrating again, not a failed build; the new cache replaces the file.
        try:
            data = self.cache_path.read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            # A folder in its place can never be replaced by the new cache: fail now, not after
            # minutes of calibrating whose result could not be saved.
            raise calibration_cache_is_a_folder(self.cache_path) from None
        except OSError as exc:
            log.warning(
                "calibration: cannot read TensorRT calibration cache %s (%s); calibrating again",
                self.cache_path,
                exc.strerror or exc,
            )
            return None
        if not data:
            return None
        log.info("calibration: reusing TensorRT calibration cache %s", self.cache_path)
        return data

    def write_calibration_cache(self, cache: bytes | memoryview) -> None:
        try:
            atomic_write_bytes(self.cache_path, bytes(cache))
        except OSError as exc:
            raise calibration_cache_unwritable(self.cache_path, exc) from None
        log.info("calibration: wrote TensorRT calibration cache %s", self.cache_path)
