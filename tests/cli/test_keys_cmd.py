"""`rtseg keys`: CurveZMQ key generation from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtseg.cli import main


def test_keys_are_written_once_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "keys"
    assert main(["keys", str(target)]) == 0
    out = capsys.readouterr().out
    assert f"--curve-keys {target}" in out
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret", "clients/client.key"):
        assert (target / name).is_file(), name
    server_key = (target / "server.key").read_bytes()
    assert main(["keys", str(target)]) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "replace them with --force" in err
    assert (target / "server.key").read_bytes() == server_key
    assert main(["keys", str(target), "--force"]) == 0
    assert (target / "server.key").read_bytes() != server_key
    assert (target.stat().st_mode & 0o777) == 0o700  # a new key folder is private
    assert all(
        (target / f).stat().st_mode & 0o777 == 0o600 for f in ("server.key_secret", "client.key_secret")
    )


def test_a_folder_that_cannot_be_made_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert main(["keys", str(blocker / "keys")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rtseg keys: error: cannot write keys in {blocker / 'keys'}: ")
    assert len(err.strip().splitlines()) == 1


def test_a_file_in_place_of_the_key_folder_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "keys"
    target.write_text("")
    assert main(["keys", str(target)]) == 2
    assert (
        capsys.readouterr().err
        == f"rtseg keys: error: cannot write keys in {target}: it is a file, not a folder\n"
    )
