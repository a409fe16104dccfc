"""The local block store: model package files fetched from peers, in a size-limited cache.

Layout: `<root>/<package id>/` holds `manifest.json`, `tokenizer.json` and whichever stage
files this device fetched. Downloads go to `<file>.part` and resume from its size; a file is
renamed into place only after its sha256 matches the manifest. When the store grows past its
limit, whole packages other than the one in use are evicted, least recently used first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import grpc

from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.auth import Credentials
from swarm.errors import CapacityExceeded, InvalidPackage, PeerUnavailable, SwarmError
from swarm.package import MANIFEST_NAME, BlockEntry, FileEntry, Manifest, ModelPackage, load_package, sha256_file
from swarm.transport import checked_stream, insecure_channel, request_bytes

log = logging.getLogger("swarm.node")
Progress = Callable[[str, int, int], None]
FileRef = FileEntry | BlockEntry


class StoreError(SwarmError):
    """The block store's folder cannot be used or written."""


class DownloadPaused(SwarmError):
    """The caller's `allowed()` said stop (e.g. a metered network): the `.part` file stays and the
    next fetch resumes from its size, so no byte already written is fetched again."""


class Source(NamedTuple):
    """A peer to fetch from: where it is, and who it is (credentials are made for that node only)."""

    address: str  # host:port
    node_id: str


class BadPeerData(Exception):
    """A peer's stream did not fit the request (wrong offset, too long)."""


class BlockStore:
    def __init__(self, root: Path, limit_bytes: int) -> None:
        self.root = root
        self.limit_bytes = limit_bytes
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / ".writable"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"cannot use {root} as the block store: {exc.strerror or exc}") from exc

    def make_room(self, package_id: str, needed: int) -> None:
        """Evict other packages for `needed` more bytes; refuse clearly when even that is not enough."""
        if self.size() + needed <= self.limit_bytes:
            return
        self.evict(keep=package_id, extra=needed)
        if self.size() + needed > self.limit_bytes:
            raise CapacityExceeded(
                f"the block store {self.root} needs {needed / 2**20:.1f} MiB more, but it holds "
                f"{self.size() / 2**20:.1f} MiB of its {self.limit_bytes / 2**20:.1f} MiB limit; "
                "raise --cache-limit or serve fewer layers"
            )

    def package_dir(self, package_id: str) -> Path:
        if not _is_package_id(package_id):
            raise InvalidPackage(f"not a package id: {package_id!r}")
        return self.root / package_id

    def save_meta(self, manifest_json: bytes, tokenizer_json: bytes) -> ModelPackage:
        """Store a package's manifest and tokenizer after checking them against each other."""
        try:
            raw = json.loads(manifest_json)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidPackage(f"peer sent a manifest that is not JSON: {exc}") from exc
        manifest = Manifest.from_dict(raw)
        if hashlib.sha256(tokenizer_json).hexdigest() != manifest.tokenizer.sha256:
            raise InvalidPackage("the tokenizer does not match the manifest")
        folder = self.package_dir(manifest.package_id)
        folder.mkdir(exist_ok=True)
        (folder / manifest.tokenizer.file).write_bytes(tokenizer_json)
        (folder / MANIFEST_NAME).write_bytes(manifest_json)
        package = load_package(folder)
        if package.package_id != manifest.package_id:  # re-serialised differently: keep the original bytes
            raise InvalidPackage("stored manifest does not reproduce its package id")
        folder.touch()  # most recently used
        return package

    def missing(self, package: ModelPackage, entries: Sequence[FileRef]) -> list[FileRef]:
        """The entries not held complete (each file hashed: from a coroutine, call it in a thread)."""
        return [e for e in entries if not _complete(package.path(e.file), e)]

    async def fetch(self, package: ModelPackage, entry: FileRef, sources: Sequence[Source], progress: Progress,
                    credentials: Credentials | None = None,
                    allowed: Callable[[], bool] | None = None) -> None:  # fmt: skip
        """Download one file from the first source that has it, resuming a partial download.
        `allowed()` is asked before and after every chunk; False raises DownloadPaused."""
        target = package.path(entry.file)
        part = target.with_name(target.name + ".part")
        errors = []
        if allowed is not None:
            progress = _pausable(progress, allowed)
            progress(entry.file, part.stat().st_size if part.exists() else 0, entry.bytes)
        for source in sources:
            address = source.address
            try:
                await _download(source, package.package_id, entry, part, progress, credentials)
            except DownloadPaused:
                raise
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{address}: {exc.details()}")
                continue
            except (BadPeerData, SwarmError) as exc:  # incl. a peer failing authentication
                errors.append(f"{address}: {exc}")
                continue
            size = part.stat().st_size if part.exists() else 0
            if size < entry.bytes:  # the stream ended early: the next source resumes from here
                errors.append(f"{address}: stopped after {size} of {entry.bytes} bytes")
                continue
            if await asyncio.to_thread(sha256_file, part) == entry.sha256:  # off the loop: blocks run to GBs
                part.rename(target)
                return
            part.unlink(missing_ok=True)  # corrupt: start over from the next source
            errors.append(f"{address}: sent data that does not match the manifest sha256")
        raise PeerUnavailable(f"could not fetch {entry.file}: " + ("; ".join(errors) or "no peer has it"))

    def evict(self, keep: str, extra: int = 0) -> list[str]:
        """Remove least recently used packages (never `keep`) until the store fits its limit
        with `extra` bytes to spare."""
        removed = []
        folders = sorted((p for p in self.root.iterdir() if p.is_dir() and _is_package_id(p.name)),
                         key=lambda p: p.stat().st_mtime)  # fmt: skip
        for folder in folders:
            if self.size() + extra <= self.limit_bytes:
                break
            if folder.name != keep:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        return removed

    def size(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())


def _is_package_id(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _pausable(progress: Progress, allowed: Callable[[], bool]) -> Progress:
    """`progress` that stops the download (after the chunk just written) when `allowed()` says so."""

    def report(name: str, done: int, total: int) -> None:
        progress(name, done, total)
        if done < total and not allowed():  # a complete file is checked and kept, not paused
            raise DownloadPaused(f"download of {name} paused at {done} of {total} bytes")

    return report


def _complete(path: Path, entry: FileRef) -> bool:
    return path.is_file() and path.stat().st_size == entry.bytes and sha256_file(path) == entry.sha256


async def _download(source: Source, package_id: str, entry: FileRef, part: Path, progress: Progress,
                    credentials: Credentials | None) -> None:  # fmt: skip
    offset = part.stat().st_size if part.exists() else 0
    if offset > entry.bytes:
        part.unlink()
        offset = 0
    address = source.address
    async with insecure_channel(address) as channel:
        request = pb.FetchFileRequest(package_id=package_id, file=entry.file, offset=offset)
        stub = pb_grpc.SwarmNodeStub(channel)
        if credentials is None:
            call = stub.FetchFile(request, timeout=600)
        else:
            metadata, transcript = credentials.call("FetchFile", source.node_id, request_bytes(request))
            call = stub.FetchFile(request, metadata=metadata, timeout=600)
            await checked_stream(call, "FetchFile", transcript, credentials, address, source.node_id)
        with part.open("ab") as out:
            async for chunk in call:
                if chunk.offset != offset or offset + len(chunk.data) > entry.bytes:
                    raise BadPeerData(f"sent bytes at {chunk.offset}, expected {offset}")
                out.write(chunk.data)
                offset += len(chunk.data)
                progress(entry.file, offset, entry.bytes)
