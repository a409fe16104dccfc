"""A stage's block files joined into one graph compute what the blocks compute one by one."""

from __future__ import annotations

import numpy as np

from swarm.block_merge import merge_blocks
from swarm.config import RuntimeOptions
from swarm.local import LocalModel
from swarm.runtime import group_blocks
from tests.conftest import STORIES, STORIES_PROMPT_IDS, ExportFn, golden_checkpoint
from tests.helpers import close_after_test


def test_joined_blocks_give_the_same_numbers_as_one_session_each(export_package: ExportFn) -> None:
    package = export_package(golden_checkpoint("llama_gqa_untied"))  # head size 16: nothing padded
    joined, separate = LocalModel(package), LocalModel(package, RuntimeOptions(merge_bytes=0))
    try:
        assert len(joined.span.blocks) == 1 and len(separate.span.blocks) == len(package.manifest.blocks) == 2
        ids = [1, 17, 200, 5, 93, 41]
        a, b = joined.session(16), separate.session(16)
        np.testing.assert_array_equal(a.logits(ids), b.logits(ids))  # prefill
        for token in (7, 300, 12):  # cached decode steps
            np.testing.assert_array_equal(a.logits([token]), b.logits([token]))
    finally:
        joined.close()
        separate.close()


def test_a_joined_graph_keeps_the_rotary_tables_once_and_the_block_interface(export_package: ExportFn) -> None:
    package = export_package(STORIES)
    paths = [package.path(b.file) for b in package.manifest.blocks]
    model = merge_blocks(paths)  # onnxruntime loads it: test_blocks_group_up_to_the_byte_bound
    names = [t.name for t in model.graph.initializer]
    assert names.count("/model/rotary/cos_cache") == 1 and len(names) == len(set(names))
    inputs = [i.name for i in model.graph.input]
    layers = package.manifest.num_layers
    assert inputs[:4] == ["hidden_states", "position_ids", "seqlens_k", "total_sequence_length"]
    assert sorted(inputs[4:]) == sorted(f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value"))
    outputs = [o.name for o in model.graph.output]
    assert outputs[-1] == "hidden_states_out" and len(outputs) == 2 * layers + 1


def test_blocks_group_up_to_the_byte_bound(export_package: ExportFn) -> None:
    blocks = export_package(STORIES).manifest.blocks
    assert [len(g) for g in group_blocks(blocks, 0)] == [1] * len(blocks)
    assert [len(g) for g in group_blocks(blocks, 2 * blocks[0].bytes)] == [2, 2, 1]
    model = close_after_test(LocalModel(export_package(STORIES)))
    try:
        assert len(model.span.blocks) == 1
        assert list(model.session(8).logits(STORIES_PROMPT_IDS).shape) == [5, model.manifest.architecture.vocab_size]
    finally:
        model.close()
