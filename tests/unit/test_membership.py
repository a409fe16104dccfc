"""Membership: the pure `apply(state, event)` table of live peers."""

from __future__ import annotations

import copy
import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from swarm.membership import DEFAULT_TTL_S, Event, Membership, PeerGone, PeerRecord, PeerSeen, Tick, apply

PKG_A = "a" * 64
PKG_B = "b" * 64


def rec(node_id: str, package_id: str = PKG_A, start: int = 0, end: int = 2, **kw: object) -> PeerRecord:
    return PeerRecord(node_id=node_id, address=f"{node_id}:7000", package_id=package_id, start=start, end=end,
                      **kw)  # type: ignore[arg-type]  # fmt: skip


def run(events: list[Event], state: Membership | None = None) -> Membership:
    state = state if state is not None else Membership()
    for event in events:
        state = apply(state, event)
    return state


def ids(state: Membership, package_id: str | None = None) -> list[str]:
    return [p.node_id for p in state.live(package_id)]


# ---------------------------------------------------------------- seen / gone


def test_empty_membership_has_no_live_peers() -> None:
    state = Membership()
    assert state.live() == []
    assert state.ttl_s == DEFAULT_TTL_S


def test_seen_adds_a_peer_and_records_the_time() -> None:
    state = apply(Membership(), PeerSeen(rec("n1"), at=5.0))
    assert state.peers == {"n1": rec("n1")}
    assert state.last_seen == {"n1": 5.0}
    assert state.live() == [rec("n1")]


def test_newer_record_replaces_older_one() -> None:
    old, new = rec("n1", start=0, end=2, sessions=0), rec("n1", start=2, end=4, sessions=3)
    state = run([PeerSeen(old, at=1.0), PeerSeen(new, at=2.0)])
    assert state.peers == {"n1": new}
    assert state.last_seen == {"n1": 2.0}
    assert state.live() == [new]


def test_gone_removes_the_peer_and_its_time() -> None:
    state = run([PeerSeen(rec("n1"), at=1.0), PeerSeen(rec("n2"), at=1.0), PeerGone("n1", at=2.0)])
    assert set(state.peers) == {"n2"}
    assert set(state.last_seen) == {"n2"}
    assert ids(state) == ["n2"]


def test_gone_for_an_unknown_peer_changes_nothing() -> None:
    state = apply(Membership(), PeerSeen(rec("n1"), at=1.0))
    after = apply(state, PeerGone("nobody", at=2.0))
    assert after.peers == state.peers
    assert after.last_seen == state.last_seen


def test_peer_seen_again_after_gone_comes_back() -> None:
    state = run([PeerSeen(rec("n1"), at=1.0), PeerGone("n1", at=2.0), PeerSeen(rec("n1"), at=3.0)])
    assert ids(state) == ["n1"]
    assert state.last_seen == {"n1": 3.0}


# ---------------------------------------------------------------- tick / ttl


def test_tick_expires_peers_older_than_ttl() -> None:
    state = run([PeerSeen(rec("old"), at=0.0), PeerSeen(rec("fresh"), at=20.0)], Membership(ttl_s=30.0))
    after = apply(state, Tick(at=30.5))
    assert ids(after) == ["fresh"]
    assert set(after.last_seen) == {"fresh"}


def test_tick_at_exactly_ttl_keeps_the_peer() -> None:
    state = apply(Membership(ttl_s=30.0), PeerSeen(rec("n1"), at=10.0))
    assert ids(apply(state, Tick(at=40.0))) == ["n1"]
    assert ids(apply(state, Tick(at=40.001))) == []


def test_heartbeat_refreshes_the_ttl() -> None:
    state = run([PeerSeen(rec("n1"), at=0.0), PeerSeen(rec("n1"), at=25.0)], Membership(ttl_s=30.0))
    assert ids(apply(state, Tick(at=50.0))) == ["n1"]
    assert ids(apply(state, Tick(at=56.0))) == []


def test_tick_with_nothing_expired_returns_the_same_object() -> None:
    state = run([PeerSeen(rec("n1"), at=0.0), PeerSeen(rec("n2"), at=5.0)], Membership(ttl_s=30.0))
    assert apply(state, Tick(at=29.0)) is state
    empty = Membership()
    assert apply(empty, Tick(at=1e9)) is empty


def test_tick_expires_draining_peers_too() -> None:
    state = apply(Membership(ttl_s=1.0), PeerSeen(rec("n1", draining=True), at=0.0))
    assert set(apply(state, Tick(at=2.0)).peers) == set()


# ---------------------------------------------------------------- live()


def test_live_excludes_draining_peers_but_keeps_them_in_the_table() -> None:
    state = run([PeerSeen(rec("a"), at=0.0), PeerSeen(rec("b", draining=True), at=0.0)])
    assert ids(state) == ["a"]
    assert set(state.peers) == {"a", "b"}  # still known: it finishes its sessions


def test_live_filters_by_package_and_sorts_by_node_id() -> None:
    events: list[Event] = [
        PeerSeen(rec("c", PKG_A), at=0.0),
        PeerSeen(rec("a", PKG_B), at=0.0),
        PeerSeen(rec("b", PKG_A), at=0.0),
        PeerSeen(rec("d", PKG_B, draining=True), at=0.0),
    ]
    state = run(events)
    assert ids(state) == ["a", "b", "c"]
    assert ids(state, PKG_A) == ["b", "c"]
    assert ids(state, PKG_B) == ["a"]
    assert ids(state, "f" * 64) == []


def test_draining_update_takes_a_peer_out_of_live() -> None:
    state = run([PeerSeen(rec("a"), at=0.0), PeerSeen(rec("a", draining=True), at=1.0)])
    assert ids(state) == []


# ---------------------------------------------------------------- purity


def test_apply_never_mutates_the_old_state() -> None:
    state = run([PeerSeen(rec("a"), at=0.0), PeerSeen(rec("b"), at=10.0)], Membership(ttl_s=30.0))
    peers, seen = state.peers, state.last_seen
    snapshot = (copy.deepcopy(peers), copy.deepcopy(seen))
    events: list[Event] = [
        PeerSeen(rec("c"), at=11.0),
        PeerSeen(rec("a", start=2, end=4), at=12.0),
        PeerGone("b", at=13.0),
        Tick(at=35.0),  # expires "a" (last seen at 0)
    ]
    for event in events:
        new = apply(state, event)
        assert new is not state
        assert state.peers is peers and state.last_seen is seen
        assert (state.peers, state.last_seen) == snapshot
        assert new.peers is not peers and new.last_seen is not seen


def test_apply_keeps_ttl() -> None:
    state = Membership(ttl_s=7.0)
    events: list[Event] = [PeerSeen(rec("a"), at=0.0), PeerGone("a", at=1.0), PeerSeen(rec("a"), at=2.0), Tick(at=99.0)]
    for event in events:
        state = apply(state, event)
        assert state.ttl_s == 7.0


# ---------------------------------------------------------------- reference model

NODES = [f"n{i}" for i in range(5)]


class Reference:
    """The obvious model: a dict of records and a dict of last-seen times."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.records: dict[str, PeerRecord] = {}
        self.seen: dict[str, float] = {}

    def apply(self, event: Event) -> None:
        if isinstance(event, PeerSeen):
            self.records[event.record.node_id] = event.record
            self.seen[event.record.node_id] = event.at
        elif isinstance(event, PeerGone):
            self.records.pop(event.node_id, None)
            self.seen.pop(event.node_id, None)
        else:
            for node in [n for n, t in self.seen.items() if event.at - t > self.ttl_s]:
                del self.records[node], self.seen[node]

    def live(self, package_id: str | None = None) -> list[PeerRecord]:
        chosen = [r for r in self.records.values() if not r.draining and package_id in (None, r.package_id)]
        return sorted(chosen, key=lambda r: r.node_id)


records = st.builds(
    rec,
    node_id=st.sampled_from(NODES),
    package_id=st.sampled_from([PKG_A, PKG_B]),
    start=st.integers(0, 3),
    end=st.integers(4, 8),
    draining=st.booleans(),
    sessions=st.integers(0, 3),
)
deltas = st.floats(0.0, 20.0, allow_nan=False)
steps = st.one_of(
    st.tuples(st.just("seen"), records, deltas),
    st.tuples(st.just("gone"), st.sampled_from(NODES), deltas),
    st.tuples(st.just("tick"), st.none(), deltas),
)


@settings(max_examples=300, deadline=None)
@given(ttl=st.sampled_from([5.0, 10.0, 30.0]), script=st.lists(steps, max_size=60))
def test_live_matches_reference_model(ttl: float, script: list[tuple[str, object, float]]) -> None:
    state, ref, now = Membership(ttl_s=ttl), Reference(ttl), 0.0
    for kind, arg, delta in script:
        now += delta
        event: Event
        if kind == "seen":
            assert isinstance(arg, PeerRecord)
            event = PeerSeen(arg, at=now)
        elif kind == "gone":
            assert isinstance(arg, str)
            event = PeerGone(arg, at=now)
        else:
            event = Tick(at=now)
        state = apply(state, event)
        ref.apply(event)
        assert state.peers == ref.records
        assert state.last_seen == ref.seen
        for package_id in (None, PKG_A, PKG_B):
            assert state.live(package_id) == ref.live(package_id)


class MembershipMachine(RuleBasedStateMachine):
    """Same comparison as a state machine, also checking that old states stay untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.state = Membership(ttl_s=10.0)
        self.ref = Reference(10.0)
        self.now = 0.0
        self.history: list[tuple[Membership, dict[str, PeerRecord], dict[str, float]]] = []

    def _step(self, event: Event) -> None:
        self.history.append((self.state, dict(self.state.peers), dict(self.state.last_seen)))
        self.state = apply(self.state, event)
        self.ref.apply(event)

    @rule(record=records, delta=deltas)
    def seen(self, record: PeerRecord, delta: float) -> None:
        self.now += delta
        self._step(PeerSeen(record, at=self.now))

    @rule(node=st.sampled_from(NODES), delta=deltas)
    def gone(self, node: str, delta: float) -> None:
        self.now += delta
        self._step(PeerGone(node, at=self.now))

    @rule(delta=deltas)
    def tick(self, delta: float) -> None:
        self.now += delta
        self._step(Tick(at=self.now))

    @invariant()
    def matches_reference(self) -> None:
        for package_id in (None, PKG_A, PKG_B):
            assert self.state.live(package_id) == self.ref.live(package_id)

    @invariant()
    def old_states_unchanged(self) -> None:
        for old, peers, seen in self.history:
            assert old.peers == peers and old.last_seen == seen


TestMembershipMachine = MembershipMachine.TestCase
TestMembershipMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


# ---------------------------------------------------------------- simulation at scale


def test_simulated_swarm_of_1000_nodes() -> None:
    """1,000 nodes join, heartbeat every 10 s, some leave cleanly, some crash (stop heartbeating)."""
    rng = random.Random(1234)
    ttl, beat, horizon = 30.0, 10.0, 300.0
    nodes = [f"node{i:04d}" for i in range(1000)]
    join_at = {n: rng.uniform(0.0, 60.0) for n in nodes}
    fate = {n: rng.choice(["stay", "leave", "crash"]) for n in nodes}
    stop_at = {n: rng.uniform(join_at[n] + 1.0, horizon - 1.0) for n in nodes}

    events: list[tuple[float, int, Event]] = []
    last_beat: dict[str, float] = {}
    for i, n in enumerate(nodes):
        until = horizon if fate[n] == "stay" else stop_at[n]
        t = join_at[n]
        while t < until:
            events.append((t, i, PeerSeen(rec(n, PKG_A if i % 4 else PKG_B), at=t)))
            last_beat[n] = t
            t += beat
        if fate[n] == "leave":
            events.append((stop_at[n], i, PeerGone(n, at=stop_at[n])))
    events += [(float(t), -1, Tick(at=float(t))) for t in range(1, int(horizon) + 1)]
    events.sort(key=lambda e: (e[0], e[1]))

    started = time.perf_counter()
    state = Membership(ttl_s=ttl)
    for _, _, event in events:
        state = apply(state, event)
    elapsed = time.perf_counter() - started

    # a crashed node stays until its last heartbeat is more than ttl old
    survivors = sorted(n for n in nodes if fate[n] == "stay" or (fate[n] == "crash" and horizon - last_beat[n] <= ttl))
    assert ids(state) == survivors
    assert len(survivors) > 250  # the scenario really keeps a large swarm alive
    crashed = [n for n in nodes if fate[n] == "crash"]
    assert any(n in state.peers for n in crashed) and any(n not in state.peers for n in crashed)
    assert all(fate[n] != "leave" for n in state.peers)
    assert ids(state, PKG_B) == [n for n in survivors if int(n[4:]) % 4 == 0]
    assert elapsed < 2.0, f"1,000-node simulation took {elapsed:.2f}s"


def test_an_announcement_arriving_late_changes_nothing() -> None:
    fresh, stale = rec("a", sessions=3), rec("a", sessions=0)
    state = run([PeerSeen(fresh, at=10.0), PeerSeen(stale, at=9.0)])
    assert state.peers["a"] == fresh and state.last_seen["a"] == 10.0
