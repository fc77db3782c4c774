"""The matrix-vector-threshold unit (MVTU): one binarized dense layer as a streaming block.

An MVTU computes, for each input vector ``x`` of ``MW`` bits and each of its ``MH`` outputs,
``c = popcount(xnor(x, w))``, then either the output bit ``(c >= t) XOR invert`` (hidden
layers) or the count ``c`` itself (the final, scores layer). It is folded by ``PE`` outputs
and ``SIMD`` inputs in parallel: ``NF = MH/PE`` output groups times ``SF = MW/SIMD`` input
slices, one ``(nf, sf)`` step per cycle, ``NF*SF`` cycles per vector (shared/DESIGN.md).

Datapath, one register stage per line::

    input beats ─► fill shift register ─► compute register (rotates by SIMD every step)
    S0  issue (nf, sf); weight memory read of word nf*SF+sf
    S1  weight word + SIMD input bits; threshold memory read of word nf
    S2  PE popcounts of xnor(w, x)
    out accumulate over sf; at sf = SF-1 threshold (or pass the counts) into the output beat

Design choices:

* The input is double-buffered: the fill register collects vector ``k+1`` while the compute
  register serves vector ``k``. The compute register rotates instead of being indexed, so the
  SIMD slice is always its low bits and no ``SF``-way multiplexer is built; after ``SF`` steps it
  is back in place for the next output group.
* When the last beat of a vector arrives in the cycle the compute register frees up, it is
  loaded straight from the incoming beat, so an input that takes exactly ``NF*SF`` beats per
  vector does not lose a cycle per vector.
* Stalls use one global enable, ``en = ~o.valid | o.ready``: the whole compute pipeline,
  including the synchronous memory reads, advances together. ``i.ready`` is ``~full``, a
  register, so back-pressure never forms a combinational path from one block to the next.
* Weights and thresholds live in :class:`~amaranth.lib.memory.Memory` instances initialised
  from :mod:`bnnflow.packing`, the single definition of their bit order.
* An integer-input layer (``elem_bits > 1``) uses the same datapath on ``elem_bits``-bit signed
  levels: each lane adds ``level`` where the weight is +1 and subtracts it where it is -1, and
  the thresholds are signed. A conv layer is this same unit run once per output pixel on the
  sliding window's vectors (:mod:`bnnflow.hw.swu`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bnnflow import packing
from bnnflow.ir import Dense

from .popcount import popcount, popcount_width

__all__ = ["beat_layout", "MVTU"]


def beat_layout(width: int) -> data.StructLayout:
    """Payload of every stream between blocks: ``width`` data bits and an end-of-vector flag.

    Parameters
    ----------
    width
        Width of the ``data`` field.

    Returns
    -------
    data.StructLayout
        ``{"data": unsigned(width), "last": unsigned(1)}``.
    """
    return data.StructLayout({"data": unsigned(width), "last": unsigned(1)})


class MVTU(wiring.Component):
    """One folded binarized dense layer with a streaming input and output.

    Parameters
    ----------
    layer
        The IR layer. A layer with thresholds emits bits; the final (scores) layer emits its
        unsigned popcounts.
    pe, simd
        Folding: outputs and inputs processed in parallel; they must divide ``MH`` and ``MW``.
    in_width
        Bits per input beat. A vector of ``MW`` elements arrives LSB first in
        ``ceil(MW*elem_bits/in_width)`` beats; pad bits of the last beat are ignored, and so is
        ``last``: the beat count alone delimits a vector.
    elem_bits, max_level
        For an integer-input layer: bits of a signed input level and the largest ``|level|``.

    Attributes
    ----------
    i_stream : In(stream.Signature(beat_layout(in_width)))
        Input bit beats.
    o_stream : Out(stream.Signature(beat_layout(out_width)))
        ``NF`` beats per vector, ``last`` set on the final one. Each carries ``PE`` lanes, the
        lowest output index in the least significant lane: one bit per lane for a hidden layer,
        ``count_width`` bits of popcount per lane for the scores layer.
    """

    #: Pipeline registers between the transfer of a vector's last input beat and the output
    #: register (load, S0, S1, S2): on an idle MVTU with a ready output, the first output beat
    #: transfers ``LATENCY + SF - 1`` cycles after that input beat, the last ``NF*SF - 1`` later.
    LATENCY = 4

    def __init__(self, layer: Dense, pe: int, simd: int, in_width: int, elem_bits: int = 1,
                 max_level: int = 1):
        mh, mw = layer.out_features, layer.in_features
        if pe < 1 or mh % pe or simd < 1 or mw % simd:
            raise ValueError(f"layer {layer.name}: PE {pe} / SIMD {simd} must divide its "
                             f"{mh} outputs / {mw} inputs")
        if in_width < 1:
            raise ValueError(f"input beats of {in_width} bits")
        if layer.integer_input and layer.is_scores:
            raise ValueError(f"layer {layer.name}: an integer-input scores layer is not supported")
        self.layer, self.pe, self.simd, self.in_width = layer, pe, simd, in_width
        self.mh, self.mw = mh, mw
        self.elem_bits = elem_bits if layer.integer_input else 1
        self.bound = max_level * mw  # |accumulator| of an integer-input layer
        self.nf, self.sf = mh // pe, mw // simd
        self.beats = -(-mw * self.elem_bits // in_width)
        self.count_width = popcount_width(mw)
        if layer.integer_input:
            self.acc_shape = signed(packing.signed_threshold_bits(self.bound))
        else:
            self.acc_shape = unsigned(self.count_width)
        lane = self.count_width if layer.is_scores else 1
        self.out_width = pe * lane
        super().__init__({
            "i_stream": In(stream.Signature(beat_layout(in_width))),
            "o_stream": Out(stream.Signature(beat_layout(self.out_width))),
        })

    @property
    def cycles(self) -> int:
        """Cycles per input vector in steady state, ``NF*SF``."""
        return self.nf * self.sf

    def elaborate(self, platform):
        m = Module()
        o = self.o_stream
        pe, simd, nf_n, sf_n = self.pe, self.simd, self.nf, self.sf
        eb = self.elem_bits

        en = Signal()
        m.d.comb += en.eq(~o.valid | o.ready)

        avail = Signal()  # a whole vector is in the fill register, or completes this cycle
        vector = Signal(self.mw * eb)
        load = Signal()  # the compute register takes that vector this cycle
        self._fill(m, avail, vector, load)

        # S0: issue one (nf, sf) step per enabled cycle while a vector is loaded.
        busy = Signal()
        addr = Signal(range(nf_n * sf_n))
        sf = Signal(range(sf_n))
        nf = Signal(range(nf_n))
        x = Signal(self.mw * eb)
        step = Signal()
        final = Signal()
        m.d.comb += [
            step.eq(busy & en),
            final.eq(addr == nf_n * sf_n - 1),
            load.eq(avail & (~busy | (step & final))),
        ]
        with m.If(step):
            m.d.sync += [
                x.eq(x.rotate_right(simd * eb)),
                addr.eq(Mux(final, 0, addr + 1)),
                sf.eq(Mux(sf == sf_n - 1, 0, sf + 1)),
            ]
            with m.If(sf == sf_n - 1):
                m.d.sync += nf.eq(Mux(nf == nf_n - 1, 0, nf + 1))
            with m.If(final):
                m.d.sync += busy.eq(0)
        with m.If(load):
            m.d.sync += [x.eq(vector), busy.eq(1)]

        m.submodules.weights = weights = Memory(
            shape=unsigned(pe * simd), depth=nf_n * sf_n,
            init=packing.weight_words(self.layer.weights, pe, simd))
        w_port = weights.read_port()
        m.d.comb += [w_port.addr.eq(addr), w_port.en.eq(en)]

        # S1: the weight word arrives from memory; the matching inputs and flags wait beside it.
        s1_valid, s1_first, s1_last, s1_final = Signal(), Signal(), Signal(), Signal()
        s1_x = Signal(simd * eb)
        s1_nf = Signal(range(nf_n))
        with m.If(en):
            m.d.sync += [
                s1_valid.eq(busy), s1_x.eq(x[:simd * eb]), s1_nf.eq(nf), s1_final.eq(final),
                s1_first.eq(sf == 0), s1_last.eq(sf == sf_n - 1),
            ]

        # S2: XNOR and popcount per PE lane; lane p of the word is output nf*PE + p.
        s2_valid, s2_first, s2_last, s2_final = Signal(), Signal(), Signal(), Signal()
        lane_shape = self.acc_shape if eb > 1 else unsigned(popcount_width(simd))
        s2_pc = Signal(data.ArrayLayout(lane_shape, pe))
        w_lanes = data.View(data.ArrayLayout(unsigned(simd), pe), w_port.data)
        with m.If(en):
            m.d.sync += [
                s2_valid.eq(s1_valid), s2_first.eq(s1_first), s2_last.eq(s1_last),
                s2_final.eq(s1_final),
            ]
            m.d.sync += [s2_pc[p].eq(self._lane_sum(w_lanes[p], s1_x)) for p in range(pe)]

        # Output stage: accumulate over sf; the last slice of an output group makes a beat.
        acc = Signal(data.ArrayLayout(self.acc_shape, pe))
        total = Signal.like(acc)
        for p in range(pe):
            m.d.comb += total[p].eq(Mux(s2_first, 0, acc[p]) + s2_pc[p])
        # Built outside `If(en)`: comb drives of the threshold port placed under a condition
        # would fall back to their defaults (en = 1, addr = 0) during a stall.
        lanes = self._activate(m, en, s1_nf, total)
        with m.If(en):
            with m.If(s2_valid):
                m.d.sync += acc.eq(total)
            m.d.sync += [
                o.valid.eq(s2_valid & s2_last),
                o.p.data.eq(lanes),
                o.p.last.eq(s2_final),
            ]
        return m

    def _lane_sum(self, w: Value, x: Value) -> Value:
        """One lane's partial accumulator over a SIMD slice: a popcount of ``xnor(w, x)``, or
        for integer levels the signed sum of ``+level`` (weight 1) and ``-level`` (weight 0)."""
        if self.elem_bits == 1:
            return popcount(~(w ^ x))
        eb = self.elem_bits
        terms = []
        for s in range(self.simd):
            level = x[s * eb:(s + 1) * eb].as_signed()
            terms.append(Mux(w[s], level, -level))
        while len(terms) > 1:  # balanced adder tree, like popcount()
            terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                     for i in range(0, len(terms), 2)]
        return terms[0]

    def _fill(self, m: Module, avail: Signal, vector: Signal, load: Signal) -> None:
        """Collect input beats into a vector: the write side of the double buffer."""
        i = self.i_stream
        width, beats = self.in_width, self.beats
        # Beats enter at the top and shift down, so after `beats` of them beat 0 sits at bit 0
        # and the pad bits of the last beat sit above bit MW, where nothing reads them.
        fill = Signal(width * beats)
        shifted = Cat(fill[width:], i.p.data)
        count = Signal(range(beats))
        full = Signal()
        take = Signal()
        completing = Signal()
        m.d.comb += [
            i.ready.eq(~full),
            take.eq(i.valid & ~full),
            completing.eq(take & (count == beats - 1)),
            avail.eq(full | completing),
            vector.eq(Mux(full, fill, shifted)),
        ]
        with m.If(take):
            m.d.sync += [
                fill.eq(shifted),
                count.eq(Mux(count == beats - 1, 0, count + 1)),
            ]
        with m.If(load):
            m.d.sync += full.eq(0)
        with m.Elif(completing):
            m.d.sync += full.eq(1)

    def _activate(self, m: Module, en: Signal, s1_nf: Signal, total: Signal):
        """The output lanes for the accumulated counts ``total`` (stage S2)."""
        if self.layer.is_scores:
            return total.as_value()
        if self.layer.integer_input:
            tshape = self.acc_shape
            init = packing.signed_threshold_words(self.layer.thresholds, self.bound, self.pe)
        else:
            tshape = unsigned(packing.threshold_bits(self.mw))
            init = packing.threshold_words(self.layer.thresholds, self.mw, self.pe)
        lane = data.StructLayout({"t": tshape, "invert": unsigned(1)})
        m.submodules.thresholds = thresholds = Memory(
            shape=unsigned(self.pe * lane.size), depth=self.nf, init=init)
        t_port = thresholds.read_port()
        # Read at S1 so the word for output group nf arrives together with its counts at S2.
        m.d.comb += [t_port.addr.eq(s1_nf), t_port.en.eq(en)]
        t_lanes = data.View(data.ArrayLayout(lane, self.pe), t_port.data)
        return Cat((total[p] >= t_lanes[p].t) ^ t_lanes[p].invert for p in range(self.pe))
