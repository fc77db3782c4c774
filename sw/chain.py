"""Float arithmetic between an integer source and a sign, evaluated as the model evaluates it.

The front end records the elementwise ops a QONNX graph applies after a binary layer's
accumulator (or after the input pixels) as a :class:`Chain`, then evaluates it on every
reachable integer value to derive thresholds (:mod:`bnnflow.thresholds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

__all__ = ["Chain", "batchnorm", "fma_f32"]


@dataclass
class Chain:
    """A float function applied elementwise after a source value (pixel or accumulator)."""

    ops: list = field(default_factory=list)  # (op, const ndarray, const_is_left)

    def then(self, op: str, const: np.ndarray, left: bool = False) -> Chain:
        return Chain(self.ops + [(op, np.asarray(const, np.float32), left)])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        for op, c, left in self.ops:
            a, b = (c, x) if left else (x, c)
            if op == "Mul":
                x = a * b
            elif op == "Add":
                x = a + b
            elif op == "Sub":
                x = a - b
            elif op == "Div":
                x = a / b
            elif op == "BatchNormalization":
                x = batchnorm(x, *c)
            elif op == "PRelu":
                x = np.where(x >= 0, x, x * c)
            x = np.asarray(x, np.float32)
        return x


def batchnorm(x, scale, bias, mean, var, eps):
    """Eval-mode BatchNorm exactly as PyTorch computes it on the CPU.

    PyTorch folds the statistics in float32 (``invstd = 1/sqrt(var + eps)``,
    ``alpha = invstd * weight``, ``beta = bias - mean * alpha``) and then evaluates
    ``x * alpha + beta`` with a fused multiply-add, i.e. rounded once. Its CPU kernels are
    built with FMA contraction (AVX2/AVX-512 on x86-64, and on arm64), so ``beta`` too is a
    fused multiply-add: rounded once, not twice; rounding twice differs in about a quarter of
    all channels by one ulp, which moves a threshold wherever that ulp decides a tie. We
    round ``beta`` once, exactly (:func:`fma_f32`), and evaluate the final sum exactly in
    float64 (``x * alpha`` is exact there for our integer ``x``, and the sum of two multiples
    of 2**-149 is never rounded across zero), so the sign, which is all a threshold needs, is
    the model's own even at exact ties. onnxruntime rounds the products first and can differ
    from PyTorch by one ulp at a tie; we follow the trained model.
    """
    invstd = np.float32(1.0) / np.sqrt(var + eps, dtype=np.float32)
    alpha = (invstd * scale).astype(np.float32)
    beta = fma_f32(-np.asarray(mean, np.float32), alpha, bias)
    return (x.astype(np.float64) * alpha.astype(np.float64) + beta.astype(np.float64)).astype(
        np.float32)


def fma_f32(a, b, c):
    """``a * b + c`` for float32 arrays, rounded once to float32 (an exact fused multiply-add).

    The product is exact in float64; the float64 sum is exact unless its two-sum error ``e``
    is nonzero, and only then can rounding it to float32 differ from rounding the exact value
    (a float64 sum on a float32 midpoint). Those elements are rounded from exact rationals.
    """
    a, b, c = (np.asarray(v, np.float32) for v in (a, b, c))
    shape = np.broadcast_shapes(a.shape, b.shape, c.shape)
    a, b, c = (np.atleast_1d(np.broadcast_to(v, shape)) for v in (a, b, c))
    p = a.astype(np.float64) * b.astype(np.float64)
    c64 = c.astype(np.float64)
    s = p + c64
    bb = s - p
    e = (p - (s - bb)) + (c64 - bb)  # Knuth's two-sum: s + e == p + c exactly
    out = s.astype(np.float32)
    for i in zip(*np.nonzero(e), strict=True):
        out[i] = _round_f32(Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i])))
    return out.reshape(shape)


def _round_f32(exact: Fraction) -> np.float32:
    """``exact`` rounded to the nearest float32, ties to even."""
    guess = np.float32(float(exact))  # int/int division rounds once; float32() may round twice
    if not np.isfinite(guess):
        return guess
    best = None
    for cand in (np.nextafter(guess, np.float32(-np.inf)), guess,
                 np.nextafter(guess, np.float32(np.inf))):
        dist = abs(Fraction(float(cand)) - exact)
        even = int(np.array(cand, np.float32).view(np.uint32)) % 2 == 0
        key = (dist, not even)
        if best is None or key < best[0]:
            best = (key, cand)
    return np.float32(best[1])
