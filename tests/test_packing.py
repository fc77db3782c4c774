import numpy as np
import pytest

from bnnflow.ir import Thresholds
from bnnflow.packing import (
    bytes_to_bits,
    image_bytes,
    pack_words,
    threshold_bits,
    threshold_words,
    unpack_words,
    weight_words,
)


def test_pack_words_is_lsb_first():
    assert pack_words([1, 0, 0, 0, 0, 1, 1, 0], 4) == [0b0001, 0b0110]
    bits = np.random.default_rng(0).integers(0, 2, 96)
    assert np.array_equal(unpack_words(pack_words(bits, 32), 32), bits)
    with pytest.raises(ValueError):
        pack_words([1, 0, 1], 2)


@pytest.mark.parametrize("pe,simd", [(1, 1), (2, 4), (3, 2), (6, 12)])
def test_weight_words_layout(pe, simd):
    rng = np.random.default_rng(pe * 100 + simd)
    w = rng.integers(0, 2, (6, 12))
    words = weight_words(w, pe, simd)
    sf = 12 // simd
    assert len(words) == (6 // pe) * sf
    for nf in range(6 // pe):
        for s in range(sf):
            word = words[nf * sf + s]
            for p in range(pe):
                for i in range(simd):
                    assert (word >> (p * simd + i)) & 1 == w[nf * pe + p, s * simd + i]


def test_threshold_words_layout():
    th = Thresholds([0, 5, 9, 3], [True, False, False, True])
    tbits = threshold_bits(8)
    assert tbits == 4  # values 0..9
    words = threshold_words(th, 8, pe=2)
    lw = tbits + 1
    assert words == [(0 | 1 << 4) | (5 << lw), 9 | ((3 | 1 << 4) << lw)]


def test_image_bytes_roundtrip():
    bits = np.random.default_rng(1).integers(0, 2, 61)
    data = image_bytes(bits)
    assert len(data) == 8
    assert data[0] == int("".join(str(b) for b in bits[:8][::-1]), 2)
    assert np.array_equal(bytes_to_bits(data, 61), bits)
