"""The environment fingerprint."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rtseg import __version__
from rtseg.bench import environment
from rtseg.bench.environment import (
    fingerprint,
    git_state,
    hardware_line,
    library_versions,
    source_checkout,
)


def test_fingerprint_has_hardware_libraries_and_code_version() -> None:
    fp = fingerprint()
    cpu = fp["cpu"]
    assert cpu["model"] and 1 <= cpu["physical_cores"] <= cpu["logical_cores"]
    assert cpu["logical_cores"] == (os.cpu_count() or cpu["logical_cores"])
    assert isinstance(fp["gpus"], list)
    libs = fp["libraries"]
    import numpy
    import torch

    assert libs["torch"] == torch.__version__ and libs["numpy"] == numpy.__version__
    assert {"onnxruntime", "openvino", "opencv", "tensorrt"} <= set(libs)
    assert fp["rtseg"]["version"] == __version__
    assert fp["timestamp"].endswith("+00:00")


def test_missing_library_is_none(monkeypatch) -> None:
    monkeypatch.setattr(environment, "_LIBRARIES", (("nothing", ("surely-not-installed-rtseg-dist",)),))
    assert library_versions() == {"nothing": None}


def test_git_state_of_this_checkout_and_outside_one(tmp_path: Path) -> None:
    state = git_state()
    if state["commit"] is not None:  # a git checkout (the normal case)
        assert len(state["commit"]) == 40 and isinstance(state["dirty"], bool)
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


def _git_repo(root: Path) -> str:
    """A git work tree at ``root`` with one commit of what it holds; its commit."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"git {args[0]} failed here: {done.stderr.strip()}")
        return done.stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "user's project")
    return git("rev-parse", "HEAD")


def _rtseg_tree(root: Path) -> Path:
    """A folder laid out as rtseg's source tree: its setup.py and the package."""
    (root / "rtseg").mkdir(parents=True)
    (root / "rtseg" / "__init__.py").write_text("")
    (root / "setup.py").write_text('setup(\n    name="rtseg",\n)\n')
    return root


def test_an_installed_rtseg_inside_another_repository_records_no_commit(tmp_path: Path) -> None:
    """git -C site-packages walked up to the repository that holds the venv (the user's project)
    and recorded its commit as rtseg's."""
    site = tmp_path / "project" / ".venv" / "lib" / "python3.11" / "site-packages"
    (site / "rtseg").mkdir(parents=True)
    (site / "rtseg" / "__init__.py").write_text("")
    (tmp_path / "project" / "app.py").write_text("")
    _git_repo(tmp_path / "project")
    assert not source_checkout(site)
    assert git_state(site) == {"commit": None, "dirty": None}
    # rtseg's source tree unpacked inside the user's repository is not a checkout of rtseg either
    vendored = _rtseg_tree(tmp_path / "project" / "vendor" / "rtseg-src")
    assert source_checkout(vendored)
    assert git_state(vendored) == {"commit": None, "dirty": None}


def test_a_checkout_of_rtseg_records_its_commit(tmp_path: Path) -> None:
    checkout = _rtseg_tree(tmp_path / "rtseg")
    commit = _git_repo(checkout)
    assert git_state(checkout) == {"commit": commit, "dirty": False}
    (checkout / "setup.py").write_text('setup(name="rtseg", version="2")\n')
    assert git_state(checkout) == {"commit": commit, "dirty": True}


def test_hardware_line_names_cpu_cores_and_gpu() -> None:
    fp = {"cpu": {"model": "Some CPU", "physical_cores": 2, "logical_cores": 4}, "gpus": []}
    assert hardware_line(fp) == "Some CPU, 2 physical cores (4 logical), GPU: none"
    fp["gpus"] = [{"index": 0, "name": "NVIDIA H200", "memory_gb": 139.8}]
    assert hardware_line(fp).endswith("GPU: NVIDIA H200")


def test_hardware_line_tells_cpus_with_one_name_apart_by_their_vector_units() -> None:
    fp = {"cpu": {"model": "AMD EPYC", "physical_cores": 2, "logical_cores": 2}, "gpus": []}
    older = {**fp, "cpu": {**fp["cpu"], "flags": ["avx2", "fma"]}}
    newer = {**fp, "cpu": {**fp["cpu"], "flags": ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"]}}
    assert hardware_line(older).startswith("AMD EPYC (AVX2), 2 physical cores")
    assert hardware_line(newer).startswith("AMD EPYC (AVX2, AVX-512, VNNI), 2 physical cores")
