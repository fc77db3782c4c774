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

Convolutional networks (additions; the functions above keep their behaviour):

* Activations between hardware layers travel as pixels in raster order, channels within a
  pixel (HWC), each pixel cut into ``C/e`` beats of ``e`` channels. The sliding-window unit
  therefore emits an output pixel's receptive field in ``(ky, kx, c)`` order, and
  :func:`conv_weight_matrix` is the one place that reorders the IR's ``(OC, C, ky, kx)``
  weights to match. A dense layer after a conv or pool sees the HWC flatten, so
  :func:`hwc_dense_weights` permutes its columns from the IR's CHW flatten order.
* An integer-input layer's elements are signed levels of :func:`level_bits` bits; its threshold
  memory (:func:`signed_threshold_words`) holds two's-complement thresholds of
  :func:`signed_threshold_bits` bits, clipped to the reachable accumulator range.
* Pixels of an integer-input network travel as one byte each (:func:`pixel_bits`), in HWC order
  when the first layer is a conv and in the IR's flat order otherwise (:func:`frame_pixels`).
"""

from __future__ import annotations

import numpy as np

from .ir import Conv, Network, Thresholds

__all__ = [
    "pack_words",
    "unpack_words",
    "weight_words",
    "threshold_bits",
    "threshold_words",
    "image_bytes",
    "bytes_to_bits",
    "conv_weight_matrix",
    "hwc_dense_weights",
    "level_bits",
    "pixel_bits",
    "signed_threshold_bits",
    "signed_threshold_words",
    "frame_pixels",
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


def conv_weight_matrix(layer: Conv) -> np.ndarray:
    """A conv layer's weights as an ``(OC, k*k*C)`` matrix in the window's (ky, kx, c) order."""
    w = np.asarray(layer.weights, np.uint8)
    return w.transpose(0, 2, 3, 1).reshape(layer.out_channels, -1)


def hwc_dense_weights(weights: np.ndarray, in_shape) -> np.ndarray:
    """Dense weights ``(MH, C*H*W)`` over a CHW flatten, permuted to take the HWC flatten."""
    c, h, w = in_shape
    mh = weights.shape[0]
    return np.asarray(weights).reshape(mh, c, h, w).transpose(0, 2, 3, 1).reshape(mh, -1)


def level_bits(levels) -> int:
    """Signed bits that hold every input level."""
    return max(int(v).bit_length() for v in levels) + 1


def pixel_bits(pixel_max: int) -> int:
    """Bits of a pixel on the stream: whole bytes (8 for pixels up to 255)."""
    return 8 * -(-int(pixel_max).bit_length() // 8)


def signed_threshold_bits(bound: int) -> int:
    """Signed bits of a threshold clipped to ``[-bound, bound + 1]`` (accumulator ``|acc| <=
    bound``); the accumulator itself fits in the same width."""
    return int(bound + 1).bit_length() + 1


def signed_threshold_words(thresholds: Thresholds, bound: int, pe: int) -> list[int]:
    """Threshold memory of an integer-input layer whose accumulator satisfies ``|acc| <= bound``.

    Lane ``p`` of word ``nf`` holds ``t | invert << tbits`` for output ``nf*pe + p``, ``t`` in
    two's complement. Clipping ``t`` to ``[-bound, bound + 1]`` changes no output: below the
    range ``acc >= t`` always holds, above it never does.
    """
    tbits = signed_threshold_bits(bound)
    t = np.clip(np.asarray(thresholds.t, np.int64), -bound, bound + 1) & ((1 << tbits) - 1)
    lanes = t | (np.asarray(thresholds.invert, np.int64) << tbits)
    words = []
    for nf in range(len(lanes) // pe):
        words.append(sum(int(lanes[nf * pe + p]) << (p * (tbits + 1)) for p in range(pe)))
    return words


def frame_pixels(net: Network, pixels: np.ndarray) -> np.ndarray:
    """Integer pixels ``(N, *input.shape)`` in the order the core takes them, ``(N, size)``:
    HWC when the first layer is a conv, the IR's flat order otherwise."""
    x = np.asarray(pixels).reshape((len(pixels), *net.input.shape))
    if isinstance(net.layers[0], Conv):
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x).reshape(len(x), -1)
