"""Stop strings in streamed text: the same cut however the text arrives in pieces."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from swarm.apps.openai_api import StopScanner

TEXT = st.text(alphabet="abc ", max_size=40)


def expected_cut(text: str, stops: list[str]) -> tuple[str, bool]:
    """Read one character at a time and stop as soon as the text read ends with a stop string."""
    for end in range(len(text) + 1):
        ending = [s for s in stops if text[:end].endswith(s)]
        if ending:
            return text[: end - max(map(len, ending))], True
    return text, False


def stream(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    scanner, sent = StopScanner(stops), []
    for piece in pieces:
        text, stopped = scanner.push(piece)
        sent.append(text)
        if stopped:
            return "".join(sent), True
    return "".join(sent) + scanner.flush(), False


@given(st.lists(TEXT, max_size=8), st.lists(st.text(alphabet="abc ", min_size=1, max_size=4), max_size=3))
def test_streamed_cut_is_the_whole_texts_cut(pieces: list[str], stops: list[str]) -> None:
    assert stream(pieces, stops) == expected_cut("".join(pieces), stops)


def test_a_stop_string_split_across_pieces_is_held_back() -> None:
    scanner = StopScanner(["END"])
    assert scanner.push("the E") == ("the ", False)
    assert scanner.push("N") == ("", False)
    assert scanner.push("D and more") == ("", True)
    assert StopScanner(["END"]).push("the EN") == ("the ", False)


def test_the_stop_string_completed_first_wins() -> None:
    assert StopScanner(["abc", "b"]).push("xabc") == ("xa", True)
    assert StopScanner(["abc", "bc"]).push("xabc") == ("x", True)
