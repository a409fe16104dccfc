"""Running model-package stages with onnxruntime: embedding, blocks with a KV cache, head.

This lives in `swarm` rather than `node` because clients run stages too: the local runner
runs all of them, and a private route keeps the embedding and head on the client.

A block's KV cache is preallocated for the session's whole length and bound to the graph
as both the past input and the present output (GroupQueryAttention's shared-buffer mode),
so a decode step writes one new position in place instead of copying the cache.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from swarm.config import RuntimeOptions
from swarm.errors import InvalidRequest
from swarm.kvcache import LOCAL_INPUTS, KVCache, kv_cache_bytes
from swarm.package import (
    HIDDEN_STATES,
    HIDDEN_STATES_OUT,
    INPUT_IDS,
    POSITION_IDS,
    SEQLENS_K,
    TOTAL_SEQUENCE_LENGTH,
    Architecture,
    BlockEntry,
    past_key_name,
    past_value_name,
    present_key_name,
    present_value_name,
)

__all__ = ["KVCache", "kv_cache_bytes"]  # where the KV cache lived before swarm.kvcache

# A stage with less weight than this does too little work per token to split across threads:
# waking a second thread costs more than it saves (stories260K decodes 0.49 vs 0.60 ms/token
# on 1 vs 2 threads here), so by default such a stage runs on one.
SMALL_STAGE_BYTES = 1 << 20


def group_blocks(entries: Sequence[BlockEntry], merge_bytes: int) -> list[list[BlockEntry]]:
    """Consecutive blocks in runs of at most `merge_bytes` (a larger block runs alone)."""
    groups: list[list[BlockEntry]] = []
    for entry in entries:
        if groups and sum(e.bytes for e in groups[-1]) + entry.bytes <= merge_bytes:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    return groups


_pool_lock = threading.Lock()
_pool_threads: int | None = None  # the size of the process-wide pool, once it exists


def _spinning_pool(threads: int) -> None:
    """Make the process-wide onnxruntime thread pool on first use; its size is then fixed.

    By default every stage session has a pool of its own whose worker sleeps between ops, and a
    token runs hundreds of small ops across many stages, each waking it again. One pool shared
    by every stage lets its worker spin instead: 1.1B-shape decode gains ~10-25 %
    (docs/BENCHMARKS.md). The price: after each step one core spins for about 40 ms, which a
    phone pays in battery and other processes on the same cores pay in time (two such nodes on
    this 2-core machine decode at 0.7x of one). So only a process that has its cores to itself
    should ask for it (`swarm-client --local` does by default; nodes and the SDK do not).
    onnxruntime allows no per-session pools beside it: once it exists, every stage in the
    process uses it."""
    global _pool_threads
    with _pool_lock:
        if _pool_threads is None:
            ort.set_global_thread_pool_sizes(threads, 1)
            _pool_threads = threads


def stage_threads(options: RuntimeOptions, stage_bytes: int) -> int:
    if options.threads:
        return options.threads
    return 1 if stage_bytes < SMALL_STAGE_BYTES else os.cpu_count() or 1


def _session(path: Path | Sequence[Path], options: RuntimeOptions) -> ort.InferenceSession:
    """A session for one stage file, or for consecutive block files joined into one graph."""
    paths = [path] if isinstance(path, Path) else list(path)
    so = ort.SessionOptions()
    if options.spin:
        _spinning_pool(options.threads or os.cpu_count() or 1)
    if _pool_threads is not None:
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = stage_threads(options, sum(p.stat().st_size for p in paths))
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if len(paths) == 1:
        return ort.InferenceSession(str(paths[0]), sess_options=so, providers=["CPUExecutionProvider"])
    from swarm.block_merge import merge_blocks  # onnx: only where blocks are joined

    model = merge_blocks(paths).SerializeToString()
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def _bind_cache(binding: ort.IOBinding, cache: KVCache) -> None:
    """Each layer's cache as both its past input and its present output: written in place."""
    for layer in cache.layers:
        key, value = cache.ortvalues(layer)
        binding.bind_ortvalue_input(past_key_name(layer), key)
        binding.bind_ortvalue_input(past_value_name(layer), value)
        binding.bind_ortvalue_output(present_key_name(layer), key)
        binding.bind_ortvalue_output(present_value_name(layer), value)


class _DecodeBinding:
    """A block's inputs and outputs for single-token steps on one cache, bound once.

    onnxruntime reads inputs from and writes the output into these arrays in place (an OrtValue
    made from a numpy array shares its memory), so a step only refills them."""

    def __init__(self, session: ort.InferenceSession, cache: KVCache, hidden_size: int, windowed: bool) -> None:
        self.hidden = np.zeros((1, 1, hidden_size), np.float32)
        self.position = np.zeros((1, 1), np.int64)
        self.seqlens = np.zeros(1, np.int32)  # tokens before this step
        self.total = np.zeros((), np.int32)
        self.seqlens_local = np.zeros(1, np.int32)  # the same, in the local layers' caches
        self.total_local = np.zeros((), np.int32)
        self.out = np.zeros((1, 1, hidden_size), np.float32)
        self.binding = session.io_binding()
        inputs = [(HIDDEN_STATES, self.hidden), (POSITION_IDS, self.position),
                  (SEQLENS_K, self.seqlens), (TOTAL_SEQUENCE_LENGTH, self.total)]  # fmt: skip
        if windowed:
            inputs += list(zip(LOCAL_INPUTS, (self.seqlens_local, self.total_local), strict=True))
        for name, array in inputs:
            self.binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
        self.binding.bind_ortvalue_output(HIDDEN_STATES_OUT, ort.OrtValue.ortvalue_from_numpy(self.out))
        _bind_cache(self.binding, cache)


class BlockRunner:
    """Consecutive ONNX blocks, layers [start, end), run as one graph."""

    def __init__(self, paths: Sequence[Path], entries: Sequence[BlockEntry], arch: Architecture,
                 options: RuntimeOptions) -> None:  # fmt: skip
        if len(paths) != len(entries) or any(a.end != b.start for a, b in itertools.pairwise(entries)):
            raise InvalidRequest("a block runner needs consecutive blocks, one file each")
        self.entries = tuple(entries)
        self.arch = arch
        self.layers = range(entries[0].start, entries[-1].end)
        self._session = _session(list(paths), options)
        # exported with local caches for sliding layers (swarm.kvcache); older packages keep full ones
        self.windowed = LOCAL_INPUTS[0] in {i.name for i in self._session.get_inputs()}
        self._decode_bindings: weakref.WeakKeyDictionary[KVCache, _DecodeBinding] = weakref.WeakKeyDictionary()

    def new_cache(self, capacity: int, batch: int = 1) -> KVCache:
        return KVCache(self.arch, self.layers, capacity, batch, windowed=self.windowed)

    def cache_bytes(self, tokens: int) -> int:
        """What `new_cache(tokens)` allocates, before allocating it (admission control)."""
        return kv_cache_bytes(self.arch, self.layers, tokens, windowed=self.windowed)

    def forward(self, hidden: np.ndarray, cache: KVCache) -> np.ndarray:
        """Run `hidden` (1, S, H) at positions [cache.length, cache.length + S); extends the cache."""
        steps = hidden.shape[1]
        past, total = cache.length, cache.length + steps
        if total > cache.capacity:
            raise InvalidRequest(f"{total} tokens exceed this session's cache of {cache.capacity}")
        if steps == 1:
            return self._decode(hidden, cache)
        limit = cache.step_limit
        if steps > limit:  # local caches hold a window's worth of new tokens a run
            parts = [self.forward(hidden[:, i : i + limit], cache) for i in range(0, steps, limit)]
            return np.concatenate(parts, axis=1)
        cache.make_room(steps)
        binding = self._session.io_binding()
        binding.bind_output(HIDDEN_STATES_OUT)  # first, so it is get_outputs()[0]
        binding.bind_cpu_input(HIDDEN_STATES, np.ascontiguousarray(hidden, dtype=np.float32))
        binding.bind_cpu_input(POSITION_IDS, np.arange(past, total, dtype=np.int64)[None, :])
        binding.bind_cpu_input(SEQLENS_K, np.array([total - 1], np.int32))
        binding.bind_cpu_input(TOTAL_SEQUENCE_LENGTH, np.array(total, np.int32))
        if self.windowed:
            local_total = cache.local_length + steps
            binding.bind_cpu_input(LOCAL_INPUTS[0], np.array([local_total - 1], np.int32))
            binding.bind_cpu_input(LOCAL_INPUTS[1], np.array(local_total, np.int32))
        _bind_cache(binding, cache)
        self._session.run_with_iobinding(binding)
        cache.length = total
        out: np.ndarray = binding.get_outputs()[0].numpy()
        return out

    def _decode(self, hidden: np.ndarray, cache: KVCache) -> np.ndarray:
        """One token: the binding made for this cache at its first decode step, refilled in place.

        Building a binding costs ~75 µs of Python per block and token (about 5 % of a 1.1B-shape
        int8 step over 22 blocks); refilling four small arrays costs a few."""
        if hidden.shape != (1, 1, self.arch.hidden_size):  # copyto would broadcast, not refuse
            raise InvalidRequest(f"hidden states of shape {hidden.shape}, expected (1, 1, {self.arch.hidden_size})")
        step = self._decode_bindings.get(cache)
        if step is None:
            step = _DecodeBinding(self._session, cache, self.arch.hidden_size, self.windowed)
            self._decode_bindings[cache] = step
        cache.make_room(1)
        np.copyto(step.hidden, hidden)
        step.position[0, 0] = step.seqlens[0] = cache.length
        step.total[()] = cache.length + 1
        step.seqlens_local[0] = cache.local_length
        step.total_local[()] = cache.local_length + 1
        self._session.run_with_iobinding(step.binding)
        cache.length += 1
        return step.out.copy()  # the buffer is refilled next step; the caller may keep this

    def forward_batch(self, hidden: np.ndarray, caches: Sequence[KVCache]) -> np.ndarray:
        """One decode step for each of B sessions at once: `hidden` (B, 1, H), row i belongs to
        `caches[i]`, whose length may differ from the others'. Each cache gains one position.

        The rows' caches are gathered into one (B, n_kv, T, D) buffer per layer, the graph runs
        once with per-row positions (GroupQueryAttention takes a length per row), and each row's
        new key and value are written back. Reading every weight once for B tokens is what makes
        batching pay on memory-bound devices.
        """
        if any(c.length + 1 > c.capacity for c in caches):
            raise InvalidRequest("a session in the batch has no room for another token")
        for cache in caches:
            cache.make_room(1)
        lengths = [c.length for c in caches]
        width = max(lengths) + 1
        rows = range(len(caches))
        binding = self._session.io_binding()
        binding.bind_output(HIDDEN_STATES_OUT)
        binding.bind_cpu_input(HIDDEN_STATES, np.ascontiguousarray(hidden, dtype=np.float32))
        binding.bind_cpu_input(POSITION_IDS, np.array(lengths, np.int64)[:, None])
        binding.bind_cpu_input(SEQLENS_K, np.array(lengths, np.int32))  # per row: tokens before this step
        binding.bind_cpu_input(TOTAL_SEQUENCE_LENGTH, np.array(width, np.int32))
        if self.windowed:  # the local layers' caches, each row's as long as its window holds
            local = [c.local_length for c in caches]
            binding.bind_cpu_input(LOCAL_INPUTS[0], np.array(local, np.int32))
            binding.bind_cpu_input(LOCAL_INPUTS[1], np.array(max(local) + 1, np.int32))
        gathered = {}
        for layer in self.layers:
            held = [c.cached(layer) for c in caches]
            shape = (len(caches), self.arch.num_kv_heads, max(held) + 1, self.arch.cache_head_dim)
            keys, values = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
            for i in rows:
                k, v = caches[i].arrays(layer)
                keys[i, :, : held[i]] = k[0, :, : held[i]]
                values[i, :, : held[i]] = v[0, :, : held[i]]
            key, value = ort.OrtValue.ortvalue_from_numpy(keys), ort.OrtValue.ortvalue_from_numpy(values)
            binding.bind_ortvalue_input(past_key_name(layer), key)
            binding.bind_ortvalue_input(past_value_name(layer), value)
            binding.bind_ortvalue_output(present_key_name(layer), key)
            binding.bind_ortvalue_output(present_value_name(layer), value)
            gathered[layer] = (keys, values)
        self._session.run_with_iobinding(binding)
        for layer, (keys, values) in gathered.items():
            for i in rows:
                k, v = caches[i].arrays(layer)
                at = caches[i].cached(layer)
                k[0, :, at] = keys[i, :, at]
                v[0, :, at] = values[i, :, at]
        for cache in caches:
            cache.length += 1
        out: np.ndarray = binding.get_outputs()[0].numpy()
        return out


class EmbeddingRunner:
    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        self._session = _session(path, options)

    def forward(self, input_ids: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._session.run(None, {INPUT_IDS: input_ids.astype(np.int64)})[0]
        return out


class HeadRunner:
    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        self._session = _session(path, options)

    def forward(self, hidden: np.ndarray) -> np.ndarray:
        """Logits (B, S, V) for hidden states (B, S, H)."""
        out: np.ndarray = self._session.run(None, {HIDDEN_STATES: hidden})[0]
        return out
