"""The top-level package: what the README calls through ``rtseg.`` works after ``import rtseg`` alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_documented_subpackages_resolve_after_a_bare_import() -> None:
    """README: ``rtseg.models.list_models()``, ``rtseg.engine.load(...)``; the Segmenter's errors:
    ``rtseg.schedule.make_scheduler(...)``. Each raised AttributeError unless something else had
    imported the subpackage first. A fresh interpreter, since this one has imported them all."""
    code = (
        "import rtseg, sys\n"
        "assert 'rtseg.models' not in sys.modules\n"
        "assert 'espnet' in rtseg.models.list_models()\n"
        "assert callable(rtseg.engine.load) and callable(rtseg.schedule.make_scheduler)\n"
        "assert callable(rtseg.overlay.colorize)\n"
        "assert {'models', 'engine', 'schedule', 'overlay'} <= set(dir(rtseg))\n"
        "try:\n    rtseg.nope\nexcept AttributeError as e:\n    assert 'nope' in str(e)\n"
        "else:\n    raise SystemExit('rtseg.nope resolved')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
