"""--private, --private-layers, --private-package and --verify-fraction reach the SDK from every
command that talks to a swarm (generate, chat, serve)."""

from __future__ import annotations

import pytest

from swarm.apps.cli import _parser, _trust
from swarm.errors import SwarmError


@pytest.mark.parametrize("command", [["generate", "hi"], ["chat"], ["serve"]])
def test_trust_flags_on_every_command(command: list[str]) -> None:
    args = _parser().parse_args([*command, "--private", "--private-layers", "2", "--private-package", "pkg",
                                 "--verify-fraction", "0.05"])  # fmt: skip
    assert _trust(args) == {"private": True, "private_layers": 2, "private_package": "pkg", "verify_fraction": 0.05}
    plain = _parser().parse_args(command)
    assert _trust(plain) == {"private": False, "private_layers": 0, "private_package": None, "verify_fraction": 0.0}


def test_local_runs_refuse_them() -> None:
    args = _parser().parse_args(["generate", "--local", "pkg", "--private", "hi"])
    with pytest.raises(SwarmError, match="--local runs the whole model"):
        _trust(args)
