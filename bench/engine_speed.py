"""Our local runner's prefill and decode speed on a package, next to the memory-bandwidth floor.

    python bench/engine_speed.py PKG [--prompt-len 128 --new-tokens 32 --threads 2 --repeats 3]

The bandwidth floor is probed right before each decode step of a separate interleaved run, so
the ratio `decode / floor`, and decode tok/s per GB/s of bandwidth (comparable across engines,
see bench/baselines.py), hold even on a machine whose bandwidth drifts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bandwidth import BandwidthProbe, paired_steps, per_bandwidth
from swarm.config import RuntimeOptions
from swarm.local import LocalModel
from swarm.package import ModelPackage
from swarm.sampling import SamplingParams


def weight_bytes_per_token(package: ModelPackage) -> int:
    """Bytes every decode step must read: all blocks and the head (the embedding is one row)."""
    m = package.manifest
    return sum(b.bytes for b in m.blocks) + m.head.bytes


def run_once(model: LocalModel, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    session = model.session(len(prompt) + new_tokens + 1)
    greedy = SamplingParams()
    start = time.perf_counter()
    token = session.next_token(prompt, greedy)
    mid = time.perf_counter()
    for _ in range(new_tokens):
        token = session.next_token([token], greedy)
    return mid - start, time.perf_counter() - mid


def paired_decode(model: LocalModel, probe: BandwidthProbe, prompt: list[int], steps: int) -> list[tuple[float, float]]:
    """Decode steps, each paired with a bandwidth probe taken right before it."""
    session = model.session(len(prompt) + steps + 1)
    greedy = SamplingParams()
    token = session.next_token(prompt, greedy)

    def step() -> None:
        nonlocal token
        token = session.next_token([token], greedy)

    return paired_steps(probe, step, steps)


def local_speed(package_dir: Path, prompt_len: int, new_tokens: int, threads: int, repeats: int,
                spin: bool = False) -> dict:  # fmt: skip
    model = LocalModel(package_dir, RuntimeOptions(threads=threads, spin=spin))
    vocab = model.manifest.architecture.vocab_size
    prompt = [int(t) for t in np.random.default_rng(0).integers(3, vocab, size=prompt_len)]
    per_token = weight_bytes_per_token(model.package)
    probe = BandwidthProbe(threads=threads, gib=1.0)
    run_once(model, prompt, 4)  # warm-up: page in every weight
    probe.measure(1)
    runs = [run_once(model, prompt, new_tokens) for _ in range(repeats)]
    pairs = paired_decode(model, probe, prompt[:16], new_tokens)
    ratios = [1 / seconds / (bandwidth / per_token) for seconds, bandwidth in pairs]
    bandwidth = probe.measure(repeats=5)
    return {
        "engine": "swarm local",
        "package": str(package_dir),
        "dtype": model.manifest.dtype,
        "quantization": model.manifest.quantization,
        "weight_bytes_per_token": per_token,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "threads": threads,
        "spin": spin,
        "prefill_tok_s": round(statistics.median(prompt_len / p for p, _ in runs), 2),
        "decode_tok_s": round(statistics.median(new_tokens / d for _, d in runs), 2),
        "decode_tok_s_runs": [round(new_tokens / d, 2) for _, d in runs],
        "bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "floor_tok_s": round(bandwidth / per_token, 2),
        "ratio_to_floor": round(statistics.median(ratios), 3),
        "ratio_to_floor_quartiles": [round(q, 3) for q in statistics.quantiles(ratios, n=4)],
        **per_bandwidth(pairs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("package", type=Path)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--spin", action="store_true", help="one spinning onnxruntime pool (RuntimeOptions.spin)")
    a = p.parse_args()
    print(json.dumps(local_speed(a.package, a.prompt_len, a.new_tokens, a.threads, a.repeats, a.spin), indent=2))


if __name__ == "__main__":
    main()
