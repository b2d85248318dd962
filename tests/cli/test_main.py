"""The `rtseg` command itself: how an error that ends a command is reported."""

from __future__ import annotations

import argparse

import pytest

from rtseg.cli import main, models_cmd
from rtseg.errors import DatasetError, add_note


class Unexpected(RuntimeError):
    pass


def test_an_error_is_one_line_with_its_notes(monkeypatch, capsys) -> None:
    """The notes (a calibration list edited since its id was recorded) were left out."""

    def fails(args: argparse.Namespace) -> int:
        raise add_note(DatasetError("cannot read calibration image x.png"), "the list's entries changed")

    monkeypatch.setattr(models_cmd, "run", fails)
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err == "rtseg models: error: cannot read calibration image x.png; the list's entries changed\n"


def test_notes_of_an_unexpected_error_are_printed_on_python_3_10(monkeypatch, capsys, python310) -> None:
    """3.10's traceback leaves __notes__ out (the async scheduler's failed keyframe): the command
    prints them before the traceback; from 3.11 the traceback does."""
    python310(Unexpected)

    def fails(args: argparse.Namespace) -> int:
        raise add_note(Unexpected("deep stage blew up"), "the deep stage of keyframe 7 failed")

    monkeypatch.setattr(models_cmd, "run", fails)
    with pytest.raises(Unexpected):
        main(["models"])
    assert capsys.readouterr().err == "rtseg models: note: the deep stage of keyframe 7 failed\n"
