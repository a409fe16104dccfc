"""Consecutive block files as one onnxruntime graph: fewer sessions to run per token.

A package keeps one file per block of layers, the unit that is hashed, fetched and assigned. To
run, the blocks of a stage are joined into one graph: each run has a fixed cost (binding, the
call, waking the pool) that a narrow model pays 30 times a token otherwise (SmolLM2-135M decodes
~1.2x faster as one graph than as 30, side by side in one process). Every block has the same
interface (hidden_states, position_ids, seqlens_k, total_sequence_length, per-layer KV in and
out; hidden_states_out), so joining is renaming: block i's hidden_states is block i-1's output,
the shared inputs and the per-layer KV names stay, every other name gets a prefix, and rotary
tables identical to the first block's are kept once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx

from swarm.kvcache import LOCAL_INPUTS
from swarm.package import BLOCK_SHARED_INPUTS, is_cache_name
from swarm.package import HIDDEN_STATES as HIDDEN_IN
from swarm.package import HIDDEN_STATES_OUT as HIDDEN_OUT

# the local ones too: cache lengths of sliding layers that keep only their window (swarm.kvcache)
SHARED_INPUTS = (*BLOCK_SHARED_INPUTS, *LOCAL_INPUTS)


def _kept(name: str) -> bool:
    """Names every block means the same by: shared inputs and per-layer caches (unique per layer)."""
    return name in SHARED_INPUTS or is_cache_name(name) or name == ""


def _rename_graph(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for tensor in graph.initializer:
        tensor.name = rename.get(tensor.name, tensor.name)


def _renaming(graph: onnx.GraphProto, prefix: str, hidden_in: str, shared: dict[str, bytes]) -> dict[str, str]:
    names = {t.name for t in graph.initializer} | {n for node in graph.node for n in (*node.input, *node.output)}
    rename = {}
    for name in names:
        if name == HIDDEN_IN:
            rename[name] = hidden_in
        elif not _kept(name) and name not in shared:
            rename[name] = f"{prefix}{name}"
    return rename


def merge_blocks(paths: Sequence[Path]) -> onnx.ModelProto:
    """One model computing the blocks at `paths` in order; a single path is loaded as it is."""
    models = [onnx.load(str(p)) for p in paths]
    merged = models[0]
    if len(models) == 1:
        return merged
    graph = merged.graph
    # initializers identical in every block (the rotary tables) are stored once
    shared = {t.name: t.SerializeToString() for t in graph.initializer if t.name.startswith("/model/rotary/")}
    previous = f"/block0/{HIDDEN_OUT}"
    _rename_graph(graph, {HIDDEN_OUT: previous})
    for index, model in enumerate(models[1:], start=1):
        g = model.graph
        duplicates = {t.name for t in g.initializer if shared.get(t.name) == t.SerializeToString()}
        same_name = {n: shared[n] for n in duplicates}
        rename = _renaming(g, f"/block{index}", previous, same_name)
        last = index == len(models) - 1
        previous = HIDDEN_OUT if last else f"/block{index}/{HIDDEN_OUT}"
        rename[HIDDEN_OUT] = previous
        _rename_graph(g, rename)
        for node in g.node:
            node.name = f"/block{index}{node.name}"
        graph.node.extend(g.node)
        graph.initializer.extend(t for t in g.initializer if t.name not in duplicates)
        present = {i.name for i in graph.input}  # a shared input the first block lacked joins here
        graph.input.extend(i for i in g.input if i.name != HIDDEN_IN and i.name not in present)
        graph.output.extend(o for o in g.output if o.name != HIDDEN_OUT)
    outputs = [o for o in graph.output if o.name != f"/block0/{HIDDEN_OUT}" and o.name != HIDDEN_OUT]
    final = next(o for o in models[-1].graph.output if o.name == HIDDEN_OUT)
    del graph.output[:]
    graph.output.extend([*outputs, final])
    return merged
