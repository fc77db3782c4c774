"""Reset distribution: a registered copy of the reset for every block.

A ``sync`` domain's reset is one net to every flip-flop that has a reset, all over the chip.
On an ECP5-85F filled by a network it spends 7–8 ns in routing from the reset synchronizer
to the far corner, which alone misses a 125 MHz clock (SFC at 256 cycles per frame, after
the block-RAM reads were fixed). The usual cure is a reset tree: the request is registered
once (the root), then twice more per block (a hop and a leaf), and each block is reset by
its own leaf through :class:`~amaranth.hdl.ResetInserter`. The root drives only a few dozen
hops, each leaf only its block's control registers (the datapath is ``reset_less``), and
every block leaves reset in the same cycle, three after the request falls. The hop lets the
placer put a register between the root and a block across the chip: with the leaf alone,
CNV at 8,100 cycles (72 % of the 85F's LUTs) missed 125 MHz on 11.5 ns of routing from the
root to one leaf.

A board build (:class:`bnnflow.boards.top.BoardTop`) makes its ``sync`` domain reset-less,
so the tree is the only reset: it drives :attr:`reset_req` of the host top. In simulation
the domain keeps its reset and the request is never raised, so blocks behave as before;
:func:`local_reset` leaves are named like :func:`~bnnflow.hw.fanout.replicated` copies, so
the board build keeps them apart.
"""

from __future__ import annotations

from amaranth.hdl import Elaboratable, Module, ResetInserter, Signal, Value

from .fanout import DUP_SUFFIX

__all__ = ["reset_root", "local_reset"]


def reset_root(m: Module, request: Value) -> Signal:
    """The root of a reset tree: ``request`` registered once (``sync``, no reset itself)."""
    root = Signal(name="reset_root", reset_less=True)
    m.d.sync += root.eq(request)
    return root


def local_reset(m: Module, name: str, block: Elaboratable, root: Value) -> None:
    """Add ``block`` as the submodule ``name``, reset (also) from ``root``.

    A block with a reset tree of its own (a ``reset_req`` signal, like
    :class:`~bnnflow.hw.hostlink.HostTop` and :class:`~bnnflow.hw.core.BnnCore`) gets
    ``root`` as its request and makes its own leaves; any other block is put under a
    :class:`~amaranth.hdl.ResetInserter` of its own copy of ``root``, registered twice (a
    hop, then the leaf).

    Parameters
    ----------
    m
        The parent module; the leaf register goes in its ``sync`` domain.
    name
        The block's submodule name, also in the leaf's name.
    block
        The block.
    root
        The tree's root (:func:`reset_root`), or any registered request.
    """
    request = getattr(block, "reset_req", None)
    if isinstance(request, Signal):
        m.submodules[name] = block
        m.d.comb += request.eq(root)
        return
    hop = Signal(name=f"reset_{name}_hop{DUP_SUFFIX}0", reset_less=True)
    leaf = Signal(name=f"reset_{name}{DUP_SUFFIX}0", reset_less=True)
    m.d.sync += [hop.eq(root), leaf.eq(hop)]
    m.submodules[name] = ResetInserter(leaf)(block)
