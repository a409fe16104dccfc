"""Moving a serving node to the swarm's bottleneck: when a throttled peer makes its layers scarce."""

from __future__ import annotations

from swarm.assignment import MoveAdvice, Served, bottleneck_ms, check_move

EDGES = [0, 1, 2, 3, 4, 5]
LAYER_MS = 1.0  # every node's measured time per layer, before throttling


def fast(start: int, end: int) -> Served:
    return Served(start, end, LAYER_MS * (end - start))


def throttled(start: int, end: int, capacity: float) -> Served:
    return Served(start, end, LAYER_MS * (end - start) / capacity)


def checks(others: list[Served], current: tuple[int, int], times: int,
           **options: float) -> list[tuple[int, int] | None]:  # fmt: skip
    advice, moves = MoveAdvice(), []
    for _ in range(times):
        advice, move = check_move(advice, EDGES, others, current, LAYER_MS, **options)  # type: ignore[arg-type]
        moves.append(move.span if move else None)
    return moves


def test_bottleneck_is_the_least_capacity_layer() -> None:
    assert bottleneck_ms(5, [fast(0, 3), fast(0, 3), fast(3, 5)]) == 2.0
    assert bottleneck_ms(5, [fast(0, 3)]) == float("inf")


def test_a_balanced_swarm_stays_put() -> None:
    # this node and another serve [0, 3); a third serves [3, 5) at full speed
    assert checks([fast(0, 3), fast(3, 5)], (0, 3), 5) == [None] * 5


def test_a_throttled_peer_pulls_a_replica_onto_its_layers_after_patience() -> None:
    others = [fast(0, 3), throttled(3, 5, 0.25)]
    assert checks(others, (0, 3), 3) == [None, None, (3, 5)]


def test_the_move_explains_itself() -> None:
    advice = MoveAdvice()
    for _ in range(3):
        advice, move = check_move(advice, EDGES, [fast(0, 3), throttled(3, 5, 0.25)], (0, 3), LAYER_MS)
    assert move is not None
    assert move.reason == ("layers [3, 5) are the swarm's bottleneck: moving there takes the slowest stage "
                           "from 8.00 to 3.00 ms per step")  # fmt: skip


def test_never_moves_off_layers_nobody_else_serves() -> None:
    # the only node on [0, 3): even a starving [3, 5) does not make it leave those layers
    assert checks([throttled(3, 5, 0.1)], (0, 3), 5) == [None] * 5


def test_a_small_gain_does_not_move() -> None:
    others = [fast(0, 3), throttled(3, 5, 0.9)]
    assert checks(others, (0, 3), 5, min_gain=0.5) == [None] * 5


def test_a_move_that_memory_keeps_from_fixing_the_bottleneck_is_not_made() -> None:
    others = [fast(0, 3), throttled(3, 5, 0.25)]
    assert checks(others, (0, 3), 3, max_layers=2) == [None, None, (3, 5)]
    assert checks(others, (0, 3), 5, max_layers=1) == [None] * 5  # [3, 4) alone leaves layer 4 the bottleneck
