"""Float arithmetic between an integer source and a sign, evaluated as the model evaluates it.

The front end records the elementwise ops a QONNX graph applies after a binary layer's
accumulator (or after the input pixels) as a :class:`Chain`, then evaluates it on every
reachable integer value to derive thresholds (:mod:`bnnflow.thresholds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Chain", "batchnorm"]


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
    ``x * alpha + beta`` with a fused multiply-add, i.e. rounded once. We evaluate that sum
    exactly in float64 (``x * alpha`` is exact there for our integer ``x``), so the sign, which
    is all a threshold needs, is the model's own even at exact ties. onnxruntime rounds the
    product first and can differ from PyTorch by one ulp at a tie; we follow the trained model.
    """
    invstd = np.float32(1.0) / np.sqrt(var + eps, dtype=np.float32)
    alpha = (invstd * scale).astype(np.float32)
    beta = (bias - mean * alpha).astype(np.float32)
    return (x.astype(np.float64) * alpha.astype(np.float64) + beta.astype(np.float64)).astype(
        np.float32)


