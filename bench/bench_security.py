"""Issue 7 benchmark: per-token latency with authentication + encryption on against off, in one run.

    python bench/bench_security.py [--models stories260K,tinyllama-1.1b] [--rounds 5] [--generations 2]

Two 2-node swarms of real `swarm-node` processes on 127.0.0.1 (default onnxruntime threads)
serve the same float32 package: one keyed (every call authenticated, every session frame
sealed with ChaCha20-Poly1305), one open (`--insecure`). Rounds alternate between them so the
machine's drift hits both alike. Reports time per output token (p50 / p95) and time to first
token (which includes the per-hop handshakes), and the overhead of the keyed swarm. Writes
bench/out/security.json and the "security" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.baselines import DEFAULT_CACHE  # noqa: E402
from bench.bench_local import checkpoint, export  # noqa: E402
from bench.bench_swarm import measure  # noqa: E402
from bench.report import replace_section  # noqa: E402
from swarm.apps.demo import NodeProcesses, split_spans  # noqa: E402
from swarm.client import Swarm  # noqa: E402
from swarm.keys import SwarmKey  # noqa: E402
from swarm.package import load_package  # noqa: E402

SPANS_OF = 2  # nodes per swarm


@contextmanager
def swarms(package: Path, spans: list[tuple[int, int]], key: SwarmKey,
           keyed_first: bool) -> Iterator[tuple[Swarm, Swarm]]:  # fmt: skip
    """A keyed and an open 2-node swarm of the same spans, with a client for each."""
    with ExitStack() as stack:
        keys = (key, None) if keyed_first else (None, key)
        started = {k: stack.enter_context(NodeProcesses(package, spans, k, threads=0)) for k in keys}
        secure = Swarm(peers=started[key].addresses, swarm_key=key, mdns=False)
        stack.callback(secure.close)
        plain = Swarm(peers=started[None].addresses, swarm_key=None, mdns=False)
        stack.callback(plain.close)
        assert secure.swarm.credentials is not None and plain.swarm.credentials is None
        yield secure, plain


def bench_model(name: str, cache: Path, rounds: int, generations: int) -> dict[str, Any]:
    package = export(checkpoint(name, cache), "float32", cache)
    manifest = load_package(package).manifest
    spans = split_spans([b.start for b in manifest.blocks] + [manifest.num_layers], SPANS_OF)
    vocab = manifest.architecture.vocab_size
    key = SwarmKey.generate()
    runs: dict[str, list[dict[str, Any]]] = {"encrypted": [], "open": []}
    print(f"== {name}: spans {spans}", file=sys.stderr)
    # whichever swarm's processes start first ran ~5 % slower in an open-vs-open control, so
    # each half of the rounds starts the other one first
    for half, keyed_first in enumerate((True, False)):
        half_rounds = range(half * rounds // 2, (half + 1) * rounds // 2)
        with swarms(package, spans, key, keyed_first) as (secure, plain):
            for round_ in half_rounds:
                order = [("encrypted", secure), ("open", plain)]
                for setup, model in order if round_ % 2 == 0 else reversed(order):
                    print(f"  round {round_ + 1}: {setup}", file=sys.stderr)
                    runs[setup].append(measure(model, vocab, generations))
    rows = {setup: combine(results) for setup, results in runs.items()}
    return {"model": name, "rounds": rounds, "generations_per_round": generations, "rows": rows,
            "hidden_size": manifest.architecture.hidden_size,
            "frame_us": round(frame_cost_us(manifest.architecture.hidden_size), 2)}  # fmt: skip


def frame_cost_us(hidden_size: int, repeats: int = 20_000) -> float:
    """Microseconds to seal and open one decode step's hidden state (1, 1, H) on one link."""
    import numpy as np

    from swarm._proto import swarm_pb2 as pb
    from swarm.auth import Credentials, new_exchange, session_keys
    from swarm.frames import SealedFrames
    from swarm.keys import Identity
    from swarm.tensors import to_wire

    key = SwarmKey.generate()
    caller, callee = Credentials(key, Identity.generate()), Credentials(key, Identity.generate())
    private, public = new_exchange()
    metadata, transcript = caller.call("Session", callee.node_id, x_public=public)
    proof = callee.check_call(metadata, "Session")
    peer_private, peer_public = new_exchange()
    _, reply_transcript = callee.reply("Session", proof, peer_public)
    sender = SealedFrames(session_keys(key, private, peer_public, transcript, reply_transcript, True), caller=True)
    receiver = SealedFrames(session_keys(key, peer_private, public, transcript, reply_transcript, False), False)
    step = pb.SessionRequest(step=pb.Step(step=1, position=1, hidden=to_wire(np.ones((1, 1, hidden_size), "f4"))))
    started = time.perf_counter()
    for _ in range(repeats):
        receiver.open(sender.seal(step))
    return (time.perf_counter() - started) / repeats * 1e6


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ["tpot_ms_p50", "tpot_ms_p95", "ttft_ms_p50", "decode_tok_s", "wire_bytes_per_token"]
    merged: dict[str, Any] = {k: statistics.median(r[k] for r in results) for k in keys}
    merged["tpot_ms_p50_rounds"] = [r["tpot_ms_p50"] for r in results]
    return merged


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [f"Command: `{command}` ({time.strftime('%Y-%m-%d')}; two 2-node swarms of `swarm-node` processes on "
             "127.0.0.1, default onnxruntime threads (2, or 1 for a stage under 1 MiB), float32; prompt 64 "
             "tokens, 32 new, greedy; each half of the rounds starts the other swarm's processes first, "
             "since the first-started ran ~5 % slower in an open-vs-open control; rounds alternate between the "
             "keyed and the open swarm; medians over rounds).", "",
             "| model | setup | TPOT p50 ms | TPOT p95 ms | TTFT p50 ms | decode tok/s | loopback bytes/token |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in results:
        for setup, row in r["rows"].items():
            lines.append(f"| {r['model']} | {setup} | {row['tpot_ms_p50']:.3f} | {row['tpot_ms_p95']:.3f} | "
                         f"{row['ttft_ms_p50']:.1f} | {row['decode_tok_s']:.1f} | "
                         f"{row['wire_bytes_per_token']} |")  # fmt: skip
    lines += ["", "| model | per-token overhead, measured (TPOT p50) | seal + open of one hidden state | "
              "crypto per token (4 links) | goal <= 3 % |", "| --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    for r in results:
        on, off = r["rows"]["encrypted"]["tpot_ms_p50"], r["rows"]["open"]["tpot_ms_p50"]
        crypto_ms = 4 * r["frame_us"] / 1000  # client -> A -> B and back: four sealed messages per token
        verdict = "met" if on / off - 1 <= 0.03 else "NOT met"
        lines.append(f"| {r['model']} | {100 * (on / off - 1):+.1f} % ({on:.3f} vs {off:.3f} ms) | "
                     f"{r['frame_us']:.1f} µs (H={r['hidden_size']}) | {crypto_ms:.3f} ms = "
                     f"{100 * crypto_ms / off:.2f} % | {verdict} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="stories260K,tinyllama-1.1b")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--generations", type=int, default=2, help="generations per setup per round")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args()
    results = [bench_model(name, args.cache, args.rounds, args.generations) for name in args.models.split(",")]
    out = args.cache / "security.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    command = "python bench/bench_security.py " + " ".join(sys.argv[1:])
    text = markdown(results, command.strip())
    replace_section(REPO / "docs" / "BENCHMARKS.md", "security", text)
    print(text)


if __name__ == "__main__":
    main()
