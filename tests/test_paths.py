"""rtseg.paths: output files refused before the work that would fill them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rtseg.errors import ConfigError, SourceError
from rtseg.paths import check_output, opencv_path


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


def test_opencv_path_refuses_a_name_that_is_not_utf8_and_names_it() -> None:
    """OpenCV's binding crashed the process (SIGSEGV) on such a name: b'caf\\xe9', 'caf\\udce9' to Python."""
    bad = Path("/data") / os.fsdecode(b"caf\xe9") / "clip.mp4"
    with pytest.raises(
        SourceError,
        match=r"^/data/caf\\xe9/clip\.mp4: the name 'caf\\xe9' is not valid UTF-8 \(byte 0xe9\), and "
        r"OpenCV opens files by UTF-8 names only; rename it to a UTF-8 name$",
    ) as caught:
        opencv_path(bad, SourceError)
    str(caught.value).encode("ascii")  # the message prints in any locale
    assert opencv_path(Path("/data/é ü/clip.mp4"), SourceError) == "/data/é ü/clip.mp4"
    assert opencv_path("clip.mp4", SourceError) == "clip.mp4"


@pytest.mark.skipif(os.name == "nt", reason="POSIX file names are bytes")
def test_opencv_path_gives_opencv_the_name_on_disk_where_an_ascii_locale_misdecoded_it() -> None:
    # Under LC_ALL=C without UTF-8 mode Python holds the UTF-8 name b"caf\xc3\xa9" as surrogates.
    misdecoded = "/data/" + b"caf\xc3\xa9".decode("ascii", "surrogateescape")
    assert opencv_path(misdecoded, SourceError) == "/data/café"
