"""GGUF's quantized block formats as `BlockWeight`s, losslessly where MatMulNBits can hold them.

Every format here stores, per block of input features, a scale (and for "_1" and most K-quants a
min) and small integer levels: w = scale * level + min. MatMulNBits holds 4- or 8-bit levels with
an integer zero point per block, so:

  Q4_0  -> 4-bit, blocks of 32, zero point 8                        exact
  Q8_0  -> 8-bit, blocks of 32, zero point 128                      exact
  Q5_0  -> 8-bit, blocks of 32, zero point 128 (5-bit levels + 112)  exact
  Q6_K  -> 8-bit, blocks of 16, zero point 128 (6-bit levels + 96)   exact (scale = d * sub-scale)
  Q4_1, Q4_K -> 4-bit, blocks of 32, zero point 0, + block mins      exact
  Q5_1, Q5_K -> 8-bit, blocks of 32, zero point 0, + block mins      exact

Mins are applied beside MatMulNBits (`export.linear`). Any other type is dequantized with the
`gguf` package and re-quantized by the exporter (`native_bits` says to what width).

Rows are the GGUF tensor's rows (its ne1 axis: output features); each row's bytes are whole
super-blocks, laid out as ggml's `block_*` structs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGMLQuantizationType as Q

from export.quantize import BlockWeight

QK_K = 256  # values per K-quant super-block


def _f16(raw: np.ndarray) -> np.ndarray:
    """(rows, blocks, 2) bytes -> float32 (rows, blocks)."""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0].astype(np.float32)


def _nibbles_32(qs: np.ndarray) -> np.ndarray:
    """ggml's 32-value nibble layout: byte j holds value j (low) and value j + 16 (high)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    rows, row_bytes = raw.shape
    if row_bytes % block_bytes:
        raise ValueError(f"a row of {row_bytes} bytes is not whole blocks of {block_bytes}")
    return raw.reshape(rows, row_bytes // block_bytes, block_bytes)


def _q8_0(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]:
    b = _blocks(raw, 34)
    levels = (b[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return levels, _f16(b[..., :2]), None, 8, 128


def _q4_0(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]:
    b = _blocks(raw, 18)
    return _nibbles_32(b[..., 2:]), _f16(b[..., :2]), None, 4, 8


def _q4_1(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]:
    b = _blocks(raw, 20)
    return _nibbles_32(b[..., 4:]), _f16(b[..., :2]), _f16(b[..., 2:4]), 4, 0


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1's high bits: a little-endian uint32 per block, bit j for value j."""
    bits = np.unpackbits(np.ascontiguousarray(qh), axis=-1, bitorder="little")
    return bits.astype(np.uint8) << 4


def _q5_0(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]:
    b = _blocks(raw, 22)
    q5 = _nibbles_32(b[..., 6:]) | _fifth_bits(b[..., 2:6])
    return q5 + np.uint8(112), _f16(b[..., :2]), None, 8, 128  # level - 16 = (level + 112) - 128


def _q5_1(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]:
    b = _blocks(raw, 24)
    q5 = _nibbles_32(b[..., 8:]) | _fifth_bits(b[..., 4:8])
    return q5, _f16(b[..., :2]), _f16(b[..., 2:4]), 8, 0


def _k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit sub-block scales and mins of a Q4_K/Q5_K super-block (12 bytes)."""
    p = packed.astype(np.uint8)
    sc = np.empty((*p.shape[:-1], 8), np.uint8)
    mn = np.empty_like(sc)
    sc[..., :4] = p[..., 0:4] & 63
    mn[..., :4] = p[..., 4:8] & 63
    sc[..., 4:] = (p[..., 8:12] & 0x0F) | ((p[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (p[..., 8:12] >> 4) | ((p[..., 4:8] >> 6) << 4)
    return sc.astype(np.float32), mn.astype(np.float32)


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K's 256 low nibbles: each 32-byte chunk holds sub-block 2c (low) and 2c + 1 (high)."""
    chunks = qs.reshape(*qs.shape[:-1], 4, 32)
    both = np.stack([chunks & 0x0F, chunks >> 4], axis=-2)  # (..., 4, 2, 32)
    return both.reshape(*qs.shape[:-1], 8, 32)


def _k_affine(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 32-value sub-block of (rows, supers) K-quant blocks: scale d * sc and min -dmin * m."""
    d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    sc, mn = _k_scales_mins(b[..., 4:16])
    rows = b.shape[0]
    return (d[..., None] * sc).reshape(rows, -1), (-(dmin[..., None] * mn)).reshape(rows, -1)


def _q4_k(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]:
    b = _blocks(raw, 144)
    levels = _k_nibbles(b[..., 16:144])  # (rows, supers, 8, 32)
    scales, mins = _k_affine(b)
    return levels.reshape(levels.shape[0], -1, 32), scales, mins, 4, 0


def _q5_k(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]:
    b = _blocks(raw, 176)
    low = _k_nibbles(b[..., 48:176])  # (rows, supers, 8, 32)
    qh = b[..., 16:48]  # bit s of byte l: the fifth bit of value l of sub-block s
    high = (qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1
    levels = low | (high.astype(np.uint8) << 4)
    scales, mins = _k_affine(b)
    return levels.reshape(levels.shape[0], -1, 32), scales, mins, 8, 0


def _q6_k(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]:
    b = _blocks(raw, 210)
    rows, supers = b.shape[:2]
    ql = b[..., 0:128].reshape(rows, supers, 2, 64)
    qh = b[..., 128:192].reshape(rows, supers, 2, 32)
    sub_scales = b[..., 192:208].view(np.int8).astype(np.float32)  # one per 16 values
    d = _f16(b[..., 208:210])
    # per half of 128 values, four quarters of 32: low nibbles of ql[0:32], ql[32:64], then high
    # nibbles of the same, each with two bits of qh (bits 0-1, 2-3, 4-5, 6-7)
    low = np.stack([ql[..., :32] & 0x0F, ql[..., 32:] & 0x0F, ql[..., :32] >> 4, ql[..., 32:] >> 4], axis=-2)
    high = np.stack([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=-2)
    q6 = (low | (high << 4)).reshape(rows, supers * 16, 16)
    scales = (d[..., None] * sub_scales).reshape(rows, -1)
    return q6 + np.uint8(96), scales, None, 8, 128  # level - 32 = (level + 96) - 128


_FORMATS: dict[Q, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]]] = {
    Q.Q8_0: _q8_0,
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
    Q.Q5_0: _q5_0,
    Q.Q5_1: _q5_1,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
    Q.Q6_K: _q6_k,
}

# the bit width a re-quantized tensor of another type keeps (the nearest MatMulNBits holds)
_REQUANTIZED_BITS = {
    Q.Q2_K: 4, Q.Q3_K: 4, Q.IQ1_S: 4, Q.IQ1_M: 4, Q.IQ2_XXS: 4, Q.IQ2_XS: 4, Q.IQ2_S: 4, Q.IQ3_XXS: 4,
    Q.IQ3_S: 4, Q.IQ4_NL: 4, Q.IQ4_XS: 4, Q.TQ1_0: 4, Q.TQ2_0: 4, Q.MXFP4: 4,
}  # fmt: skip


def maps_exactly(qtype: Q) -> bool:
    return qtype in _FORMATS


def native_bits(qtype: Q) -> int | None:
    """The MatMulNBits width a tensor of this type is kept at by default; None for float types."""
    if qtype in _FORMATS:
        return 4 if qtype in (Q.Q4_0, Q.Q4_1, Q.Q4_K) else 8
    return _REQUANTIZED_BITS.get(qtype, 8 if qtype in (Q.Q8_1, Q.Q8_K) else None)


def block_weight(raw: np.ndarray, qtype: Q, k: int) -> BlockWeight:
    """The GGUF tensor `raw` (rows x row bytes, uint8) of type `qtype` with `k` values a row."""
    levels, scales, mins, bits, zero = _FORMATS[qtype](raw)
    zero_points = np.full(scales.shape, zero, np.uint8)
    return BlockWeight(np.ascontiguousarray(levels, np.uint8), scales.astype(np.float32), zero_points,
                       None if mins is None else mins.astype(np.float32), bits, k)  # fmt: skip
