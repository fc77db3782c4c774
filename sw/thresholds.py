"""Folding a float affine chain (BatchNorm, scales, biases) followed by sign into thresholds.

A hidden layer's float model computes ``sign(f(dot))`` where ``dot = 2*popcount - n`` and
``f`` is whatever elementwise float arithmetic sits between the accumulator and the next
binary quantizer (BatchNorm, a bias, a weight scale, BiNealNet's shifts...). The textbook
``ceil((mean - beta*sigma/gamma))`` formula breaks at exact ties and for gamma <= 0, so instead
we evaluate ``f`` **on every reachable popcount** ``0..n`` exactly as the float model does, and
read the threshold off that table. Because it is a table of the model's own outputs, the
result reproduces it at every reachable value by construction; what remains to check is that
each channel's table is a step function (``f`` monotone), which we verify and report if not.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .ir import Thresholds

__all__ = ["ThresholdError", "derive_thresholds", "bn_sign_table", "sign_table"]


class ThresholdError(ValueError):
    """The float chain before a sign is not monotone in the accumulator for some channel."""


def derive_thresholds(
    bits_table: np.ndarray, *, layer: str = "?", values: np.ndarray | None = None
) -> Thresholds:
    """Thresholds from a table of output bits.

    Parameters
    ----------
    bits_table
        ``(len(values), channels)`` array: row ``i`` holds the model's output bit (1 for +1)
        of every channel when the accumulator is ``values[i]``.
    layer
        Name used in error messages.
    values
        The increasing accumulator values of the rows; by default the popcounts ``0..n``.

    Returns
    -------
    Thresholds
        ``out = (c >= t) XOR invert`` reproducing ``bits_table`` exactly.
    """
    table = np.asarray(bits_table).astype(np.int8)
    n1, channels = table.shape
    values = np.arange(n1) if values is None else np.asarray(values, np.int64)
    t = np.zeros(channels, np.int64)
    invert = np.zeros(channels, np.bool_)
    for ch in range(channels):
        col = table[:, ch]
        steps = np.flatnonzero(np.diff(col))
        if steps.size == 0:  # constant channel: gamma == 0, or never crosses in range
            t[ch], invert[ch] = values[0], not col[0]
        elif steps.size == 1:
            t[ch] = values[steps[0] + 1]
            invert[ch] = bool(col[0])  # starts at +1 and falls: (c >= t) inverted
        else:
            raise ThresholdError(
                f"layer {layer}, channel {ch}: the function before sign is not monotone in the "
                f"accumulator (output flips {steps.size} times over {values[0]}..{values[-1]})"
            )
    th = Thresholds(t, invert)
    assert np.array_equal(th.apply(values[:, None]), table.astype(np.uint8))
    return th


def sign_table(values: np.ndarray, chain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``sign(chain(v))`` as bits for every accumulator value ``v`` (a float32 column)."""
    out = np.asarray(chain(np.asarray(values, np.float32)[:, None]))
    if np.any(np.isnan(out)):
        raise ThresholdError("the function before sign produces NaN")
    return (out >= 0).astype(np.uint8)


def bn_sign_table(
    n: int,
    chain: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Evaluate ``sign(chain(dot))`` for every popcount ``0..n``.

    ``chain`` receives the dot products ``2*c - n`` as a float32 column ``(n + 1, 1)`` and must
    return ``(n + 1, channels)`` floats computed the way the model computes them. The result
    follows the IR's sign convention: bit 1 where the value is ``>= 0``.
    """
    dots = (2 * np.arange(n + 1, dtype=np.int64) - n).astype(np.float32)[:, None]
    values = np.asarray(chain(dots))
    if np.any(np.isnan(values)):
        raise ThresholdError("the function before sign produces NaN")
    return (values >= 0).astype(np.uint8)
