"""Fixtures shared by the command tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(params=["folder", "under-a-file"])
def unusable_output(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], Path]:
    """An output path that cannot be written, by name: an existing folder, or a name under the
    file ``tmp_path/blocker`` (whose content, 'keep', a test can check is untouched)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("keep")
    return lambda name: tmp_path if request.param == "folder" else blocker / name
