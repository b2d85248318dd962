"""cli.common helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from rtseg.cli import main
from rtseg.cli.common import check_output, model_name_for, output_file
from rtseg.errors import ConfigError


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


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_check_output_tries_the_folder_rather_than_trusting_its_permissions(tmp_path: Path) -> None:
    """/proc looks writable to root, and no file can be made there: refused before the run."""
    with pytest.raises(ConfigError, match=r"--json /proc/r\.json: cannot write in /proc: "):
        check_output(Path("/proc/r.json"), "--json")
    check_output(tmp_path / "r.json", "--json")
    assert list(tmp_path.iterdir()) == []  # the trial file leaves nothing behind


def test_check_output_refuses_a_folder(tmp_path: Path) -> None:
    check_output(tmp_path / "new" / "r.json", "--json")
    check_output(None, "--json")
    with pytest.raises(ConfigError, match=r"--json .* is a folder: give the name of a file"):
        check_output(tmp_path, "--json")


@pytest.mark.data
def test_weights_alone_name_the_model_of_a_resaved_release(
    espnet_camvid_weights: Path, tmp_path: Path
) -> None:
    # `rtseg run --weights copy.pth` without --model: a re-saved copy of an authors' file was "a
    # plain state dict rtseg does not recognise", though it loads as the release with --model.
    state = torch.load(espnet_camvid_weights, map_location="cpu", weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, copy := tmp_path / "copy.pth")
    assert model_name_for(copy) == "espnet"


@pytest.mark.parametrize(
    "argv", [["export"], ["eval", "--dataset", "camvid", "--root", "x"], ["serve"], ["bench"], ["run"]]
)
def test_an_unset_device_is_left_to_the_backend(argv: list[str]) -> None:
    """Not 'cpu': rtseg.engine.load gives tensorrt and torch2trt 'cuda', the rest 'cpu'."""
    from rtseg.cli import build_parser

    assert build_parser().parse_args(argv).device is None
