"""Issue 6 benchmark: generations through a swarm whose nodes are killed, paused and restarted.

    python bench/chaos.py [--generations 200] [--seed 0]

Six node processes on 127.0.0.1 serve the TinyStories model, two for each of three spans. While
the generations run one after another, a chaos thread keeps hitting random nodes: SIGKILL
(restarted on the same port a moment later) or SIGSTOP (resumed later), never both nodes of a
span at once, so a replica always exists. Each generation is compared with the local runner's
greedy tokens. Reports completed, identical, the faults injected and the recovery pause
p50/p95. Writes the "chaos" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.baselines import DEFAULT_CACHE  # noqa: E402
from bench.bench_local import STORIES, export  # noqa: E402
from bench.report import replace_section  # noqa: E402
from swarm import LocalModel, Swarm  # noqa: E402
from swarm.environment import SWARM_KEY_ENV  # noqa: E402
from swarm.generation import GenerationRequest, GenerationStats  # noqa: E402
from swarm.keys import SwarmKey  # noqa: E402

SPANS = [(0, 2), (2, 3), (3, 5)]
PROMPTS = ["Once upon a time", "The little dog", "Lily and Ben", "One day, a bird", "Tom had a big red"]
NEW_TOKENS = 40


class Node:
    def __init__(self, package: Path, span: tuple[int, int]) -> None:
        self.package, self.span, self.port = package, span, 0
        self.proc: subprocess.Popen[str] | None = None
        self.down = False  # killed or paused by the chaos thread
        self.address = ""

    def start(self) -> None:
        cmd = [sys.executable, "-m", "node.cli", "join", "--model", str(self.package), "--blocks",
               f"{self.span[0]}:{self.span[1]}", "--host", "127.0.0.1", "--port", str(self.port), "--threads", "1",
               "--no-mdns", "--drain-timeout", "0"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("serving "):
            raise RuntimeError(f"node {self.span} did not start")
        self.address = line.split(" at ")[1].split()[0]
        self.port = int(self.address.rsplit(":", 1)[1])

    def send(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        self.send(signal.SIGCONT)
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def chaos(nodes: list[Node], rng: random.Random, stop: threading.Event, faults: dict[str, int]) -> None:
    """Hit one node every 0.3-1.2 s; bring it back 1-3 s later."""
    while not stop.wait(rng.uniform(0.3, 1.2)):
        candidates = [n for n in nodes if not n.down and not any(m.down for m in nodes if m.span == n.span)]
        if not candidates:
            continue
        node = rng.choice(candidates)
        node.down = True
        if rng.random() < 0.6:
            faults["kill -9"] += 1
            node.send(signal.SIGKILL)
            assert node.proc is not None
            node.proc.wait()
            stop.wait(rng.uniform(1.0, 3.0))
            node.start()  # same port: it rejoins where it was
        else:
            faults["SIGSTOP"] += 1
            node.send(signal.SIGSTOP)
            stop.wait(rng.uniform(1.0, 3.0))
            node.send(signal.SIGCONT)
        node.down = False


def run(generations: int, seed: int, cache: Path) -> dict[str, object]:
    package = export(STORIES, "float32", cache)
    with LocalModel(package) as local:
        prompts = [tuple(local.codec.encode(p)) for p in PROMPTS]
        expected = {p: list(local.generate_ids(GenerationRequest(p, NEW_TOKENS, stop_on_eos=False))) for p in prompts}
    nodes = [Node(package, span) for span in SPANS for _ in range(2)]
    for node in nodes:
        node.start()
    rng, stop = random.Random(seed), threading.Event()
    faults = {"kill -9": 0, "SIGSTOP": 0}
    monkey = threading.Thread(target=chaos, args=(nodes, rng, stop, faults), daemon=True)
    completed = identical = 0
    pauses: list[float] = []
    errors: list[str] = []
    try:
        with Swarm(peers=[n.address for n in nodes], min_step_deadline_s=1.0, open_deadline_s=1.0) as swarm:
            monkey.start()
            for index in range(generations):
                prompt = prompts[index % len(prompts)]
                stats = GenerationStats()
                try:
                    tokens = list(swarm.generate_ids(GenerationRequest(prompt, NEW_TOKENS, stop_on_eos=False), stats))
                except Exception as exc:  # counted, and the run goes on
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                completed += 1
                identical += tokens == expected[prompt]
                pauses += stats.recoveries
    finally:
        stop.set()
        monkey.join(timeout=10)
        for node in nodes:
            node.stop()
    quantiles = statistics.quantiles(pauses, n=20) if len(pauses) >= 2 else [0.0] * 19
    return {"generations": generations, "completed": completed, "identical": identical, "faults": faults,
            "recoveries": len(pauses), "pause_p50_s": statistics.median(pauses) if pauses else 0.0,
            "pause_p95_s": quantiles[18], "errors": errors[:5]}  # fmt: skip


def markdown(r: dict[str, object], command: str) -> str:
    return "\n".join([
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}). stories260K, six node processes (two per span "
        "[0, 2), [2, 3), [3, 5)); a chaos thread hits a random node every 0.3-1.2 s with kill -9 (restarted on "
        "the same port 1-3 s later) or SIGSTOP (resumed 1-3 s later), keeping one node of each span up. "
        f"Generations of {NEW_TOKENS} greedy tokens, one after another; client step deadlines 1 s minimum.",
        "",
        "| generations | completed | identical to fault-free | faults injected | recoveries | pause p50 | pause p95 |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: |",
        f"| {r['generations']} | {r['completed']} | {r['identical']} | {r['faults']} | {r['recoveries']} | "
        f"{r['pause_p50_s']:.2f} s | {r['pause_p95_s']:.2f} s |",
        "",
        f"Errors (first five): {r['errors'] or 'none'}.",
        "",
    ])  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generations", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args()
    # a swarm key for this run, in the environment every node process and client reads
    os.environ.setdefault(SWARM_KEY_ENV, SwarmKey.generate().join_code)
    result = run(args.generations, args.seed, args.cache)
    print(result)
    command = ("python bench/chaos.py " + " ".join(sys.argv[1:])).strip()
    replace_section(REPO / "docs" / "BENCHMARKS.md", "chaos", markdown(result, command))


if __name__ == "__main__":
    main()
