import numpy as np
import onnxruntime as ort
import pytest

from export.graph import FLOAT, Graph
from export.linear import WeightFormat, linear
from export.quantize import dequantize, quantize


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k", [64, 100])  # 100: a last block padded with zeros
def test_round_trip_error_is_within_half_a_step(bits: int, k: int) -> None:
    w = np.random.default_rng(0).standard_normal((24, k)).astype(np.float32)
    qw = quantize(w, bits, block_size=32)
    back = dequantize(qw)
    assert back.shape == w.shape
    step = qw.scales.max()
    assert np.abs(back - w).max() <= step / 2 + 1e-6


def test_zero_stays_exact() -> None:
    w = np.zeros((4, 32), np.float32)
    w[0, 3] = 1.0
    assert dequantize(quantize(w, 4))[1:].max() == 0.0


@pytest.mark.parametrize("bits", [4, 8])
def test_matmulnbits_layout_matches_dequantized_weight(bits: int) -> None:
    """onnxruntime's MatMulNBits reads our packing as the weights dequantize() describes."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((48, 96)).astype(np.float32)
    x = rng.standard_normal((1, 3, 96)).astype(np.float32)
    g = Graph("q")
    y = linear(g, g.input("x", FLOAT, [1, 3, 96]), w, None, "/lin", WeightFormat(bits=bits, accuracy_level=0))
    g.op("Identity", [y], "/out", outputs=["y"])
    g.output("y", FLOAT, [1, 3, 48])
    session = ort.InferenceSession(g.to_model().SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    expected = x @ dequantize(quantize(w, bits)).T
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("k, block", [(64, 64), (40, 64), (8, 16), (300, 128)])
def test_a_narrow_layer_gets_a_block_its_rows_fill(k: int, block: int) -> None:
    """With the default block of 128, a 64-wide layer is stored in blocks of 64, not padded to
    twice its size; a wide one keeps 128 (MatMulNBits wants a power of two of at least 16)."""
    w = np.random.default_rng(2).standard_normal((8, k)).astype(np.float32)
    g = Graph("q")
    linear(g, g.input("x", FLOAT, [1, 1, k]), w, None, "/lin", WeightFormat(bits=8, block_size=128))
    (node,) = [n for n in g.to_model().graph.node if n.op_type == "MatMulNBits"]
    assert {a.name: a.i for a in node.attribute}["block_size"] == block
