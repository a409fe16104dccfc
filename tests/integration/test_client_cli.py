"""swarm-client generate --local, as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from swarm.package import ModelPackage
from tests.conftest import STORIES_PROMPT, STORIES_REFERENCE_TEXT, TEST_SWARM_KEY
from tests.helpers import LocalCluster


def run_client(*args: object) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "swarm.apps.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("pool", [(), ("--no-spin",)], ids=["one spinning pool (default)", "stage pools"])
def test_greedy_text_on_stdout_stats_on_stderr(stories_package: ModelPackage, pool: tuple[str, ...]) -> None:
    result = run_client("generate", "--local", stories_package.root, *pool, "--max-tokens", 40, "--temperature", 0,
                        STORIES_PROMPT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert STORIES_PROMPT + result.stdout.rstrip("\n") == STORIES_REFERENCE_TEXT
    assert result.stderr.startswith("5 prompt tokens, 40 new") and result.stderr.count("\n") == 1  # nothing else


def test_seeded_sampling_repeats(stories_package: ModelPackage) -> None:
    args = ("generate", "--local", stories_package.root, "--max-tokens", 30, "--temperature", 0.8,
            "--top-p", 0.9, "--seed", 7, "--quiet", STORIES_PROMPT)  # fmt: skip
    first, second = run_client(*args), run_client(*args)
    assert first.returncode == 0 and first.stdout == second.stdout and first.stderr == ""


def test_errors_are_one_line(stories_package: ModelPackage, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cases = [
        (("generate", "--local", tmp_path, "hi"), "is not a model package"),
        (("generate", "--local", stories_package.root, "--temperature", -1, "hi"), "temperature must be"),
        (
            ("generate", "--local", stories_package.root, "--max-tokens", 600, "hi"),
            "exceeds the model's context",
        ),
    ]
    for args, message in cases:
        result = run_client(*args)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().startswith("swarm-client: error:") and message in result.stderr


def test_errors_name_the_command_lines_flags_not_the_sdks() -> None:
    """The SDK says peers=['host:port'] (tests/integration/test_discovery.py); a CLI user has --peer."""
    no_swarm = run_client("generate", "--mdns-interface", "127.0.0.1", "--discovery-timeout", 0.3, "hi")
    assert no_swarm.returncode == 1
    assert no_swarm.stderr == ("swarm-client: error: found no swarm on the local network within 0.3s; start nodes "
                               "with `swarm-node join`, or give --peer HOST:PORT\n")  # fmt: skip
    bad_key = run_client("generate", "--peer", "127.0.0.1:9", "--swarm-key", "nope", "hi")
    assert bad_key.returncode == 1
    assert bad_key.stderr == ("swarm-client: error: --swarm-key 'nope' is neither a join code (swarm1-...) nor a "
                              "key file\n")  # fmt: skip


def test_local_runs_on_the_spinning_pool_unless_told_not_to() -> None:
    from swarm.apps.cli import _parser

    assert _parser().parse_args(["generate", "--local", "pkg", "hi"]).spin is True
    assert _parser().parse_args(["chat", "--local", "pkg", "--no-spin"]).spin is False


@pytest.mark.parametrize("depth", ["1", "2"])
def test_speculative_decoding_from_the_command_line(stories_package: ModelPackage, cluster: LocalCluster,
                                                    depth: str) -> None:  # fmt: skip
    cluster.start_chain(stories_package.root, [(0, 2), (2, 5)])
    peers = [arg for address in cluster.addresses for arg in ("--peer", address)]
    result = run_client("generate", *peers, "--swarm-key", TEST_SWARM_KEY.join_code, "--max-tokens", 40,
                        "--speculative", "lookup", "--speculative-depth", depth, STORIES_PROMPT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert STORIES_PROMPT + result.stdout.rstrip("\n") == STORIES_REFERENCE_TEXT  # the plain greedy reference
    assert "drafts accepted" in result.stderr and "tokens per pass" in result.stderr, result.stderr
