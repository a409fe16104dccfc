"""The import rules of DESIGN.md: no torch on devices, and the direction between packages."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

# package -> packages it must never import
FORBIDDEN = {"swarm": {"node", "export", "android_bridge", "tests"}, "export": {"node", "android_bridge", "tests"},
             "node": {"export", "android_bridge", "tests"}, "android_bridge": {"export", "tests"}}  # fmt: skip


def test_devices_run_without_torch_or_transformers() -> None:
    heavy = "{'torch', 'transformers'}"
    code = f"import sys, swarm, swarm.cli, node.cli, node.server\nprint(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def imported_packages(path) -> set[str]:  # type: ignore[no-untyped-def]
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): bad
        for path in (REPO / package).rglob("*.py")
        if (bad := imported_packages(path) & FORBIDDEN[package])
    }
    assert offenders == {}
