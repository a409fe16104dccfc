"""GGUF block formats read into MatMulNBits blocks: bit for bit what ggml's own reader dequantizes."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

from export.gguf_blocks import block_weight, maps_exactly, native_bits
from export.quantize import dequantize as dequantize_packed
from export.quantize import pack, stack_rows

# where each format keeps its float16 scale (and min) fields inside a block
_FLOAT16_FIELDS = {Q.Q8_0: (0,), Q.Q4_0: (0,), Q.Q5_0: (0,), Q.Q4_1: (0, 2), Q.Q5_1: (0, 2),
                   Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}  # fmt: skip


def random_blocks(qtype: Q, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """Random bytes in `qtype`'s layout, with finite float16 scales."""
    rng = np.random.default_rng(seed)
    values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, k // values, block_bytes), dtype=np.uint8)
    for at in _FLOAT16_FIELDS[qtype]:
        scales = (rng.random(raw.shape[:2]) * 0.1 - 0.05).astype(np.float16)
        raw[..., at : at + 2] = scales.view(np.uint8).reshape(*raw.shape[:2], 2)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype", list(_FLOAT16_FIELDS))
def test_every_mapped_format_dequantizes_as_ggml_does(qtype: Q) -> None:
    raw = random_blocks(qtype, rows=5, k=512)
    weight = block_weight(raw, qtype, 512)
    assert maps_exactly(qtype) and weight.exact
    np.testing.assert_array_equal(weight.dequantize(), dequantize(raw, qtype).reshape(5, 512))
    # and MatMulNBits' packing (4-bit levels two to a byte) keeps every level
    np.testing.assert_array_equal(dequantize_packed(pack(weight)), weight.dequantize())


@pytest.mark.parametrize("qtype, bits, block, mins", [
    (Q.Q8_0, 8, 32, False), (Q.Q4_0, 4, 32, False), (Q.Q4_1, 4, 32, True), (Q.Q5_0, 8, 32, False),
    (Q.Q5_1, 8, 32, True), (Q.Q4_K, 4, 32, True), (Q.Q5_K, 8, 32, True), (Q.Q6_K, 8, 16, False),
])  # fmt: skip
def test_each_format_keeps_its_width_and_blocks(qtype: Q, bits: int, block: int, mins: bool) -> None:
    weight = block_weight(random_blocks(qtype, 2, 256), qtype, 256)
    assert (weight.bits, weight.block_size, weight.mins is not None) == (bits, block, mins)
    assert native_bits(qtype) == (4 if bits == 4 else 8)


def test_other_formats_say_what_they_are_re_quantized_to() -> None:
    assert not maps_exactly(Q.Q3_K) and native_bits(Q.Q3_K) == 4 and native_bits(Q.IQ4_XS) == 4
    assert native_bits(Q.F16) is None and native_bits(Q.F32) is None


def test_rows_stack_and_reorder_without_touching_values() -> None:
    a = block_weight(random_blocks(Q.Q4_1, 3, 64, seed=1), Q.Q4_1, 64)
    b = block_weight(random_blocks(Q.Q4_1, 2, 64, seed=2), Q.Q4_1, 64)
    stacked = stack_rows([a, b])
    np.testing.assert_array_equal(stacked.dequantize(), np.concatenate([a.dequantize(), b.dequantize()]))
    order = np.array([4, 0, 2, 1, 3])
    np.testing.assert_array_equal(stacked.rows(order).dequantize(), stacked.dequantize()[order])
    with pytest.raises(ValueError, match="one layout"):
        stack_rows([a, block_weight(random_blocks(Q.Q8_0, 2, 64), Q.Q8_0, 64)])
