"""`swarm-client demo`: a swarm of node processes on this machine, and a chat with it.

Only subprocesses and the SDK: the demo drives `swarm-export` and `swarm-node` the way a
user would, so it exercises the real thing.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from swarm.console import TextSink
from swarm.environment import SWARM_KEY_ENV
from swarm.errors import PeerUnavailable, SwarmError
from swarm.keys import SwarmKey
from swarm.known_models import DEFAULT_CHAT_MODEL, locate
from swarm.package import MANIFEST_NAME, load_package

NODE_START_TIMEOUT_S = 120.0


def cache_dir() -> Path:
    return Path(os.environ.get("SWARM_CACHE") or Path.home() / ".cache" / "swarm")


def _source_digest(model: Path) -> str:
    """What names the export of `model` in the cache: its config, or a GGUF file's bytes."""
    if model.is_file():
        digest = hashlib.sha256()
        with model.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
        return digest.hexdigest()[:12]
    return hashlib.sha256((model / "config.json").read_bytes()).hexdigest()[:12]


def ensure_package(model: Path) -> Path:
    """`model` itself if it is a package; otherwise export the checkpoint or GGUF once into the cache."""
    if (model / MANIFEST_NAME).is_file():
        return model
    if not ((model / "config.json").is_file() or (model.is_file() and model.suffix.lower() == ".gguf")):
        raise SwarmError(f"{model} is neither a model package, a Hugging Face checkpoint folder nor a GGUF file")
    name = model.stem if model.is_file() else model.resolve().name
    package = cache_dir() / "packages" / f"{name}-{_source_digest(model)}"
    if not (package / MANIFEST_NAME).is_file():
        print(f"exporting {model} to {package} ...", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "export.cli", str(model), str(package), "--force"], check=True, stdout=sys.stderr
        )
    return package


def split_spans(block_edges: Sequence[int], nodes: int) -> list[tuple[int, int]]:
    """Cut [0, L) on block edges into min(nodes, blocks) contiguous spans of near-equal layer counts."""
    edges = list(block_edges)
    blocks, num_layers = len(edges) - 1, edges[-1]
    groups = max(1, min(nodes, blocks))
    cuts = [0]
    for i in range(1, groups):
        # the next cut lies past the previous one and leaves one block for each span still to come
        allowed = edges[edges.index(cuts[-1]) + 1 : blocks - (groups - i) + 1]
        cuts.append(min(allowed, key=lambda e: abs(e - i * num_layers / groups)))
    cuts.append(num_layers)
    return list(itertools.pairwise(cuts))


class NodeProcesses:
    """`swarm-node join` processes on 127.0.0.1, stopped with SIGTERM on exit."""

    def __init__(self, package: Path, spans: Sequence[tuple[int, int]], swarm_key: SwarmKey | None,
                 threads: int = 1) -> None:  # fmt: skip
        self.package, self.spans, self.threads = package, spans, threads
        self.swarm_key = swarm_key  # None: an open swarm
        self.procs: list[subprocess.Popen[str]] = []
        self.addresses: list[str] = []

    def __enter__(self) -> NodeProcesses:
        try:
            for start, end in self.spans:
                self.addresses.append(self._start(start, end))
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self, start: int, end: int) -> str:
        cmd = [sys.executable, "-m", "node.cli", "join", "--model", str(self.package), "--blocks", f"{start}:{end}",
               "--host", "127.0.0.1", "--port", "0", "--threads", str(self.threads)]  # fmt: skip
        env = dict(os.environ)
        if self.swarm_key is None:
            cmd.append("--insecure")
        else:  # in the environment, not the command line, where `ps` would show it
            env[SWARM_KEY_ENV] = self.swarm_key.join_code
        # a process group of its own: the terminal's Ctrl-C is for the chat (it stops an answer), not
        # for the nodes; they stop with SIGTERM when the demo ends
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                process_group=0)  # fmt: skip
        self.procs.append(proc)
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("serving "):
                return line.split(" at ")[1].split()[0]
        raise PeerUnavailable(f"node for layers [{start}, {end}) did not start (exit code {proc.poll()})")

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_demo(model: Path | None, nodes: int, max_tokens: int, sampling: dict[str, float | int],
             stdout: TextSink = sys.stdout, speculative_depth: int = 1) -> None:  # fmt: skip
    from swarm.apps.chat import ChatSession
    from swarm.client import Swarm

    package = ensure_package(model or locate(DEFAULT_CHAT_MODEL))
    manifest = load_package(package).manifest
    spans = split_spans([b.start for b in manifest.blocks] + [manifest.num_layers], nodes)
    print(f"starting {len(spans)} nodes for {manifest.name}: " + ", ".join(f"[{a}, {b})" for a, b in spans),
          file=sys.stderr)  # fmt: skip
    key = SwarmKey.generate()  # a private swarm of this machine's processes, for this run only
    with NodeProcesses(package, spans, key) as procs, \
            Swarm(peers=procs.addresses, swarm_key=key, speculative_depth=speculative_depth) as swarm:  # fmt: skip
        print(f"swarm ready at {', '.join(procs.addresses)}", file=sys.stderr)
        ChatSession(swarm, max_tokens, sampling).run(sys.stdin, stdout)
