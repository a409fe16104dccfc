"""numpy arrays <-> wire Tensor messages, with every received field checked.

Received tensors are untrusted: the dtype must be one we expect, the shape must match what
the receiver expects, and the byte count must equal shape x itemsize, before numpy sees them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from swarm._proto import swarm_pb2 as pb
from swarm.errors import InvalidRequest

WIRE_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "int64": np.dtype("<i8")}


def to_wire(array: np.ndarray, dtype: str | None = None) -> pb.Tensor:
    """Encode `array`, converting to `dtype` (a WIRE_DTYPES name) if given."""
    name = dtype or str(array.dtype)
    if name not in WIRE_DTYPES:
        raise InvalidRequest(f"cannot send dtype {name}; wire dtypes are {sorted(WIRE_DTYPES)}")
    data = np.ascontiguousarray(array, dtype=WIRE_DTYPES[name]).tobytes()
    return pb.Tensor(dtype=name, shape=list(array.shape), data=data)


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
    dtype = WIRE_DTYPES[tensor.dtype]
    needed = math.prod(shape) * dtype.itemsize  # Python ints: a huge shape cannot wrap around
    if len(tensor.data) != needed:
        raise InvalidRequest(
            f"tensor of shape {list(shape)} and dtype {tensor.dtype} needs {needed} bytes, got {len(tensor.data)}"
        )
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    if dtype.kind == "f":
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise InvalidRequest("tensor holds NaN or infinity")
    return array
