"""Binary max-pooling: on +/-1 activations (bit 1 = +1) the maximum is the OR of the bits.

``MaxPoolUnit`` is a :class:`~bnnflow.hw.swu.SlidingWindow` without padding followed by an
:class:`OrReduce`, which folds each window's ``k*k`` pixels (``B`` beats each, in ``(ky, kx,
b)`` order) into one output pixel of ``B`` beats: the same channel-folded raster stream the
MVTU emits, so the next layer sees no difference.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .mvtu import beat_layout
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
    """

    def __init__(self, width: int, beats: int, groups: int):
        self.width, self.beats, self.groups = width, beats, groups
        super().__init__({
            "i_stream": In(stream.Signature(beat_layout(width))),
            "o_stream": Out(stream.Signature(beat_layout(width))),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        width, nb, ng = self.width, self.beats, self.groups
        acc = Signal(width * nb)  # running OR of each beat position of the window
        b = Signal(range(nb))
        g = Signal(range(ng))
        take = Signal()
        m.d.comb += [
            i.ready.eq((g != ng - 1) | ~o.valid | o.ready),
            take.eq(i.valid & i.ready),
        ]
        word = acc.word_select(b, width)
        merged = Mux(g == 0, i.p.data, word | i.p.data)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(take):
            m.d.sync += b.eq(Mux(b == nb - 1, 0, b + 1))
            with m.If(b == nb - 1):
                m.d.sync += g.eq(Mux(g == ng - 1, 0, g + 1))
            with m.If(g == ng - 1):
                m.d.sync += [
                    o.valid.eq(1),
                    o.p.data.eq(merged),
                    o.p.last.eq(b == nb - 1),
                ]
            with m.Else():
                m.d.sync += word.eq(merged)
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
        super().__init__({
            "i_stream": In(stream.Signature(beat_layout(beat_elems))),
            "o_stream": Out(stream.Signature(beat_layout(beat_elems))),
        })

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
