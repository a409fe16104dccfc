"""Continuous batching: single-token steps of different sessions run as one onnxruntime pass.

Steps wait in a queue while the previous pass computes; the next pass takes everything that
queued up (at most `max_batch`), so sessions join and leave the batch between steps and a lone
session never waits for company. Prompt prefills and lone steps take the ordinary path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from node.sessions import NodeSession
from node.span import SpanRuntime, StepOutput

Runner = Callable[..., Awaitable[object]]  # runs a function on the compute thread (or inline)


@dataclass
class _Waiting:
    session: NodeSession
    hidden: np.ndarray  # (1, 1, H)
    done: asyncio.Future[StepOutput]


class DecodeBatcher:
    def __init__(self, span: SpanRuntime, run: Runner, max_batch: int = 16) -> None:
        self._span, self._run, self._max_batch = span, run, max_batch
        self._queue: list[_Waiting] = []
        self._draining: asyncio.Task[None] | None = None
        self.batches = 0  # passes run, and rows in them: for stats and tests
        self.rows = 0

    async def step(self, session: NodeSession, hidden: np.ndarray) -> StepOutput:
        done: asyncio.Future[StepOutput] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(session, hidden, done))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            batch = [w for w in batch if not w.done.cancelled()]  # its client went away meanwhile
            if not batch:
                continue
            try:
                outputs = await self._pass(batch)
            except Exception as exc:  # the whole pass failed: every step in it gets the error
                for waiting in batch:
                    if not waiting.done.done():
                        waiting.done.set_exception(exc)
                continue
            for waiting, output in zip(batch, outputs, strict=True):
                if not waiting.done.done():
                    waiting.done.set_result(output)

    async def _pass(self, batch: list[_Waiting]) -> list[StepOutput]:
        self.batches += 1
        self.rows += len(batch)
        sessions = [w.session for w in batch]
        if len(batch) == 1:
            s = sessions[0]
            output = await self._run(self._span.forward, batch[0].hidden, s.caches, s.sampling, s.return_logits)
            return [output]  # type: ignore[list-item]
        hidden = np.concatenate([w.hidden for w in batch])
        outputs = await self._run(
            self._span.forward_batch,
            hidden,
            [s.caches for s in sessions],
            [s.sampling for s in sessions],
            [s.return_logits for s in sessions],
        )
        return outputs  # type: ignore[return-value]
