"""The one packing module: bits to words for weights, thresholds, activations and images.

Every producer and consumer of packed data (the hardware generator, the testbenches and the
host driver) goes through these functions, so the bit order is defined once:

* A vector of bits is cut into words of ``width`` bits, **LSB first**: bit ``i`` of the vector
  is bit ``i % width`` of word ``i // width``.
* A layer's weight memory for folding ``(pe, simd)`` has ``(MH/pe) * (MW/simd)`` words of
  ``pe*simd`` bits. Word ``nf*SF + sf`` holds, at bit ``p*simd + s``, the weight of output
  ``nf*pe + p`` and input ``sf*simd + s``.
* A layer's threshold memory has ``MH/pe`` words of ``pe*(tbits+1)`` bits: lane ``p`` holds
  ``t | invert << tbits`` for output ``nf*pe + p``.
* A binary image travels on the host link as ``ceil(n/8)`` bytes, LSB first.
"""

from __future__ import annotations

import numpy as np

from .ir import Thresholds

__all__ = [
    "pack_words",
    "unpack_words",
    "weight_words",
    "threshold_bits",
    "threshold_words",
    "image_bytes",
    "bytes_to_bits",
]


def pack_words(bits, width: int) -> list[int]:
    """Pack a 1-D bit vector (length divisible by ``width``) into LSB-first integer words."""
    bits = np.asarray(bits, dtype=np.uint8).reshape(-1)
    if bits.size % width:
        raise ValueError(f"{bits.size} bits do not split into words of {width}")
    rows = bits.reshape(-1, width).astype(object)
    weights = [1 << i for i in range(width)]
    return [int(sum(b * w for b, w in zip(row, weights, strict=True) if b)) for row in rows]


def unpack_words(words, width: int) -> np.ndarray:
    """Inverse of :func:`pack_words`: a 1-D uint8 bit vector."""
    out = np.zeros((len(words), width), dtype=np.uint8)
    for k, word in enumerate(words):
        word = int(word)
        for i in range(width):
            out[k, i] = (word >> i) & 1
    return out.reshape(-1)


def weight_words(weights: np.ndarray, pe: int, simd: int) -> list[int]:
    """Words of a layer's weight memory for folding ``(pe, simd)`` (see module doc)."""
    mh, mw = weights.shape
    nf, sf = mh // pe, mw // simd
    # (nf, pe, sf, simd) -> (nf, sf, pe, simd): lane p of word (nf, sf) is row nf*pe + p.
    tiles = np.asarray(weights, np.uint8).reshape(nf, pe, sf, simd).transpose(0, 2, 1, 3)
    return pack_words(tiles.reshape(-1), pe * simd)


def threshold_bits(in_features: int) -> int:
    """Bits of a threshold value: it ranges over ``0..in_features + 1``."""
    return int(in_features + 1).bit_length()


def threshold_words(thresholds: Thresholds, in_features: int, pe: int) -> list[int]:
    """Words of a layer's threshold memory (see module doc)."""
    tbits = threshold_bits(in_features)
    lanes = np.asarray(thresholds.t, np.int64) | (np.asarray(thresholds.invert, np.int64) << tbits)
    lw = tbits + 1
    words = []
    for nf in range(len(lanes) // pe):
        word = 0
        for p in range(pe):
            word |= int(lanes[nf * pe + p]) << (p * lw)
        words.append(word)
    return words


def image_bytes(bits) -> bytes:
    """A binary image (bits, 1 for +1) as LSB-first bytes, padded with zeros to a byte."""
    bits = np.asarray(bits, dtype=np.uint8).reshape(-1)
    return np.packbits(bits, bitorder="little").tobytes()


def bytes_to_bits(data: bytes, n: int) -> np.ndarray:
    """Inverse of :func:`image_bytes` for an image of ``n`` bits."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if bits.size < n:
        raise ValueError(f"{len(data)} bytes hold {bits.size} bits, need {n}")
    return bits[:n]
