"""SessionTable: admission decides before anything is allocated; close frees the session's budget."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from node.sessions import Limits, NodeSession, SessionTable
from swarm.errors import CapacityExceeded, InvalidRequest
from swarm.runtime import KVCache
from swarm.sampling import SamplingParams

MiB = 2**20


@dataclass
class StubCache:
    length: int = 0


class Allocator:
    """A fake `allocate` that records every call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, max_length: int) -> list[KVCache]:
        self.calls.append(max_length)
        return [StubCache()]  # type: ignore[list-item]


def table(budget_mib: int = 100, weights_mib: int = 60, max_sessions: int = 3, max_context: int = 128) -> SessionTable:
    return SessionTable(Limits(budget_mib * MiB, weights_mib * MiB, max_sessions, max_context))


def open_session(
    sessions: SessionTable, session_id: str, allocate: Allocator, cache_mib: float = 1, max_length: int = 16
) -> NodeSession:
    return sessions.open(session_id, max_length, SamplingParams(), False, int(cache_mib * MiB), allocate)


def test_open_allocates_once_for_the_declared_length() -> None:
    sessions, allocate = table(), Allocator()
    session = sessions.open("s1", 64, SamplingParams(seed=3), True, 5 * MiB, allocate)
    assert allocate.calls == [64]
    assert sessions.sessions == {"s1": session}
    assert (session.session_id, session.max_length, session.return_logits) == ("s1", 64, True)
    assert session.cache_bytes == 5 * MiB
    assert session.sampling == SamplingParams(seed=3)
    assert session.next_step == 0
    assert session.length == 0
    session.caches[0].length = 7
    assert session.length == 7


def test_duplicate_session_id_is_refused_without_allocating() -> None:
    sessions, allocate = table(), Allocator()
    first = open_session(sessions, "s1", allocate)
    with pytest.raises(InvalidRequest, match="session s1 is already open on this node"):
        open_session(sessions, "s1", allocate)
    assert allocate.calls == [16]
    assert sessions.sessions["s1"] is first


@pytest.mark.parametrize("length", [0, -1, 129, 10_000])
def test_length_outside_context_is_refused(length: int) -> None:
    sessions, allocate = table(max_context=128), Allocator()
    with pytest.raises(InvalidRequest, match=rf"session length {length} is outside \[1, 128\] tokens"):
        open_session(sessions, "s1", allocate, max_length=length)
    assert allocate.calls == []
    assert sessions.sessions == {}


@pytest.mark.parametrize("length", [1, 128])
def test_length_at_the_bounds_is_admitted(length: int) -> None:
    sessions, allocate = table(max_context=128), Allocator()
    open_session(sessions, "s1", allocate, max_length=length)
    assert allocate.calls == [length]


def test_too_many_sessions() -> None:
    sessions, allocate = table(max_sessions=2), Allocator()
    open_session(sessions, "a", allocate)
    open_session(sessions, "b", allocate)
    with pytest.raises(CapacityExceeded, match="node has 2 of 2 sessions; try later"):
        open_session(sessions, "c", allocate)
    assert allocate.calls == [16, 16]
    assert set(sessions.sessions) == {"a", "b"}


def test_over_memory_budget() -> None:
    sessions, allocate = table(budget_mib=100, weights_mib=60), Allocator()
    open_session(sessions, "a", allocate, cache_mib=30)
    with pytest.raises(CapacityExceeded) as info:
        open_session(sessions, "b", allocate, cache_mib=20, max_length=32)
    message = str(info.value)
    assert "a 32-token session needs 20.0 MiB of KV cache" in message
    assert "10.0 MiB of the node's memory budget is free" in message
    assert "use a shorter session or try later" in message
    assert allocate.calls == [16]
    assert set(sessions.sessions) == {"a"}


def test_exact_fit_is_admitted_and_one_more_byte_is_not() -> None:
    sessions, allocate = table(budget_mib=100, weights_mib=60), Allocator()
    sessions.open("a", 16, SamplingParams(), False, 40 * MiB, allocate)
    assert sessions.memory_used == 100 * MiB
    with pytest.raises(CapacityExceeded, match=r"0\.0 MiB of the node's memory budget is free"):
        sessions.open("b", 16, SamplingParams(), False, 1, allocate)
    assert allocate.calls == [16]


def test_weights_over_budget_reports_zero_free() -> None:
    sessions, allocate = table(budget_mib=50, weights_mib=60), Allocator()
    with pytest.raises(CapacityExceeded, match=r"needs 1\.0 MiB of KV cache, 0\.0 MiB of the node's memory budget"):
        open_session(sessions, "a", allocate, cache_mib=1)
    assert allocate.calls == []


def test_check_admission_alone_never_changes_the_table() -> None:
    sessions = table()
    sessions.check_admission("a", 16, 1 * MiB)
    assert sessions.sessions == {}


def test_allocation_failure_leaves_no_session() -> None:
    sessions = table()

    def failing(max_length: int) -> list[KVCache]:
        raise MemoryError("out of memory")

    with pytest.raises(MemoryError):
        sessions.open("a", 16, SamplingParams(), False, MiB, failing)
    assert sessions.sessions == {}
    assert sessions.cache_bytes == 0


def test_accounting_and_close_frees() -> None:
    sessions, allocate = table(budget_mib=100, weights_mib=60, max_sessions=3), Allocator()
    assert sessions.cache_bytes == 0
    assert sessions.memory_used == 60 * MiB
    open_session(sessions, "a", allocate, cache_mib=10)
    open_session(sessions, "b", allocate, cache_mib=25)
    assert sessions.cache_bytes == 35 * MiB
    assert sessions.memory_used == 95 * MiB

    sessions.close("b")
    assert set(sessions.sessions) == {"a"}
    assert sessions.cache_bytes == 10 * MiB
    assert sessions.memory_used == 70 * MiB

    open_session(sessions, "c", allocate, cache_mib=30)  # fits only because "b" was freed
    assert sessions.memory_used == 100 * MiB


def test_close_frees_a_session_slot_and_the_id() -> None:
    sessions, allocate = table(max_sessions=1), Allocator()
    open_session(sessions, "a", allocate)
    with pytest.raises(CapacityExceeded):
        open_session(sessions, "b", allocate)
    sessions.close("a")
    open_session(sessions, "b", allocate)
    sessions.close("b")
    open_session(sessions, "b", allocate)  # the id can be reused after close
    assert allocate.calls == [16, 16, 16]


def test_closing_an_unknown_id_is_a_no_op() -> None:
    sessions, allocate = table(), Allocator()
    open_session(sessions, "a", allocate, cache_mib=3)
    sessions.close("nope")
    sessions.close("nope")
    assert set(sessions.sessions) == {"a"}
    assert sessions.cache_bytes == 3 * MiB


def test_duplicate_is_checked_before_capacity() -> None:
    sessions, allocate = table(max_sessions=1), Allocator()
    open_session(sessions, "a", allocate)
    with pytest.raises(InvalidRequest, match="already open"):
        open_session(sessions, "a", allocate)
