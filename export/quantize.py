"""Weight-only block quantization into onnxruntime's MatMulNBits layout.

Asymmetric, per block of `block_size` input features of each output row:
w ≈ (q - zero_point) * scale with q in [0, 2^bits). The range always includes 0 so that
zero weights stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BLOCK_SIZE = 32


@dataclass(frozen=True)
class QuantizedWeight:
    packed: np.ndarray  # uint8 (N, k_blocks, block_size * bits / 8)
    scales: np.ndarray  # float32 (N, k_blocks)
    zero_points: np.ndarray  # uint8 (N, ceil(k_blocks * bits / 8))
    k: int  # input features (before padding to whole blocks)
    n: int  # output features
    bits: int
    block_size: int


def quantize(weight: np.ndarray, bits: int, block_size: int = DEFAULT_BLOCK_SIZE) -> QuantizedWeight:
    """Quantize `weight` of shape (N, K) (out, in: the Hugging Face layout)."""
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
    if bits == 8:
        return QuantizedWeight(q, scales, zero, k, n, bits, block_size)
    packed = q[..., 0::2] | (q[..., 1::2] << 4)
    if blocks % 2:
        zero = np.concatenate([zero, np.zeros((n, 1), np.uint8)], axis=1)
    packed_zero = zero[:, 0::2] | (zero[:, 1::2] << 4)
    return QuantizedWeight(packed, scales, packed_zero, k, n, bits, block_size)


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
    return w.reshape(n, -1)[:, : qw.k]
