"""Typed errors: every failure a user can cause names what was wrong and what to do."""

from __future__ import annotations

from typing import TypeVar

# Python 3.11+: exceptions have add_note() and tracebacks print their __notes__. rtseg supports
# 3.10 too, where neither holds (add_note raised AttributeError and hid the real error).
NATIVE_NOTES = hasattr(BaseException, "add_note")

_E = TypeVar("_E", bound=BaseException)


class RtsegError(Exception):
    """Base class for every error rtseg raises on purpose."""


class ConfigError(RtsegError, ValueError):
    """An option or argument has a value rtseg cannot use."""


class InputTypeError(RtsegError, TypeError):
    """An argument or input is of a type rtseg cannot take (a frame that is no NumPy array, a
    callback that is a coroutine function): a TypeError, and an RtsegError like every error rtseg
    raises on purpose, so that one ``except RtsegError`` in a robot's loop catches it."""


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


def add_note(exc: _E, note: str) -> _E:
    """``exc.add_note(note)``; on Python 3.10 the note is appended to ``exc.__notes__`` as 3.11
    would (the ``rtseg`` command prints the notes there, since 3.10's tracebacks do not)."""
    native = getattr(exc, "add_note", None) if NATIVE_NOTES else None
    if native is not None:
        native(note)
        return exc
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list):
        notes = []
        setattr(exc, "__notes__", notes)  # noqa: B010 (typeshed has no __notes__ before 3.11)
    notes.append(note)
    return exc


def notes_of(exc: BaseException) -> list[str]:
    """The notes added to ``exc`` (none when it has none)."""
    notes = getattr(exc, "__notes__", None)
    return [str(n) for n in notes] if isinstance(notes, list) else []
