"""The matrix-vector-threshold unit (MVTU): one binarized dense layer as a streaming block.

An MVTU computes, for each input vector ``x`` of ``MW`` bits and each of its ``MH`` outputs,
``c = popcount(xnor(x, w))``, then either the output bit ``(c >= t) XOR invert`` (hidden
layers) or the count ``c`` itself (the final, scores layer). It is folded by ``PE`` outputs
and ``SIMD`` inputs in parallel: ``NF = MH/PE`` output groups times ``SF = MW/SIMD`` input
slices, one ``(nf, sf)`` step per cycle, ``NF*SF`` cycles per vector (shared/DESIGN.md).

Datapath, one register stage per line::

    input beats ─► fill shift register ─► compute register (rotates by SIMD every step)
    S0  issue (nf, sf): the step address nf*SF+sf
    S1  storage read (block RAM) or registered address (LUT ROM); SIMD input bits
    S2  weight word of that step, registered; input bits (LUT ROM: their XNOR, see below)
    P1…Pk  PE adder trees over xnor(w, x), a register every 3 adder levels (k = tree_stages)
    A   accumulator over sf; threshold word of output group nf read alongside
    out threshold compare (or the counts) into the output beat at sf = SF-1

Design choices:

* Every stage is a short piece of logic (at most three adder levels, one carry-chain add, or
  one compare), so the unit is not what limits the clock; the price is ``k + 5`` cycles of
  latency (:meth:`MVTU.pipeline_latency`), the same whatever the weight storage.
* Weight storage follows the fold depth ``NF*SF`` (:mod:`bnnflow.hw.storage`): constants when a
  layer is fully parallel, so the XNOR disappears into the popcount's first LUTs; a LUT ROM
  indexed by the step address when each lane cycles through few weights, where one LUT4 holds
  an 8-entry ROM together with the XNOR and the S2 register takes the XNOR bits; block RAM when
  it cycles through many, its read data registered once more in the fabric (S2). The
  threshold memory (``NF`` words) follows the same rule.
* The input is double-buffered: the fill register collects vector ``k+1`` while the compute
  register serves vector ``k``. The compute register rotates instead of being indexed, so the
  SIMD slice is always its low bits and no ``SF``-way multiplexer is built; after ``SF`` steps it
  is back in place for the next output group.
* When the last beat of a vector arrives in the cycle the compute register frees up, it is
  loaded straight from the incoming beat, so an input that takes exactly ``NF*SF`` beats per
  vector does not lose a cycle per vector.
* Stalls use one global enable, ``en = ~r_valid | ~skid_valid``: the whole compute pipeline,
  including the synchronous memory reads, advances together. ``i.ready`` is ``~full``, a
  register, so back-pressure never forms a combinational path from one block to the next.
* Weight and threshold words come from :mod:`bnnflow.packing`, the single definition of their
  bit order, whatever stores them.
* An integer-input layer (``elem_bits > 1``) uses the same datapath on ``elem_bits``-bit signed
  levels: each lane adds ``level`` where the weight is +1 and subtracts it where it is -1, and
  the thresholds are signed. A conv layer is this same unit run once per output pixel on the
  sliding window's vectors (:mod:`bnnflow.hw.swu`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bnnflow import packing
from bnnflow.ir import Dense

from . import storage
from .popcount import adder_tree, popcount_width, tree_stages

__all__ = ["beat_layout", "MVTU", "rom_value"]


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
    weight_storage
        ``"const"``, ``"lut"`` or ``"bram"``; by default
        :func:`bnnflow.hw.storage.weight_storage` of the fold depth ``NF*SF``. ``"const"``
        needs a depth of 1. Behaviour and latency do not depend on it.

    Attributes
    ----------
    i_stream : In(stream.Signature(beat_layout(in_width)))
        Input bit beats.
    o_stream : Out(stream.Signature(beat_layout(out_width)))
        ``NF`` beats per vector, ``last`` set on the final one. Each carries ``PE`` lanes, the
        lowest output index in the least significant lane: one bit per lane for a hidden layer,
        ``count_width`` bits of popcount per lane for the scores layer.
    """

    def __init__(self, layer: Dense, pe: int, simd: int, in_width: int, elem_bits: int = 1,
                 max_level: int = 1, weight_storage: str | None = None):
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
        if weight_storage is None:
            weight_storage = storage.weight_storage(self.nf * self.sf)
        elif weight_storage not in storage.STORAGES:
            raise ValueError(f"layer {layer.name}: weight storage {weight_storage!r} is not one "
                             f"of {storage.STORAGES}")
        elif weight_storage == "const" and self.nf * self.sf != 1:
            raise ValueError(f"layer {layer.name}: constant weights need a fold depth of 1, "
                             f"not {self.nf * self.sf}")
        #: Where the weights live: ``"const"``, ``"lut"`` or ``"bram"``.
        self.weight_storage = weight_storage
        #: Registers of the lanes' adder trees (:func:`~bnnflow.hw.popcount.tree_stages`).
        self.tree_stages = tree_stages(simd)
        #: Registers between the transfer of a vector's last input beat and the output register
        #: (load, S0, S1, S2, the adder tree's stages, the accumulator, the result register): on
        #: an idle MVTU with a ready output, the first output beat transfers ``latency + SF - 1``
        #: cycles after that input beat, the last ``NF*SF - 1`` later. See
        #: :meth:`pipeline_latency`.
        self.latency = self.pipeline_latency(simd)
        super().__init__({
            "i_stream": In(stream.Signature(beat_layout(in_width))),
            "o_stream": Out(stream.Signature(beat_layout(self.out_width))),
        })

    @staticmethod
    def pipeline_latency(simd: int) -> int:
        """:attr:`latency` of an MVTU with ``simd`` inputs per step, whatever its storage."""
        return 4 + tree_stages(simd) + 2

    @property
    def cycles(self) -> int:
        """Cycles per input vector in steady state, ``NF*SF``."""
        return self.nf * self.sf

    def elaborate(self, platform):
        m = Module()
        o = self.o_stream
        pe, simd, nf_n, sf_n = self.pe, self.simd, self.nf, self.sf
        eb = self.elem_bits

        # The pipeline's enable depends only on this block's own registers: the result
        # register `r` hands its beats to the output through a skid buffer, whose registered
        # `skid_valid` is all that back-pressure from the next block can reach. The next
        # block's ready then drives a few output registers, not this block's thousands of
        # clock enables.
        r_valid, r_last = Signal(), Signal()
        r_data = Signal(self.out_width)
        skid_valid, skid_last = Signal(), Signal()
        skid_data = Signal(self.out_width)
        en = Signal()
        m.d.comb += en.eq(~r_valid | ~skid_valid)

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

        # S1: the weight word (read like a synchronous memory, whatever its storage) and the
        # matching inputs; the step's flags travel beside the data down to the accumulator.
        lanes_in = self._weights(m, en, addr, x[:simd * eb])
        flags = data.StructLayout({"valid": 1, "first": 1, "last": 1, "final": 1,
                                   "nf": range(nf_n)})
        s1, s2 = Signal(flags), Signal(flags)
        with m.If(en):
            m.d.sync += [
                s1.valid.eq(busy), s1.nf.eq(nf), s1.final.eq(final),
                s1.first.eq(sf == 0), s1.last.eq(sf == sf_n - 1),
                s2.eq(s1),
            ]

        # S2..: per PE lane, the pipelined popcount of xnor(w, x) (or signed level sum).
        lane_shape = self.acc_shape if eb > 1 else unsigned(popcount_width(simd))
        sums = [adder_tree(m, en, terms, lane_shape, f"lane{p}")
                for p, terms in enumerate(lanes_in)]
        chain = [s2]
        for k in range(self.tree_stages):
            reg = Signal(flags, name=f"flags_p{k + 1}")
            with m.If(en):
                m.d.sync += reg.eq(chain[-1])
            chain.append(reg)
        tail = chain[-1]

        # Accumulator stage: sum over sf. The threshold word of output group nf is addressed
        # two stages ahead, so it arrives (registered) together with the group's final total.
        acc = Signal(data.ArrayLayout(self.acc_shape, pe))
        a = Signal(flags)
        with m.If(en):
            m.d.sync += a.eq(tail)
            with m.If(tail.valid):
                m.d.sync += [acc[p].eq(Mux(tail.first, 0, acc[p]) + sums[p]) for p in range(pe)]
        # Built outside `If(en)`: comb drives of the threshold port placed under a condition
        # would fall back to their defaults (en = 1, addr = 0) during a stall.
        lanes = self._activate(m, en, chain[-2].nf, acc)

        # Result register: threshold compare (or the counts) of the completed group.
        with m.If(en):
            m.d.sync += [
                r_valid.eq(a.valid & a.last),
                r_data.eq(lanes),
                r_last.eq(a.final),
            ]
        # Skid buffer: the output register takes the result (or the skid's beat, which is
        # older) when it is empty or being read; otherwise the result waits in the skid.
        out_free = Signal()
        m.d.comb += out_free.eq(~o.valid | o.ready)
        with m.If(out_free):
            m.d.sync += o.valid.eq(skid_valid | r_valid)
            with m.If(skid_valid):
                m.d.sync += [o.p.data.eq(skid_data), o.p.last.eq(skid_last), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [o.p.data.eq(r_data), o.p.last.eq(r_last)]
        # The result register hands its beat on exactly when the pipeline advances with a
        # valid result (en with r_valid, i.e. an empty skid); with the output busy, it waits in
        # the skid.
        with m.If(r_valid & ~skid_valid & ~out_free):
            m.d.sync += [skid_valid.eq(1), skid_data.eq(r_data), skid_last.eq(r_last)]
        return m

    def _weights(self, m: Module, en: Value, addr: Value, x: Value) -> list[list[Value]]:
        """Stages S1 and S2: the terms each PE lane sums, one per SIMD input.

        The weight word of step ``addr`` is registered two enabled cycles later, whatever its
        storage (:meth:`_storage`), together with the input slice ``x`` delayed beside it.
        """
        pe, simd, eb = self.pe, self.simd, self.elem_bits
        words = packing.weight_words(self.layer.weights, pe, simd)
        s1_x, s2_x = Signal(simd * eb), Signal(simd * eb)
        with m.If(en):
            m.d.sync += s1_x.eq(x)
        kind = self.weight_storage
        if kind == "lut" and eb == 1:
            # A LUT4 holds an 8-entry ROM and the XNOR with the input bit together: the S2
            # register takes the XNOR bits, so the input slice needs no second register.
            s1_addr = Signal.like(addr)
            s2_bits = Signal(pe * simd)
            rom = rom_value(words, pe * simd, s1_addr)
            with m.If(en):
                m.d.sync += [s1_addr.eq(addr), s2_bits.eq(~(rom ^ s1_x.replicate(pe)))]
            return [[s2_bits[p * simd + s] for s in range(simd)] for p in range(pe)]
        with m.If(en):
            m.d.sync += s2_x.eq(s1_x)
        w = self._storage(m, en, "weights", kind, words, pe * simd, addr)
        w_lanes = data.View(data.ArrayLayout(unsigned(simd), pe), w)
        if eb == 1:
            return [[~(w_lanes[p][s] ^ s2_x[s]) for s in range(simd)] for p in range(pe)]
        out = []
        for p in range(pe):
            terms = []
            for s in range(simd):
                level = s2_x[s * eb:(s + 1) * eb].as_signed()
                terms.append(Mux(w_lanes[p][s], level, -level))
            out.append(terms)
        return out

    @staticmethod
    def _storage(m: Module, en: Value, name: str, kind: str, words: list[int], width: int,
                 addr: Value) -> Value:
        """Word ``addr`` of a ROM stored as ``kind``, registered two enabled cycles later.

        Block RAM: the synchronous read, then a fabric register. An ECP5 DP16KD read without
        its output register has a clock-to-output delay of about 6 ns, and its word fans out
        across many lanes, so the register keeps that delay off every logic path. A LUT ROM
        registers its address, then its data, to match.
        """
        if kind == "const":
            return Const(words[0], width)
        word = Signal(width, name=f"{name}_word")
        if kind == "lut":
            s1_addr = Signal.like(addr, name=f"{name}_addr")
            with m.If(en):
                m.d.sync += [s1_addr.eq(addr), word.eq(rom_value(words, width, s1_addr))]
            return word
        # Yosys would otherwise turn a wide, shallow ROM into logic; block RAM is the point here.
        m.submodules[name] = mem = Memory(shape=unsigned(width), depth=len(words), init=words,
                                          attrs={"ram_style": "block", "rom_style": "block"})
        port = mem.read_port()
        m.d.comb += [port.addr.eq(addr), port.en.eq(en)]
        with m.If(en):
            m.d.sync += word.eq(port.data)
        return word

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

    def _activate(self, m: Module, en: Value, nf: Value, total: Value) -> Value:
        """The output lanes for the accumulated counts ``total``; ``nf`` is the output group
        two stages ahead, so its threshold word arrives together with ``total``."""
        if self.layer.is_scores:
            return total.as_value()
        if self.layer.integer_input:
            tshape = self.acc_shape
            init = packing.signed_threshold_words(self.layer.thresholds, self.bound, self.pe)
        else:
            tshape = unsigned(packing.threshold_bits(self.mw))
            init = packing.threshold_words(self.layer.thresholds, self.mw, self.pe)
        lane = data.StructLayout({"t": tshape, "invert": unsigned(1)})
        word = self._storage(m, en, "thresholds", storage.weight_storage(self.nf), init,
                             self.pe * lane.size, nf)
        t_lanes = data.View(data.ArrayLayout(lane, self.pe), word)
        return Cat((total[p] >= t_lanes[p].t) ^ t_lanes[p].invert for p in range(self.pe))


def rom_value(words: list[int], width: int, addr: Value) -> Value:
    """Word ``addr`` of a constant table as logic: each bit a constant indexed by ``addr``,
    which synthesis turns into one LUT function of the address bits (a LUT4 per bit up to 16
    words), with no memory primitive involved."""
    depth = len(words)
    if depth == 1:
        return Const(words[0], width)
    bits = []
    for b in range(width):
        column = sum(((w >> b) & 1) << d for d, w in enumerate(words))
        bits.append(Const(column, depth).bit_select(addr, 1))
    return Cat(bits)
