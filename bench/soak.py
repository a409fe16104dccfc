"""Issue 16 soak: a 4-node swarm serving 8 sessions at once for half an hour while nodes die.

    python bench/soak.py [--minutes 30] [--kill-every 150] [--sessions 8]

Four node processes on 127.0.0.1 serve the TinyStories model, two replicas of each span [0, 3) and
[3, 5). Eight client threads sharing one `Swarm` (as an app embedding the SDK would) generate
greedy continuations back to back for the whole run; each one is compared with the local runner's
fault-free tokens. Every `--kill-every` seconds one of the two "churn" nodes (the second replica of
each span, in turn) is killed with SIGKILL and restarted on its port a few seconds later; the two
"steady" nodes are never touched, so their memory can be followed over the whole run.

Checked, from each node's own Prometheus metrics and /proc:
- every generation equals its fault-free reference (errors are counted, never hidden);
- afterwards no node holds a session, and its memory figure (weights plus live KV caches) is back to
  what it was when it started serving (no leaked KV bytes);
- the steady nodes' RSS grows less than 5 % from minute 5 to the end, and their open file
  descriptors stay flat.
Writes the "soak" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.baselines import DEFAULT_CACHE  # noqa: E402
from bench.bench_local import STORIES, export  # noqa: E402
from bench.report import replace_section  # noqa: E402
from swarm import LocalModel, Swarm  # noqa: E402
from swarm.environment import SWARM_KEY_ENV  # noqa: E402
from swarm.generation import GenerationRequest  # noqa: E402
from swarm.keys import SwarmKey  # noqa: E402

SPANS = [(0, 3), (3, 5)]
PROMPTS = ["Once upon a time", "The little dog", "Lily and Ben", "One day, a bird", "Tom had a big red"]
NEW_TOKENS = 48
RESTART_AFTER_S = 4.0
SAMPLE_EVERY_S = 20.0
SETTLE_S = 15.0  # after the last generation: time for streams to close on every node
STEADY_FROM_S = 300.0  # RSS growth is measured from minute 5 (caches, arenas and gRPC pools warm by then)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    package: Path
    span: tuple[int, int]
    churn: bool  # killed and restarted during the run
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    idle_memory: float = 0.0  # the memory figure when it started serving: weights, no sessions
    restarts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "node.cli", "join", "--model", str(self.package), "--blocks",
               f"{self.span[0]}:{self.span[1]}", "--host", "127.0.0.1", "--port", str(self.port), "--threads", "1",
               "--no-mdns", "--drain-timeout", "0", "--metrics-port", str(self.metrics_port)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        if not self.proc.stdout.readline().startswith("serving "):
            raise RuntimeError(f"node {self.span} did not start")
        self.idle_memory = self.metric("swarm_node_memory_used_bytes")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise RuntimeError(f"node {self.address} does not report {name}")

    def rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def open_fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


@dataclass
class Tally:
    generations: int = 0
    identical: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, same: bool | None, error: str = "") -> None:
        with self.lock:
            if same is None:
                self.errors.append(error)
            else:
                self.generations += 1
                self.identical += same


def client_loop(index: int, swarm: Swarm, expected: dict[tuple[int, ...], list[int]], stop: threading.Event,
                tally: Tally) -> None:  # fmt: skip
    prompts = list(expected)
    turn = index
    while not stop.is_set():
        prompt = prompts[turn % len(prompts)]
        turn += 1
        try:
            tokens = list(swarm.generate_ids(GenerationRequest(prompt, NEW_TOKENS, stop_on_eos=False)))
        except Exception as exc:  # counted, and the soak goes on
            tally.add(None, f"{type(exc).__name__}: {exc}")
            continue
        tally.add(tokens == expected[prompt])


def churn_loop(nodes: list[Node], kill_every: float, stop: threading.Event, kills: list[float]) -> None:
    churners = [n for n in nodes if n.churn]
    turn = 0
    while not stop.wait(kill_every):
        node = churners[turn % len(churners)]
        turn += 1
        node.kill()
        kills.append(time.monotonic())
        time.sleep(RESTART_AFTER_S)
        node.start()  # same port: it comes back where it was
        node.restarts += 1


def sample(nodes: list[Node], started: float, samples: list[dict[str, object]]) -> None:
    steady = [n for n in nodes if not n.churn]
    samples.append({"t": time.monotonic() - started, "rss": [n.rss_bytes() for n in steady],
                    "fds": [n.open_fds() for n in steady]})  # fmt: skip


def run(minutes: float, kill_every: float, sessions: int, cache: Path) -> dict[str, object]:
    package = export(STORIES, "float32", cache)
    with LocalModel(package) as local:
        prompts = [tuple(local.codec.encode(p)) for p in PROMPTS]
        expected = {p: list(local.generate_ids(GenerationRequest(p, NEW_TOKENS, stop_on_eos=False))) for p in prompts}
    nodes = [Node(package, span, churn=replica == 1) for span in SPANS for replica in range(2)]
    for node in nodes:
        node.start()
    tally, stop, kills = Tally(), threading.Event(), []
    samples: list[dict[str, object]] = []
    # one client, as an app embedding the SDK has, with `sessions` generations in flight at once
    swarm = Swarm(peers=[n.address for n in nodes], min_step_deadline_s=1.0, open_deadline_s=1.0)
    threads = [threading.Thread(target=client_loop, args=(i, swarm, expected, stop, tally)) for i in range(sessions)]
    monkey = threading.Thread(target=churn_loop, args=(nodes, kill_every, stop, kills))
    started = time.monotonic()
    try:
        try:
            for thread in [*threads, monkey]:
                thread.start()
            while time.monotonic() - started < minutes * 60:
                sample(nodes, started, samples)
                report_progress(tally, started, len(kills))
                time.sleep(SAMPLE_EVERY_S)
            sample(nodes, started, samples)
        finally:
            stop.set()
            for thread in [*threads, monkey]:
                thread.join(timeout=120)
            swarm.close()
        time.sleep(SETTLE_S)
        leftovers = [{"node": n.address, "sessions": n.metric("swarm_node_active_sessions"),
                      "kv_bytes": n.metric("swarm_node_memory_used_bytes") - n.idle_memory} for n in nodes]  # fmt: skip
    finally:
        for node in nodes:  # whatever went wrong, no node outlives the soak
            node.kill()
    return summarize(tally, samples, leftovers, kills, minutes, sessions, kill_every)


def report_progress(tally: Tally, started: float, kills: int) -> None:
    minutes = (time.monotonic() - started) / 60
    print(f"  {minutes:5.1f} min: {tally.generations} generations, {tally.identical} identical, "
          f"{len(tally.errors)} errors, {kills} kills", file=sys.stderr, flush=True)  # fmt: skip


def summarize(tally: Tally, samples: list[dict[str, object]], leftovers: list[dict[str, object]], kills: list[float],
              minutes: float, sessions: int, kill_every: float) -> dict[str, object]:  # fmt: skip
    warm = [s for s in samples if float(s["t"]) >= min(STEADY_FROM_S, minutes * 30)]  # type: ignore[arg-type]
    first, last = warm[0], samples[-1]
    growth = [b / a - 1 for a, b in zip(first["rss"], last["rss"], strict=True)]  # type: ignore[call-overload]
    fds = [sorted({s["fds"][i] for s in warm}) for i in range(len(first["fds"]))]  # type: ignore[index, arg-type]
    return {"minutes": minutes, "sessions": sessions, "kill_every_s": kill_every, "kills": len(kills),
            "generations": tally.generations, "identical": tally.identical, "errors": len(tally.errors),
            "first_errors": tally.errors[:5], "leftovers": leftovers, "rss_from_s": first["t"],
            "rss_first": first["rss"], "rss_last": last["rss"], "rss_growth": growth, "fds_seen": fds}  # fmt: skip


def verdict(r: dict[str, object]) -> list[str]:
    """The soak's claims, each false one named."""
    failed = []
    if r["identical"] != r["generations"] or r["errors"]:
        failed.append("a generation differed from its fault-free reference or failed")
    if any(float(x["sessions"]) or abs(float(x["kv_bytes"])) for x in r["leftovers"]):  # type: ignore[attr-defined]
        failed.append("a node still holds a session or KV bytes afterwards")
    if any(g >= 0.05 for g in r["rss_growth"]):  # type: ignore[attr-defined]
        failed.append("a steady node's RSS grew 5 % or more")
    if any(max(f) - min(f) > 2 for f in r["fds_seen"]):  # type: ignore[attr-defined]
        failed.append("a steady node's open file descriptors were not flat")
    return failed


def markdown(r: dict[str, object], failed: list[str], command: str) -> str:
    mib = [f"{a / 2**20:.1f} → {b / 2**20:.1f} MiB ({g:+.1%})"
           for a, b, g in zip(r["rss_first"], r["rss_last"], r["rss_growth"], strict=True)]  # type: ignore[call-overload]  # fmt: skip
    leftovers = ", ".join(f"{x['sessions']:.0f} sessions / {x['kv_bytes']:.0f} B" for x in r["leftovers"])  # type: ignore[attr-defined]
    return "\n".join([
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}). stories260K, four node processes (two replicas of "
        f"[0, 3) and [3, 5)), {r['sessions']} client threads generating {NEW_TOKENS} greedy tokens back to back for "
        f"{r['minutes']:g} minutes; every {r['kill_every_s']:g} s one churn node (the second replica of a span, in "
        f"turn) is killed with SIGKILL and restarted on its port {RESTART_AFTER_S:g} s later. Run on the shared "
        "2-core machine while other work ran (a correctness soak, not a speed figure).",
        "",
        "| generations | identical to fault-free | errors | kills | sessions / KV bytes left per node |",
        "| ---: | ---: | ---: | ---: | --- |",
        f"| {r['generations']} | {r['identical']} | {r['errors']} | {r['kills']} | {leftovers} |",
        "",
        f"Steady nodes' RSS from {float(r['rss_from_s']) / 60:.1f} min to the end: {'; '.join(mib)}. "  # type: ignore[arg-type]
        f"Open file descriptors seen after minute 5: {r['fds_seen']}.",
        "",
        f"Verdict: {'all claims hold' if not failed else 'FAILED: ' + '; '.join(failed)}. "
        f"First errors: {r['first_errors'] or 'none'}.",
        "",
    ])  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--kill-every", type=float, default=150.0, help="seconds between node kills")
    p.add_argument("--sessions", type=int, default=8, help="client threads generating at once")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args()
    os.environ.setdefault(SWARM_KEY_ENV, SwarmKey.generate().join_code)  # every node and client reads it
    result = run(args.minutes, args.kill_every, args.sessions, args.cache)
    failed = verdict(result)
    print(result)
    command = ("python bench/soak.py " + " ".join(sys.argv[1:])).strip()
    replace_section(REPO / "docs" / "BENCHMARKS.md", "soak", markdown(result, failed, command))
    if failed:
        sys.exit("soak failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
