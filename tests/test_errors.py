"""rtseg.errors: notes on exceptions on Python 3.10 (no add_note) as on 3.11+."""

from __future__ import annotations

import pytest

from rtseg.errors import DatasetError, InputTypeError, RtsegError, add_note, notes_of


class Raised(RuntimeError):
    pass


def test_notes_are_added_natively_where_python_can() -> None:
    exc = RuntimeError("boom")
    assert add_note(exc, "first") is exc
    add_note(exc, "second")
    assert notes_of(exc) == ["first", "second"]


def test_notes_are_kept_on_python_3_10(python310) -> None:
    """On 3.10 exc.add_note() raised AttributeError, which hid the error being annotated."""
    python310(Raised)
    exc = Raised("boom")
    with pytest.raises(AttributeError):
        exc.add_note("x")  # the 3.10 stand-in has none
    assert add_note(exc, "first") is exc
    add_note(exc, "second")
    assert exc.__notes__ == ["first", "second"]  # where 3.11 keeps them, so tools find them there
    assert notes_of(exc) == ["first", "second"]


def test_an_exception_without_notes_has_none() -> None:
    assert notes_of(DatasetError("x")) == []


def test_a_wrong_type_is_an_rtseg_error_and_a_type_error() -> None:
    """Caught by a robot loop's ``except RtsegError`` and by code that catches TypeError."""
    assert issubclass(InputTypeError, RtsegError) and issubclass(InputTypeError, TypeError)
