"""mDNS TXT records: `txt_record` out, `record_from_txt` in; anything malformed is ignored (None)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf import ServiceInfo

from swarm.discovery import SERVICE_TYPE, record_from_txt, service_name, txt_record
from swarm.membership import PeerRecord

PKG = "0123456789abcdef" * 4
ADDRESS = "192.168.1.20:7001"


def record(**kw: object) -> PeerRecord:
    fields: dict[str, object] = dict(
        node_id="laptop-1", address=ADDRESS, package_id=PKG, start=2, end=5, swarm_id="sw1", protocol_version=1,
        sessions=3, max_sessions=8, free_memory=123_456_789, speed=12.5, draining=False,
    )  # fmt: skip
    fields.update(kw)
    return PeerRecord(**fields)  # type: ignore[arg-type]


def as_zeroconf(txt: dict[str, str]) -> dict[bytes, bytes | None]:
    """What zeroconf hands a browser: bytes keys and values."""
    return {k.encode(): v.encode() for k, v in txt.items()}


def good_txt() -> dict[bytes, bytes | None]:
    return {**as_zeroconf(txt_record(record())), b"beat": b"17"}


def with_value(key: str, value: bytes | None) -> dict[bytes, bytes | None]:
    return {**good_txt(), key.encode(): value}


# ---------------------------------------------------------------- round trip


def test_service_name() -> None:
    assert SERVICE_TYPE == "_swarm-llm._tcp.local."
    assert service_name("laptop-1") == "laptop-1._swarm-llm._tcp.local."


def test_txt_record_is_all_strings() -> None:
    txt = txt_record(record(draining=True))
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in txt.items())
    assert txt["span"] == "2:5" and txt["load"] == "3/8" and txt["drain"] == "1" and txt["model"] == PKG
    assert "beat" not in txt


def test_round_trip_ignores_the_beat_key() -> None:
    assert record_from_txt(good_txt(), ADDRESS) == record()


@pytest.mark.parametrize("draining", [False, True])
def test_round_trip_of_draining(draining: bool) -> None:
    original = record(draining=draining, speed=0.0, free_memory=0, sessions=0, max_sessions=1, swarm_id="")
    assert record_from_txt(as_zeroconf(txt_record(original)), ADDRESS) == original


def test_round_trip_through_zeroconf_service_info() -> None:
    """Encode to the TXT wire format and back, as the announcer and the browser do."""
    properties = {**txt_record(record()), "beat": "4"}
    sent = ServiceInfo(SERVICE_TYPE, service_name("laptop-1"), port=7001, properties=properties)
    received = ServiceInfo(SERVICE_TYPE, service_name("laptop-1"), port=7001, properties=sent.text)
    assert record_from_txt(received.properties, ADDRESS) == record()


def test_address_comes_from_the_argument_not_the_txt() -> None:
    parsed = record_from_txt(good_txt(), "10.0.0.9:9")
    assert parsed is not None and parsed.address == "10.0.0.9:9"


def test_speed_is_sent_with_three_significant_digits() -> None:
    parsed = record_from_txt(as_zeroconf(txt_record(record(speed=123.456))), ADDRESS)
    assert parsed is not None and parsed.speed == pytest.approx(123.0)


def test_optional_keys_take_defaults() -> None:
    txt = {k: v for k, v in good_txt().items() if k not in (b"sw", b"speed", b"mem", b"drain")}
    parsed = record_from_txt(txt, ADDRESS)
    assert parsed == record(swarm_id="", speed=0.0, free_memory=0, draining=False)


def test_drain_is_only_true_for_1() -> None:
    for value in (b"0", b"yes", b"true", None):
        parsed = record_from_txt(with_value("drain", value), ADDRESS)
        assert parsed is not None and parsed.draining is False


@pytest.mark.parametrize(("node_id", "start", "end"), [("a", 0, 1), ("n" * 63, 0, 100_000), ("x-y_z", 99_999, 100_000)])
def test_round_trip_at_the_limits(node_id: str, start: int, end: int) -> None:
    original = record(node_id=node_id, start=start, end=end)
    assert record_from_txt(as_zeroconf(txt_record(original)), ADDRESS) == original


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=63)


@settings(max_examples=200, deadline=None)
@given(
    node_id=names,
    swarm_id=st.text(max_size=20),
    package_id=st.text("0123456789abcdef", min_size=64, max_size=64),
    span=st.tuples(st.integers(0, 100_000), st.integers(0, 100_000)).filter(lambda s: s[0] < s[1]),
    version=st.integers(0, 1000),
    load=st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)).filter(lambda load: load[0] <= load[1]),
    mem=st.integers(0, 2**50),
    draining=st.booleans(),
)
def test_round_trip_property(
    node_id: str,
    swarm_id: str,
    package_id: str,
    span: tuple[int, int],
    version: int,
    load: tuple[int, int],
    mem: int,
    draining: bool,
) -> None:
    original = PeerRecord(node_id, ADDRESS, package_id, span[0], span[1], swarm_id, version, load[0], load[1], mem,
                          2.5, draining)  # fmt: skip
    properties: dict[bytes, bytes | None] = {**as_zeroconf(txt_record(original)), b"beat": b"1"}
    assert record_from_txt(properties, ADDRESS) == original


# ---------------------------------------------------------------- malformed input: None, never an exception


@pytest.mark.parametrize("key", ["id", "v", "model", "span", "load"])
def test_missing_required_key(key: str) -> None:
    txt = {k: v for k, v in good_txt().items() if k != key.encode()}
    assert record_from_txt(txt, ADDRESS) is None


@pytest.mark.parametrize("key", ["id", "v", "model", "span", "load"])
def test_required_key_without_value(key: str) -> None:
    assert record_from_txt(with_value(key, None), ADDRESS) is None


def test_empty_properties() -> None:
    assert record_from_txt({}, ADDRESS) is None


@pytest.mark.parametrize(
    "span",
    [b"5:2", b"0:0", b"3:3", b"a:b", b"1", b"1:2:3", b"", b":", b"-1:2", b"0:100001", b"100000:100001", b"1.5:2"],
)
def test_bad_span(span: bytes) -> None:
    assert record_from_txt(with_value("span", span), ADDRESS) is None


def test_span_limit_is_inclusive() -> None:
    parsed = record_from_txt(with_value("span", b"0:100000"), ADDRESS)
    assert parsed is not None and (parsed.start, parsed.end) == (0, 100_000)


@pytest.mark.parametrize("load", [b"x/y", b"1", b"1/2/3", b"", b"1:2", b"1.0/2"])
def test_bad_load(load: bytes) -> None:
    assert record_from_txt(with_value("load", load), ADDRESS) is None


@pytest.mark.parametrize(("key", "value"), [("v", b"one"), ("v", b"1.0"), ("mem", b"lots"), ("speed", b"fast")])
def test_bad_numbers(key: str, value: bytes) -> None:
    assert record_from_txt(with_value(key, value), ADDRESS) is None


@pytest.mark.parametrize("key", ["id", "model", "span", "sw", "beat"])
def test_non_utf8_value(key: str) -> None:
    assert record_from_txt(with_value(key, b"\xff\xfe\x80"), ADDRESS) is None


def test_non_utf8_key() -> None:
    assert record_from_txt({**good_txt(), b"\xff": b"1"}, ADDRESS) is None


@pytest.mark.parametrize("node_id", [b"", b"n" * 64, "é".encode() * 64])
def test_bad_node_id(node_id: bytes) -> None:
    assert record_from_txt(with_value("id", node_id), ADDRESS) is None


@pytest.mark.parametrize("package_id", [b"", PKG[:-1].encode(), (PKG + "0").encode(), b"abc"])
def test_package_id_must_be_64_chars(package_id: bytes) -> None:
    assert record_from_txt(with_value("model", package_id), ADDRESS) is None


@settings(max_examples=300, deadline=None)
@given(
    properties=st.dictionaries(
        st.sampled_from([b"id", b"sw", b"v", b"model", b"span", b"speed", b"mem", b"load", b"drain", b"beat"])
        | st.binary(max_size=8),
        st.none() | st.binary(max_size=80) | st.sampled_from([b"1:2", b"0/1", b"1", PKG.encode(), b"5:2"]),
        max_size=12,
    )
)
def test_arbitrary_properties_never_raise(properties: dict[bytes, bytes | None]) -> None:
    parsed = record_from_txt(properties, ADDRESS)
    if parsed is not None:
        assert 0 <= parsed.start < parsed.end <= 100_000
        assert 0 < len(parsed.node_id) <= 63 and len(parsed.package_id) == 64


@pytest.mark.parametrize(
    "load, mem, speed",
    [
        (b"-5/0", b"0", b"1"),
        (b"3/2", b"0", b"1"),
        (b"0/1", b"-1", b"1"),
        (b"0/1", b"0", b"nan"),
        (b"0/1", b"0", b"inf"),
        (b"0/1", b"0", b"-2"),
    ],
)
def test_out_of_range_numbers_are_refused(load: bytes, mem: bytes, speed: bytes) -> None:
    txt = {**good_txt(), b"load": load, b"mem": mem, b"speed": speed}
    assert record_from_txt(txt, ADDRESS) is None
