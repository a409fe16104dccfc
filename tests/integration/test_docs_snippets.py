"""Every Python snippet in docs/*.md runs, against a real small swarm this test starts.

README.md's snippets run in tests/integration/test_readme.py, in the tour they belong to (its
package, its nodes on 7001, its server on 8000). A snippet that cannot run on its own says so on
the line before its fence, and why: `<!-- not run: ... -->`. The docs' example values stand for
this test's swarm: the address `192.168.1.20:7001` for its first node, `swarm1-...` for its
join code, and `Swarm()` finds it by mDNS on loopback ($SWARM_MDNS_INTERFACES)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from swarm.environment import SWARM_KEY_ENV
from swarm.keys import SwarmKey
from swarm.package import ModelPackage
from tests.conftest import REPO
from tests.helpers import LocalCluster

NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")
LOOPBACK = ("127.0.0.1",)


@dataclass(frozen=True)
class Snippet:
    where: str  # file:line of the fence
    code: str
    not_run: str | None  # why, when the doc says it cannot run on its own


def python_snippets(path: Path) -> list[Snippet]:
    snippets, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            i += 1
            while not lines[i].strip().startswith("```"):
                i += 1
            marker = NOT_RUN.search(lines[start - 1]) if start else None
            snippets.append(Snippet(f"{path.relative_to(REPO)}:{start + 1}", "\n".join(lines[start + 1 : i]),
                                    marker[1] if marker else None))  # fmt: skip
        i += 1
    return snippets


def test_the_marker_is_read() -> None:
    doc = REPO / "docs" / "SDK.md"
    assert [s.not_run is not None for s in python_snippets(doc)] == [True, False, False]


def test_every_python_snippet_in_the_docs_runs(cluster: LocalCluster, stories_package: ModelPackage,
                                               tmp_path: Path) -> None:  # fmt: skip
    key = SwarmKey.generate()  # a swarm of its own: mDNS on loopback hears other tests' swarms too
    mdns = {"mdns": True, "mdns_interfaces": LOOPBACK, "announce_interval_s": 0.5, "swarm_key": key}
    tail = cluster.start(stories_package.root, (2, 5), **mdns)
    head = cluster.start(stories_package.root, (0, 2), peers=(tail.address,), **mdns)
    example = {"192.168.1.20:7001": head.address, "swarm1-...": key.join_code}
    env = {**os.environ, SWARM_KEY_ENV: key.join_code, "SWARM_MDNS_INTERFACES": ",".join(LOOPBACK)}

    snippets = [s for doc in sorted((REPO / "docs").glob("*.md")) for s in python_snippets(doc)]
    ran = []
    for snippet in (s for s in snippets if s.not_run is None):
        code = snippet.code
        for shown, real in example.items():
            code = code.replace(shown, real)
        done = subprocess.run([sys.executable, "-"], input=code, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=180)  # fmt: skip
        assert done.returncode == 0, f"{snippet.where} failed:\n{done.stderr[-3000:]}"
        assert done.stdout.strip(), f"{snippet.where} printed nothing"
        ran.append(snippet.where)
    skipped = [f"{s.where} ({s.not_run})" for s in snippets if s.not_run is not None]
    print(f"ran {len(ran)} Python snippets of docs/*.md: {', '.join(ran)}; not run, as marked: {'; '.join(skipped)}")
    assert len(ran) >= 2 and len(ran) + len(skipped) == len(snippets)
