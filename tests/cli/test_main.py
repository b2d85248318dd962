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


def test_every_command_that_places_an_engine_describes_device_alike() -> None:
    """bench said "cpu or cuda[:N]" though it takes OpenVINO's gpu as run, eval and serve do."""
    from rtseg.cli import build_parser
    from rtseg.cli.common import DEVICE_HELP

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {
        name: next((a.help for a in parser._actions if "--device" in a.option_strings), None)
        for name, parser in sub.choices.items()
    }
    engine_commands = ("run", "eval", "export", "serve", "bench")
    assert {name: helps[name] for name in engine_commands} == dict.fromkeys(engine_commands, DEVICE_HELP)
