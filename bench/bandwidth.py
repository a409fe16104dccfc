"""How fast this machine reads memory: the ceiling for memory-bound decoding.

Decoding one token reads every weight once, so `bytes read per second / weight bytes` is the
fastest any engine can decode. numpy reductions release the GIL, so a few threads summing
disjoint arrays approximate what a multi-threaded GEMV can stream.
"""

from __future__ import annotations

import threading
import time

import numpy as np


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


if __name__ == "__main__":
    probe = BandwidthProbe()
    probe.measure(1)
    print(f"{probe.measure(5) / 1e9:.1f} GB/s read with {probe.threads} threads")
