"""Choosing real or random weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtseg.bench import weights
from rtseg.bench.weights import RANDOM, choose_weights, data_root, default_data_root
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


def test_an_installed_rtseg_needs_rtseg_data(tmp_path: Path, monkeypatch) -> None:
    """The default was ../shared/data beside the package's parent: for an installed rtseg, a
    folder beside site-packages that nobody made."""
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    (site / "rtseg").mkdir(parents=True)
    (site / "rtseg" / "__init__.py").write_text("")
    _touch(site.parent / "shared" / "data", "weights/espnet/decoder/espnet_p_2_q_8.pth")
    monkeypatch.setattr(weights, "_REPO", site)
    monkeypatch.delenv("RTSEG_DATA", raising=False)
    assert default_data_root() is None
    with pytest.raises(ConfigError, match=r"^no data folder: set RTSEG_DATA to the folder with the weights"):
        data_root()
    assert choose_weights("espnet", (1024, 512)).origin == RANDOM  # random, and the result says so
    monkeypatch.setenv("RTSEG_DATA", str(tmp_path / "data"))
    assert data_root() == tmp_path / "data"


def test_a_checkout_keeps_shared_data_beside_it_as_the_default(tmp_path: Path, monkeypatch) -> None:
    checkout = tmp_path / "rtseg"
    (checkout / "rtseg").mkdir(parents=True)
    (checkout / "rtseg" / "__init__.py").write_text("")
    (checkout / "setup.py").write_text('setup(name="rtseg")\n')
    monkeypatch.setattr(weights, "_REPO", checkout)
    monkeypatch.delenv("RTSEG_DATA", raising=False)
    assert data_root() == tmp_path / "shared" / "data"


def test_given_weights_must_exist(tmp_path: Path) -> None:
    path = _touch(tmp_path, "mine.pt")
    assert choose_weights("espnet", None, given=path).origin == "given: mine.pt"
    with pytest.raises(ConfigError, match="no such file"):
        choose_weights("espnet", None, given=tmp_path / "missing.pt")
