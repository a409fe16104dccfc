"""numpy arrays <-> wire Tensor messages, with every received field checked.

Received tensors are untrusted: the dtype must be one we expect, the shape must match what
the receiver expects, and the byte count must equal what that shape needs, before numpy sees them.

Besides numpy's own dtypes, hidden states may travel in two compact encodings:
- "bfloat16": the high half of each float32, rounded to nearest even (2 bytes a value, float32's
  range, 8 bits of mantissa);
- "int8": each row (the last axis: one position's hidden vector) as int8 times one float32
  scale, absmax / 127; the scales come first, then the values (1 byte a value + 4 a row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from swarm._proto import swarm_pb2 as pb
from swarm.errors import InvalidRequest

WIRE_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "int64": np.dtype("<i8")}
ENCODINGS = ("bfloat16", "int8")  # float encodings of our own (module docstring)
HIDDEN_WIRE_DTYPES = ("float32", "float16", *ENCODINGS)  # how a session may send hidden states


def to_wire(array: np.ndarray, dtype: str | None = None) -> pb.Tensor:
    """Encode `array`, converting to `dtype` (a WIRE_DTYPES name or an ENCODINGS one) if given."""
    name = dtype or str(array.dtype)
    if name == "bfloat16":
        data = _to_bfloat16(array)
    elif name == "int8":
        data = _to_int8_rows(array)
    elif name in WIRE_DTYPES:
        data = np.ascontiguousarray(array, dtype=WIRE_DTYPES[name]).tobytes()
    else:
        raise InvalidRequest(f"cannot send dtype {name}; wire dtypes are {sorted([*WIRE_DTYPES, *ENCODINGS])}")
    return pb.Tensor(dtype=name, shape=list(array.shape), data=data)


def _to_bfloat16(array: np.ndarray) -> bytes:
    bits = np.ascontiguousarray(array, dtype="<f4").view("<u4").astype(np.uint64)  # no overflow while rounding
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()


def _to_int8_rows(array: np.ndarray) -> bytes:
    rows = np.ascontiguousarray(array, dtype=np.float32).reshape(-1, array.shape[-1] if array.ndim else 1)
    scales = (np.abs(rows).max(axis=1) / 127).astype("<f4")
    safe = np.where(scales > 0, scales, 1)[:, None]
    values = np.clip(np.rint(rows / safe), -127, 127).astype(np.int8)
    return scales.tobytes() + values.tobytes()


def _wire_bytes(name: str, shape: tuple[int, ...]) -> int:
    """The bytes a tensor of `shape` needs in encoding `name` (Python ints: a huge shape cannot wrap)."""
    values = math.prod(shape)
    if name == "bfloat16":
        return values * 2
    if name == "int8":
        return values + values // shape[-1] * 4
    return values * WIRE_DTYPES[name].itemsize


def _decode(name: str, data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    if name == "bfloat16":
        return (np.frombuffer(data, "<u2").astype("<u4") << 16).view("<f4").reshape(shape)
    if name == "int8":
        rows = math.prod(shape) // shape[-1]
        scales = np.frombuffer(data, "<f4", count=rows)
        if not np.isfinite(scales).all():
            raise InvalidRequest("tensor holds NaN or infinity (an int8 row's scale)")
        values = np.frombuffer(data, np.int8, offset=rows * 4).reshape(rows, shape[-1])
        return (values.astype(np.float32) * scales[:, None]).reshape(shape)
    return np.frombuffer(data, dtype=WIRE_DTYPES[name]).reshape(shape)


def from_wire(tensor: pb.Tensor, expected: Sequence[int | None], dtypes: Sequence[str] = ("float32",)) -> np.ndarray:
    """Decode `tensor`, checking it against `expected` (None = any size >= 1 on that axis).

    Returns a float32 array for float inputs, int64 for int64.
    """
    if tensor.dtype not in dtypes:
        raise InvalidRequest(f"tensor dtype {tensor.dtype!r} not accepted here (expected one of {list(dtypes)})")
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or any(
        (want is not None and got != want) or got < 1 for got, want in zip(shape, expected, strict=True)
    ):
        shown = ["*" if w is None else w for w in expected]
        raise InvalidRequest(f"tensor shape {list(shape)} does not match the expected {shown}")
    if tensor.dtype not in WIRE_DTYPES and tensor.dtype not in ENCODINGS:
        raise InvalidRequest(f"tensor dtype {tensor.dtype!r} is not a wire dtype")
    needed = _wire_bytes(tensor.dtype, shape)
    if len(tensor.data) != needed:
        raise InvalidRequest(
            f"tensor of shape {list(shape)} and dtype {tensor.dtype} needs {needed} bytes, got {len(tensor.data)}"
        )
    array = _decode(tensor.dtype, tensor.data, shape)
    if array.dtype.kind == "f":
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise InvalidRequest("tensor holds NaN or infinity")
    return array
