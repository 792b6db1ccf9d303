import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qcore.core.packing import pack_bits, packed_size, unpack_bits
from qcore.core.quant import (
    SUPPORTED_BITS,
    QuantizedTensor,
    check_bits,
    choose_qparams,
    dequantize,
    qrange,
    quantize,
    quantize_weight,
)
from qcore.errors import QCoreError

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from(SUPPORTED_BITS), x=arrays(np.float32, st.integers(1, 64), elements=finite)
)
def test_quantize_dequantize_within_half_step(bits, x):
    scale, zp = choose_qparams(x.min(), x.max(), bits)
    q = quantize(x, scale, zp, bits)
    qmin, qmax = qrange(bits)
    assert q.min() >= qmin and q.max() <= qmax
    err = np.abs(dequantize(q, scale, zp) - x)
    assert err.max() <= scale / 2 * (1 + 1e-4) + 1e-6


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from(SUPPORTED_BITS), w=arrays(np.float32, (4, 3, 5), elements=finite))
def test_weight_quantization_per_channel(bits, w):
    qt = quantize_weight(w, bits)
    assert qt.q.dtype == np.uint8 and qt.scale.shape == (4,)
    err = np.abs(qt.dequantize() - w)
    assert np.all(err <= qt.scale[:, None, None] / 2 * (1 + 1e-4) + 1e-6)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_zero_is_exact(bits):
    scale, zp = choose_qparams(-0.7, 2.3, bits)
    assert dequantize(quantize(np.zeros(3), scale, zp, bits), scale, zp).tolist() == [0, 0, 0]


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(SUPPORTED_BITS), n=st.integers(0, 200), seed=st.integers(0, 99))
def test_pack_unpack_exact(bits, n, seed):
    q = np.random.default_rng(seed).integers(0, 1 << bits, n).astype(np.uint8)
    packed = pack_bits(q, bits)
    assert packed.size == packed_size(n, bits) == -(-n * bits // 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, n), q)


@pytest.mark.parametrize("bad", [1, 9, 0, 16, 4.0, "4", None, True])
def test_unsupported_bits_rejected(bad):
    with pytest.raises(QCoreError, match="bit-width"):
        check_bits(bad)


def test_codes_out_of_range_rejected():
    with pytest.raises(QCoreError, match="outside"):
        pack_bits(np.array([4], dtype=np.uint8), 2)
    with pytest.raises(QCoreError, match="leave"):
        QuantizedTensor(
            np.full((2, 2), 9, np.uint8), np.ones(2, np.float32), np.zeros(2, np.int32), 3
        )
    with pytest.raises(QCoreError, match="expected"):
        unpack_bits(np.zeros(3, np.uint8), 4, 10)


def test_packed_bytes_shrink_with_bits():
    w = np.random.default_rng(0).normal(size=(32, 32, 39)).astype(np.float32)
    sizes = [quantize_weight(w, b).packed_nbytes() for b in (2, 4, 8)]
    assert sizes[0] < sizes[1] < sizes[2] < w.nbytes
    assert sizes[1] == w.size // 2 + 32 * 5


def half_to_even(v: float) -> int:
    """The tie rule both sides use (``np.rint``, ``torch.round``), written without NumPy:
    the nearest integer, an exact half going to the even neighbour."""
    lo = math.floor(v)
    frac = v - lo
    return lo + 1 if frac > 0.5 or (frac == 0.5 and lo % 2 == 1) else lo


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_quantize_rounds_exact_halves_to_even(bits):
    qmin, qmax = qrange(bits)
    zp = qmax // 2
    halves = np.arange(qmin, qmax) - zp + 0.5  # every half step between two codes
    x = (halves * 0.25).astype(np.float32)  # x / scale is exact in float32
    q = quantize(x, np.float32(0.25), np.int32(zp), bits)
    assert q.dtype == np.uint8
    assert q.tolist() == [half_to_even(h) + zp for h in halves.tolist()]


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_weight_quantization_rounds_exact_halves_to_even(bits):
    qmin, qmax = qrange(bits)
    zp = qmax // 2
    halves = np.arange(qmin, qmax) - zp + 0.5
    row = np.concatenate([[qmin - zp, qmax - zp], halves])  # range gives scale 1, zero point zp
    qt = quantize_weight(np.stack([row, row / 2]), bits)  # the second channel: scale 0.5
    assert qt.scale.tolist() == [1.0, 0.5] and qt.zero_point.tolist() == [zp, zp]
    expected = [qmin, qmax] + [half_to_even(h) + zp for h in halves.tolist()]
    assert qt.q.tolist() == [expected, expected]


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_packed_layout_is_little_endian_bit_by_bit(bits):
    q = np.random.default_rng(bits).integers(0, 1 << bits, (3, 5))  # any shape, any int dtype
    stream = sum(int(v) << (i * bits) for i, v in enumerate(q.reshape(-1).tolist()))
    expected = stream.to_bytes(packed_size(15, bits), "little")
    packed = pack_bits(q, bits)
    assert packed.dtype == np.uint8 and packed.shape == (len(expected),)
    assert packed.tobytes() == expected
    codes = unpack_bits(np.frombuffer(expected, np.uint8), bits, 15)
    assert codes.dtype == np.uint8 and codes.tolist() == q.reshape(-1).tolist()
    # the bytes may come as any integer sequence of any shape: n flat uint8 codes come back
    for buffer in (list(expected), np.array(list(expected), np.int64).reshape(-1, 1)):
        codes = unpack_bits(buffer, bits, 15)
        assert codes.dtype == np.uint8 and codes.tolist() == q.reshape(-1).tolist()


def test_a_weight_is_quantized_as_float32_whatever_its_dtype():
    # float64 ranges give scales one float32 step apart for some rows (seed 1, 3 bits)
    rng = np.random.default_rng(0)
    for _ in range(3):
        w = rng.normal(size=(4, 5))
        for bits in SUPPORTED_BITS:
            a, b = quantize_weight(w, bits), quantize_weight(w.astype(np.float32), bits)
            np.testing.assert_array_equal(a.scale, b.scale)
            np.testing.assert_array_equal(a.zero_point, b.zero_point)
            np.testing.assert_array_equal(a.q, b.q)


def test_a_weight_needs_two_dimensions():
    with pytest.raises(QCoreError, match=r"at least 2 dimensions, got shape \(3,\)"):
        quantize_weight(np.zeros(3), 4)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_packed_nbytes_is_what_packing_stores(bits):
    qt = quantize_weight(np.random.default_rng(bits).normal(size=(3, 7)), bits)  # 21 codes
    nbytes = qt.packed_nbytes()
    assert isinstance(nbytes, int)
    assert nbytes == pack_bits(qt.q, bits).size + 4 * 3 + 3


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_qparams_are_computed_in_float64_and_rounded_once(bits):
    # float32 arithmetic on float32 ranges gives other scales (one step) for some ranges
    rng = np.random.default_rng(bits)
    x_min = -np.abs(rng.normal(size=200)).astype(np.float32)
    x_max = np.abs(rng.normal(size=200)).astype(np.float32)
    scale, zp = choose_qparams(x_min, x_max, bits)
    qmax = (1 << bits) - 1
    span = (x_max.astype(np.float64) - x_min.astype(np.float64)) / qmax
    assert scale.dtype == np.float32 and zp.dtype == np.int32
    np.testing.assert_array_equal(scale, span.astype(np.float32))
    np.testing.assert_array_equal(zp, np.clip(np.rint(-x_min / span), 0, qmax).astype(np.int32))


def test_inconsistent_quantized_tensors_are_refused():
    q = np.zeros((2, 3), np.uint8)
    one, zero = np.ones(2, np.float32), np.zeros(2, np.int32)
    with pytest.raises(QCoreError, match="^integer codes must be uint8, got int64$"):
        QuantizedTensor(q.astype(np.int64), one, zero, 4)
    for scale, zp in [(np.ones(3, np.float32), zero), (one, np.zeros(1, np.int32))]:
        with pytest.raises(QCoreError, match="^scale and zero_point need one entry per output"):
            QuantizedTensor(q, scale, zp, 4)


def test_quantize_rounds_the_float32_value_of_its_input():
    # 0.125 + 1e-12 is a hair above a tie in float64, exactly the tie once float32
    x = np.array([0.125 + 1e-12, 0.375 - 1e-12, -0.125 - 1e-12])
    q = quantize(x, np.float32(0.25), np.int32(1), 3)
    assert q.tolist() == quantize(x.astype(np.float32), np.float32(0.25), np.int32(1), 3).tolist()
    assert q.tolist() == [1, 3, 1]  # 0.5 -> 0, 1.5 -> 2, -0.5 -> 0 (half to even), + 1
    # a scale given as a Python float is used as float32 too: 0.05 / 0.1 is a tie in float32
    x32 = np.array([0.05, 0.15, -0.05], np.float32)
    assert quantize(x32, 0.1, 4, 4).tolist() == [4, 6, 4]


def test_dequantized_values_are_float32_whatever_the_inputs():
    out = dequantize(np.array([0, 3, 7], np.int64), 0.1, np.array(2))  # codes as int64
    assert out.dtype == np.float32
    assert out.tolist() == (np.float32([-2, 1, 5]) * np.float32(0.1)).tolist()
