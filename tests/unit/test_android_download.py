"""Pausable block downloads: a pause keeps the partial file, the resume fetches only the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import node.block_store as block_store
from node.block_store import BlockStore, DownloadPaused, FileRef, Source
from swarm.package import ModelPackage, sha256_file

CHUNK = 4096
PEER = Source("peer:1", "0" * 24)


class ChunkedPeer:
    """Stands in for `_download`: sends the real file in CHUNK-byte pieces, reporting each."""

    def __init__(self, source: ModelPackage) -> None:
        self.source = source
        self.sent: list[tuple[int, int]] = []  # (offset the call started at, bytes it wrote)

    async def download(self, peer: Source, package_id: str, entry: FileRef, part: Path, progress: block_store.Progress,
                       credentials: object = None) -> None:  # fmt: skip
        data = self.source.path(entry.file).read_bytes()
        start = offset = part.stat().st_size if part.exists() else 0
        try:
            with part.open("ab") as out:
                while offset < len(data):
                    piece = data[offset : offset + CHUNK]
                    out.write(piece)
                    offset += len(piece)
                    progress(entry.file, offset, entry.bytes)
        finally:
            self.sent.append((start, offset - start))


def test_a_paused_download_resumes_without_fetching_a_byte_twice(
    stories_package: ModelPackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlockStore(tmp_path / "store", 10**9)
    manifest_json = stories_package.path("manifest.json").read_bytes()
    tokenizer_json = stories_package.path(stories_package.manifest.tokenizer.file).read_bytes()
    package = store.save_meta(manifest_json, tokenizer_json)
    entry = package.manifest.blocks[2]
    peer = ChunkedPeer(stories_package)
    monkeypatch.setattr(block_store, "_download", peer.download)
    metered = False
    reports: list[int] = []

    def progress(_name: str, done: int, _total: int) -> None:
        nonlocal metered
        reports.append(done)
        metered = metered or done >= 100_000  # the phone walks out of Wi-Fi range here

    with pytest.raises(DownloadPaused, match=r"paused at 102400 of 204759 bytes"):
        asyncio.run(store.fetch(package, entry, [PEER], progress, allowed=lambda: not metered))
    part = package.path(entry.file + ".part")
    assert part.stat().st_size == 102400 and not package.path(entry.file).exists()
    with pytest.raises(DownloadPaused, match=r"paused at 102400"):  # still metered: not even a chunk
        asyncio.run(store.fetch(package, entry, [PEER], progress, allowed=lambda: not metered))
    metered = False
    asyncio.run(store.fetch(package, entry, [PEER], lambda *_: None, allowed=lambda: True))
    assert sha256_file(package.path(entry.file)) == entry.sha256 and not part.exists()
    assert peer.sent == [(0, 102400), (102400, entry.bytes - 102400)]
    assert sum(n for _, n in peer.sent) == entry.bytes


def test_without_a_gate_nothing_changes(stories_package: ModelPackage, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    store = BlockStore(tmp_path / "store", 10**9)
    package = store.save_meta(stories_package.path("manifest.json").read_bytes(),
                              stories_package.path("tokenizer.json").read_bytes())  # fmt: skip
    peer = ChunkedPeer(stories_package)
    monkeypatch.setattr(block_store, "_download", peer.download)
    asyncio.run(store.fetch(package, package.manifest.head, [PEER], lambda *_: None))
    assert peer.sent == [(0, package.manifest.head.bytes)]
