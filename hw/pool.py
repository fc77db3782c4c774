"""Binary max-pooling: on +/-1 activations (bit 1 = +1) the maximum is the OR of the bits.

``MaxPoolUnit`` is a :class:`~bnnflow.hw.swu.SlidingWindow` without padding followed by an
:class:`OrReduce`, which folds each window's ``k*k`` pixels (``B`` beats each, in ``(ky, kx,
b)`` order) into one output pixel of ``B`` beats: the same channel-folded raster stream the
MVTU emits, so the next layer sees no difference.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring

from .mvtu import beat_ports, wrap_counter
from .swu import SlidingWindow

__all__ = ["OrReduce", "MaxPoolUnit"]


class OrReduce(wiring.Component):
    """OR of ``groups`` consecutive groups of ``beats`` beats, beat by beat.

    Parameters
    ----------
    width
        Bits per beat.
    beats
        Beats per group (``B``, beats of one pixel).
    groups
        Groups per window (``k*k``).

    Attributes
    ----------
    i_stream : In(stream.Signature(beat_layout(width)))
        ``groups*beats`` beats per window; ``last`` is ignored.
    o_stream : Out(stream.Signature(beat_layout(width)))
        ``beats`` beats per window: beat ``b`` is the OR of input beats ``g*beats + b``;
        ``last`` on the final one.

    Notes
    -----
    The output beat of a window leaves while the window's final group arrives, so the unit
    passes one beat per cycle; only a final-group beat needs the output register, so only then
    does ``i.ready`` follow ``o.ready`` (combinationally, while the register is full).

    The running OR is a shift register of ``beats`` words: every taken beat shifts in its
    merged word and shifts out the word of the same beat position one group earlier, so the
    word a beat merges with is always the bottom one. No multiplexer selects a word by beat
    position and no decoder enables one; with the group flags kept in registers
    (:func:`~bnnflow.hw.mvtu.wrap_counter`), the input queue's read reaches the accumulator
    through one LUT. CNV's worst path at 10,368 cycles per frame was that read through the
    word select (4 LUTs).
    """

    def __init__(self, width: int, beats: int, groups: int):
        self.width, self.beats, self.groups = width, beats, groups
        super().__init__(beat_ports(width))

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        width, nb, ng = self.width, self.beats, self.groups
        # The running OR of each beat position of the window, oldest at the bottom.
        acc = Signal(width * nb, reset_less=True)
        take = Signal()
        _, last_b, *_ = wrap_counter(m, "b", nb, take)
        _, last_g, *_ = wrap_counter(m, "g", ng, take & last_b)
        first_g = Signal(init=1)
        with m.If(take & last_b):
            m.d.sync += first_g.eq(last_g)
        m.d.comb += [
            i.ready.eq(~last_g | ~o.valid | o.ready),
            take.eq(i.valid & i.ready),
        ]
        merged = Mux(first_g, i.p.data, acc[:width] | i.p.data)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(take):
            m.d.sync += acc.eq(Cat(acc[width:], merged) if nb > 1 else merged)
            with m.If(last_g):
                m.d.sync += [
                    o.valid.eq(1),
                    o.p.data.eq(merged),
                    o.p.last.eq(last_b),
                ]
        return m


class MaxPoolUnit(wiring.Component):
    """k x k max-pool with stride over a binary channel-folded pixel stream (no padding).

    Parameters
    ----------
    in_shape
        ``(C, H, W)``.
    kernel, stride
        Pooling window and stride.
    beat_elems
        Channels per beat; must divide ``C``.

    Attributes
    ----------
    i_stream : In(stream.Signature(beat_layout(beat_elems)))
        Input pixels, ``C/beat_elems`` beats each, raster order.
    o_stream : Out(stream.Signature(beat_layout(beat_elems)))
        Pooled pixels in the same format.
    """

    def __init__(self, in_shape, kernel: int, stride: int, beat_elems: int):
        self.swu = SlidingWindow(in_shape, kernel, stride, 0, 0, beat_elems)
        self.reduce = OrReduce(beat_elems, self.swu.b, kernel * kernel)
        super().__init__(beat_ports(beat_elems))

    @property
    def cycles(self) -> int:
        """Cycles per frame at best: the window's beats."""
        return self.swu.cycles

    def elaborate(self, platform):
        m = Module()
        m.submodules.swu = self.swu
        m.submodules.reduce = self.reduce
        wiring.connect(m, wiring.flipped(self.i_stream), self.swu.i_stream)
        wiring.connect(m, self.swu.o_stream, self.reduce.i_stream)
        wiring.connect(m, self.reduce.o_stream, wiring.flipped(self.o_stream))
        return m
