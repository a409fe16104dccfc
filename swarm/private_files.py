"""The files a private client runs (swarm/private.py), from this device or fetched from peers.

A private client needs the embedding, the head and the block files of its `private_layers` at
each end. Given a package folder it checks that it is the swarm's model; otherwise it fetches
those files with FetchFile from the peers that serve the model, one after another until one
gives the bytes whose sha256 the manifest names (the manifest itself came signed by a node, and
its sha256 is the package id the client chose). Every file is checked again before it loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.auth import Credentials
from swarm.errors import InvalidPackage, PeerUnavailable, SwarmError
from swarm.package import MANIFEST_NAME, BlockEntry, FileEntry, Manifest, ModelPackage, load_package, sha256_file
from swarm.transport import ChannelPool, checked_stream, request_bytes

FETCH_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class FileSource:
    """A peer to fetch package files from."""

    address: str
    node_id: str
    channels: ChannelPool
    credentials: Credentials | None


def client_entries(manifest: Manifest, layers: int) -> list[FileEntry | BlockEntry]:
    """The files of the client's part: its first and last `layers` layers, the embedding, the head."""
    n = manifest.num_layers
    return [manifest.embedding, *manifest.blocks_in(0, layers), *manifest.blocks_in(n - layers, n), manifest.head]


async def client_package(local: str | None, manifest: Manifest, package_id: str, layers: int,
                         sources: list[FileSource], cache: Path) -> ModelPackage:  # fmt: skip
    """The package to run the client's part from: `local` (checked to be the swarm's model), or a
    folder under `cache` holding only the client's files, fetched from `sources` when missing."""
    if local is not None:
        package = load_package(local)
        if package.package_id != package_id:
            raise InvalidPackage(f"{local} holds model {package.package_id[:16]}; the swarm serves "
                                 f"{package_id[:16]}: give private_package the swarm's model")  # fmt: skip
        return package
    root = cache / package_id
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_NAME).write_text(manifest.to_json())
    package = ModelPackage(root, manifest)
    for entry in client_entries(manifest, layers):
        path = package.path(entry.file)
        if not (path.is_file() and path.stat().st_size == entry.bytes and sha256_file(path) == entry.sha256):
            await _fetch(entry, path, package_id, sources)
    return package


async def _fetch(entry: FileEntry | BlockEntry, path: Path, package_id: str, sources: list[FileSource]) -> None:
    """`entry` into `path` from the first source that sends the right bytes."""
    part = path.with_name(path.name + ".part")
    errors = []
    for source in sources:
        try:
            await _download(source, package_id, entry, part)
            if sha256_file(part) != entry.sha256:
                raise InvalidPackage(f"{entry.file} from {source.address} does not match the manifest's sha256")
            part.replace(path)
            return
        except (grpc.aio.AioRpcError, SwarmError) as exc:
            errors.append(f"{source.address}: {exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc}")
        finally:
            part.unlink(missing_ok=True)
    raise PeerUnavailable(f"no peer gave {entry.file} for the private client part: {'; '.join(errors) or 'no peers'}")


async def _download(source: FileSource, package_id: str, entry: FileEntry | BlockEntry, part: Path) -> None:
    request = pb.FetchFileRequest(package_id=package_id, file=entry.file, offset=0)
    stub = pb_grpc.SwarmNodeStub(source.channels.get(source.address))
    if source.credentials is None:
        call = stub.FetchFile(request, timeout=FETCH_TIMEOUT_S)
    else:
        metadata, transcript = source.credentials.call("FetchFile", source.node_id, request_bytes(request))
        call = stub.FetchFile(request, metadata=metadata, timeout=FETCH_TIMEOUT_S)
        await checked_stream(call, "FetchFile", transcript, source.credentials, source.address, source.node_id)
    offset = 0
    with part.open("wb") as out:
        async for chunk in call:
            if chunk.offset != offset or offset + len(chunk.data) > entry.bytes:
                call.cancel()
                raise InvalidPackage(f"{source.address} sent bytes of {entry.file} at {chunk.offset}, "
                                     f"expected {offset}")  # fmt: skip
            out.write(chunk.data)
            offset += len(chunk.data)
