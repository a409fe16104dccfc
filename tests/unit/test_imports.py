"""The import rules of DESIGN.md: no torch on devices, and the direction between packages."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# package -> packages it must never import
FORBIDDEN = {"swarm": {"node", "export", "android_bridge", "tests"}, "export": {"node", "android_bridge", "tests"},
             "node": {"export", "android_bridge", "tests"}, "android_bridge": {"export", "tests"}}  # fmt: skip


# the apps (swarm/apps: swarm-client's commands, the HTTP API) sit on the library, never under it
APPS = "swarm.apps"
# the front doors that read the process environment; everything else takes values
READS_ENVIRONMENT = {"swarm/environment.py", "swarm/console.py", "node/cli.py", "export/cli.py",
                     "android_bridge/config.py"}  # and every app  # fmt: skip


def test_devices_run_without_torch_or_transformers() -> None:
    heavy = "{'torch', 'transformers'}"
    code = f"import sys, swarm, swarm.apps.cli, node.cli, node.server\nprint(sorted({heavy} & set(sys.modules)))"
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


def project_modules() -> dict[str, Path]:
    """Every module of the four packages (generated stubs aside), by dotted name."""
    found = {}
    for package in FORBIDDEN:
        for path in (REPO / package).rglob("*.py"):
            if "_proto" not in path.parts:
                found[".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports, at the top or inside a function alike."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycle_anywhere() -> None:
    graph = import_graph(project_modules())
    assert len(graph) > 60  # the walk found the project, not an empty folder
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_cycle_check_sees_a_cycle() -> None:
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter({"a": {"b"}, "b": {"c"}, "c": {"a"}}).prepare()


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def test_the_library_never_imports_an_app() -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(bad)
        for path in project_modules().values()
        if APPS.replace(".", "/") not in str(path.relative_to(REPO))
        and (bad := {m for m in imported_modules(path) if m == APPS or m.startswith(APPS + ".")})
    }
    assert offenders == {}


def reads_environment(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                and node.attr in ("environ", "getenv", "environb"):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "os" and \
                {a.name for a in node.names} & {"environ", "getenv", "environb"}:
            return True
    return False


def test_only_the_front_doors_read_the_environment() -> None:
    readers = {str(p.relative_to(REPO)) for p in project_modules().values() if reads_environment(p)}
    assert {r for r in readers if not r.startswith("swarm/apps/")} <= READS_ENVIRONMENT
    assert "swarm/environment.py" in readers and reads_environment(REPO / "swarm" / "apps" / "demo.py")
