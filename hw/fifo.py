"""The row FIFO in front of a sliding window or max-pool: block RAM read through a pipeline.

A window or pool takes its input in bursts, so the block before it would stall without a row
of buffering (:func:`bnnflow.hw.core.fifo_depth`). Amaranth's ``SyncFIFOBuffered`` keeps that
row in block RAM too, but its output register is loaded through a multiplexer from the
block's read data, so the block's clock-to-output time (5.8 ns without its output register)
plus the route to that multiplexer sit in one cycle: CNV's worst path at 10,368 cycles per
frame (99.99 MHz) was a row FIFO's read data routed 39 rows to its output register.

:class:`RowFifo` reads the way :class:`~bnnflow.hw.swu.SlidingWindow` does: the reader issues a
read only while it holds a credit (a free entry of a small LUT-RAM output queue), the block's
read data is registered every cycle with no enable (a register the board build moves into the
block, :mod:`bnnflow.boards.outreg`) and then pushed into the queue, so nothing after the
block waits on anything. Writes are registered first, so the stream feeding the FIFO ends at
flip-flops, and ``i.ready`` and ``o.valid`` are registers.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring

from .mvtu import beat_ports, credit_issue, output_queue, ring_memory
from .swu import QUEUE_DEPTH

# QUEUE_DEPTH, the output queue's entries, is the sliding window's: the credit loop is the
# same (issue, block read, data register, queue, refund).
__all__ = ["RowFifo", "QUEUE_DEPTH"]


class RowFifo(wiring.Component):
    """A first-in first-out buffer of ``depth`` beats in block RAM, one beat per cycle in and
    out.

    Parameters
    ----------
    width
        Data bits per beat (``last`` travels beside them).
    depth
        Beats the block RAM holds; the output queue holds up to :data:`QUEUE_DEPTH` more.

    Attributes
    ----------
    i_stream : In(stream.Signature(beat_layout(width)))
    o_stream : Out(stream.Signature(beat_layout(width)))
        The input beats, in order, ``last`` included.

    Notes
    -----
    A beat taken at cycle ``t`` is written at ``t + 1`` and can be read from ``t + 2``; it
    leaves at the earliest at ``t + 5`` (issue, block read, data register, queue).
    """

    def __init__(self, width: int, depth: int):
        if width < 1 or depth < 2:
            self._MustUse__silence = True  # never elaborated: no "unused" warning
            raise ValueError(f"a FIFO of {width} bits x {depth} beats")
        self.width, self.depth = width, depth
        super().__init__(beat_ports(width))

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        depth, bits = self.depth, self.width + 1  # data and last

        # Writer: a taken beat is written a cycle later, from registers. `level` counts the
        # entries taken and not yet issued for reading, so `ready` (a register) is exact.
        take = Signal()
        w_addr = Signal(range(depth), reset_less=True)
        w_data = Signal(bits, reset_less=True)
        w_en = Signal()
        waddr = Signal(range(depth))
        level = Signal(range(depth + 1))
        level_n = Signal.like(level)
        ready = Signal(init=1)
        m.d.comb += [i.ready.eq(ready), take.eq(i.valid & ready)]
        m.d.sync += [w_addr.eq(waddr), w_data.eq(Cat(i.p.data, i.p.last)), w_en.eq(take)]
        with m.If(take):
            m.d.sync += waddr.eq(Mux(waddr == depth - 1, 0, waddr + 1))

        # Reader: issues a read of a written entry while it holds a credit.
        queue = output_queue(m, o, QUEUE_DEPTH)
        has_data = Signal()
        issue = credit_issue(m, queue, has_data)
        avail = Signal(range(depth + 1))  # written entries not yet issued
        avail_n = Signal.like(avail)
        raddr = Signal(range(depth))
        m.d.comb += [
            avail_n.eq(avail + w_en - issue),
            level_n.eq(level + take - issue),
        ]
        m.d.sync += [
            avail.eq(avail_n), has_data.eq(avail_n != 0),
            level.eq(level_n), ready.eq(level_n != depth),
        ]
        with m.If(issue):
            m.d.sync += raddr.eq(Mux(raddr == depth - 1, 0, raddr + 1))

        # The block RAM. A read never meets a write of its address: an entry is read only
        # after its write.
        read = ring_memory(m, "storage", depth, (w_addr, w_data, w_en), raddr)

        # S1: the block reads; S2: its data, registered every cycle, into the queue.
        s1_valid, s2_valid = Signal(), Signal()
        s2_data = Signal(bits, reset_less=True)
        m.d.sync += [s1_valid.eq(issue), s2_valid.eq(s1_valid), s2_data.eq(read)]
        m.d.comb += [queue.push.eq(s2_valid), queue.data.eq(s2_data)]
        return m
