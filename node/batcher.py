"""Where a node's steps compute, and continuous batching on top.

`ComputeExecutor`: one worker thread, because onnxruntime parallelises inside each op, so
sessions take turns instead of oversubscribing the cores; a span under `INLINE_COMPUTE_BYTES`
of weights computes a step in well under a millisecond, less than handing it to the thread
costs, so it runs on the loop itself.

`DecodeBatcher`: single-token steps of different sessions run as one onnxruntime pass. Steps
wait in a queue while the previous pass computes; the next pass takes everything that queued
up (at most `max_batch`), so sessions join and leave the batch between steps and a lone session
never waits for company. Prompt prefills take the executor directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from node.sessions import NodeSession
from swarm.span import SpanRuntime, StepOutput

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



@dataclass
class _Waiting:
    session: NodeSession
    hidden: np.ndarray  # (1, 1, H)
    done: asyncio.Future[StepOutput]


class DecodeBatcher:
    """`live_sessions` tells how many sessions could join a pass: when steps of several sessions
    are in flight, a pass waits a moment (a small share of a pass, at most `max_wait_s`) for the
    others to arrive instead of running the first one alone."""

    def __init__(
        self, span: SpanRuntime, compute: ComputeExecutor, live_sessions: Callable[[], int], max_batch: int = 16,
        max_wait_s: float = 0.005,
    ) -> None:  # fmt: skip
        self._span, self._compute, self._max_batch = span, compute, max_batch
        self._live_sessions, self._max_wait_s = live_sessions, max_wait_s
        self._queue: list[_Waiting] = []
        self._arrived = asyncio.Event()
        self._draining: asyncio.Task[None] | None = None
        self._last_pass_s = 0.0
        self.batches = 0  # passes run, and rows in them: for stats and tests
        self.rows = 0

    async def step(self, session: NodeSession, hidden: np.ndarray) -> StepOutput:
        done: asyncio.Future[StepOutput] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(session, hidden, done))
        self._arrived.set()
        if self._draining is None or self._draining.done():
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        return await done

    async def _gather(self) -> None:
        """Wait (briefly) until every live session's step is queued."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self._max_wait_s, self._last_pass_s / 4)
        while len(self._queue) < min(self._live_sessions(), self._max_batch):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _drain(self) -> None:
        while self._queue:
            await self._gather()
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            batch = [w for w in batch if not w.done.cancelled()]  # its client went away meanwhile
            if not batch:
                continue
            started = time.perf_counter()
            try:
                outputs = await self._pass(batch)
            except Exception as exc:  # the whole pass failed: every step in it gets the error
                for waiting in batch:
                    if not waiting.done.done():
                        waiting.done.set_exception(exc)
                continue
            self._last_pass_s = time.perf_counter() - started
            for waiting, output in zip(batch, outputs, strict=True):
                if not waiting.done.done():
                    waiting.done.set_result(output)

    async def _pass(self, batch: list[_Waiting]) -> list[StepOutput]:
        self.batches += 1
        self.rows += len(batch)
        sessions = [w.session for w in batch]
        if len(batch) == 1:
            s = sessions[0]
            return [await self._compute.run(self._span.forward, batch[0].hidden, s.caches, s.sampling,
                                            s.return_logits)]  # fmt: skip
        hidden = np.concatenate([w.hidden for w in batch])
        return await self._compute.run(
            self._span.forward_batch,
            hidden,
            [s.caches for s in sessions],
            [s.sampling for s in sessions],
            [s.return_logits for s in sessions],
        )
