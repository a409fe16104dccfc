"""Linear layers and embedding tables in the weight format an export asks for.

A weight comes from its checkpoint as float32 or, from a GGUF file, as the file's own blocks
(`BlockWeight`). `WeightFormat` says what to store: float32 / float16, everything re-quantized to
int8 / int4, or (`native`) each weight as the file holds it, so re-quantizing never compounds
the file's own rounding error.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from export.graph import FLOAT, MS_DOMAIN, Graph
from export.quantize import BlockWeight, pack, quantize_blocks, stack_rows

LinearWeight = np.ndarray | BlockWeight  # (out, in), as Hugging Face stores it


@dataclass(frozen=True)
class WeightFormat:
    storage: str = "float32"  # float32 | float16: how unquantized weights are stored on disk
    bits: int | None = None  # 4 | 8: weight-only MatMulNBits quantization of the linear layers
    block_size: int = 32  # input features per quantization block
    accuracy_level: int = 4  # MatMulNBits compute type: 4 = int8 activations (fastest on CPU)
    native: bool = False  # keep block weights as the source holds them (a GGUF's own blocks)


def stored(g: Graph, name: str, array: np.ndarray, fmt: WeightFormat) -> str:
    """A float weight in the storage dtype, cast back to float32 for compute when stored as float16."""
    if fmt.storage == "float16":
        return g.op1("Cast", [g.weight(name, array.astype(np.float16))], f"{name}/Cast", to=FLOAT)
    return g.weight(name, array.astype(np.float32))


def block_for(in_features: int, block_size: int) -> int:
    """The block size, shrunk to the smallest power of two (at least 16, MatMulNBits' minimum)
    that holds a whole row when the layer is narrower: padding a 64-wide row to a block of 128
    would store as many zero weights as real ones."""
    return min(block_size, max(16, 1 << (in_features - 1).bit_length()))


def as_float(weight: LinearWeight) -> np.ndarray:
    return weight.dequantize() if isinstance(weight, BlockWeight) else np.asarray(weight, np.float32)


def _layout(part: LinearWeight) -> tuple[int, int, int, bool] | None:
    return part.layout() if isinstance(part, BlockWeight) else None


def _groups(parts: Sequence[LinearWeight], fmt: WeightFormat) -> list[LinearWeight]:
    """The row blocks of a fused linear layer, each computed by one op: in native format, runs of
    block weights with one layout stack into one MatMulNBits (float runs into one MatMul);
    otherwise everything is one float weight, quantized as the format says."""
    if not fmt.native:
        return [np.concatenate([as_float(p) for p in parts])]
    groups: list[LinearWeight] = []
    for layout, run in itertools.groupby(parts, key=_layout):
        run_parts = list(run)
        if layout is None:
            groups.append(np.concatenate([as_float(p) for p in run_parts]))
        else:
            groups.append(stack_rows([p for p in run_parts if isinstance(p, BlockWeight)]))
    return groups


def _block_sums(g: Graph, x: str, k: int, block_size: int, path: str) -> str:
    """(B, S, K) -> (B, S, K / block_size): the input summed over each quantization block."""
    blocks = g.op1("Reshape", [x, g.constant(np.array([0, 0, k // block_size, block_size], np.int64))],
                   f"{path}/Reshape")  # fmt: skip
    return g.op1("ReduceSum", [blocks, g.constant(np.array([-1], np.int64))], f"{path}/ReduceSum", keepdims=0)


def _matmul_nbits(g: Graph, x: str, weight: BlockWeight, path: str, fmt: WeightFormat) -> list[str]:
    """The product's addends: MatMulNBits, and for weights with block mins their correction."""
    qw = pack(weight)
    inputs = [
        x,
        g.weight(f"{path}.qweight", qw.packed),
        g.weight(f"{path}.scales", qw.scales),
        g.weight(f"{path}.qzeros", qw.zero_points),
    ]
    y = g.op1(
        "MatMulNBits", inputs, f"{path}/MatMulNBits", domain=MS_DOMAIN,
        K=qw.k, N=qw.n, bits=qw.bits, block_size=qw.block_size, accuracy_level=fmt.accuracy_level,
    )  # fmt: skip
    if weight.mins is None:
        return [y]
    # w = w_q + min per block, so x @ w.T = MatMulNBits(x) + (block sums of x) @ mins.T
    if weight.k % weight.block_size:
        raise ValueError(f"{path}: block mins need whole blocks ({weight.k} inputs, blocks of {weight.block_size})")
    sums = _block_sums(g, x, weight.k, weight.block_size, f"{path}/block_sums")  # (B, S, K / block_size)
    return [y, g.op1("MatMul", [sums, g.weight(f"{path}.mins", weight.mins.T.copy())], f"{path}/mins/MatMul")]


def _one_linear(g: Graph, x: str, weight: LinearWeight, path: str, fmt: WeightFormat) -> list[str]:
    if isinstance(weight, BlockWeight):
        return _matmul_nbits(g, x, weight, path, fmt)
    if fmt.bits and not fmt.native:
        return _matmul_nbits(g, x, quantize_blocks(weight, fmt.bits, block_for(weight.shape[1], fmt.block_size)),
                             path, fmt)  # fmt: skip
    return [g.op1("MatMul", [x, stored(g, f"{path}.weight", weight.T, fmt)], f"{path}/MatMul")]


def add_all(g: Graph, terms: Sequence[str], path: str) -> str:
    """The sum of `terms`: the one term, an Add of two, or one Sum of more."""
    if len(terms) == 1:
        return terms[0]
    return g.op1("Add" if len(terms) == 2 else "Sum", list(terms), f"{path}/{'Add' if len(terms) == 2 else 'Sum'}")


def linear_terms(
    g: Graph,
    x: str,
    weight: LinearWeight | Sequence[LinearWeight],
    bias: np.ndarray | None,
    path: str,
    fmt: WeightFormat,
) -> list[str]:
    """x @ weight.T (+ bias) as addends still to be summed: one, or two where block mins correct
    the product. A caller that adds the result to something (the residual stream) sums them all
    at once, one op fewer. A list of weights is one layer of their stacked rows (fused q/k/v)."""
    parts: list[LinearWeight] = [weight] if isinstance(weight, (np.ndarray, BlockWeight)) else list(weight)
    groups = _groups(parts, fmt)
    if len(groups) == 1:
        terms = _one_linear(g, x, groups[0], path, fmt)
    else:  # formats differ between the fused rows (a GGUF "_M" mix): one op per run of one format
        outs = [add_all(g, _one_linear(g, x, w, f"{path}/part{i}", fmt), f"{path}/part{i}/mins")
                for i, w in enumerate(groups)]  # fmt: skip
        terms = [g.op1("Concat", outs, f"{path}/Concat", axis=-1)]
    if bias is None:
        return terms
    b = g.weight(f"{path}.bias", bias.astype(np.float32))
    if len(terms) == 1:
        return [g.op1("Add", [terms[0], b], f"{path}/BiasAdd")]
    return [add_all(g, [*terms, b], f"{path}/bias")]


def linear(
    g: Graph,
    x: str,
    weight: LinearWeight | Sequence[LinearWeight],
    bias: np.ndarray | None,
    path: str,
    fmt: WeightFormat,
) -> str:
    """x @ weight.T (+ bias). A list of weights is one layer of their stacked rows (fused q/k/v)."""
    return add_all(g, linear_terms(g, x, weight, bias, path, fmt), f"{path}/mins")


def embedding_gather(g: Graph, ids: str, table: LinearWeight, name: str, path: str, fmt: WeightFormat) -> str:
    """Rows of the (vocab, hidden) table `name` for `ids`, float32 (nodes under `path`). The table
    stays in its storage form in memory (float16, or a GGUF's blocks); only gathered rows widen."""
    if not (fmt.native and isinstance(table, BlockWeight)):
        dtype = np.float16 if fmt.storage == "float16" else np.float32
        x = g.op1("Gather", [g.weight(f"{name}.weight", as_float(table).astype(dtype)), ids], f"{path}/Gather")
        return g.op1("Cast", [x], f"{path}/Cast", to=FLOAT) if fmt.storage == "float16" else x
    vocab, blocks, size = table.levels.shape
    zero = int(table.zero_points.flat[0])
    if bool((table.zero_points != zero).any()) or (table.bits == 8 and zero not in (0, 128)):
        raise ValueError(f"{path}: an embedding table needs one zero point for every block")
    # levels - zero point fits int8 for 8-bit blocks (zero point 128) and uint8 otherwise
    signed = table.bits == 8 and zero == 128
    levels = (table.levels.astype(np.int16) - zero).astype(np.int8) if signed else table.levels
    rows = g.op1("Gather", [g.weight(f"{name}.levels", levels.reshape(vocab, blocks * size)), ids], f"{path}/Gather")
    x = g.op1("Cast", [rows], f"{path}/Cast", to=FLOAT)
    x = g.op1("Reshape", [x, g.constant(np.array([0, 0, blocks, size], np.int64))], f"{path}/Reshape")
    if zero and not signed:
        x = g.op1("Sub", [x, g.constant(np.array(zero, np.float32))], f"{path}/Sub")
    unsqueeze = g.constant(np.array([-1], np.int64))
    scales = g.op1("Gather", [g.weight(f"{name}.scales", table.scales), ids], f"{path}/scales/Gather")
    x = g.op1("Mul", [x, g.op1("Unsqueeze", [scales, unsqueeze], f"{path}/scales/Unsqueeze")], f"{path}/Mul")
    if table.mins is not None:
        mins = g.op1("Gather", [g.weight(f"{name}.mins", table.mins), ids], f"{path}/mins/Gather")
        x = g.op1("Add", [x, g.op1("Unsqueeze", [mins, unsqueeze], f"{path}/mins/Unsqueeze")], f"{path}/Add")
    x = g.op1("Reshape", [x, g.constant(np.array([0, 0, blocks * size], np.int64))], f"{path}/Flatten")
    if blocks * size != table.k:
        ends = g.constant(np.array([table.k], np.int64))
        x = g.op1("Slice", [x, g.constant(np.array([0], np.int64)), ends, g.constant(np.array([2], np.int64))],
                  f"{path}/Slice")  # fmt: skip
    return x
