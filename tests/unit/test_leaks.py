"""The leak check every test runs under (tests/conftest.py: verify_nothing_leaks) sees leaks."""

from __future__ import annotations

import asyncio
import threading

from swarm._loop import BackgroundLoop
from tests.conftest import _leftovers, _tasks


def test_a_thread_left_running_is_a_leak() -> None:
    before, tasks = set(threading.enumerate()), set(_tasks)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="left-behind")
    thread.start()
    try:
        assert _leftovers(before, tasks) == ["thread 'left-behind'"]
    finally:
        stop.set()
        thread.join()
    assert _leftovers(before, tasks) == []


def test_a_task_left_pending_is_a_leak_until_its_loop_winds_down() -> None:
    before, tasks = set(threading.enumerate()), set(_tasks)
    loop = BackgroundLoop("leak-check")

    async def start() -> None:
        asyncio.get_running_loop().create_task(asyncio.sleep(60), name="forgotten")

    loop.run(start())
    leaks = _leftovers(before, tasks)
    assert "thread 'leak-check'" in leaks and any(leak.startswith("task <coroutine object sleep") for leak in leaks)
    loop.close()  # cancels what is left, as asyncio.run does, and ends the thread
    assert _leftovers(before, tasks) == []
