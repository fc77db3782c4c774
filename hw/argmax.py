"""Argmax over the final layer's popcounts: one result beat per frame.

The scores layer's MVTU emits ``NF = C/PE`` beats of ``PE`` unsigned popcounts per frame. This
block keeps a running maximum, collects every class's score ``2*c - n`` and emits one beat with
the winning class and all scores. Ties go to the lowest class index, like ``numpy.argmax``:
within a beat the comparison tree prefers its left (lower) half unless the right is strictly
greater, and across beats a later beat wins only if strictly greater than the running maximum.
Comparing popcounts is the same as comparing scores, since ``2*c - n`` is monotonic in ``c``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .mvtu import beat_layout
from .popcount import popcount_width

__all__ = ["score_width", "result_layout", "Argmax"]


def score_width(n: int) -> int:
    """Signed bits of a score ``2*c - n`` for ``0 <= c <= n``, i.e. of values in ``[-n, n]``.

    Parameters
    ----------
    n
        Inputs of the scores layer.

    Returns
    -------
    int
        ``n.bit_length() + 1``.
    """
    return n.bit_length() + 1


def result_layout(classes: int, n: int) -> data.StructLayout:
    """Payload of the result beat.

    Parameters
    ----------
    classes
        Number of classes ``C``.
    n
        Inputs of the scores layer.

    Returns
    -------
    data.StructLayout
        ``{"cls": unsigned(max(1, ceil(log2 C))), "scores": ArrayLayout(signed(sb), C),
        "last": unsigned(1)}`` with ``sb = score_width(n)``.
    """
    return data.StructLayout({
        "cls": unsigned(max(1, ceil_log2(classes))),
        "scores": data.ArrayLayout(signed(score_width(n)), classes),
        "last": unsigned(1),
    })


class Argmax(wiring.Component):
    """Running argmax and score collection over a frame's popcount beats.

    Parameters
    ----------
    classes
        Number of classes ``C`` (outputs of the scores layer).
    pe
        Popcount lanes per input beat; must divide ``classes``.
    n
        Inputs of the scores layer, so a popcount is ``popcount_width(n)`` bits.

    Attributes
    ----------
    i_stream : In(stream.Signature(beat_layout(pe * popcount_width(n))))
        ``C/pe`` beats per frame, lane ``p`` of beat ``k`` is class ``k*pe + p``; the beat count
        delimits a frame, ``last`` is ignored.
    o_stream : Out(stream.Signature(result_layout(classes, n)))
        One beat per frame with ``last = 1``.

    Notes
    -----
    ``i_stream.ready`` depends only on registers: the closing beat of a frame waits while the
    previous result is still in the output register. With one beat per frame (``pe = C``) this
    limits the block to a frame every two cycles, which no folded scores layer outruns.
    """

    def __init__(self, classes: int, pe: int, n: int):
        if pe < 1 or classes % pe:
            raise ValueError(f"PE {pe} does not divide {classes} classes")
        self.classes, self.pe, self.n = classes, pe, n
        self.beats = classes // pe
        self.count_width = popcount_width(n)
        super().__init__({
            "i_stream": In(stream.Signature(beat_layout(pe * self.count_width))),
            "o_stream": Out(stream.Signature(result_layout(classes, n))),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        pe, beats, sw = self.pe, self.beats, score_width(self.n)

        counts = data.View(data.ArrayLayout(unsigned(self.count_width), pe), i.p.data)
        index = Signal(range(beats))  # beat index within the frame
        base = Signal(range(self.classes))  # class index of lane 0 of this beat
        closing = Signal()
        take = Signal()
        # Only the closing beat needs the output register; it waits for the previous result to
        # leave. Registered terms only, so no combinational path from o.ready to i.ready.
        m.d.comb += [
            closing.eq(index == beats - 1),
            i.ready.eq(~(closing & o.valid)),
            take.eq(i.valid & i.ready),
        ]

        beat_val, beat_lane = self._best([(counts[p], Const(p, range(pe))) for p in range(pe)])
        run_val = Signal(self.count_width)
        run_cls = Signal(range(self.classes))
        new = Signal()  # this beat's best beats the frame's running best (or starts a frame)
        cur_val = Signal.like(run_val)
        cur_cls = Signal.like(run_cls)
        m.d.comb += [
            new.eq((index == 0) | (beat_val > run_val)),
            cur_val.eq(Mux(new, beat_val, run_val)),
            cur_cls.eq(Mux(new, base + beat_lane, run_cls)),
        ]

        beat_scores = Signal(data.ArrayLayout(signed(sw), pe))
        m.d.comb += [beat_scores[p].eq((counts[p] << 1) - self.n) for p in range(pe)]
        # Earlier beats of the frame shift down through this register, oldest at the bottom.
        earlier = Signal((beats - 1) * pe * sw)
        all_scores = Cat(earlier, beat_scores)

        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(take):
            m.d.sync += [
                run_val.eq(cur_val),
                run_cls.eq(cur_cls),
                index.eq(Mux(closing, 0, index + 1)),
                base.eq(Mux(closing, 0, base + pe)),
                earlier.eq(Cat(earlier, beat_scores)[pe * sw:]),
            ]
            with m.If(closing):
                m.d.sync += [
                    o.valid.eq(1),
                    o.p.cls.eq(cur_cls),
                    o.p.scores.eq(all_scores),
                    o.p.last.eq(1),
                ]
        return m

    @classmethod
    def _best(cls, lanes: list[tuple[Value, Value]]) -> tuple[Value, Value]:
        """Balanced max tree over ``(value, index)`` pairs in index order; first max wins."""
        if len(lanes) == 1:
            return lanes[0]
        half = len(lanes) // 2
        (lv, li), (rv, ri) = cls._best(lanes[:half]), cls._best(lanes[half:])
        right = rv > lv
        return Mux(right, rv, lv), Mux(right, ri, li)
