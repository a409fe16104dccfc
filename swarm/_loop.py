"""The sync facade's engine: one asyncio loop in a daemon thread, driven from sync code.

The async API is the real one; sync methods hand their coroutine to this loop and wait.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self, name: str = "swarm-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start `coro` on the loop and return at once; the future holds its outcome."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run `callback` on the loop's thread (e.g. to set an asyncio.Event from another thread)."""
        self._loop.call_soon_threadsafe(callback)

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """Iterate an async iterator from sync code.

        A task on the loop pulls items into a queue while the caller consumes them, at most
        `ahead` items ahead of the caller: the next item is being made while the caller handles
        this one, but a caller that stops reading stops the producer too. Closing the sync
        iterator early cancels the task, which closes the async iterator.
        """
        items: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        ahead = 2
        room: asyncio.Semaphore | None = None
        # set when the task has really ended, closing the async iterator (and a session) included
        finished = threading.Event()

        async def pump() -> None:
            nonlocal room
            room = asyncio.Semaphore(ahead)
            try:
                async for item in agen:
                    items.put((True, item))
                    await room.acquire()
                items.put((False, None))
            except BaseException as exc:  # handed to the consumer, re-raised there
                items.put((False, exc))
                if isinstance(exc, asyncio.CancelledError):
                    raise
            finally:
                aclose = getattr(agen, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(RuntimeError):  # already closed or closing: nothing to do
                        await aclose()

        tasks: list[asyncio.Task[None]] = []

        def start() -> None:
            task = self._loop.create_task(pump())
            task.add_done_callback(lambda _: finished.set())  # also when cancelled before it ran
            tasks.append(task)

        self._loop.call_soon_threadsafe(start)
        try:
            while True:
                more, item = items.get()
                if not more:
                    if item is not None and not isinstance(item, asyncio.CancelledError):
                        raise item
                    return
                yield item
                if room is not None:
                    self._loop.call_soon_threadsafe(room.release)
        finally:
            if not finished.is_set():
                self._loop.call_soon_threadsafe(lambda: tasks[0].cancel())  # after start(): in order
                finished.wait(timeout=10)  # let the cancellation finish closing the iterator

    def close(self) -> None:
        """Cancel what still runs on the loop (as `asyncio.run` does), stop its worker threads, then
        the loop and its thread."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):  # a loop stuck in a call
            asyncio.run_coroutine_threadsafe(_wind_down(self._loop), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


async def _wind_down(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()  # the threads of asyncio.to_thread
