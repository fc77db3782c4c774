"""Population counts and sums as balanced adder trees, combinational or pipelined.

The XNOR-popcount is the inner loop of every binarized layer: each PE lane counts the ones in
``SIMD`` XNOR bits every cycle. A balanced tree keeps the logic depth at ``ceil(log2(SIMD))``
adders, and because every adder only sees operands as wide as the count beneath it, the first
levels are 1- and 2-bit additions that fit a LUT4 each.

For speed the tree is cut into register stages of :data:`LEVELS_PER_STAGE` adder levels
(:func:`adder_tree`): on ECP5 a level costs a LUT or a short carry chain plus routing, about
1.5-2 ns on paper, but Yosys/ABC merges three levels into chains of LUTs and PFUMXes that
measured 10 ns in a placed 10k-LUT design (SFC at 256 cycles), so two levels per stage keep
the 8 ns of 125 MHz. The registers advance every cycle (the MVTU never stalls behind its
issue stage), or on an enable if one is given.

A schedule of two levels in the first stage and one in each after it (``(2, 1)``, see
:func:`stage_levels`) was measured and not taken. Yosys then maps every later level to its
own carry chain, and ``synth_ecp5`` counts fewer LUT4 slots (LUT4 + 2 per CCU2C) on single
MVTUs: 10,821 -> 10,309 (bram 8 x 392, 64 deep), 3,644 -> 3,494 (bram 8 x 128), 5,346 ->
5,094 (bram 4 x 384), 11,360 -> 10,818 (lut 16 x 192), 7,227 -> 6,569 (const 8 x 392), for
10-38 % more flip-flops. But nextpnr's packer adds a feed-in or feed-out carry cell to most
of those short chains (where a carry-out leaves the chain, as an adder's top sum bit
does): after packing, the bram 8 x 392 MVTU takes 11,949 TRELLIS_COMB against 11,437, and
the whole SFC board design 22,419 against 21,544, which is 0.697 frames/s per LUT·MHz at 64
cycles instead of 0.725.
"""

from __future__ import annotations

import operator

from amaranth.hdl import Cat, Const, Module, Signal, Value, ValueLike

__all__ = ["LEVELS_PER_STAGE", "popcount", "popcount_width", "tree_levels", "stage_levels",
           "tree_stages", "adder_level", "adder_tree", "xnor_pairs"]

#: Adder levels of each register stage of :func:`adder_tree` (an int: every stage; a sequence:
#: the first stage, the next, ... with the last repeating, :func:`stage_levels`).
LEVELS_PER_STAGE = 2


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


def xnor_pairs(w: Value, x: Value) -> list[Value]:
    """The bits where ``w`` and ``x`` agree, counted two at a time: the first level of a
    popcount of ``xnor(w, x)`` with the XNORs inside it.

    For the mismatches ``a = w[i] ^ x[i]`` and ``b = w[i+1] ^ x[i+1]`` of a pair, the count of
    matches is ``Cat(a ^ b, ~a & ~b)``, each bit a function of four inputs: one LUT4, the same
    as the two XNORs alone would take. An odd last bit is its own 1-bit term.

    Why: Yosys registers every stage of :func:`adder_tree` through a carry-chain adder per
    partial sum, the widest cost of the tree at its first stage; with the pairs in front that
    stage sums eight lanes instead of four, into half as many adders. ``synth_ecp5`` on a
    block-RAM MVTU (``python -m bnnflow.lanecost``): 4.57 -> 4.00 LUT4 per lane at 8 x 32
    lanes, 3.94 -> 3.79 at 8 x 128. Plain bits gain nothing (ABC merges a pair level into
    the next one worse than it maps the tree: 2.76 -> 4.65 on a bare 392-bit popcount), so
    the MVTU pairs only XNORs with a weight register.
    """
    w, x = Value.cast(w), Value.cast(x)
    if len(w) != len(x):
        raise ValueError(f"xnor_pairs of {len(w)} and {len(x)} bits")
    out = []
    for i in range(0, len(w) - 1, 2):
        a, b = w[i] ^ x[i], w[i + 1] ^ x[i + 1]
        out.append(Cat(a ^ b, ~a & ~b))
    if len(w) % 2:
        out.append(~(w[-1] ^ x[-1]))
    return out


def tree_levels(n: int) -> int:
    """Adder levels of a balanced tree over ``n >= 1`` terms, ``ceil(log2(n))``."""
    if n < 1:
        raise ValueError(f"an adder tree needs at least one term, not {n}")
    return (n - 1).bit_length()


def stage_levels(levels: int, levels_per_stage=LEVELS_PER_STAGE) -> list[int]:
    """Adder levels of each register stage of a tree of ``levels`` levels.

    ``levels_per_stage`` is an int (every stage) or a sequence whose last entry repeats (the
    first stage, then the next, ...). A tree of no levels still has its one register."""
    per = [levels_per_stage] if isinstance(levels_per_stage, int) else list(levels_per_stage)
    if not per or min(per) < 1:
        raise ValueError(f"levels per stage must be at least 1, not {levels_per_stage}")
    out = []
    while levels > 0:
        take = min(levels, per[min(len(out), len(per) - 1)])
        out.append(take)
        levels -= take
    return out or [0]


def adder_level(terms: list, add=operator.add) -> list:
    """One level of :func:`adder_tree`: adjacent terms added pairwise by ``add``, an odd one
    out passed on. (The resource model walks the same levels over term widths.)"""
    return [add(terms[i], terms[i + 1]) if i + 1 < len(terms) else terms[i]
            for i in range(0, len(terms), 2)]


def tree_stages(n: int, levels_per_stage=LEVELS_PER_STAGE) -> int:
    """Registers on the path through :func:`adder_tree` over ``n`` terms, including the
    final one (:func:`stage_levels` of ``tree_levels(n)``)."""
    return len(stage_levels(tree_levels(n), levels_per_stage))


def adder_tree(m: Module, en: Value | None, terms: list[Value], shape, name: str,
               levels_per_stage=LEVELS_PER_STAGE, *, reset_less: bool = False) -> Signal:
    """The registered sum of ``terms``, pipelined by ``levels_per_stage`` adder levels.

    Adjacent terms are added pairwise, level by level (an odd one out passes through); after
    each stage's levels (:func:`stage_levels`), and after the last, each partial sum is
    registered in
    the ``sync`` domain while ``en`` is high. The result is :func:`tree_stages` registers
    behind ``terms``.

    Parameters
    ----------
    m
        Module the registers are added to.
    en
        Stage enable: every register of the tree advances only while it is high; ``None``
        for a tree that advances every cycle.
    terms
        The addends, unsigned or signed values (one bit each for a popcount).
    shape
        Shape of the result, wide enough for every sum.
    name
        Prefix of the register names.
    levels_per_stage
        Adder levels per stage: an int, or a sequence whose last entry repeats.
    reset_less
        Leave the registers out of the domain's reset (a datapath whose valid flags travel
        beside it and are reset instead).

    Returns
    -------
    Signal
        The sum, of ``shape``.
    """
    terms = list(terms)
    schedule = stage_levels(tree_levels(len(terms)), levels_per_stage)
    stages = len(schedule)
    level = 0
    for stage in range(stages):
        for _ in range(schedule[stage]):
            terms = adder_level(terms)
            level += 1
        if stage == stages - 1:
            regs = [Signal(shape, name=f"{name}_sum", reset_less=reset_less)]
        else:
            # Each partial sum keeps the width Amaranth gave it: no adder is wider than needed.
            regs = [Signal(Value.cast(t).shape(), name=f"{name}_l{level}_{k}",
                           reset_less=reset_less) for k, t in enumerate(terms)]
        updates = [r.eq(t) for r, t in zip(regs, terms, strict=True)]
        if en is None:
            m.d.sync += updates
        else:
            with m.If(en):
                m.d.sync += updates
        terms = regs
    return terms[0]
