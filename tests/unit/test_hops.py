"""The head of a token ring takes only the result it awaits, and fails the step when the ring breaks."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from node.hops import HopFailed, ReturnSlot, unless_failed
from swarm._proto import swarm_pb2 as pb
from swarm.errors import InvalidRequest

LAST = pb.Hop(address="10.0.0.3:7000", node_id="c" * 24)


def test_a_result_reaches_the_step_that_awaits_it_and_nothing_else() -> None:
    async def run() -> int:
        slot = ReturnSlot(LAST)
        with pytest.raises(InvalidRequest, match="not awaited"):
            slot.deliver(pb.StepResult(step=0, token=7))  # nothing expected yet
        slot.expect(3)
        with pytest.raises(InvalidRequest, match="step 2, which is not awaited"):
            slot.deliver(pb.StepResult(step=2, token=7))
        slot.deliver(pb.StepResult(step=3, token=9))
        with pytest.raises(InvalidRequest, match="not awaited"):
            slot.deliver(pb.StepResult(step=3, token=10))  # a replayed result
        return (await slot.result(3, 1.0, LAST)).token

    assert asyncio.run(run()) == 9


def test_several_awaited_steps_take_their_results_in_order_only() -> None:
    async def run() -> list[int]:
        slot = ReturnSlot(LAST)
        for step in (5, 6, 7):  # pipelined verify steps, sent on before the first came back
            slot.expect(step)
        with pytest.raises(InvalidRequest, match="step 6, which is not awaited"):
            slot.deliver(pb.StepResult(step=6, token=1))  # out of order: 5 comes first
        slot.deliver(pb.StepResult(step=5, token=50))
        slot.deliver(pb.StepResult(step=6, token=60))  # before anyone took 5's
        with pytest.raises(InvalidRequest, match="step 5, which is not awaited"):
            slot.deliver(pb.StepResult(step=5, token=51))  # a replayed result
        slot.deliver(pb.StepResult(step=7, token=70))
        return [(await slot.result(step, 1.0, LAST)).token for step in (5, 6, 7)]

    assert asyncio.run(run()) == [50, 60, 70]


def test_a_broken_ring_fails_the_awaited_step_blaming_the_node_it_names() -> None:
    async def run() -> None:
        slot = ReturnSlot(LAST)
        slot.expect(0)
        waiting = asyncio.ensure_future(slot.result(0, 5.0, LAST))
        await asyncio.sleep(0)
        slot.fail(HopFailed(grpc.StatusCode.UNAVAILABLE, "gone", "b" * 24))
        with pytest.raises(HopFailed, match="gone") as raised:
            await waiting
        assert raised.value.node_id == "b" * 24

    asyncio.run(run())


def test_a_result_that_never_comes_times_out_blaming_the_given_hop() -> None:
    async def run() -> None:
        slot = ReturnSlot(LAST)
        slot.expect(4)
        with pytest.raises(HopFailed, match="step 4 did not come back round the ring") as raised:
            await slot.result(4, 0.05, pb.Hop(node_id="a" * 24))
        assert raised.value.node_id == "a" * 24

    asyncio.run(run())


def test_only_the_last_node_attaches_and_only_once() -> None:
    async def run() -> None:
        slot = ReturnSlot(LAST)
        with pytest.raises(InvalidRequest, match="only the last node"):
            slot.attach("d" * 24)
        slot.attach(LAST.node_id)
        with pytest.raises(InvalidRequest, match="already has its return link"):
            slot.attach(LAST.node_id)

    asyncio.run(run())


def test_unless_failed_returns_the_result_or_raises_the_failure_and_cancels() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        failure: asyncio.Future[HopFailed] = loop.create_future()
        assert await unless_failed(asyncio.sleep(0, "done"), failure) == "done"
        cancelled = asyncio.Event()

        async def forever() -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        loop.call_later(0.01, failure.set_result, HopFailed(grpc.StatusCode.UNAVAILABLE, "down", "x"))
        with pytest.raises(HopFailed, match="down"):
            await unless_failed(forever(), failure)
        assert cancelled.is_set()

    asyncio.run(run())
