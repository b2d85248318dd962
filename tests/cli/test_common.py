"""cli.common helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from rtseg.cli import main
from rtseg.cli.common import output_file


def test_an_output_file_ending_in_a_separator_is_refused(tmp_path: Path) -> None:
    """'out/' means a folder, though Path('out/') is Path('out'): a file named 'out' was written."""
    for text in (f"{tmp_path / 'new'}/", f"{tmp_path}/"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"/ ends in '/', so it names a folder"):
            output_file(text)
    assert output_file("~/r.json") == Path.home() / "r.json"
    assert output_file(str(tmp_path / "r.json")) == tmp_path / "r.json"


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--json", "{}/"],
        ["bench", "--csv", "{}/"],
        ["eval", "--dataset", "camvid", "--root", "x", "--json", "{}/"],
        ["run", "synthetic://drive", "null://", "--json", "{}/"],
        ["calibrate", "--video", "x.mp4", "--list", "{}/"],
        ["train", "--dataset", "camvid", "--root", "x", "--out", "{}/"],
    ],
)
def test_every_output_file_option_refuses_a_folder_name(tmp_path: Path, argv: list[str], capsys) -> None:
    folder = tmp_path / "new"
    with pytest.raises(SystemExit) as stop:
        main([a.format(folder) for a in argv])
    assert stop.value.code == 2
    assert f"{folder}/ ends in '/', so it names a folder" in capsys.readouterr().err
    assert not folder.exists()


@pytest.mark.parametrize(
    "argv", [["export"], ["eval", "--dataset", "camvid", "--root", "x"], ["serve"], ["bench"], ["run"]]
)
def test_an_unset_device_is_left_to_the_backend(argv: list[str]) -> None:
    """Not 'cpu': rtseg.engine.load gives tensorrt and torch2trt 'cuda', the rest 'cpu'."""
    from rtseg.cli import build_parser

    assert build_parser().parse_args(argv).device is None


@pytest.mark.parametrize("command", ["run", "serve"])
def test_a_precision_the_backend_does_not_run_is_refused_before_the_model_loads(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """run and serve took any --precision and found out after loading the model and the engine."""
    argv = ["run", "synthetic://drive?frames=2", "null://"] if command == "run" else ["serve"]
    assert main([*argv, "--backend", "torch", "--precision", "int8"]) == 2
    captured = capsys.readouterr()
    assert "--precision must be one of fp32, fp16 (--backend torch runs those), got 'int8'" in captured.err
    assert "loading" not in captured.out + captured.err
