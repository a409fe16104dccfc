"""A block's KV cache for one session, and what it costs.

Keys and values are kept per layer as (batch, n_kv, capacity, D_cache), preallocated for the
session and bound to the graph as both past input and present output, so a step writes its new
positions in place.

A sliding-window layer (Gemma's local layers, Mistral, Qwen2 past max_window_layers) never looks
more than `window` keys back, so its cache holds at most 2 * window - 1 positions instead of the
whole session: the last window - 1 keys a next query may need, and room for a step of up to
`window` new ones. When a step would overflow it, the last window - 1 keys move to the front
(once every `window` decode steps). GroupQueryAttention sees those layers' cache lengths through
their own inputs (`seqlens_k_local`, `total_sequence_length_local`): its causal window works on
positions within the cache, and rotary embedding has been applied already, at the true
positions. A prompt longer than `window` runs in steps of `window` tokens. Admission counts these
smaller caches (`kv_cache_bytes`); packages exported before the local inputs existed keep full
caches on every layer.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from swarm.errors import InvalidRequest
from swarm.package import Architecture

LOCAL_INPUTS = ("seqlens_k_local", "total_sequence_length_local")


def shared_window(arch: Architecture, layers: range) -> int | None:
    """The window the sliding layers among `layers` share (one per model in every family we export)."""
    windows = {w for w in (arch.window(layer) for layer in layers) if w is not None}
    if len(windows) > 1:
        raise ValueError(f"layers {layers.start}-{layers.stop - 1} have different windows {sorted(windows)}")
    return next(iter(windows), None)


def layer_capacity(arch: Architecture, layer: int, capacity: int, windowed: bool) -> int:
    """Positions layer `layer` keeps for a session of `capacity` tokens."""
    window = arch.window(layer) if windowed else None
    return capacity if window is None else min(capacity, 2 * window - 1)


def kv_cache_bytes(arch: Architecture, layers: range, tokens: int, batch: int = 1, windowed: bool = False) -> int:
    """Bytes of float32 KV cache for `layers` holding a session of `tokens` positions."""
    positions = sum(layer_capacity(arch, layer, tokens, windowed) for layer in layers)
    return 2 * batch * arch.num_kv_heads * positions * arch.cache_head_dim * 4


class KVCache:
    """Keys and values of one block for one session: (batch, n_kv, capacity, D_cache) per layer,
    a sliding layer's capacity capped by its window when `windowed`."""

    def __init__(self, arch: Architecture, layers: range, capacity: int, batch: int = 1,
                 windowed: bool = False) -> None:  # fmt: skip
        self.layers = layers
        self.capacity = capacity
        self.length = 0  # positions filled so far
        self.window = shared_window(arch, layers) if windowed else None
        self.local_layers = frozenset(i for i in layers if self.window is not None and arch.window(i) is not None)
        self.local_capacity = layer_capacity(arch, next(iter(self.local_layers)), capacity, True) if self.local_layers \
            else capacity  # fmt: skip
        self.local_base = 0  # the position a local layer's first cached key is at
        self._arrays = {}
        for layer in layers:
            size = self.local_capacity if layer in self.local_layers else capacity
            shape = (batch, arch.num_kv_heads, size, arch.cache_head_dim)
            self._arrays[layer] = (np.zeros(shape, np.float32), np.zeros(shape, np.float32))
        self._values = {
            layer: (ort.OrtValue.ortvalue_from_numpy(k), ort.OrtValue.ortvalue_from_numpy(v))
            for layer, (k, v) in self._arrays.items()
        }

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self._arrays.values())

    @property
    def local_length(self) -> int:
        """Positions a local layer's cache holds."""
        return self.length - self.local_base

    @property
    def step_limit(self) -> int:
        """The most tokens one run may add: a window's worth where local caches are capped."""
        if self.window is None or self.local_capacity == self.capacity:
            return self.capacity
        return self.local_capacity - (self.window - 1)

    def make_room(self, steps: int) -> None:
        """Before a run of `steps` tokens: keep the last window - 1 keys of the local layers when
        the new ones would not fit behind them."""
        if self.window is None or self.local_length + steps <= self.local_capacity:
            return
        keep = min(self.window - 1, self.local_length)
        start = self.local_length - keep
        for layer in self.local_layers:
            for array in self._arrays[layer]:
                array[:, :, :keep] = array[:, :, start : start + keep].copy()
        self.local_base = self.length - keep

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (a rejected draft's keys): a position reset, for
        every layer. The next step overwrites them in place; attention never reads past `length`.

        A local layer's ring keeps only the last window - 1 keys before its newest step, so it can
        go back only as far as what its next query needs is still there: always within the last
        step (a verify pass), not further once `make_room` has moved keys past the point."""
        if not 0 <= length <= self.length:
            raise InvalidRequest(f"cannot roll a cache of {self.length} positions back to {length}")
        if self.local_base and length - self.local_base < (self.window or 0) - 1:
            raise InvalidRequest(
                f"cannot roll back to position {length}: the sliding-window cache has dropped the keys "
                f"before position {self.local_base} that the next step would need"
            )
        self.length = length

    def ortvalues(self, layer: int) -> tuple[ort.OrtValue, ort.OrtValue]:
        return self._values[layer]

    def arrays(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        return self._arrays[layer]

    def cached(self, layer: int) -> int:
        """Positions layer `layer`'s cache holds now."""
        return self.local_length if layer in self.local_layers else self.length
