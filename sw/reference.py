"""The reference executor: runs the IR with integers only. The golden model for every level.

Nothing here uses floats in the arithmetic path except exact float64 matrix products of small
integers (exact far beyond any layer size we build), which numpy computes much faster than
integer matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ir import Conv, Dense, MaxPool, Network

__all__ = ["Result", "binarize", "levels", "popcounts", "accumulate", "run"]


@dataclass(frozen=True, eq=False)
class Result:
    """Outputs of :func:`run` for a batch of ``N`` inputs."""

    classes: np.ndarray  # (N,) int64, argmax of scores, first maximum on ties
    scores: np.ndarray  # (N, classes) int64, 2*popcount - n of the final layer
    activations: tuple[np.ndarray, ...]  # per layer: (N, *shape) uint8 bits; the last popcounts


def _flat_pixels(net: Network, pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    spec = net.input
    if pixels.reshape(len(pixels), -1).shape[1] != spec.size:
        raise ValueError(f"inputs of shape {pixels.shape[1:]} do not match the network's input "
                         f"{spec.shape}")
    flat = pixels.reshape(len(pixels), -1)
    if flat.size and (flat.min() < 0 or flat.max() > spec.pixel_max):
        raise ValueError(f"pixels must be integers in 0..{spec.pixel_max}, got "
                         f"{flat.min()}..{flat.max()}")
    return flat


def binarize(net: Network, pixels: np.ndarray) -> np.ndarray:
    """Input bits (uint8, 1 for +1) of integer pixels, shape ``(N, features)``."""
    return (_flat_pixels(net, pixels) >= net.input.binarize_threshold).astype(np.uint8)


def levels(net: Network, pixels: np.ndarray) -> np.ndarray:
    """Integer input levels (int64) of integer pixels, shape ``(N, features)``."""
    return np.asarray(net.input.levels, np.int64)[_flat_pixels(net, pixels)]


def popcounts(bits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``popcount(xnor(x, w))`` for bit rows ``x (N, n)`` and weights ``(out, n)``."""
    n = weights.shape[1]
    xs = 2.0 * bits.astype(np.float64) - 1.0
    return (_dot(xs, weights) + n) // 2


def _dot(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    ws = 2.0 * weights.astype(np.float64) - 1.0
    return np.rint(x.astype(np.float64) @ ws.T).astype(np.int64)


def _patches(x: np.ndarray, layer: Conv, pad) -> np.ndarray:
    """im2col: ``(N, C, H, W)`` to ``(N, OH, OW, C*k*k)`` in the weights' (C, ky, kx) order."""
    p, k, s = layer.padding, layer.kernel, layer.stride
    if p:
        x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=pad)
    _, oh, ow = layer.out_shape(layer.in_shape)
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
    win = win[:, :, ::s, ::s][:, :, :oh, :ow]  # (N, C, OH, OW, k, k)
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(len(x), oh, ow, -1)


def accumulate(layer, x: np.ndarray) -> np.ndarray:
    """The accumulator a layer's thresholds compare: a popcount for binary inputs, the signed
    sum ``sum(level * w)`` for integer inputs. ``x`` is bits or levels ``(N, *in_shape)``.
    Conv outputs are ``(N, OH, OW, C)``; dense outputs ``(N, C)``."""
    if isinstance(layer, Dense):
        flat = x.reshape(len(x), -1)
        if layer.integer_input:
            return _dot(flat, layer.weights)
        return popcounts(flat, layer.weights)
    pad = 0 if layer.integer_input else int(layer.pad_value > 0)
    cols = _patches(x.reshape((len(x), *layer.in_shape)), layer, pad)
    w = layer.weights.reshape(layer.out_channels, -1)
    flat = cols.reshape(-1, cols.shape[-1])
    acc = _dot(flat, w) if layer.integer_input else popcounts(flat, w)
    return acc.reshape((*cols.shape[:3], layer.out_channels))


def _maxpool(x: np.ndarray, layer: MaxPool) -> np.ndarray:
    k, s = layer.kernel, layer.stride
    _, oh, ow = layer.out_shape(layer.in_shape)
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
    return win[:, :, ::s, ::s][:, :, :oh, :ow].max(axis=(4, 5))


def run(net: Network, pixels: np.ndarray, *, bits: bool = False) -> Result:
    """Run the network on integer pixels ``(N, *input.shape)`` (or input bits with ``bits``,
    for binary-input networks)."""
    x = np.asarray(pixels)
    if bits:
        x = x.reshape(len(x), -1).astype(np.uint8)
    else:
        x = binarize(net, x) if net.input.binary else levels(net, x)
    x = x.reshape((len(x), *net.input.shape))
    acts = []
    for layer in net.layers:
        if isinstance(layer, MaxPool):
            x = _maxpool(x, layer)
            acts.append(x)
            continue
        acc = accumulate(layer, x)
        if layer.thresholds is None:
            acts.append(acc)
            scores = acc if layer.integer_input else 2 * acc - layer.in_features
            return Result(np.argmax(scores, axis=1), scores, tuple(acts))
        x = layer.thresholds.apply(acc)
        if isinstance(layer, Conv):  # (N, OH, OW, C) -> channel-first
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        acts.append(x)
    raise AssertionError("unreachable: Network guarantees a final scores layer")
