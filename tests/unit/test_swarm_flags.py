"""The flags about a swarm's sessions (--private, --private-layers, --private-package,
--verify-fraction, --wire-dtype, --speculative-depth) reach the SDK from every command that talks to a swarm
(generate, chat, serve), and a run with --local refuses them."""

from __future__ import annotations

import pytest

from swarm.apps.cli import _parser, _swarm_options
from swarm.config import ClientConfig
from swarm.errors import SwarmError

DEFAULTS = {"private": False, "private_layers": 0, "private_package": None, "verify_fraction": 0.0,
            "wire_dtype": "float32", "speculative_depth": ClientConfig.speculative_depth}  # fmt: skip


@pytest.mark.parametrize("command", [["generate", "hi"], ["chat"], ["serve"]])
def test_swarm_flags_on_every_command(command: list[str]) -> None:
    args = _parser().parse_args([*command, "--private", "--private-layers", "2", "--private-package", "pkg",
                                 "--verify-fraction", "0.05", "--wire-dtype", "bfloat16",
                                 "--speculative-depth", "3"])  # fmt: skip
    assert _swarm_options(args) == {"private": True, "private_layers": 2, "private_package": "pkg",
                                    "verify_fraction": 0.05, "wire_dtype": "bfloat16",
                                    "speculative_depth": 3}  # fmt: skip
    assert _swarm_options(_parser().parse_args(command)) == DEFAULTS


@pytest.mark.parametrize("flags", [["--private"], ["--verify-fraction", "0.1"], ["--wire-dtype", "int8"],
                                   ["--speculative", "lookup", "--speculative-depth", "2"]])  # fmt: skip
def test_local_runs_refuse_them(flags: list[str]) -> None:
    args = _parser().parse_args(["generate", "--local", "pkg", *flags, "hi"])
    with pytest.raises(SwarmError, match="--local runs the whole model"):
        _swarm_options(args)


def test_an_unknown_wire_dtype_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["generate", "--wire-dtype", "int3", "hi"])
    assert exit_.value.code == 2
    assert "invalid choice: 'int3'" in capsys.readouterr().err
