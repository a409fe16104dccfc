"""parse_bytes and parse_span: the node's command-line units."""

from __future__ import annotations

import pytest

from node.config import parse_bytes, parse_span
from swarm.errors import InvalidRequest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GB", 2 * 10**9),
        ("2gb", 2 * 10**9),
        ("512MiB", 512 * 2**20),
        ("512mib", 512 * 2**20),
        ("1.5g", 1_500_000_000),
        ("1000", 1000),
        ("1000b", 1000),
        ("0", 0),
        ("3k", 3000),
        ("3KiB", 3 * 2**10),
        ("4m", 4 * 10**6),
        ("1GiB", 2**30),
        ("2T", 2 * 10**12),
        ("1tib", 2**40),
        (".5kb", 500),
        (" 2 GB ", 2 * 10**9),
    ],
)
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "two GB", "-1", "-1GB", "1e9", "1.5.2GB", "2 G B", "2PB", "2gigabytes",
                                  "1,000", "1.", "0x10"])  # fmt: skip
def test_parse_bytes_refuses_bad_strings(text: str) -> None:
    with pytest.raises(InvalidRequest, match="not a size") as info:
        parse_bytes(text)
    assert repr(text) in str(info.value)
    assert "examples: 2GB, 512MiB" in str(info.value)


def test_parse_bytes_decimal_is_not_truncated_below_the_exact_value() -> None:
    assert parse_bytes("2.01KB") == 2010


@pytest.mark.parametrize(("text", "expected"), [("0:3", (0, 3)), ("2:5", (2, 5)), (" 1 : 2 ", (1, 2)),
                                                ("0:100", (0, 100))])  # fmt: skip
def test_parse_span(text: str, expected: tuple[int, int]) -> None:
    assert parse_span(text) == expected


@pytest.mark.parametrize("text", ["3:3", "4:2", "a:b", "1-3", "", "3", ":3", "1:", "-1:3", "1:2:3", "1.0:2"])
def test_parse_span_refuses(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_span(text)
    message = str(info.value)
    assert "--blocks wants START:END with START < END" in message
    assert "layers [START, END)" in message
    assert f"got {text!r}" in message
