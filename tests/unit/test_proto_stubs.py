"""The committed stubs in swarm/_proto are exactly what scripts/gen-proto makes from proto/swarm.proto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUBS = ["swarm_pb2.py", "swarm_pb2.pyi", "swarm_pb2_grpc.py"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen-proto")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [str(REPO / "scripts" / "gen-proto"), str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"scripts/gen-proto failed:\n{result.stdout}\n{result.stderr}"
    return out / "swarm" / "_proto"


@pytest.mark.parametrize("name", STUBS)
def test_committed_stub_matches_generated(generated: Path, name: str) -> None:
    fresh = generated / name
    assert fresh.is_file(), f"scripts/gen-proto did not write {name}"
    committed = REPO / "swarm" / "_proto" / name
    assert committed.read_bytes() == fresh.read_bytes(), (
        f"swarm/_proto/{name} differs from what proto/swarm.proto generates; run scripts/gen-proto and commit"
    )


def test_generator_writes_nothing_unexpected(generated: Path) -> None:
    assert sorted(p.name for p in generated.iterdir()) == sorted(STUBS)
