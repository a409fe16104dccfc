"""The block store: package folders, manifest checks, completeness, LRU eviction and resumable fetch."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

import node.block_store as block_store
from export.exporter import ExportOptions, export_checkpoint
from node.block_store import BlockStore, FileRef, Source
from swarm.errors import InvalidPackage, PeerUnavailable
from swarm.package import ModelPackage, sha256_file
from tests.conftest import golden_checkpoint

GOLDEN = golden_checkpoint("llama_gqa_untied")


@dataclass(frozen=True)
class Exported:
    package: ModelPackage
    manifest_json: bytes
    tokenizer_json: bytes

    def data(self, entry: FileRef) -> bytes:
        return self.package.path(entry.file).read_bytes()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    out = tmp_path_factory.mktemp("export") / "pkg"
    package = export_checkpoint(GOLDEN, out, ExportOptions())
    return Exported(package, (out / "manifest.json").read_bytes(), (out / "tokenizer.json").read_bytes())


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path / "store", limit_bytes=10**9)


@pytest.fixture
def saved(store: BlockStore, exported: Exported) -> ModelPackage:
    return store.save_meta(exported.manifest_json, exported.tokenizer_json)


def tampered_manifest(exported: Exported, edit: dict[str, object]) -> bytes:
    raw = json.loads(exported.manifest_json)
    for dotted, value in edit.items():
        node = raw
        *path, last = dotted.split(".")
        for key in path:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return json.dumps(raw).encode()


# ---------------------------------------------------------------- package_dir


def test_store_creates_its_root(tmp_path: Path) -> None:
    BlockStore(tmp_path / "a" / "b", limit_bytes=1)
    assert (tmp_path / "a" / "b").is_dir()


def test_package_dir_of_a_valid_id(store: BlockStore) -> None:
    pid = "0123456789abcdef" * 4
    assert store.package_dir(pid) == store.root / pid
    assert not (store.root / pid).exists()  # naming a folder does not create it


@pytest.mark.parametrize(
    "bad",
    [
        "../etc",
        "../" + "a" * 61,
        "a" * 31 + "/" + "a" * 32,
        "0123456789ABCDEF" * 4,  # uppercase
        "a" * 63,
        "a" * 65,
        "g" * 64,
        "",
        " " + "a" * 63,
        "a" * 63 + "\n",
    ],
)
def test_package_dir_rejects_anything_but_64_lowercase_hex(store: BlockStore, bad: str) -> None:
    with pytest.raises(InvalidPackage, match="not a package id"):
        store.package_dir(bad)


# ---------------------------------------------------------------- save_meta


def test_save_meta_stores_manifest_and_tokenizer(store: BlockStore, exported: Exported) -> None:
    package = store.save_meta(exported.manifest_json, exported.tokenizer_json)
    assert package.package_id == exported.package.package_id
    assert package.root == store.root / package.package_id
    assert (package.root / "manifest.json").read_bytes() == exported.manifest_json
    assert (package.root / "tokenizer.json").read_bytes() == exported.tokenizer_json
    assert package.manifest == exported.package.manifest
    assert sorted(p.name for p in package.root.iterdir()) == ["manifest.json", "tokenizer.json"]


def test_save_meta_twice_is_harmless(store: BlockStore, exported: Exported) -> None:
    first = store.save_meta(exported.manifest_json, exported.tokenizer_json)
    second = store.save_meta(exported.manifest_json, exported.tokenizer_json)
    assert first == second


def test_save_meta_refuses_a_tokenizer_that_does_not_match(store: BlockStore, exported: Exported) -> None:
    other = exported.tokenizer_json.replace(b"}", b" }", 1)
    assert hashlib.sha256(other).hexdigest() != exported.package.manifest.tokenizer.sha256
    with pytest.raises(InvalidPackage, match="tokenizer does not match"):
        store.save_meta(exported.manifest_json, other)
    assert list(store.root.iterdir()) == []  # nothing stored


def test_save_meta_refuses_a_manifest_of_another_format(store: BlockStore, exported: Exported) -> None:
    with pytest.raises(InvalidPackage):
        store.save_meta(tampered_manifest(exported, {"format_version": 99}), exported.tokenizer_json)
    with pytest.raises(InvalidPackage):
        store.save_meta(b"{}", exported.tokenizer_json)
    assert list(store.root.iterdir()) == []


@pytest.mark.parametrize("garbage", [b"not json", b"\xff\xfe", b"[]", b"null"])
def test_save_meta_garbage_manifest_is_invalid_package(store: BlockStore, exported: Exported, garbage: bytes) -> None:
    with pytest.raises(InvalidPackage):
        store.save_meta(garbage, exported.tokenizer_json)


@pytest.mark.parametrize("escape", ["../../outside.json", "ABSOLUTE"])
def test_save_meta_never_writes_outside_the_store(
    tmp_path: Path, store: BlockStore, exported: Exported, escape: str
) -> None:
    target = tmp_path / "outside.json"
    name = str(target) if escape == "ABSOLUTE" else escape
    manifest = tampered_manifest(exported, {"tokenizer.file": name})
    try:
        with pytest.raises(InvalidPackage):
            store.save_meta(manifest, exported.tokenizer_json)
    finally:
        assert not target.exists(), f"save_meta wrote {target}"


# ---------------------------------------------------------------- missing


def all_entries(package: ModelPackage) -> list[FileRef]:
    m = package.manifest
    return [m.embedding, *m.blocks, m.head]


def test_missing_lists_every_absent_file(store: BlockStore, saved: ModelPackage) -> None:
    entries = all_entries(saved)
    assert len(saved.manifest.blocks) == 2  # the golden model has blocks to fetch
    assert store.missing(saved, entries) == entries


def test_missing_checks_size_and_content(store: BlockStore, saved: ModelPackage, exported: Exported) -> None:
    embedding, block0, block1, head = all_entries(saved)
    saved.path(embedding.file).write_bytes(exported.data(embedding))  # complete
    saved.path(block0.file).write_bytes(exported.data(block0)[:-1])  # truncated
    wrong = bytearray(exported.data(block1))
    wrong[len(wrong) // 2] ^= 0xFF
    saved.path(block1.file).write_bytes(bytes(wrong))  # right size, wrong content
    saved.path(head.file + ".part").write_bytes(exported.data(head))  # only a partial download
    assert store.missing(saved, [embedding, block0, block1, head]) == [block0, block1, head]
    assert store.missing(saved, [embedding]) == []
    assert store.missing(saved, []) == []


def test_missing_counts_a_longer_file_as_missing(store: BlockStore, saved: ModelPackage, exported: Exported) -> None:
    head = saved.manifest.head
    saved.path(head.file).write_bytes(exported.data(head) + b"\0")
    assert store.missing(saved, [head]) == [head]


# ---------------------------------------------------------------- evict


def make_package(root: Path, index: int, size: int, mtime: float) -> str:
    pid = f"{index:064x}"
    folder = root / pid
    folder.mkdir(parents=True)
    (folder / "block_000.onnx").write_bytes(b"x" * size)
    os.utime(folder, (mtime, mtime))
    return pid


def test_evict_removes_least_recently_used_until_under_the_limit(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, limit_bytes=250)
    newest = make_package(tmp_path, 1, 100, mtime=3000.0)
    oldest = make_package(tmp_path, 2, 100, mtime=1000.0)
    middle = make_package(tmp_path, 3, 100, mtime=2000.0)
    assert store.size() == 300
    assert store.evict(keep=newest) == [oldest]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([newest, middle])
    assert store.size() == 200


def test_evict_removes_several_in_lru_order(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, limit_bytes=100)
    a = make_package(tmp_path, 1, 100, mtime=1000.0)
    b = make_package(tmp_path, 2, 100, mtime=2000.0)
    c = make_package(tmp_path, 3, 100, mtime=3000.0)
    d = make_package(tmp_path, 4, 100, mtime=4000.0)
    assert store.evict(keep=d) == [a, b, c]
    assert [p.name for p in tmp_path.iterdir()] == [d]


def test_evict_never_removes_keep_even_when_it_is_the_oldest(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, limit_bytes=150)
    keep = make_package(tmp_path, 1, 100, mtime=1000.0)
    b = make_package(tmp_path, 2, 100, mtime=2000.0)
    c = make_package(tmp_path, 3, 100, mtime=3000.0)
    assert store.evict(keep=keep) == [b, c]
    assert [p.name for p in tmp_path.iterdir()] == [keep]


def test_evict_keeps_keep_even_if_it_alone_is_over_the_limit(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, limit_bytes=10)
    keep = make_package(tmp_path, 1, 500, mtime=5000.0)
    other = make_package(tmp_path, 2, 5, mtime=1000.0)
    assert store.evict(keep=keep) == [other]
    assert [p.name for p in tmp_path.iterdir()] == [keep]
    assert store.size() == 500


def test_evict_under_the_limit_removes_nothing(tmp_path: Path) -> None:
    store = BlockStore(tmp_path, limit_bytes=300)
    ids = [make_package(tmp_path, i, 100, mtime=1000.0 * i) for i in range(1, 4)]
    assert store.evict(keep=ids[0]) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ids)


def test_save_meta_marks_a_package_as_recently_used(exported: Exported, store: BlockStore) -> None:
    stale = make_package(store.root, 7, 1000, mtime=10.0**9)  # used in 2001
    package = store.save_meta(exported.manifest_json, exported.tokenizer_json)
    store.limit_bytes = store.size() - 1
    assert store.evict(keep="f" * 64) == [stale]  # the older one goes, the fresh package stays
    assert package.root.is_dir()


# ---------------------------------------------------------------- fetch (no network: _download is faked)


@dataclass
class FakePeers:
    """Stands in for `_download`: each address serves the given bytes from the .part's current size."""

    serves: dict[str, bytes]
    fail_after: dict[str, tuple[int, BaseException]] = field(default_factory=dict)
    calls: list[tuple[str, str, str, int]] = field(default_factory=list)
    progress: list[tuple[str, int, int]] = field(default_factory=list)

    async def download(self, source: Source, package_id: str, entry: FileRef, part: Path, progress: object,
                       credentials: object = None) -> None:
        address = source.address
        offset = part.stat().st_size if part.exists() else 0
        self.calls.append((address, package_id, entry.file, offset))
        data = self.serves[address][offset:]
        if address in self.fail_after:
            count, error = self.fail_after[address]
            with part.open("ab") as out:
                out.write(data[:count])
            raise error
        with part.open("ab") as out:
            out.write(data)
        assert callable(progress)
        progress(entry.file, offset + len(data), entry.bytes)

    def record(self, name: str, done: int, total: int) -> None:
        self.progress.append((name, done, total))


def fetch(store: BlockStore, package: ModelPackage, entry: FileRef, sources: list[str], peers: FakePeers) -> None:
    asyncio.run(store.fetch(package, entry, [Source(a, "0" * 24) for a in sources], peers.record))


def corrupt(data: bytes) -> bytes:
    bad = bytearray(data)
    bad[-1] ^= 0xFF
    return bytes(bad)


@pytest.fixture
def block(saved: ModelPackage) -> FileRef:
    return saved.manifest.blocks[0]


def test_fetch_downloads_a_file_and_renames_it_into_place(
    monkeypatch: pytest.MonkeyPatch, store: BlockStore, saved: ModelPackage, exported: Exported, block: FileRef
) -> None:
    peers = FakePeers({"p1:1": exported.data(block)})
    monkeypatch.setattr(block_store, "_download", peers.download)
    fetch(store, saved, block, ["p1:1"], peers)
    assert saved.path(block.file).read_bytes() == exported.data(block)
    assert not saved.path(block.file + ".part").exists()
    assert peers.calls == [("p1:1", saved.package_id, block.file, 0)]
    assert peers.progress == [(block.file, block.bytes, block.bytes)]
    assert store.missing(saved, [block]) == []


def test_fetch_hashes_the_file_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, store: BlockStore, saved: ModelPackage, exported: Exported, block: FileRef
) -> None:
    hashed_on: list[threading.Thread] = []

    def recording_sha256(path: Path) -> str:
        hashed_on.append(threading.current_thread())
        return sha256_file(path)

    monkeypatch.setattr(block_store, "sha256_file", recording_sha256)
    peers = FakePeers({"p1:1": exported.data(block)})
    monkeypatch.setattr(block_store, "_download", peers.download)

    async def fetch_on_a_loop() -> threading.Thread:
        await store.fetch(saved, block, [Source("p1:1", "0" * 24)], peers.record)
        return threading.current_thread()

    loop_thread = asyncio.run(fetch_on_a_loop())
    assert saved.path(block.file).read_bytes() == exported.data(block)
    assert hashed_on and loop_thread not in hashed_on  # a large block would have stalled every stream


def test_fetch_resumes_a_partial_download(
    monkeypatch: pytest.MonkeyPatch, store: BlockStore, saved: ModelPackage, exported: Exported, block: FileRef
) -> None:
    data = exported.data(block)
    half = len(data) // 2
    saved.path(block.file + ".part").write_bytes(data[:half])
    peers = FakePeers({"p1:1": data})
    monkeypatch.setattr(block_store, "_download", peers.download)
    fetch(store, saved, block, ["p1:1"], peers)
    assert [c[3] for c in peers.calls] == [half]  # asked only for the rest
    assert saved.path(block.file).read_bytes() == data
    assert not saved.path(block.file + ".part").exists()


def test_fetch_rejects_corrupt_data_and_removes_the_part(
    monkeypatch: pytest.MonkeyPatch, store: BlockStore, saved: ModelPackage, exported: Exported, block: FileRef
) -> None:
    peers = FakePeers({"evil:1": corrupt(exported.data(block))})
    monkeypatch.setattr(block_store, "_download", peers.download)
    with pytest.raises(PeerUnavailable, match="does not match") as caught:
        fetch(store, saved, block, ["evil:1"], peers)
    assert block.file in str(caught.value) and "evil:1" in str(caught.value)
    assert not saved.path(block.file + ".part").exists()
    assert not saved.path(block.file).exists()


def test_fetch_falls_back_to_the_next_source_after_corrupt_data(
    monkeypatch: pytest.MonkeyPatch, store: BlockStore, saved: ModelPackage, exported: Exported, block: FileRef
) -> None:
    data = exported.data(block)
    peers = FakePeers({"evil:1": corrupt(data), "good:2": data})
    monkeypatch.setattr(block_store, "_download", peers.download)
    fetch(store, saved, block, ["evil:1", "good:2"], peers)
    assert [(c[0], c[3]) for c in peers.calls] == [("evil:1", 0), ("good:2", 0)]  # starts over, not resumed
    assert saved.path(block.file).read_bytes() == data
    assert not saved.path(block.file + ".part").exists()


def test_fetch_resumes_from_the_next_source_after_a_dropped_connection(
    monkeypatch: pytest.MonkeyPatch, store: BlockStore, saved: ModelPackage, exported: Exported, block: FileRef
) -> None:
    data = exported.data(block)
    error = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "peer left")
    peers = FakePeers({"flaky:1": data, "good:2": data}, fail_after={"flaky:1": (1000, error)})
    monkeypatch.setattr(block_store, "_download", peers.download)
    fetch(store, saved, block, ["flaky:1", "good:2"], peers)
    assert [(c[0], c[3]) for c in peers.calls] == [("flaky:1", 0), ("good:2", 1000)]
    assert saved.path(block.file).read_bytes() == data


def test_fetch_reports_every_failed_source(
    monkeypatch: pytest.MonkeyPatch, store: BlockStore, saved: ModelPackage, exported: Exported, block: FileRef
) -> None:
    data = exported.data(block)
    rpc_error = grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "no file")
    peers = FakePeers(
        {"a:1": data, "b:2": data, "c:3": corrupt(data)},
        fail_after={"a:1": (0, rpc_error), "b:2": (10, block_store.BadPeerData("sent bytes at 7, expected 10"))},
    )
    monkeypatch.setattr(block_store, "_download", peers.download)
    with pytest.raises(PeerUnavailable) as caught:
        fetch(store, saved, block, ["a:1", "b:2", "c:3"], peers)
    message = str(caught.value)
    assert "a:1: no file" in message
    assert "b:2: sent bytes at 7" in message
    assert "c:3: sent data that does not match" in message
    assert [(c[0], c[3]) for c in peers.calls] == [("a:1", 0), ("b:2", 0), ("c:3", 10)]
    assert not saved.path(block.file).exists()


def test_fetch_never_writes_outside_the_store(
    monkeypatch: pytest.MonkeyPatch, store: BlockStore, exported: Exported
) -> None:
    payload = b"#!/bin/sh\necho owned\n"
    evil = {"file": "../../evil.onnx", "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    manifest = tampered_manifest(exported, {"blocks.0.file": evil["file"], "blocks.0.bytes": evil["bytes"],
                                            "blocks.0.sha256": evil["sha256"]})  # fmt: skip
    outside = store.root.parent / "evil.onnx"
    peers = FakePeers({"evil:1": payload})
    monkeypatch.setattr(block_store, "_download", peers.download)
    with contextlib.suppress(InvalidPackage):  # refusing the manifest (here or when loading it) is a fix too
        package = store.save_meta(manifest, exported.tokenizer_json)
        with contextlib.suppress(PeerUnavailable):
            fetch(store, package, package.manifest.blocks[0], ["evil:1"], peers)
    assert not outside.exists(), f"fetch wrote {outside}"
    assert not (store.root.parent / "evil.onnx.part").exists()


def test_fetch_without_sources(
    monkeypatch: pytest.MonkeyPatch, store: BlockStore, saved: ModelPackage, block: FileRef
) -> None:
    peers = FakePeers({})
    monkeypatch.setattr(block_store, "_download", peers.download)
    with pytest.raises(PeerUnavailable, match="no peer has it"):
        fetch(store, saved, block, [], peers)
    assert peers.calls == []
    assert not saved.path(block.file).exists()
