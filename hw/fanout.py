"""Register replication for control signals with thousands of loads.

A register that gates a wide datapath (the MVTU's 784-bit input register, a LUT ROM's address
feeding thousands of LUTs) is one net with as many loads as the datapath has bits. On an ECP5
such a net spends 7–8 ns in routing, which alone misses a 125 MHz clock. The cure is the usual
one: several copies of the register, each driving at most :data:`FANOUT` loads.

Synthesis would merge identical registers back into one, so every copy is named
``<name>_dup<k>`` and the board build marks the registers driving such wires ``keep``
(:data:`bnnflow.boards.build.KEEP_DUPLICATES`). Elsewhere (simulation, the resource model's
yosys runs) the copies may be merged; behaviour does not depend on it.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, Value, ValueLike

__all__ = ["FANOUT", "DUP_SUFFIX", "copies_for", "replicated"]

#: Loads one copy of a replicated register drives at most.
FANOUT = 64

#: Marker in the name of every copy; the board build keeps registers whose output has it.
DUP_SUFFIX = "_dup"


def copies_for(loads: int, fanout: int = FANOUT) -> int:
    """Copies needed so that none drives more than ``fanout`` of ``loads`` loads."""
    return max(1, -(-loads // fanout))


def replicated(m: Module, name: str, value: ValueLike, copies: int, *,
               reset_less: bool = False) -> list[Signal]:
    """``copies`` registers that each take ``value`` every cycle (so each equals ``value`` one
    cycle later), named ``<name>_dup<k>``.

    Parameters
    ----------
    m
        Module the registers are added to (``sync`` domain).
    name
        Base name of the copies.
    value
        What they register.
    copies
        How many; at least 1.
    reset_less
        Leave the copies out of the domain's reset: for copies that only steer datapath
        registers whose contents mean nothing until valid data reaches them.

    Returns
    -------
    list[Signal]
        The copies, of ``value``'s shape.
    """
    if copies < 1:
        raise ValueError(f"{name}: {copies} copies")
    value = Value.cast(value)
    regs = [Signal(value.shape(), name=f"{name}{DUP_SUFFIX}{k}", reset_less=reset_less)
            for k in range(copies)]
    m.d.sync += [r.eq(value) for r in regs]
    return regs
