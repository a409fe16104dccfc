import json
import shutil
from pathlib import Path

import pytest

from swarm.errors import InvalidPackage
from swarm.package import MANIFEST_NAME, ModelPackage, load_package


def test_package_id_is_sha256_of_canonical_manifest(stories_package: ModelPackage) -> None:
    import hashlib

    raw = json.loads((stories_package.root / MANIFEST_NAME).read_text())
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
    assert stories_package.package_id == hashlib.sha256(canonical).hexdigest()
    assert load_package(stories_package.root).package_id == stories_package.package_id


def test_manifest_records_every_file(stories_package: ModelPackage) -> None:
    m = stories_package.manifest
    assert [(b.start, b.end) for b in m.blocks] == [(i, i + 1) for i in range(5)]
    assert m.tokenizer.eos_token_ids == (2,)
    assert m.max_context == 512
    for entry in (m.embedding, *m.blocks, m.head):
        stories_package.verify_file(entry)


def test_tampered_block_is_refused(stories_package: ModelPackage, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(stories_package.root, tmp_path / "pkg"))
    block = copy / stories_package.manifest.blocks[2].file
    data = bytearray(block.read_bytes())
    data[-10] ^= 0xFF
    block.write_bytes(bytes(data))
    package = load_package(copy)
    with pytest.raises(InvalidPackage, match="sha256"):
        package.verify_file(package.manifest.blocks[2])


def test_spans_must_fall_on_block_edges(export_package, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import STORIES

    package = export_package(STORIES, layers_per_block=2)
    assert [b.file for b in package.manifest.blocks_in(2, 5)] == ["block_001.onnx", "block_002.onnx"]
    with pytest.raises(InvalidPackage, match="block edges"):
        package.manifest.blocks_in(1, 5)


def test_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(InvalidPackage, match=r"no manifest\.json"):
        load_package(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{"format": "something-else"}')
    with pytest.raises(InvalidPackage, match="not a swarm-model-package"):
        load_package(tmp_path)


def test_per_layer_windows_leave_other_manifests_and_their_ids_as_they_were(
    stories_package: ModelPackage, export_package, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """Nodes of an older release compute the same package id for a model without sliding layers: its
    manifest has no layer_windows key. A model with them keeps its windows through the JSON."""
    from tests.conftest import golden_checkpoint

    raw = json.loads((stories_package.root / MANIFEST_NAME).read_text())
    assert "layer_windows" not in raw["architecture"]
    gemma3 = export_package(golden_checkpoint("gemma3"))
    raw = json.loads((gemma3.root / MANIFEST_NAME).read_text())
    assert raw["architecture"]["layer_windows"] == [5, None, 5]
    loaded = load_package(gemma3.root)
    assert loaded.package_id == gemma3.package_id
    assert [loaded.manifest.architecture.window(i) for i in range(3)] == [5, None, 5]
