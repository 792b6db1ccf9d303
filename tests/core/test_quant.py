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
