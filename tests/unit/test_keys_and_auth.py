"""Swarm keys, join codes, identities, call credentials and sealed frames, without a network."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from swarm._proto import swarm_pb2 as pb
from swarm.auth import (
    Credentials,
    ReplayGuard,
    check_manifest_signature,
    manifest_signed_bytes,
    new_exchange,
    session_keys,
)
from swarm.discovery import sign_txt, txt_is_ours
from swarm.environment import load_swarm_key
from swarm.errors import AuthenticationError, StaleRoute, SwarmError
from swarm.frames import PlainFrames, SealedFrames
from swarm.keys import Identity, SwarmKey, claim_identity, node_id_of, read_key_file, write_key_file

KEY = SwarmKey(bytes(range(32)))
OTHER = SwarmKey(bytes(range(1, 33)))


def member(key: SwarmKey = KEY, clock: float | None = None) -> Credentials:
    if clock is None:
        return Credentials(key, Identity.generate())
    return Credentials(key, Identity.generate(), clock=lambda: clock)


# --- keys and join codes ---------------------------------------------------------------------


def test_join_code_round_trips_and_catches_typos() -> None:
    code = KEY.join_code
    assert code.startswith("swarm1-") and SwarmKey.from_code(code) == KEY
    assert SwarmKey.from_code(code.upper().replace("-", " - ").replace(" ", "")) == KEY  # case and dashes
    typo = code[:-1] + ("a" if code[-1] != "a" else "b")
    with pytest.raises(AuthenticationError, match="mistyped"):
        SwarmKey.from_code(typo)
    with pytest.raises(AuthenticationError, match="starts with"):
        SwarmKey.from_code("hello")


def test_derived_values_differ_and_never_show_the_key() -> None:
    assert KEY.swarm_id != OTHER.swarm_id and len(KEY.swarm_id) == 16
    assert KEY.secret.hex() not in repr(KEY) and KEY.secret.hex()[:16] != KEY.swarm_id
    assert KEY.check(b"m", KEY.prove(b"m")) and not OTHER.check(b"m", KEY.prove(b"m"))


def test_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "swarm.key"
    write_key_file(KEY, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == KEY
    with pytest.raises(SwarmError, match="already exists"):
        write_key_file(OTHER, path)
    assert read_key_file(path) == KEY


def test_load_swarm_key_from_code_file_env_or_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("SWARM_KEY", raising=False)
    assert load_swarm_key(None) is None  # nothing anywhere: an open swarm
    write_key_file(OTHER, tmp_path / "swarm" / "swarm.key")
    assert load_swarm_key(None) == OTHER  # the file `swarm-node init` wrote
    monkeypatch.setenv("SWARM_KEY", KEY.join_code)
    assert load_swarm_key(None) == KEY  # the environment wins over the default file
    assert load_swarm_key(str(tmp_path / "swarm" / "swarm.key")) == OTHER  # an explicit file wins
    with pytest.raises(AuthenticationError, match=r"^swarm_key '.*missing' is neither a join code") as raised:
        load_swarm_key(str(tmp_path / "missing"))
    assert raised.value.for_cli.startswith("--swarm-key ")


def test_identity_persists_and_is_claimed_by_one_node_at_a_time(tmp_path: Path) -> None:
    first = claim_identity(tmp_path / "node.key")
    with pytest.raises(SwarmError, match="in use"):
        claim_identity(tmp_path / "node.key")
    first.release()
    again = claim_identity(tmp_path / "node.key")
    assert again.node_id == first.node_id == node_id_of(first.public_bytes)
    assert stat.S_IMODE((tmp_path / "node.key").stat().st_mode) == 0o600
    folder = tmp_path / "ids"
    folder.mkdir()
    a, b = claim_identity(folder), claim_identity(folder)  # two nodes on one device: two identities
    assert a.node_id != b.node_id
    a.release()
    assert claim_identity(folder).node_id == a.node_id  # the freed one is reused
    b.release()
    again.release()


# --- call credentials --------------------------------------------------------------------------


def test_member_calls_are_accepted_and_bound_to_the_reply() -> None:
    caller, callee = member(), member()
    metadata, transcript = caller.call("Info", callee.node_id)
    proof = callee.check_call(metadata, "Info")
    assert proof.node_id == caller.node_id
    reply, _ = callee.reply("Info", proof)
    assert caller.check_reply(reply, "Info", transcript, expected_node=callee.node_id).node_id == callee.node_id
    metadata, transcript = caller.call("Info", callee.node_id)
    reply, _ = callee.reply("Info", callee.check_call(metadata, "Info"))
    with pytest.raises(StaleRoute, match="not the"):  # someone else answers at that address now
        caller.check_reply(reply, "Info", transcript, expected_node="0" * 24)
    metadata, transcript = caller.call("Info", callee.node_id)
    reply, _ = callee.reply("Info", callee.check_call(caller.call("Info", callee.node_id)[0], "Info"))
    with pytest.raises(AuthenticationError, match="another request"):  # an answer to another call
        caller.check_reply(reply, "Info", transcript)
    reply, _ = callee.reply("Info", callee.check_call(member().call("Info", callee.node_id)[0], "Info"))
    with pytest.raises(AuthenticationError, match=f"made for node {reply_target(reply)}, not for this node"):
        caller.check_reply(reply, "Info", transcript)  # an answer meant for another caller


def reply_target(metadata: object) -> str:
    """The node id a credential names as its callee (bytes 88 to 100 of its signed fields)."""
    return bytes(metadata[0][1][8 + 16 + 32 + 32 : 8 + 16 + 32 + 32 + 12]).hex()  # type: ignore[index]


@pytest.mark.parametrize("case", ["other swarm", "no credential", "other method", "replayed", "stale", "garbled"])
def test_bad_credentials_are_refused(case: str) -> None:
    callee = member()
    caller = member(OTHER) if case == "other swarm" else member(clock=1.0) if case == "stale" else member()
    metadata, _ = caller.call("Info", callee.node_id)
    if case == "no credential":
        metadata = ()
    if case == "garbled":
        raw = bytearray(metadata[0][1])  # type: ignore[arg-type]
        raw[50] ^= 1
        metadata = ((metadata[0][0], bytes(raw)),)
    method = "Peers" if case == "other method" else "Info"
    if case == "replayed":
        callee.check_call(metadata, method)
    with pytest.raises(AuthenticationError):
        callee.check_call(metadata, method)


FETCH = pb.FetchFileRequest(package_id="a" * 64, file="block_000.onnx").SerializeToString(deterministic=True)


@pytest.mark.parametrize("case", ["another node", "another method", "another request", "any node", "older peer"])
def test_a_credential_is_good_for_its_own_node_and_request_only(case: str) -> None:
    caller, one, two = member(), member(), member()
    metadata, _ = caller.call("FetchFile", one.node_id, FETCH)
    callee, method, request = one, "FetchFile", FETCH
    expected = "made for another request, not for this FetchFile call"
    if case == "another node":  # captured on its way to node one, shown to node two
        callee, expected = two, f"made for node {one.node_id}, not for this node {two.node_id}"
    elif case == "another method":
        method, request, expected = "GetPackageMeta", b"", "made for another request, not for this GetPackageMeta"
    elif case == "another request":  # the same node, another file
        request = pb.FetchFileRequest(package_id="a" * 64, file="head.onnx").SerializeToString(deterministic=True)
    elif case == "any node":  # only an Info may be addressed to whoever answers
        metadata, _ = caller.call("FetchFile", "", FETCH)
        expected = "names no node, so it is not good for this FetchFile call: only Info may be asked of any node"
    else:  # a credential of the format before this one: 44 bytes shorter
        metadata = (("swarm-auth-bin", bytes(metadata[0][1])[:-44]),)  # type: ignore[arg-type]
        expected = "older swarm"
    with pytest.raises(AuthenticationError, match=expected):
        callee.check_call(metadata, method, request)
    assert one.check_call(caller.call("FetchFile", one.node_id, FETCH)[0], "FetchFile", FETCH).node_id == caller.node_id


def test_an_info_to_any_node_is_taken_once_by_each_and_is_good_for_info_only() -> None:
    caller, one, two = member(), member(), member()
    metadata, transcript = caller.call("Info", "")
    proof = one.check_call(metadata, "Info")
    assert caller.check_reply(one.reply("Info", proof)[0], "Info", transcript).node_id == one.node_id
    with pytest.raises(AuthenticationError, match="replay"):
        one.check_call(metadata, "Info")
    with pytest.raises(AuthenticationError, match="only Info may be asked of any node"):
        two.check_call(metadata, "Health")
    assert two.check_call(metadata, "Info").node_id == caller.node_id  # it tells only what nodes announce anyway
    with pytest.raises(SwarmError, match="not a node id"):
        caller.call("Info", "node-1")


def test_replay_guard_forgets_old_nonces_but_refuses_their_era() -> None:
    guard = ReplayGuard(window_s=10, memory=3)
    for i in range(5):
        guard.check(bytes([i]), 100.0 + i, 105.0)
    with pytest.raises(AuthenticationError, match="replay"):
        guard.check(bytes([0]), 100.0, 105.0)  # forgotten, but from before the floor
    guard.check(bytes([9]), 106.0, 106.0)
    with pytest.raises(AuthenticationError, match="clock"):
        guard.check(bytes([10]), 50.0, 106.0)


def test_manifest_signature_checks_the_bytes_and_the_signer() -> None:
    signer = member()
    callee = member()
    proof = callee.check_call(signer.call("GetPackageMeta", callee.node_id)[0], "GetPackageMeta")
    signature = signer.identity.sign(manifest_signed_bytes(b'{"a": 1}'))
    check_manifest_signature(b'{"a": 1}', signature, proof)
    with pytest.raises(AuthenticationError):
        check_manifest_signature(b'{"a": 2}', signature, proof)


# --- sealed frames -----------------------------------------------------------------------------


def linked_frames(key: SwarmKey = KEY) -> tuple[SealedFrames, SealedFrames]:
    caller, callee = member(key), member(key)
    c_private, c_public = new_exchange()
    metadata, call_transcript = caller.call("Session", callee.node_id, x_public=c_public)
    proof = callee.check_call(metadata, "Session")
    s_private, s_public = new_exchange()
    reply, reply_transcript = callee.reply("Session", proof, s_public)
    answer = caller.check_reply(reply, "Session", call_transcript)
    up = session_keys(key, c_private, answer.x_public, call_transcript, answer.transcript, caller=True)
    down = session_keys(key, s_private, proof.x_public, proof.transcript, reply_transcript, caller=False)
    return SealedFrames(up, caller=True), SealedFrames(down, caller=False)


def step(n: int) -> pb.SessionRequest:
    return pb.SessionRequest(step=pb.Step(step=n, position=n, tokens=pb.TokenIds(ids=[1000 + n])))


def test_frames_round_trip_and_hide_their_content() -> None:
    client, node = linked_frames()
    for n in range(3):
        sealed = client.seal(step(n))
        assert sealed.WhichOneof("kind") == "sealed" and step(n).SerializeToString() not in sealed.SerializeToString()
        assert node.open(sealed) == step(n)
    reply = pb.SessionReply(result=pb.StepResult(step=0, token=42))
    assert client.open(node.seal(reply)) == reply


@pytest.mark.parametrize("attack", ["replay", "reorder", "alter", "other key", "plain", "reflect"])
def test_tampered_frames_are_rejected(attack: str) -> None:
    client, node = linked_frames()
    first, second = client.seal(step(0)), client.seal(step(1))
    if attack == "replay":
        node.open(first)
        bad = first
    elif attack == "reorder":
        bad = second
    elif attack == "alter":
        box = bytearray(first.sealed.box)
        box[3] ^= 0x40
        bad = pb.SessionRequest(sealed=pb.Sealed(seq=0, box=bytes(box)))
    elif attack == "other key":
        bad = linked_frames()[0].seal(step(0))
    elif attack == "reflect":  # a node's own reply frame sent back to it as a request
        bad = pb.SessionRequest(sealed=node.seal(pb.SessionReply(result=pb.StepResult(step=0))).sealed)
    else:
        bad = step(0)
    with pytest.raises(AuthenticationError):
        node.open(bad)


def test_plain_frames_refuse_sealed_ones() -> None:
    client, _ = linked_frames()
    with pytest.raises(SwarmError, match="open swarm"):
        PlainFrames().open(client.seal(step(0)))


# --- signed mDNS records -------------------------------------------------------------------------


def signed(credentials: Credentials, **changes: str) -> dict[str, str]:
    txt = {"id": credentials.node_id, "sw": credentials.swarm_id, "v": "2", "model": "a" * 64, "span": "0:2"}
    return {**sign_txt(txt, 7000, credentials), **changes}


def test_records_signed_for_our_swarm_are_ours_and_nothing_else_is() -> None:
    us, stranger = member(), member(OTHER)
    assert txt_is_ours(signed(us), 7000, member())
    assert not txt_is_ours(signed(stranger), 7000, member())  # another swarm's record
    forged = signed(stranger, sw=us.swarm_id)  # claims our swarm, cannot tag for it
    assert not txt_is_ours(forged, 7000, member())
    assert not txt_is_ours(signed(us, span="0:5"), 7000, member())  # altered after signing
    assert not txt_is_ours(signed(us), 7001, member())  # moved to another port
    assert not txt_is_ours(signed(us, id="laptop"), 7000, member())  # an id that is not its key's
    unsigned = {k: v for k, v in signed(us).items() if k not in ("sg", "mc")}
    assert not txt_is_ours(unsigned, 7000, member())
    assert not txt_is_ours(signed(us), 7000, member(), now=float(signed(us)["ts"]) + 3600)  # stale
    assert not txt_is_ours(signed(us), 7000, None)  # an open-swarm browser ignores keyed records
    assert txt_is_ours({"id": "x", "sw": ""}, 7000, None)


def test_private_files_are_not_group_readable_even_with_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_key_file(KEY, tmp_path / "k")
        claim_identity(tmp_path / "id.key").release()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "id.key").stat().st_mode) == 0o600
