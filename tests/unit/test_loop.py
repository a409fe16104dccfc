"""The sync facade's loop: iterating an async iterator from sync code, and stopping early."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from swarm._loop import BackgroundLoop


def test_items_arrive_in_order_and_errors_reach_the_caller() -> None:
    loop = BackgroundLoop()

    async def numbers() -> AsyncIterator[int]:
        for i in range(5):
            yield i
        raise ValueError("the end")

    try:
        got = []
        try:
            for item in loop.iterate(numbers()):
                got.append(item)
        except ValueError as exc:
            assert str(exc) == "the end"
        assert got == [0, 1, 2, 3, 4]
    finally:
        loop.close()


def test_stopping_early_returns_once_the_iterator_has_cleaned_up() -> None:
    """A stopped answer closes its session before the chat goes on (Ctrl-C, then the next turn)."""
    loop = BackgroundLoop()
    cleaned: list[str] = []

    async def forever() -> AsyncIterator[int]:
        try:
            while True:
                yield 1
                await asyncio.sleep(0.001)
        finally:
            await asyncio.sleep(0.2)  # e.g. closing a session on every node of a route
            cleaned.append("closed")

    try:
        items = loop.iterate(forever())
        assert next(items) == 1
        items.close()
        assert cleaned == ["closed"]
    finally:
        loop.close()
