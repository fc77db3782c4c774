"""Population count as a balanced adder tree.

The XNOR-popcount is the inner loop of every binarized layer: each PE lane counts the ones in
``SIMD`` XNOR bits every cycle. A balanced tree keeps the logic depth at ``ceil(log2(SIMD))``
adders, and because every adder only sees operands as wide as the count beneath it, the first
levels are 1- and 2-bit additions that fit a LUT4 each.
"""

from __future__ import annotations

from amaranth.hdl import Const, Value, ValueLike

__all__ = ["popcount", "popcount_width"]


def popcount_width(n: int) -> int:
    """Bits of an unsigned count of ``n`` bits (values ``0..n``).

    Parameters
    ----------
    n
        Number of bits counted; ``n >= 0``.

    Returns
    -------
    int
        ``max(1, n.bit_length())``.
    """
    if n < 0:
        raise ValueError(f"cannot count {n} bits")
    return max(1, n.bit_length())


def popcount(value: ValueLike) -> Value:
    """The number of ones in ``value``, as a combinational balanced adder tree.

    Parameters
    ----------
    value
        Any value-like; its bits are counted.

    Returns
    -------
    Value
        An unsigned expression of exactly ``popcount_width(len(value))`` bits.
    """
    value = Value.cast(value)
    width = popcount_width(len(value))
    if len(value) == 0:
        return Const(0, width)
    # Amaranth widens every sum by one bit; the tree's top can be a bit wider than needed
    # (e.g. 1 + 2 bits for three inputs), so trim it to the exact count width.
    return _tree([value[i] for i in range(len(value))])[:width]


def _tree(terms: list[Value]) -> Value:
    if len(terms) == 1:
        return terms[0]
    half = len(terms) // 2
    return _tree(terms[:half]) + _tree(terms[half:])
