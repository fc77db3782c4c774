"""The reference executor: runs the IR with integers only. The golden model for every level.

Nothing here uses floats in the arithmetic path except exact float64 matrix products of
+/-1 values (exact far beyond any layer size we build), which numpy computes much faster than
integer matmul.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ir import Network

__all__ = ["Result", "binarize", "popcounts", "run"]


@dataclass(frozen=True, eq=False)
class Result:
    """Outputs of :func:`run` for a batch of ``N`` inputs."""

    classes: np.ndarray  # (N,) int64, argmax of scores, first maximum on ties
    scores: np.ndarray  # (N, classes) int64, 2*popcount - n of the final layer
    activations: tuple[np.ndarray, ...]  # per layer: (N, out) uint8 bits; the last is popcounts


def binarize(net: Network, pixels: np.ndarray) -> np.ndarray:
    """Input bits (uint8, 1 for +1) of integer pixels, shape ``(N, features)``."""
    pixels = np.asarray(pixels)
    spec = net.input
    if pixels.shape[1:] != spec.shape and pixels.reshape(len(pixels), -1).shape[1] != spec.size:
        raise ValueError(f"inputs of shape {pixels.shape[1:]} do not match the network's input "
                         f"{spec.shape}")
    flat = pixels.reshape(len(pixels), -1)
    if flat.size and (flat.min() < 0 or flat.max() > spec.pixel_max):
        raise ValueError(f"pixels must be integers in 0..{spec.pixel_max}, got "
                         f"{flat.min()}..{flat.max()}")
    return (flat >= spec.binarize_threshold).astype(np.uint8)


def popcounts(bits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``popcount(xnor(x, w))`` for bit rows ``x (N, n)`` and weights ``(out, n)``."""
    n = weights.shape[1]
    xs = 2.0 * bits.astype(np.float64) - 1.0
    ws = 2.0 * weights.astype(np.float64) - 1.0
    dots = np.rint(xs @ ws.T).astype(np.int64)
    return (dots + n) // 2


def run(net: Network, pixels: np.ndarray, *, bits: bool = False) -> Result:
    """Run the network on integer pixels ``(N, *input.shape)`` (or input bits with ``bits``)."""
    x = np.asarray(pixels)
    x = x.reshape(len(x), -1).astype(np.uint8) if bits else binarize(net, x)
    acts = []
    for layer in net.layers:
        c = popcounts(x, layer.weights)
        if layer.thresholds is None:
            acts.append(c)
            scores = 2 * c - layer.in_features
            return Result(np.argmax(scores, axis=1), scores, tuple(acts))
        x = layer.thresholds.apply(c)
        acts.append(x)
    raise AssertionError("unreachable: Network guarantees a final scores layer")
