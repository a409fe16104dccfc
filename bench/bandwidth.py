"""How fast this machine reads memory: the ceiling for memory-bound decoding.

Decoding one token reads every weight once, so `bytes read per second / weight bytes` is the
fastest any engine can decode. numpy reductions release the GIL, so a few threads summing
disjoint arrays approximate what a multi-threaded GEMV can stream.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import numpy as np

SETTLE_S = 0.06  # a spinning thread pool (ours with --spin, llama.cpp's) idles down within this


class BandwidthProbe:
    """Holds `gib` GiB of float32 (allocated once) and times reading all of it."""

    def __init__(self, threads: int = 2, gib: float = 2.0) -> None:
        per_thread = int(gib * 2**30 / 4 / threads)
        self.threads = threads
        self.arrays = [np.full(per_thread, 1.0 + i, np.float32) for i in range(threads)]
        self.nbytes = sum(a.nbytes for a in self.arrays)

    def measure(self, repeats: int = 3) -> float:
        """Best bytes/s over `repeats` full reads (best, because noise only ever slows a read)."""
        best = 0.0
        for _ in range(repeats):
            workers = [threading.Thread(target=np.add.reduce, args=(a,)) for a in self.arrays]
            start = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            best = max(best, self.nbytes / (time.perf_counter() - start))
        return best


def paired_steps(probe: BandwidthProbe, step: Callable[[], object], steps: int) -> list[tuple[float, float]]:
    """(seconds, bytes/s probed just before) for each of `steps` calls of `step`.

    Memory bandwidth on a shared machine drifts by tens of percent within seconds, so engines
    measured minutes apart cannot be compared by tokens/s alone. Dividing each step's speed by
    a probe taken tens of milliseconds earlier gives a figure that drift leaves alone. Every
    engine gets the same pause before its step, so none keeps threads spinning into it.
    """
    pairs = []
    for _ in range(steps):
        time.sleep(SETTLE_S)  # a spinning pool must not steal the probe's cores
        bandwidth = probe.measure(repeats=1)
        start = time.perf_counter()
        step()
        pairs.append((time.perf_counter() - start, bandwidth))
    return pairs


def per_bandwidth(pairs: list[tuple[float, float]]) -> dict[str, float | list[float]]:
    """Decode speed per GB/s of probed bandwidth: median and quartiles over paired steps."""
    values = [1 / seconds / (bandwidth / 1e9) for seconds, bandwidth in pairs]
    return {
        "decode_tok_s_per_gb_s": round(statistics.median(values), 4),
        "decode_tok_s_per_gb_s_quartiles": [round(q, 4) for q in statistics.quantiles(values, n=4)],
    }


if __name__ == "__main__":
    probe = BandwidthProbe()
    probe.measure(1)
    print(f"{probe.measure(5) / 1e9:.1f} GB/s read with {probe.threads} threads")
