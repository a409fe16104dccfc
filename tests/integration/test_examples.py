"""The example apps under examples/ run as documented, against a real swarm and locally."""

from __future__ import annotations

import subprocess
import sys

from swarm import LocalModel
from swarm.package import ModelPackage
from tests.conftest import REPO
from tests.helpers import LocalCluster

PROMPT = "Once upon a time, there was a little girl named Lily."


def storyteller(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "examples/storyteller.py", "Lily", "--max-tokens", "30", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_storyteller_tells_the_local_runners_story_through_a_swarm(
    cluster: LocalCluster, stories_package: ModelPackage
) -> None:
    with LocalModel(stories_package.root) as local:
        expected = local.generate(PROMPT, 30, temperature=0)
    cluster.start_chain(stories_package.root, [(0, 2), (2, 5)])
    peers = [arg for address in cluster.addresses for arg in ("--peer", address)]
    through_swarm = storyteller(*peers)  # the swarm key comes from $SWARM_KEY, as the docs say
    assert through_swarm.returncode == 0, through_swarm.stderr
    assert through_swarm.stdout == expected + "\n" and len(expected) > 40
    assert "tokens/s; route 127.0.0.1" in through_swarm.stderr
    local = storyteller("--local", str(stories_package.root))
    assert local.returncode == 0 and local.stdout == through_swarm.stdout


def test_storyteller_says_what_is_wrong_in_one_line() -> None:
    done = storyteller("--peer", "127.0.0.1:9", "--swarm-key", "swarm1-nope")
    assert done.returncode == 1
    assert done.stderr.startswith("storyteller: ") and "Traceback" not in done.stderr
