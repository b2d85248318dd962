"""Choosing real or random weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtseg.bench.weights import RANDOM, choose_weights
from rtseg.errors import ConfigError


def _touch(root: Path, relative: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_random_when_the_data_folder_has_nothing(tmp_path: Path) -> None:
    choice = choose_weights("espnet", (1024, 512), root=tmp_path)
    assert choice.path is None and not choice.real and choice.origin == RANDOM
    assert choose_weights("enet", None, root=tmp_path).to_dict() == {
        "path": None,
        "origin": RANDOM,
        "real": False,
    }


def test_real_weights_by_model_and_size(tmp_path: Path) -> None:
    city = _touch(tmp_path, "weights/espnet/decoder/espnet_p_2_q_8.pth")
    camvid = _touch(tmp_path, "weights/espnet/decoder/espnet_p_2_q_8_camvid.pth")
    assert choose_weights("espnet", (1024, 512), root=tmp_path).path == city
    assert choose_weights("espnet", None, root=tmp_path).path == city
    chosen = choose_weights("espnet", (480, 360), root=tmp_path)
    assert chosen.path == camvid and chosen.real and "CamVid" in chosen.origin
    assert choose_weights("enet", (1024, 512), root=tmp_path).path is None  # no real ENet weights


def test_given_weights_must_exist(tmp_path: Path) -> None:
    path = _touch(tmp_path, "mine.pt")
    assert choose_weights("espnet", None, given=path).origin == "given: mine.pt"
    with pytest.raises(ConfigError, match="no such file"):
        choose_weights("espnet", None, given=tmp_path / "missing.pt")
