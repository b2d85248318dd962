"""The engine cache: deterministic artifact names, sidecar metadata, atomic writes, validation.

An artifact's name says everything it depends on (model, weights hash, input size, precision,
backend, device, library version), so other weights or another library simply miss the cache.
The sidecar JSON next to each file records its SHA-256: a truncated or modified file fails
validation and is rebuilt instead of crashing the backend that would read it. Builders write to a
temporary file and rename it into place, and hold a per-artifact lock file while building, so
two processes asking for the same engine both end up with one valid file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import ConfigError
from ..models.base import StagedSegmenter

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "rtseg.engine-artifact"
SIDECAR_VERSION = 1
ENV_ENGINE_DIR = "RTSEG_ENGINE_DIR"
_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_SAFE = re.compile(r"[^A-Za-z0-9.+_]")


class CacheUnwritableError(ConfigError):
    """The engine cache cannot be written (read-only, full, not a folder): often transient, so
    ``auto`` does not store a choice made while a candidate failed for this reason."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # the short why, e.g. "cannot write to the engine cache X: No space..."


def default_engine_dir() -> Path:
    """$RTSEG_ENGINE_DIR, else the checkout's engines/ (next to the package), else the user cache."""
    env = os.environ.get(ENV_ENGINE_DIR)
    if env:
        return Path(env).expanduser()
    checkout = _PACKAGE_DIR.parent / "engines"
    if (checkout / "README.md").is_file():
        return checkout
    return user_cache_dir("engines", f"set {ENV_ENGINE_DIR} or pass --engine-dir")


def user_cache_dir(name: str, instead: str) -> Path:
    """~/.cache/rtseg/``name``. A user without a home directory (HOME unset and no passwd entry
    for the uid: a container run as an arbitrary --user) gets a ConfigError that says what to do
    ``instead``, not Path.home()'s RuntimeError traceback."""
    try:
        home = Path.home()
    except RuntimeError as exc:
        raise ConfigError(
            f"no folder for ~/.cache/rtseg/{name}: {exc} (HOME is unset and this user has no passwd "
            f"entry); {instead}"
        ) from None
    return home / ".cache" / "rtseg" / name


def file_safe(text: str) -> str:
    """``text`` as a part of an artifact's file name: anything but letters, digits, '.', '+' and
    '_' becomes '_'. Public: quantize finds cached int8 graphs by the names ArtifactKey.stem gives."""
    return _SAFE.sub("_", text)


@dataclass(frozen=True)
class ArtifactKey:
    """Everything an artifact depends on; ``stem`` is its file name without stage and suffix."""

    model: str
    weights: str  # short hash of the weights and the metadata baked into the graph
    input_size: tuple[int, int]
    precision: str
    backend: str
    device: str
    library: str
    variant: str = ""  # e.g. the calibration set of an int8 artifact
    # Digest of inputs the name cannot spell (the source files' hashes, build settings): not in
    # ``stem``, but in the sidecar's key, so an artifact built from other inputs is stale.
    source: str = ""

    def __post_init__(self) -> None:
        w, h = self.input_size
        if w <= 0 or h <= 0:
            raise ValueError(f"ArtifactKey.input_size must be positive (w, h), got {self.input_size}")
        for name in ("model", "weights", "precision", "backend", "device", "library"):
            if not getattr(self, name):
                raise ValueError(f"ArtifactKey.{name} must not be empty")

    @property
    def stem(self) -> str:
        w, h = self.input_size
        precision = f"{self.precision}_{self.variant}" if self.variant else self.precision
        parts = (self.model, self.weights, f"{w}x{h}", precision, self.backend, self.device, self.library)
        return "-".join(file_safe(p) for p in parts)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        if not self.source:
            del data["source"]  # keys without one read as before (artifacts built earlier stay valid)
        return data


def digest(record: Any, length: int = 12) -> str:
    """Short SHA-256 of a JSON-serialisable ``record`` (key order does not matter)."""
    text = json.dumps(record, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _key_difference(built: Any, wanted: Mapping[str, Any]) -> str:
    """'field: built X, this needs Y' for each differing field (the whole key if not a dict)."""
    if not isinstance(built, dict):
        return f"built for {built}, not {dict(wanted)}"
    fields = sorted(set(built) | set(wanted))
    diffs = [
        f"{f}: built {built.get(f)!r}, this needs {wanted.get(f)!r}"
        for f in fields
        if built.get(f) != wanted.get(f)
    ]
    return "built for another key (" + "; ".join(diffs) + ")"


@contextlib.contextmanager
def file_lock(path: Path, waiting_for: str | None = None) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if missing): a second holder, thread or
    process, waits (logging once, naming ``waiting_for``, when the lock is not free at once).
    Without POSIX locks only atomic renames keep files whole."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Held elsewhere (a build can take minutes): say so once, or the wait looks like a hang.
            log.info("waiting for another process building %s (lock %s)", waiting_for or path.stem, path)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def weights_hash(model: StagedSegmenter, length: int = 10) -> str:
    """SHA-256 of the parameters, buffers and metadata that end up inside an exported graph.

    Hashing the tensors (not the checkpoint file) also covers models built in memory, and the
    preprocessing and classes are included because normalisation and the argmax are in-graph.
    """
    digest = hashlib.sha256()
    meta = model.meta
    digest.update(
        json.dumps(
            {
                "model": meta.model,
                "config": {k: meta.config[k] for k in sorted(meta.config)},
                "classes": meta.classes.to_dict(),
                "num_outputs": meta.num_outputs,
                "preprocessing": meta.preprocessing.to_dict(),
            },
            sort_keys=True,
            default=str,
        ).encode()
    )
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """One validated file in the cache and its sidecar metadata."""

    path: Path
    sidecar: Mapping[str, Any]


# (sidecar) -> why the artifact is stale, or None
SidecarCheck = Callable[[Mapping[str, Any]], str | None]


class ArtifactCache:
    """A folder of engine artifacts: ``<stem>.<stage>.<suffix>`` plus ``<file>.json`` sidecars."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_engine_dir()
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"engine cache directory {self.directory} exists and is not a folder")

    def path(self, key: ArtifactKey, stage: str, suffix: str) -> Path:
        return self.directory / f"{key.stem}.{stage}.{suffix}"

    @staticmethod
    def sidecar_path(path: Path) -> Path:
        return path.with_name(path.name + ".json")

    def problem(self, key: ArtifactKey, path: Path, check: SidecarCheck | None = None) -> str | None:
        """Why ``path`` cannot be used as-is (None when it is valid): missing, stale or corrupt.

        ``check`` lets a builder add its own staleness rule: it gets the sidecar and returns why
        the artifact is stale, or None."""
        sidecar_path = self.sidecar_path(path)
        if not path.is_file():
            return "missing"
        if not sidecar_path.is_file():
            return f"corrupt: its sidecar {sidecar_path.name} is missing"
        try:
            sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"corrupt: unreadable sidecar ({exc})"
        if not isinstance(sidecar, dict):
            return f"corrupt: its sidecar holds a JSON {type(sidecar).__name__}, not an object"
        if sidecar.get("format") != SIDECAR_FORMAT or sidecar.get("format_version") != SIDECAR_VERSION:
            return f"stale: sidecar format {sidecar.get('format')!r} v{sidecar.get('format_version')!r}"
        if sidecar.get("key") != key.to_dict():
            return f"stale: {_key_difference(sidecar.get('key'), key.to_dict())}"
        if sidecar.get("rtseg_version") != __version__:
            return f"stale: built by rtseg {sidecar.get('rtseg_version')}, this is {__version__}"
        if check is not None and (reason := check(sidecar)) is not None:
            return f"stale: {reason}"
        try:
            size = path.stat().st_size
            if size != sidecar.get("size"):
                return f"corrupt: {size} bytes on disk, {sidecar.get('size')} when built (truncated?)"
            digest = file_sha256(path)
        except OSError as exc:  # a bad sector or a vanished network file: rebuild, do not crash the load
            return f"corrupt: unreadable ({exc.strerror or exc})"
        if digest != sidecar.get("sha256"):
            return "corrupt: its SHA-256 differs from the one recorded when it was built"
        return None

    def get(
        self, key: ArtifactKey, stage: str, suffix: str, check: SidecarCheck | None = None
    ) -> Artifact | None:
        """The valid artifact, or None (logging why an existing one is rejected)."""
        return self._lookup(key, stage, suffix, check, report=True)

    def _lookup(
        self, key: ArtifactKey, stage: str, suffix: str, check: SidecarCheck | None, *, report: bool
    ) -> Artifact | None:
        path = self.path(key, stage, suffix)
        problem = self.problem(key, path, check)
        if problem is None:
            return Artifact(path, json.loads(self.sidecar_path(path).read_text(encoding="utf-8")))
        if problem != "missing" and report:
            log.warning("engine cache: %s is %s; not using it", path.name, problem)
        return None

    def put(
        self, key: ArtifactKey, stage: str, suffix: str, data: bytes, metadata: Mapping[str, Any]
    ) -> Artifact:
        """Store ``data`` atomically, then its sidecar (whose presence marks the file complete)."""
        path = self.path(key, stage, suffix)
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            raise self._unwritable(exc) from None
        sidecar = {
            "format": SIDECAR_FORMAT,
            "format_version": SIDECAR_VERSION,
            "file": path.name,
            "stage": stage,
            "key": key.to_dict(),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "rtseg_version": __version__,
            "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **metadata,
        }
        try:
            atomic_write_text(self.sidecar_path(path), json.dumps(sidecar, indent=2, sort_keys=True))
        except OSError as exc:
            raise self._unwritable(exc) from None
        return Artifact(path, sidecar)

    def check_writable(self) -> None:
        """Probe the folder with a temporary file, so that a command whose job is to write
        artifacts fails up front rather than skipping every backend that needs the cache.
        Folders created for the probe are removed again: a check leaves nothing behind."""
        missing = [p for p in (self.directory, *self.directory.parents) if not p.exists()]
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".write-probe-"):
                pass
        except OSError as exc:
            raise self._unwritable(exc) from None
        finally:
            for folder in missing:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def _unwritable(self, exc: OSError) -> CacheUnwritableError:
        reason = f"cannot write to the engine cache {self.directory}: {exc.strerror or exc}"
        return CacheUnwritableError(
            f"{reason}; point --engine-dir (or RTSEG_ENGINE_DIR) at a writable folder", reason
        )

    @contextlib.contextmanager
    def lock(self, key: ArtifactKey) -> Iterator[None]:
        """Exclusive lock per artifact stem: a second builder waits, then finds the files ready."""
        lock_path = self.directory / f".{key.stem}.lock"
        with contextlib.ExitStack() as stack:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                stack.enter_context(file_lock(lock_path, waiting_for=key.stem))
            except OSError as exc:
                raise self._unwritable(exc) from None
            yield

    def get_or_build(
        self,
        key: ArtifactKey,
        stages: tuple[str, ...],
        suffix: str,
        build: Callable[[tuple[str, ...]], Mapping[str, tuple[bytes, Mapping[str, Any]]]],
        check: SidecarCheck | None = None,
    ) -> dict[str, Artifact]:
        """Return every stage's artifact, building (under the lock) only the missing or bad ones."""
        # Looked at twice, the second time under the lock: a rejected file is reported once, there.
        found = {s: self._lookup(key, s, suffix, check, report=False) for s in stages}
        if all(a is not None for a in found.values()):
            return found  # type: ignore[return-value]
        with self.lock(key):
            # another process may have built them
            found = {s: self.get(key, s, suffix, check) for s in stages}
            todo = tuple(s for s, a in found.items() if a is None)
            if todo:
                start = time.perf_counter()
                built = build(todo)
                seconds = round(time.perf_counter() - start, 3)
                for stage in todo:
                    data, metadata = built[stage]
                    found[stage] = self.put(key, stage, suffix, data, {**metadata, "build_seconds": seconds})
                log.info(
                    "engine cache: built %s.{%s}.%s in %.1f s", key.stem, ",".join(todo), suffix, seconds
                )
        return found  # type: ignore[return-value]

    def discard(self, key: ArtifactKey, stage: str, suffix: str) -> None:
        """Remove an artifact a runtime refused although its record was valid, so that the next
        ``get_or_build`` rebuilds it; the sidecar goes first (its presence marks a file complete)."""
        path = self.path(key, stage, suffix)
        with self.lock(key):
            for file in (self.sidecar_path(path), path):
                try:
                    file.unlink(missing_ok=True)
                except OSError as exc:
                    raise self._unwritable(exc) from None

    def find(self, pattern: str) -> list[Path]:
        """Artifacts whose file name matches a glob ``pattern`` (sidecars excluded)."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob(pattern) if not p.name.endswith(".json"))
