"""rtseg.paths: output files refused before the work that would fill them."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtseg.errors import ConfigError
from rtseg.paths import check_output


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
