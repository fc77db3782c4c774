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
    ``i_stream.ready`` depends only on registers: the closing beat of a frame waits, at the
    last stage, while the previous result is still in the output register, and the whole
    block waits with it. The within-beat compare tree is registered twice per level, after
    its comparisons and after the selections they make (:attr:`stages`, after a register on
    the input beat), so no path holds more than one comparison or one multiplexer. With one
    beat per frame (``pe = C``) this limits the block to a frame every two cycles, which no
    folded scores layer outruns.
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

    @property
    def stages(self) -> int:
        """Register stages before the running maximum: :meth:`stage_count` of ``pe``."""
        return self.stage_count(self.pe)

    @staticmethod
    def stage_count(pe: int) -> int:
        """Register stages before the running maximum: the input beat's register, then two
        per level of the within-beat compare tree (the comparisons, then the selections),
        ``1 + 2*ceil(log2(pe))``."""
        return 1 + 2 * ceil_log2(pe)

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        pe, beats, sw = self.pe, self.beats, score_width(self.n)

        counts = data.View(data.ArrayLayout(unsigned(self.count_width), pe), i.p.data)
        index = Signal(range(beats))  # beat index within the frame
        base = Signal(range(self.classes))  # class index of lane 0 of this beat
        # One enable for the whole block, as in the MVTU: every stage advances together, and
        # only the closing beat of a frame, at the last stage, waits for the previous result to
        # leave the output register. Registered terms only, so no combinational path from
        # o.ready to i.ready.
        en = Signal()
        m.d.comb += i.ready.eq(en)
        with m.If(i.valid & en):
            m.d.sync += [
                index.eq(Mux(index == beats - 1, 0, index + 1)),
                base.eq(Mux(index == beats - 1, 0, base + pe)),
            ]

        # Stage 0 registers the input beat: it comes straight out of the scores layer's
        # LUT-RAM output queue, with no time left for a comparison. Each further stage is one
        # registered level of the max tree over (count, lane) pairs, lower lane first so the
        # first maximum wins.
        beat_scores = Signal(data.ArrayLayout(signed(sw), pe))
        m.d.comb += [beat_scores[p].eq((counts[p] << 1) - self.n) for p in range(pe)]
        valid, first, closing, lane0, scores = (i.valid, index == 0, index == beats - 1, base,
                                                beat_scores)

        def stage(name, values):
            """Register ``values`` and the beat's flags under ``en``; returns both."""
            regs = [Signal(Value.cast(v).shape(), name=f"{name}_{k}")
                    for k, v in enumerate(values)]
            flags = (Signal(name=f"{name}_valid"), Signal(name=f"{name}_first"),
                     Signal(name=f"{name}_closing"), Signal.like(base, name=f"{name}_base"),
                     Signal.like(beat_scores, name=f"{name}_scores"))
            with m.If(en):
                m.d.sync += [r.eq(v) for r, v in zip(regs, values, strict=True)]
                m.d.sync += [r.eq(v) for r, v in zip(
                    flags, (valid, first, closing, lane0, scores), strict=True)]
            return regs, flags

        held, (valid, first, closing, lane0, scores) = stage("in", [counts[p] for p in range(pe)])
        pairs = [(held[p], Const(p, range(pe))) for p in range(pe)]
        for level in range(ceil_log2(pe)):
            # Two registers per level: the comparisons, then the selections they make.
            odd = len(pairs) % 2
            cmp_in = [x for (lv, li), (rv, ri) in zip(pairs[0::2], pairs[1::2], strict=False)
                      for x in (lv, li, rv, ri, rv > lv)] + (list(pairs[-1]) if odd else [])
            held, (valid, first, closing, lane0, scores) = stage(f"l{level}c", cmp_in)
            merged = []
            for j in range(len(pairs) // 2):
                lv, li, rv, ri, right = held[5 * j:5 * j + 5]
                merged += [Mux(right, rv, lv), Mux(right, ri, li)]
            if odd:
                merged += held[-2:]
            chosen, (valid, first, closing, lane0, scores) = stage(f"l{level}s", merged)
            pairs = list(zip(chosen[0::2], chosen[1::2], strict=True))
        (beat_val, beat_lane), = pairs
        m.d.comb += en.eq(~(valid & closing & o.valid))

        run_val = Signal(self.count_width)
        run_cls = Signal(range(self.classes))
        new = Signal()  # this beat's best beats the frame's running best (or starts a frame)
        cur_val = Signal.like(run_val)
        cur_cls = Signal.like(run_cls)
        m.d.comb += [
            new.eq(first | (beat_val > run_val)),
            cur_val.eq(Mux(new, beat_val, run_val)),
            cur_cls.eq(Mux(new, lane0 + beat_lane, run_cls)),
        ]
        # Earlier beats of the frame shift down through this register, oldest at the bottom.
        earlier = Signal((beats - 1) * pe * sw)
        all_scores = Cat(earlier, scores)

        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(en & valid):
            m.d.sync += [
                run_val.eq(cur_val),
                run_cls.eq(cur_cls),
                earlier.eq(Cat(earlier, scores)[pe * sw:]),
            ]
            with m.If(closing):
                m.d.sync += [
                    o.valid.eq(1),
                    o.p.cls.eq(cur_cls),
                    o.p.scores.eq(all_scores),
                    o.p.last.eq(1),
                ]
        return m
