"""Typed errors: every failure a user can cause names what was wrong and what to do."""

from __future__ import annotations


class RtsegError(Exception):
    """Base class for every error rtseg raises on purpose."""


class ConfigError(RtsegError, ValueError):
    """An option or argument has a value rtseg cannot use."""


class CheckpointError(RtsegError):
    """A weights file is missing, corrupt, or does not fit the model."""


class DatasetError(RtsegError):
    """A dataset folder is missing or not in the expected layout."""


class BackendUnavailableError(RtsegError):
    """An inference backend's library or device is not present on this machine."""


class EngineBuildError(RtsegError):
    """Exporting or compiling a model for a backend failed."""


class EngineClosedError(RtsegError, RuntimeError):
    """An engine was run after ``close()``: its sessions, plans or modules are released."""


class TrainingError(RtsegError):
    """Training cannot go on (the loss diverged); the last saved state is kept."""


class SourceError(RtsegError):
    """A frame source cannot be opened or was lost for good."""


class SinkError(RtsegError):
    """An output cannot be opened or written."""


class ProtocolError(RtsegError):
    """A streamed message does not follow the rtseg wire format."""


class StreamTimeout(RtsegError, TimeoutError):
    """A network peer did not answer within the configured time."""
