"""Weight-only block quantization into onnxruntime's MatMulNBits layout.

A quantized (N, K) weight is rows of blocks of `block_size` input features:
w[n, k] = (level - zero_point) * scale (+ min), one scale, zero point and min per block.
`quantize` makes that from float weights (asymmetric, no mins, the range always includes 0 so
that zero weights stay exact); `export.gguf_blocks` makes it from a GGUF file's own blocks,
losslessly. `pack` lays it out as MatMulNBits reads it.

MatMulNBits has no per-block offset on the CPU's fast path (its float zero points are ~25x
slower), so a block min is applied beside it by `export.linear` (block sums of the input times
the mins): that keeps GGUF's "_1" and K-quant formats exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BLOCK_SIZE = 32


@dataclass(frozen=True)
class BlockWeight:
    """An (N, K) weight in blocks along K: w = (levels - zero_points) * scales (+ mins)."""

    levels: np.ndarray  # uint8 (N, blocks, block_size), each below 2**bits; K padded with zero weights
    scales: np.ndarray  # float32 (N, blocks)
    zero_points: np.ndarray  # uint8 (N, blocks)
    mins: np.ndarray | None  # float32 (N, blocks): added to every weight of the block; None = no offset
    bits: int  # 4 | 8
    k: int  # input features, before padding to whole blocks
    exact: bool = True  # False: re-quantized from another format (loses precision)

    @property
    def n(self) -> int:
        return int(self.levels.shape[0])

    @property
    def block_size(self) -> int:
        return int(self.levels.shape[2])

    def dequantize(self) -> np.ndarray:
        """The (N, K) float32 weight the blocks stand for."""
        w = (self.levels.astype(np.float32) - self.zero_points[..., None]) * self.scales[..., None]
        if self.mins is not None:
            w += self.mins[..., None]
        return w.reshape(self.n, -1)[:, : self.k]

    def rows(self, order: np.ndarray) -> BlockWeight:
        """The same weight with its rows (output features) taken in `order`."""
        mins = None if self.mins is None else self.mins[order]
        return BlockWeight(self.levels[order], self.scales[order], self.zero_points[order], mins,
                           self.bits, self.k, self.exact)  # fmt: skip

    def layout(self) -> tuple[int, int, int, bool]:
        """What must agree for two weights' rows to share one MatMulNBits."""
        return (self.bits, self.block_size, self.k, self.mins is not None)


def stack_rows(parts: list[BlockWeight]) -> BlockWeight:
    """Weights with the same layout, one above the other (fused q/k/v or gate/up)."""
    if len({p.layout() for p in parts}) != 1:
        raise ValueError("only weights of one layout stack into one block weight")
    first = parts[0]
    mins = None if first.mins is None else np.concatenate([p.mins for p in parts if p.mins is not None])
    return BlockWeight(
        np.concatenate([p.levels for p in parts]),
        np.concatenate([p.scales for p in parts]),
        np.concatenate([p.zero_points for p in parts]),
        mins,
        first.bits,
        first.k,
        all(p.exact for p in parts),
    )


@dataclass(frozen=True)
class QuantizedWeight:
    packed: np.ndarray  # uint8 (N, k_blocks, block_size * bits / 8)
    scales: np.ndarray  # float32 (N, k_blocks)
    zero_points: np.ndarray  # uint8 (N, ceil(k_blocks * bits / 8))
    k: int  # input features (before padding to whole blocks)
    n: int  # output features
    bits: int
    block_size: int
    mins: np.ndarray | None = None  # float32 (N, k_blocks), applied beside MatMulNBits


def quantize_blocks(weight: np.ndarray, bits: int, block_size: int = DEFAULT_BLOCK_SIZE) -> BlockWeight:
    """Quantize `weight` of shape (N, K) (out, in: the Hugging Face layout) by round to nearest."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    n, k = weight.shape
    blocks = -(-k // block_size)
    padded = np.zeros((n, blocks * block_size), dtype=np.float32)
    padded[:, :k] = weight
    grouped = padded.reshape(n, blocks, block_size)
    low = np.minimum(grouped.min(axis=-1), 0.0)
    high = np.maximum(grouped.max(axis=-1), 0.0)
    levels = (1 << bits) - 1
    scales = (high - low) / levels
    scales = np.where(scales == 0, 1.0, scales).astype(np.float32)
    zero = np.clip(np.round(-low / scales), 0, levels).astype(np.uint8)
    q = np.clip(np.round(grouped / scales[..., None]) + zero[..., None], 0, levels).astype(np.uint8)
    return BlockWeight(q, scales, zero, None, bits, k)


def pack(weight: BlockWeight) -> QuantizedWeight:
    """The MatMulNBits layout: 4-bit levels two to a byte (even index in the low nibble), and
    4-bit zero points likewise, padded to whole bytes per row."""
    q, zero, n = weight.levels, weight.zero_points, weight.n
    if weight.bits == 8:
        packed, packed_zero = q, zero
    else:
        packed = q[..., 0::2] | (q[..., 1::2] << 4)
        if zero.shape[1] % 2:
            zero = np.concatenate([zero, np.zeros((n, 1), np.uint8)], axis=1)
        packed_zero = zero[:, 0::2] | (zero[:, 1::2] << 4)
    scales = np.ascontiguousarray(weight.scales, np.float32)
    return QuantizedWeight(np.ascontiguousarray(packed), scales, np.ascontiguousarray(packed_zero),
                           weight.k, n, weight.bits, weight.block_size, weight.mins)  # fmt: skip


def quantize(weight: np.ndarray, bits: int, block_size: int = DEFAULT_BLOCK_SIZE) -> QuantizedWeight:
    """Quantize `weight` of shape (N, K) and pack it for MatMulNBits."""
    return pack(quantize_blocks(weight, bits, block_size))


def dequantize(qw: QuantizedWeight) -> np.ndarray:
    """The (N, K) float32 weight the quantized form stands for: the reference for tests."""
    n, blocks = qw.scales.shape
    if qw.bits == 8:
        q, zero = qw.packed.astype(np.float32), qw.zero_points[:, :blocks].astype(np.float32)
    else:
        q = np.empty((n, blocks, qw.block_size), np.float32)
        q[..., 0::2] = qw.packed & 0x0F
        q[..., 1::2] = qw.packed >> 4
        zero = np.empty((n, qw.zero_points.shape[1] * 2), np.float32)
        zero[:, 0::2] = qw.zero_points & 0x0F
        zero[:, 1::2] = qw.zero_points >> 4
        zero = zero[:, :blocks]
    w = (q - zero[..., None]) * qw.scales[..., None]
    if qw.mins is not None:
        w += qw.mins[..., None]
    return w.reshape(n, -1)[:, : qw.k]
