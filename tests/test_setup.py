"""setup.py: what it declares matches what rtseg needs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _install_requires() -> list[str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [ast.literal_eval(element) for element in node.value.elts]  # type: ignore[attr-defined]
    raise AssertionError("setup.py has no install_requires")


def test_the_torch_floor_has_the_onnx_export_options_rtseg_passes() -> None:
    """torch>=2.4 allowed a torch whose torch.onnx.export has no external_data (a TypeError in
    every dynamo export: onnx_export._export_dynamo); 2.5 is the first that has it."""
    (spec,) = [r for r in _install_requires() if re.match(r"torch\b", r)]
    match = re.fullmatch(r"torch>=(\d+)\.(\d+)(?:\.\d+)?", spec)
    assert match, spec
    assert (int(match[1]), int(match[2])) >= (2, 5), spec
