"""swarm-export as a user runs it: bad input gets one clear line and a non-zero exit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from swarm.package import load_package
from tests.conftest import STORIES, golden_checkpoint

SRC = golden_checkpoint("llama_gqa_untied")


def run_export(*args: object) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "export.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def assert_clean_failure(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("swarm-export: error:"), result.stderr
    assert message in last


def broken_copy(tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    src = Path(shutil.copytree(SRC, tmp_path / "ckpt"))
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, src / "model.safetensors")
    return src


def test_export_writes_a_loadable_package(tmp_path: Path) -> None:
    result = run_export(STORIES, tmp_path / "out", "--layers-per-block", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "out")
    assert "3/5" not in result.stderr  # no progress bar when stderr is not a terminal
    assert len(load_package(tmp_path / "out").manifest.blocks) == 3


def test_not_a_checkpoint(tmp_path: Path) -> None:
    assert_clean_failure(run_export(tmp_path, tmp_path / "out"), "has no config.json")
    assert_clean_failure(run_export(tmp_path / "missing", tmp_path / "out"), "is not a folder")


def test_unsupported_architecture(tmp_path: Path) -> None:
    src = Path(shutil.copytree(SRC, tmp_path / "ckpt"))
    config = json.loads((src / "config.json").read_text())
    config["architectures"], config["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (src / "config.json").write_text(json.dumps(config))
    assert_clean_failure(run_export(src, tmp_path / "out"), "unsupported architecture GPT2LMHeadModel")


def test_missing_tensor_leaves_nothing_behind(tmp_path: Path) -> None:
    src = broken_copy(tmp_path, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    out = tmp_path / "out"
    assert_clean_failure(run_export(src, out), "missing tensor 'model.layers.1.mlp.down_proj.weight'")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging folder left


def test_misshaped_tensor(tmp_path: Path) -> None:
    def shrink(t: dict) -> None:  # type: ignore[type-arg]
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:-1]

    src = broken_copy(tmp_path, shrink)
    assert_clean_failure(run_export(src, tmp_path / "out"), "has shape [31, 64] but config.json implies [32, 64]")


def test_extra_tensor_is_an_error(tmp_path: Path) -> None:
    src = broken_copy(tmp_path, lambda t: t.update({"model.layers.0.extra.weight": t["model.norm.weight"]}))
    assert_clean_failure(run_export(src, tmp_path / "out"), "unused by the llama graph: model.layers.0.extra")


def test_unwritable_out(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_clean_failure(run_export(SRC, blocker / "out"), "cannot create")
    assert_clean_failure(run_export(SRC, blocker), "exists and is not a folder")


def test_existing_out_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert_clean_failure(run_export(SRC, out), "pass --force")
    assert (out / "precious.txt").read_text() == "keep me"
    assert run_export(SRC, out, "--force").returncode == 0
    assert not (out / "precious.txt").exists()
    load_package(out)


@pytest.mark.parametrize("flag", [["--quantize", "int3"], ["--dtype", "bfloat16"], ["--layers-per-block", "x"]])
def test_bad_flags(tmp_path: Path, flag: list[str]) -> None:
    result = run_export(SRC, tmp_path / "out", *flag)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "invalid" in result.stderr
