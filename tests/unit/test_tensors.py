"""to_wire / from_wire: exact little-endian C-order bytes out, every field of untrusted input checked."""

from __future__ import annotations

import numpy as np
import pytest

from swarm._proto import swarm_pb2 as pb
from swarm.errors import InvalidRequest
from swarm.tensors import from_wire, to_wire


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64"])
def test_round_trip(dtype: str) -> None:
    array = np.arange(24).reshape(2, 3, 4).astype(dtype)
    tensor = to_wire(array)
    assert tensor.dtype == dtype
    assert list(tensor.shape) == [2, 3, 4]
    back = from_wire(tensor, [2, None, 4], dtypes=(dtype,))
    np.testing.assert_array_equal(back, array)
    assert back.dtype == (np.int64 if dtype == "int64" else np.float32)
    assert back.shape == (2, 3, 4)


def test_float16_decodes_to_float32() -> None:
    array = np.array([0.5, -1.25, 65504.0], dtype=np.float16)
    back = from_wire(to_wire(array), [3], dtypes=("float16",))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, [0.5, -1.25, 65504.0])


def test_to_wire_converts_to_requested_dtype() -> None:
    tensor = to_wire(np.array([1.5, 2.5], dtype=np.float64), dtype="float32")
    assert tensor.dtype == "float32"
    assert tensor.data == np.array([1.5, 2.5], dtype="<f4").tobytes()
    tensor = to_wire(np.array([1.0, 2.0], dtype=np.float32), dtype="float16")
    assert tensor.data == bytes.fromhex("003c0040")


def test_exact_bytes_are_little_endian() -> None:
    assert to_wire(np.array([1, 2], dtype=np.int64)).data == bytes.fromhex("01000000000000000200000000000000")
    assert to_wire(np.array([1.0, -2.0], dtype=np.float32)).data == bytes.fromhex("0000803f000000c0")


def test_big_endian_input_is_sent_little_endian() -> None:
    tensor = to_wire(np.array([1.0], dtype=">f4"), dtype="float32")
    assert tensor.data == bytes.fromhex("0000803f")


def test_exact_bytes_are_c_order_even_for_transposed_input() -> None:
    array = np.array([[1, 2], [3, 4]], dtype=np.int64).T  # logical [[1, 3], [2, 4]], Fortran-ordered in memory
    assert not array.flags.c_contiguous
    tensor = to_wire(array)
    assert list(tensor.shape) == [2, 2]
    assert tensor.data == b"".join(v.to_bytes(8, "little") for v in [1, 3, 2, 4])
    np.testing.assert_array_equal(from_wire(tensor, [2, 2], dtypes=("int64",)), [[1, 3], [2, 4]])


def test_from_wire_reads_little_endian_bytes() -> None:
    tensor = pb.Tensor(dtype="int64", shape=[1, 2], data=bytes.fromhex("03000000000000000001000000000000"))
    np.testing.assert_array_equal(from_wire(tensor, [1, 2], dtypes=("int64",)), [[3, 256]])


@pytest.mark.parametrize("name", ["float64", "object", "int32", "uint8"])
def test_to_wire_refuses_other_dtypes(name: str) -> None:
    with pytest.raises(InvalidRequest, match=f"cannot send dtype {name}; wire dtypes are"):
        to_wire(np.zeros(2, dtype=np.float32), dtype=name)


def test_to_wire_refuses_unconverted_float64() -> None:
    with pytest.raises(InvalidRequest, match="cannot send dtype float64"):
        to_wire(np.zeros(2))


def tensor_of(dtype: str, shape: list[int], data: bytes | None = None) -> pb.Tensor:
    if data is None:
        data = bytes(int(np.prod(shape)) * {"float32": 4, "float16": 2, "int64": 8}.get(dtype, 8))
    return pb.Tensor(dtype=dtype, shape=shape, data=data)


def test_dtype_not_accepted_here() -> None:
    with pytest.raises(
        InvalidRequest, match=r"tensor dtype 'float16' not accepted here \(expected one of \['float32'\]\)"
    ):
        from_wire(tensor_of("float16", [2]), [2])
    with pytest.raises(InvalidRequest, match="not accepted here"):
        from_wire(tensor_of("int64", [2]), [2], dtypes=("float32", "float16"))


@pytest.mark.parametrize("name", ["float64", "object", "", "FLOAT32", "<f4"])
def test_unknown_dtype_strings_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest, match="not accepted here"):
        from_wire(tensor_of(name, [2]), [2], dtypes=("float32", "float16", "int64"))


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ([2, 3], [2]),  # rank too high
        ([6], [2, 3]),  # rank too low
        ([], [1]),  # scalar
        ([2, 4], [2, 3]),  # wrong fixed dim
        ([3, 3], [2, None]),  # wrong fixed dim beside a free one
    ],
)
def test_wrong_shape_is_refused(shape: list[int], expected: list[int | None]) -> None:
    with pytest.raises(
        InvalidRequest, match=rf"tensor shape \[{', '.join(map(str, shape))}\] does not match the expected"
    ):
        from_wire(tensor_of("float32", shape), expected)


@pytest.mark.parametrize("shape", [[0, 3], [2, 0], [-1, 3], [-2, -3]])
def test_empty_or_negative_dims_are_refused_even_on_free_axes(shape: list[int]) -> None:
    with pytest.raises(InvalidRequest, match="does not match the expected"):
        from_wire(pb.Tensor(dtype="float32", shape=shape, data=b""), [None, None])


def test_free_axis_shown_as_star() -> None:
    with pytest.raises(InvalidRequest, match=r"expected \[1, '\*'\]"):
        from_wire(tensor_of("float32", [2, 3]), [1, None])


@pytest.mark.parametrize("delta", [-4, -1, 1, 4])
def test_data_length_mismatch(delta: int) -> None:
    data = bytes(24 + delta)
    with pytest.raises(InvalidRequest, match=rf"shape \[2, 3\] and dtype float32 needs 24 bytes, got {24 + delta}"):
        from_wire(pb.Tensor(dtype="float32", shape=[2, 3], data=data), [2, 3])


def test_empty_data_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="needs 8 bytes, got 0"):
        from_wire(pb.Tensor(dtype="int64", shape=[1], data=b""), [1], dtypes=("int64",))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_non_finite_floats_are_refused(bad: float, dtype: str) -> None:
    array = np.array([1.0, bad, 2.0], dtype=dtype)
    with pytest.raises(InvalidRequest, match="tensor holds NaN or infinity"):
        from_wire(to_wire(array), [3], dtypes=(dtype,))


def test_int64_extremes_pass() -> None:
    array = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max])
    np.testing.assert_array_equal(from_wire(to_wire(array), [2], dtypes=("int64",)), array)


def test_huge_shape_is_refused_as_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        from_wire(pb.Tensor(dtype="float32", shape=[2**32, 2**32], data=b""), [None, None])


def test_bfloat16_keeps_float32s_high_half_rounded_to_nearest_even() -> None:
    values = np.array([1.0, -2.5, 3.0e38, 1.00390625, 1.01171875], dtype=np.float32)
    tensor = to_wire(values, dtype="bfloat16")
    # 1.00390625 = 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0);
    # 1.01171875 = 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6
    assert tensor.data == np.array([0x3F80, 0xC020, 0x7F62, 0x3F80, 0x3F82], dtype="<u2").tobytes()
    back = from_wire(tensor, [5], dtypes=("bfloat16",))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back[[0, 1, 3, 4]], [1.0, -2.5, 1.0, 1.015625])
    hidden = np.random.default_rng(0).standard_normal((1, 7, 64)).astype(np.float32) * 30
    back = from_wire(to_wire(hidden, "bfloat16"), [1, None, 64], dtypes=("bfloat16",))
    assert np.all(np.abs(back - hidden) <= np.abs(hidden) * 2**-8)  # half a unit in the 8-bit mantissa


def test_int8_rows_carry_their_own_scale() -> None:
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((1, 5, 64)).astype(np.float32) * np.array([1, 100, 0.01, 0, 7])[None, :, None]
    tensor = to_wire(hidden.astype(np.float32), "int8")
    assert len(tensor.data) == 5 * 64 + 5 * 4  # a byte a value, a float32 scale a position
    back = from_wire(tensor, [1, None, 64], dtypes=("int8",))
    absmax = np.abs(hidden).max(axis=-1, keepdims=True)
    assert np.all(np.abs(back - hidden) <= absmax / 254 * 1.0001)  # half a step of each row's scale
    assert np.all(back[0, 3] == 0)  # an all-zero row stays zero (scale 0, no division by it)
    np.testing.assert_allclose(np.abs(back).max(axis=-1), np.abs(hidden).max(axis=-1), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_encoded_tensors_are_checked_like_any(dtype: str) -> None:
    tensor = to_wire(np.ones((1, 3, 8), np.float32), dtype)
    short = pb.Tensor(dtype=dtype, shape=[1, 3, 8], data=tensor.data[:-1])
    with pytest.raises(InvalidRequest, match="needs"):
        from_wire(short, [1, None, 8], dtypes=(dtype,))
    with pytest.raises(InvalidRequest, match="not accepted"):
        from_wire(tensor, [1, None, 8], dtypes=("float32",))
    nan = to_wire(np.full((1, 3, 8), np.nan, np.float32), "bfloat16")
    with pytest.raises(InvalidRequest, match="NaN"):
        from_wire(nan, [1, None, 8], dtypes=("bfloat16",))
    bad_scale = pb.Tensor(dtype="int8", shape=[1, 1, 8], data=np.array([np.inf], "<f4").tobytes() + bytes(8))
    with pytest.raises(InvalidRequest, match="NaN"):
        from_wire(bad_scale, [1, None, 8], dtypes=("int8",))
