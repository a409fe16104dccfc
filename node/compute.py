"""Where a node's steps compute: one worker thread, or the event loop itself for a tiny span.

One thread, because onnxruntime parallelises inside each op: sessions take turns (and share
passes, node/batcher.py) instead of oversubscribing the cores. A span under
`INLINE_COMPUTE_BYTES` of weights computes a step in well under a millisecond, less than handing
it to the thread costs, so it runs on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

INLINE_COMPUTE_BYTES = 8 << 20
T = TypeVar("T")


class ComputeExecutor:
    """`await compute.run(fn, *args)`: `fn(*args)` where this node computes; `close()` waits for
    the step in progress and stops the thread."""

    def __init__(self, weight_bytes: int) -> None:
        self.inline = weight_bytes < INLINE_COMPUTE_BYTES
        self._thread = None if self.inline else ThreadPoolExecutor(max_workers=1, thread_name_prefix="swarm-compute")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
