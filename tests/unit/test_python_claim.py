"""The Python version we claim is the one the checks use, and the one CI runs."""

from __future__ import annotations

import os
import re
import sys
import tomllib

from tests.conftest import REPO


def test_every_claim_names_the_same_oldest_python() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    claimed = re.fullmatch(r">=(\d+)\.(\d+)", project["project"]["requires-python"])
    assert claimed, project["project"]["requires-python"]
    major, minor = int(claimed[1]), int(claimed[2])
    assert project["tool"]["ruff"]["target-version"] == f"py{major}{minor}"
    assert project["tool"]["mypy"]["python_version"] == f"{major}.{minor}"
    assert f"Python ≥ {major}.{minor}" in (REPO / "README.md").read_text()
    if os.environ.get("CI"):  # CI tests the oldest version we claim, so the claim is a tested one
        assert sys.version_info[:2] == (major, minor), f"CI runs Python {sys.version.split()[0]}"
