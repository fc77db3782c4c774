"""The matrix-vector-threshold unit (MVTU): one binarized dense layer as a streaming block.

An MVTU computes, for each input vector ``x`` of ``MW`` bits and each of its ``MH`` outputs,
``c = popcount(xnor(x, w))``, then either the output bit ``(c >= t) XOR invert`` (hidden
layers) or the count ``c`` itself (the final, scores layer). It is folded by ``PE`` outputs
and ``SIMD`` inputs in parallel: ``NF = MH/PE`` output groups times ``SF = MW/SIMD`` input
slices, one ``(nf, sf)`` step per cycle, ``NF*SF`` cycles per vector (shared/DESIGN.md).

Datapath, one register stage per line::

    input beats ─► beat register ─► fill shift register ─► compute register (rotates by SIMD,
                                                            or holds and its slice is picked)
                                 └► or gathered a slice at a time in LUT RAM, read a slice a step
    S0  issue (nf, sf): the step address nf*SF+sf, the only stage that ever waits
    S1  storage read (block RAM) or registered address (LUT ROM); SIMD input bits
    S2  block RAM data registered in the block, or the LUT ROM's address again
    S3  block RAM data on its way to the lanes (one bank's, or each bank's), or the LUT ROM's
        address copies
    S4  weight word of that step among the lanes (block RAM: its bank picked; LUT ROM: its
        XNOR with the inputs)
    P1…Pk  PE adder trees over xnor(w, x), a register every 2 adder levels (k = tree_stages)
    A   accumulator over sf; threshold word of output group nf read alongside
    R   threshold compare (or the counts) at sf = SF-1, into the output queue

Design choices:

* Every stage is a short piece of logic (at most two adder levels, one carry-chain add, or
  one compare), so the unit is not what limits the clock; the price is ``k + 9`` cycles of
  latency (:meth:`MVTU.pipeline_latency`, counted from the input beat to the output), the
  same whatever the weight storage, plus one where the steps outnumber the input beats
  (:meth:`MVTU.loads_shifting`).
* Weight storage follows the fold depth ``NF*SF`` (:mod:`bnnflow.hw.storage`): constants when a
  layer is fully parallel, so the XNOR disappears into the popcount's first LUTs; a LUT ROM
  indexed by the step address when each lane cycles through few weights, where one LUT4 holds
  an 8-entry ROM together with the XNOR and the S4 register takes the XNOR bits; block RAM when
  it cycles through many. Block RAM is read at copies of the step address (one per
  :data:`BLOCKS_PER_ADDR` blocks) and cut into banks and columns of one DP16KD each
  (:func:`~bnnflow.hw.storage.rom_banks`); each bank's read is registered (S2, the register
  the board build moves into the block), then again in the fabric, on its way to the lanes
  (S3), and the bank holding the word is picked into S4. The threshold memory (``NF`` words)
  follows the same rule.
* With block-RAM weights the adder trees start with :func:`~bnnflow.hw.popcount.xnor_pairs`,
  which put each XNOR inside the LUT that adds two lanes, so the first register stage sums
  eight lanes; where that saves a stage the sum waits a cycle, to keep the latency.
* The input is double-buffered: the fill register collects vector ``k+1`` while the compute
  register serves vector ``k``. A taken beat is registered, then shifted in, so the fill's
  enables are flip-flops (replicated) and its data moves one beat along: no net fans out over
  it, however narrow the beats. Where a slice is a whole number of beats and there are 3 to
  32 slices, both halves of the buffer are LUT RAM instead: the beats of a slice are gathered
  in a shift register, the slice is written whole, and the step's slice is read (no wide
  register, no rotation, no enable over it). Otherwise, with two or three slices, the compute
  register holds still and a multiplexer picks the step's slice; with more, it rotates by a
  slice each step, so the step's slice is always its low bits and no ``SF``-way multiplexer
  is built (:meth:`MVTU.input_buffer`). A vector whose last beat is still in
  the beat register is loaded together with it, so an input that takes exactly ``NF*SF``
  beats per vector loses no cycle.
* Credits instead of a stall enable: S0 issues the step that completes an output beat only
  while it holds a credit, a free entry of the output queue (:meth:`queue_depth`), and every
  stage behind S0 advances every cycle. Back-pressure from the next block reaches the credit
  counter and nothing else; no enable fans out over the adder trees.
* High fan-out control is replicated (:mod:`bnnflow.hw.fanout`): the compute register's load
  and step decisions are flip-flops computed a cycle ahead, one copy per 64 bits, and the
  load decision's own inputs are looked ahead once more, so its copies hang one LUT from
  flip-flops (a register per value of the credit refund, :func:`_issue`); a LUT ROM's
  address register has one copy per 64 ROM bits, the accumulator's enable and clear one per
  64 accumulator bits. ``i.ready`` is ``~full | load``, both registers.
* Only control is reset: valid flags, counters, credits and the queue's pointers. The
  datapath registers (fill, compute register, input slices, adder trees, accumulators, read
  data, the replicated enables that steer them) are ``reset_less``, since nothing reads them
  before a valid flag has passed; a reset net reaching tens of thousands of flip-flops was
  what limited the clock of CNV (17.7 ns of routing to the LSR pins).
* Weight and threshold words come from :mod:`bnnflow.packing`, the single definition of their
  bit order, whatever stores them.
* An integer-input layer (``elem_bits > 1``) uses the same datapath on ``elem_bits``-bit signed
  levels: each lane adds ``level`` where the weight is +1 and subtracts it where it is -1, and
  the thresholds are signed. A conv layer is this same unit run once per output pixel on the
  sliding window's vectors (:mod:`bnnflow.hw.swu`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from bnnflow import packing
from bnnflow.ir import Dense

from . import storage
from .fanout import FANOUT, copies_for, replicated
from .popcount import adder_tree, popcount_width, tree_stages, xnor_pairs

__all__ = ["beat_layout", "beat_ports", "OutputQueue", "output_queue", "credit_issue",
           "ring_memory", "MVTU", "pick_bits", "rom_value"]


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


def beat_ports(width: int) -> dict:
    """The ports of a block that passes :func:`beat_layout` beats of ``width`` data bits:
    ``i_stream`` in and ``o_stream`` out, for ``wiring.Component.__init__``."""
    return {
        "i_stream": In(stream.Signature(beat_layout(width))),
        "o_stream": Out(stream.Signature(beat_layout(width))),
    }


@dataclass
class OutputQueue:
    """The write side of :func:`output_queue`."""

    #: Write ``data`` this cycle (the caller holds a credit for it).
    push: Signal
    #: ``Cat(payload.data, payload.last)``.
    data: Signal
    #: Free entries not yet promised to a beat; the caller decrements it for every beat it
    #: issues and adds ``refund``.
    credits: Signal
    #: One credit comes back: a beat left the queue in the previous cycle.
    refund: Signal


def output_queue(m: Module, o: stream.Interface, depth: int) -> OutputQueue:
    """A ``depth``-entry queue (LUT RAM) driving the output stream ``o`` of
    :func:`beat_layout`, with its credit counter.

    The writer never looks at the queue's state: it issues work only while it holds a credit
    and pushes each result without a check. ``o.valid`` is a register, and a credit comes back
    one cycle after its beat left (``refund`` is registered), so the next block's ``ready``
    reaches this queue's pointers and nothing beyond them.
    """
    width = len(o.p.data) + 1
    m.submodules.queue_mem = mem = Memory(shape=unsigned(width), depth=depth, init=[])
    wr = mem.write_port()
    rd = mem.read_port(domain="comb")
    push, pop = Signal(name="queue_push"), Signal(name="queue_pop")
    data = Signal(width, name="queue_data")
    produce, consume = Signal(range(depth)), Signal(range(depth))
    level = Signal(range(depth + 1), name="queue_level")
    level_n = Signal.like(level)
    refund = Signal(name="refund")
    m.d.comb += [
        wr.addr.eq(produce), wr.data.eq(data), wr.en.eq(push),
        rd.addr.eq(consume),
        o.p.data.eq(rd.data[:width - 1]), o.p.last.eq(rd.data[width - 1]),
        pop.eq(o.valid & o.ready),
        level_n.eq(level + push - pop),
    ]
    m.d.sync += [level.eq(level_n), o.valid.eq(level_n != 0), refund.eq(pop)]
    with m.If(push):
        m.d.sync += produce.eq(Mux(produce == depth - 1, 0, produce + 1))
    with m.If(pop):
        m.d.sync += consume.eq(Mux(consume == depth - 1, 0, consume + 1))
    credits = Signal(range(depth + 1), init=depth, name="credits")
    return OutputQueue(push, data, credits, refund)


def credit_issue(m: Module, queue: OutputQueue, wanted: Value) -> Signal:
    """The issue stage of a reader in front of ``queue``: high when ``wanted`` and a credit
    is held, the credit counter kept. ``has_credit`` is a register (``credits`` next != 0),
    so the issue decision waits on flip-flops only."""
    credits = queue.credits
    has_credit = Signal(init=1, name="has_credit")
    issue = Signal(name="issue")
    credits_n = Signal.like(credits, name="credits_n")
    m.d.comb += [issue.eq(has_credit & wanted), credits_n.eq(credits - issue + queue.refund)]
    m.d.sync += [credits.eq(credits_n), has_credit.eq(credits_n != 0)]
    return issue


def ring_memory(m: Module, name: str, depth: int, write: tuple[Value, Value, Value],
                raddr: Value) -> Signal:
    """A ``depth``-word RAM written at ``write = (addr, data, en)`` and read synchronously at
    ``raddr``; returns the read data (one cycle after its address).

    It is cut into :func:`~bnnflow.hw.storage.port_columns`, memories ``<name><k>`` that Yosys
    maps onto DP16KDs in true dual-port mode, whose read register the board build can move
    into the block (:mod:`bnnflow.boards.outreg`); a wider memory would take the 36-bit pseudo
    dual-port mode, which that pass leaves alone. The caller never reads an address in the
    cycle it is written (``no_rw_check``: no collision bypass,
    :data:`bnnflow.boards.build.NO_RW_CHECK`).
    """
    w_addr, w_data, w_en = write
    read = Signal(len(w_data), name=f"{name}_read")
    for col, (lo, hi) in enumerate(storage.port_columns(len(w_data))):
        m.submodules[f"{name}{col}"] = mem = Memory(shape=unsigned(hi - lo), depth=depth,
                                                   init=[], attrs={"no_rw_check": 1})
        wr, rd = mem.write_port(), mem.read_port()
        m.d.comb += [wr.addr.eq(w_addr), wr.data.eq(w_data[lo:hi]), wr.en.eq(w_en),
                     rd.addr.eq(raddr), read[lo:hi].eq(rd.data)]
    return read


#: PE lanes one copy of the input slice's register feeds. One: a PE's lanes sit by the block
#: RAMs that hold its weights, spread over the die's EBR rows, and a copy shared by 8 PEs
#: was SFC's worst path at 64 cycles per frame (9.6 ns of routing to a lane 16 columns away).
PE_PER_COPY = 1

#: Block RAMs one copy of a weight ROM's address register feeds. SFC at 64 cycles per frame
#: read 91 blocks from one address counter, whose increment then missed 125 MHz by 4 ns,
#: all routing: nextpnr spreads those blocks over the die and the counter's loop with them.
BLOCKS_PER_ADDR = 4


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
        #: How the input vector is held (:meth:`input_buffer`).
        self.buffer = self.input_buffer(in_width, simd, self.sf, self.elem_bits)
        #: Registers of the lanes' adder trees (:func:`~bnnflow.hw.popcount.tree_stages`).
        self.tree_stages = tree_stages(simd)
        #: Registers between the transfer of a vector's last input beat and the output register
        #: (load, S0, S1 to S4, the adder tree's stages, the accumulator, the result register): on
        #: an idle MVTU with a ready output, the first output beat transfers ``latency + SF - 1``
        #: cycles after that input beat, the last ``NF*SF - 1`` later. See
        #: :meth:`pipeline_latency`.
        self.latency = self.pipeline_latency(simd, self.beats, self.nf * self.sf)
        super().__init__({
            "i_stream": In(stream.Signature(beat_layout(in_width))),
            "o_stream": Out(stream.Signature(beat_layout(self.out_width))),
        })

    @staticmethod
    def loads_shifting(beats: int, steps: int) -> bool:
        """Whether the compute register may load a vector in the cycle its last beat is still
        being shifted into the fill register (through a second multiplexer on every bit).

        Only a unit whose input beats outnumber its steps needs that: its fill register is the
        bottleneck, and waiting for the shift would cost a cycle per vector. A unit with more
        steps than beats spends at least ``beats + 1`` cycles per vector anyway, so it loads
        from the fill register alone a cycle later (latency, never throughput)."""
        return beats >= steps

    @staticmethod
    def input_buffer(in_width: int, simd: int, sf: int, elem_bits: int = 1) -> str:
        """How a unit holds the vector it computes on while the next one arrives:

        * ``"ram"``: where a slice is a whole number of input beats and there are 3 to
          :data:`RAM_SLICES` slices, both vectors sit in LUT RAM of ``2 * SF`` slices,
          written a slice at a time (its beats gathered in a shift register) and read a slice
          per step (a TRELLIS_DPR16X4 holds 16 words of 4 bits: SFC's last layer, 32 slices
          of 8 bits, takes 8 of them instead of a 256-bit fill register, a 256-bit compute
          register and 256 LUT4 rotating it; CNV's conv7, 24 slices of 96 bits, 96 of them
          and 96 LUT4 of multiplexers instead of 2,304 LUT4 and 4,608 flip-flops);
        * ``"pick"``: with 2 or 3 slices, a fill register, then a compute register that holds
          still, its slice picked by a multiplexer (Yosys: 1 LUT4 a bit for two slices, 2 for
          three, and no saving from four on: SFC's first layer, 392 LUT4 instead of 784);
        * ``"rotate"``: otherwise a fill register, then a compute register that rotates by a
          slice each step (one LUT4 per vector bit), so the step's slice is its low bits.
        """
        lanes, part = divmod(simd * elem_bits, in_width)
        if 3 <= sf <= RAM_SLICES and lanes and not part:
            return "ram"
        return "pick" if sf in (2, 3) else "rotate"

    @staticmethod
    def pipeline_latency(simd: int, beats: int = 1, steps: int = 1) -> int:
        """:attr:`latency` of an MVTU with ``simd`` inputs per step, ``beats`` input beats per
        vector and ``steps`` steps per vector, whatever its storage."""
        return 7 + tree_stages(simd) + 2 + (not MVTU.loads_shifting(beats, steps))

    @staticmethod
    def queue_depth(simd: int, sf: int) -> int:
        """Entries of the output queue: enough beats for the results in flight while their
        credits travel back (:attr:`latency` cycles plus the three of the credit loop), so the
        pipeline never waits for a credit while the output is ready; between 2 and 32 (16
        words are one LUT RAM per 4 bits, 32 two; only a layer of one step per output beat
        and a deep adder tree needs more than 16)."""
        return min(32, max(2, -(-(MVTU.pipeline_latency(simd) + 3) // sf) + 1))

    @property
    def cycles(self) -> int:
        """Cycles per input vector in steady state, ``NF*SF``."""
        return self.nf * self.sf

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        pe, simd, nf_n, sf_n = self.pe, self.simd, self.nf, self.sf
        eb = self.elem_bits
        steps = nf_n * sf_n

        # Output queue. Only S0 ever waits: it issues the step that completes an output beat
        # only with a credit, a free queue entry reserved for that beat, so everything behind
        # S0 runs every cycle with no enable at all. Back-pressure from the next block reaches
        # the credit counter and nothing else.
        depth = self.queue_depth(simd, sf_n)
        queue = output_queue(m, o, depth)
        credits, refund = queue.credits, queue.refund

        # S0 state. `step` and `load` are registers holding this cycle's decisions, computed a
        # cycle ahead from the next state, so the wide input register's enables come straight
        # from (replicated) flip-flops.
        busy, full = Signal(), Signal()
        nf = Signal(range(nf_n))
        step, load = Signal(), Signal()

        take = Signal()
        completing = Signal()
        shifting = self.loads_shifting(self.beats, steps)
        m.d.comb += [
            i.ready.eq(~full | load),  # the beat lands in a slot the load empties this cycle
            take.eq(i.valid & i.ready),
        ]

        # Every input of the next-state logic is a flip-flop (the counters' wrap flags and the
        # credit comparisons are registered too), so `step_n` is a few LUTs deep.
        sf_c, addr_c = wrap_counter(m, "sf", sf_n, step), wrap_counter(m, "addr", steps, step)
        sf, sf_last, sf_next = sf_c.value, sf_c.last, sf_c.value_next
        addr, final, addr_next = addr_c.value, addr_c.last, addr_c.value_next
        credits_n = Signal.like(credits)
        above1, above0 = Signal(init=depth > 1), Signal(init=1)  # credits > 1, credits > 0
        state = _IssueState(full, load, busy, step, final, addr_c.penult, sf_last, sf_c.penult,
                            above1, above0)
        now = _issue(state, refund, completing, steps, sf_n, shifting)
        full_n, busy_n, step_n = Signal(), Signal(), Signal()
        m.d.comb += [
            full_n.eq(now.full), busy_n.eq(now.busy), step_n.eq(now.step),
            credits_n.eq(credits - (step & sf_last) + refund),
        ]
        # The load decision fans out to a copy per 64 bits of the compute register (SFC's
        # first layer: 13), so it is looked ahead one cycle further: for each value of this
        # cycle's two inputs that are not flip-flops (the credit refund and, where loads may
        # shift, the vector's completion), a register holds the decision `_issue` takes from
        # the state those inputs will meet, and `load_n` is a multiplexer over them. It takes
        # the same decisions; the copies' net now starts one LUT from flip-flops instead of
        # four (SFC missed 125 MHz on that net: 4 LUTs, 3.4 ns of routing to the farthest copy).
        load_n = Signal()
        nxt = _IssueState(full_n, load_n, busy_n, step_n, addr_c.last_next, addr_c.penult_next,
                          sf_c.last_next, sf_c.penult_next, credits_n > 1, credits_n != 0)
        reset_state = _IssueState(0, 0, 0, 0, int(steps == 1), int(steps == 2), int(sf_n == 1),
                                  int(sf_n == 2), int(depth > 1), 1)
        ahead = {}
        # Without shifting loads, a completing vector means no load (`_issue`), and a full,
        # unloaded fill register takes no beat, so no completion: the decision for
        # completing = 0 is exact either way.
        for r in (0, 1):
            for c in ((0, 1) if shifting else (0,)):
                init = _issue(reset_state, r, c, steps, sf_n, shifting, mux=_int_mux).load
                ahead[r, c] = Signal(init=init, name=f"load_ahead_r{r}c{c}")
                m.d.sync += ahead[r, c].eq(_issue(nxt, r, c, steps, sf_n, shifting).load)
        if shifting:
            m.d.comb += load_n.eq(Mux(completing, Mux(refund, ahead[1, 1], ahead[0, 1]),
                                      Mux(refund, ahead[1, 0], ahead[0, 0])))
        else:
            m.d.comb += load_n.eq(Mux(refund, ahead[1, 0], ahead[0, 0]))
        m.d.sync += [
            full.eq(full_n), busy.eq(busy_n), step.eq(step_n), load.eq(load_n),
            credits.eq(credits_n), above1.eq(credits_n > 1), above0.eq(credits_n != 0),
        ]
        with m.If(step & sf_last):
            m.d.sync += nf.eq(Mux(nf == nf_n - 1, 0, nf + 1))

        if self.buffer == "ram":
            x_slice = self._ram_buffer(m, take, completing, load, sf, sf_next)
        else:
            fill, shifted = self._fill(m, take, completing)
            x_slice = self._compute_register(m, fill, shifted, completing, shifting,
                                             load_n, step_n, sf_next)

        # S1: the weight word (read like a synchronous memory, whatever its storage) and the
        # matching inputs; the step's flags travel beside the data down to the accumulator.
        lanes_in = self._weights(m, addr, addr_next, x_slice)
        flags = data.StructLayout({"valid": 1, "first": 1, "last": 1, "final": 1,
                                   "nf": range(nf_n)})
        s1, s2, s3, s4 = Signal(flags), Signal(flags), Signal(flags), Signal(flags)
        m.d.sync += [
            s1.valid.eq(step), s1.nf.eq(nf), s1.final.eq(final),
            s1.first.eq(sf == 0), s1.last.eq(sf_last),
            s2.eq(s1), s3.eq(s2), s4.eq(s3),
        ]

        # S2..: per PE lane, the pipelined popcount of xnor(w, x) (or signed level sum).
        lane_shape = self.acc_shape if eb > 1 else unsigned(popcount_width(simd))
        # A tree over xnor_pairs can take a register stage less than tree_stages(simd): its
        # sum waits in a register, so the latency never depends on the storage.
        sums = []
        for p, terms in enumerate(lanes_in):
            total = adder_tree(m, None, terms, lane_shape, f"lane{p}", reset_less=True)
            for k in range(self.tree_stages - tree_stages(len(terms))):
                late = Signal(lane_shape, name=f"lane{p}_late{k}", reset_less=True)
                m.d.sync += late.eq(total)
                total = late
            sums.append(total)
        chain = [s1, s2, s3, s4]
        for k in range(self.tree_stages):
            reg = Signal(flags, name=f"flags_p{k + 1}")
            m.d.sync += reg.eq(chain[-1])
            chain.append(reg)
        tail = chain[-1]

        # Accumulator stage: sum over sf, its enable and clear replicated per group of PEs.
        # The threshold word of output group nf is addressed four stages ahead, so it arrives
        # (registered) together with the group's final total.
        acc = Signal(data.ArrayLayout(self.acc_shape, pe), reset_less=True)
        per = max(1, FANOUT // self.acc_shape.width)
        groups = -(-pe // per)
        valid = replicated(m, "acc_valid", chain[-2].valid, groups, reset_less=True)
        first = replicated(m, "acc_first", chain[-2].first, groups, reset_less=True)
        a = Signal(flags)
        m.d.sync += a.eq(tail)
        for p in range(pe):
            with m.If(valid[p // per]):
                m.d.sync += acc[p].eq(Mux(first[p // per], 0, acc[p]) + sums[p])
        lanes = self._activate(m, chain[-4].nf, acc)

        # Result register: threshold compare (or the counts) of the completed group, into the
        # queue, which has room for it by the credit its step took.
        r_valid, r_last = Signal(), Signal()
        r_data = Signal(self.out_width, reset_less=True)
        m.d.sync += [r_valid.eq(a.valid & a.last), r_data.eq(lanes), r_last.eq(a.final)]
        m.d.comb += [queue.push.eq(r_valid), queue.data.eq(Cat(r_data, r_last))]
        return m

    def _weights(self, m: Module, addr: Value, addr_next: Value,
                 x: Value) -> list[list[Value]]:
        """Stages S1 to S4: the terms each PE lane sums, one per SIMD input.

        The weight word of step ``addr`` is registered four cycles later, whatever its storage
        (:meth:`_storage`), together with the input slice ``x`` delayed beside it. Block RAM
        reads ``addr`` from copies of its register, one per :data:`BLOCKS_PER_ADDR` blocks,
        each loaded with ``addr_next``, the counter's next value.
        """
        pe, simd, eb = self.pe, self.simd, self.elem_bits
        words = packing.weight_words(self.layer.weights, pe, simd)
        # The input slice goes to every PE lane: one copy of its register per PE_PER_COPY
        # lanes, so no input bit (or its negation, for an integer layer) fans out further,
        # through a register per COPY_GROUP copies (:func:`_copy_tree`).
        copies = copies_for(pe, PE_PER_COPY)
        kind = self.weight_storage
        s1_x, s2_x = (Signal(simd * eb, name=f"s{k}_x", reset_less=True) for k in (1, 2))
        m.d.sync += [s1_x.eq(x), s2_x.eq(s1_x)]
        if kind == "lut" and eb == 1:
            # A LUT4 holds an 8-entry ROM and the XNOR with the input bit together: the S4
            # register takes the XNOR bits, so the input slice needs no fourth register.
            s1_addr = Signal.like(addr, name="weights_addr1", reset_less=True)
            s2_addr = Signal.like(addr, name="weights_addr", reset_less=True)
            m.d.sync += [s1_addr.eq(addr), s2_addr.eq(s1_addr)]
            x_copies = _copy_tree(m, "s3_xc", s1_x, copies)
            s4_bits = Signal(pe * simd, reset_less=True)
            rom = _rom(m, "weights", words, pe * simd, s2_addr)
            xs = Cat(x_copies[p // PE_PER_COPY] for p in range(pe))
            m.d.sync += s4_bits.eq(~(rom ^ xs))
            return [[s4_bits[p * simd + s] for s in range(simd)] for p in range(pe)]
        s4_xs = _copy_tree(m, "s4_x", s2_x, copies)
        if kind == "bram":
            blocks = storage.rom_blocks(pe * simd, len(words))
            addr = replicated(m, "weights_addr", addr_next, copies_for(blocks, BLOCKS_PER_ADDR))
        w = self._storage(m, "weights", kind, words, pe * simd, addr)
        w_lanes = data.View(data.ArrayLayout(unsigned(simd), pe), w)
        if eb == 1 and kind == "bram":
            return [xnor_pairs(w_lanes[p], s4_xs[p // PE_PER_COPY]) for p in range(pe)]
        if eb == 1:
            return [[~(w_lanes[p][s] ^ s4_xs[p // PE_PER_COPY][s]) for s in range(simd)]
                    for p in range(pe)]
        # Integer levels: the negated ones are registered beside them (eb + 1 bits each, for
        # -(-2**(eb-1))), so no carry chain sits between the S4 registers and the lanes' adders.
        # They are negated from S1 into one register, then copied (the copies can sit far
        # apart: CNV's conv0 has 64 PEs, and a negation feeding all 64 missed 125 MHz).
        nb = eb + 1
        s2_neg = Signal(simd * nb, reset_less=True)
        m.d.sync += s2_neg.eq(Cat((-s1_x[s * eb:(s + 1) * eb].as_signed())[:nb]
                                  for s in range(simd)))
        s4_negs = _copy_tree(m, "s4_negx", s2_neg, copies)
        out = []
        for p in range(pe):
            s4_x, s4_neg = s4_xs[p // PE_PER_COPY], s4_negs[p // PE_PER_COPY]
            terms = []
            for s in range(simd):
                level = s4_x[s * eb:(s + 1) * eb].as_signed()
                terms.append(Mux(w_lanes[p][s], level, s4_neg[s * nb:(s + 1) * nb].as_signed()))
            out.append(terms)
        return out

    @staticmethod
    def _storage(m: Module, name: str, kind: str, words: list[int], width: int,
                 addr: Value | list[Value]) -> Value:
        """Word ``addr`` of a ROM stored as ``kind``, registered four cycles later.

        Block RAM: the synchronous read of every bank (:func:`_bram_read`), a register each,
        then two more. An ECP5 DP16KD read without its output register has a clock-to-output
        delay of about 5.8 ns, which leaves too little of 8 ns to reach any register not right
        beside the block. Yosys does not use that output register, so the board build moves
        the first register into it (:mod:`bnnflow.boards.outreg`). The other two split the way
        from the blocks to the lanes: nextpnr spreads the blocks of a wide ROM over the die,
        and with one register among the lanes SFC's 88-block layer missed 125 MHz on 10.1 ns
        of routing from a block to it. With one bank they are two plain registers; with
        several, the second is one register per bank and the third takes the bank that holds
        the word from those. A LUT ROM registers its address three times (the copies third),
        then its data, to match. ``addr`` may be a list of equal copies (block RAM only),
        shared out among the blocks.
        """
        if kind == "const":
            return Const(words[0], width)
        if kind == "lut":
            word = Signal(width, name=f"{name}_word", reset_less=True)
            s1_addr = Signal.like(addr, name=f"{name}_addr1", reset_less=True)
            s2_addr = Signal.like(addr, name=f"{name}_addr", reset_less=True)
            m.d.sync += [s1_addr.eq(addr), s2_addr.eq(s1_addr),
                         word.eq(_rom(m, name, words, width, s2_addr))]
            return word
        mid = Signal(width, name=f"{name}_mid", reset_less=True)
        reads, bank = _bram_read(m, name, words, width, addr)
        if len(reads) == 1:
            near = Signal(width, name=f"{name}_read", reset_less=True)
            word = Signal(width, name=f"{name}_word", reset_less=True)
            m.d.sync += [near.eq(reads[0]), mid.eq(near), word.eq(mid)]
            return word
        # Each bank's read is registered twice: in the block (after the board build), then in
        # the fabric, where the placer can put that register half-way to the bank pick; the
        # bank is picked from those registers into `mid`, which is the word. The blocks of a
        # deep ROM spread over the die's block-RAM rows, and CNV's conv6 missed 125 MHz on
        # 8.2 ns of routing from a bank's block straight into the pick multiplexer. The pick
        # is steered by copies of the bank index: each steers FANOUT multiplexer inputs at
        # most (CNV's 18-bank conv7 weights missed 125 MHz on one index register steering
        # all 64 bits' multiplexers: 5.7 ns of routing).
        banks = len(reads)
        nears = [Signal(width, name=f"{name}_read{b}", reset_less=True) for b in range(banks)]
        fars = [Signal(width, name=f"{name}_far{b}", reset_less=True) for b in range(banks)]
        m.d.sync += [n.eq(r) for n, r in zip(nears, reads, strict=True)]
        m.d.sync += [f.eq(n) for f, n in zip(fars, nears, strict=True)]
        late = Signal.like(bank, name=f"{name}_bank_late", reset_less=True)
        m.d.sync += late.eq(bank)
        per = pick_bits(banks)
        picks = replicated(m, f"{name}_pick", late, copies_for(width, per), reset_less=True)
        for k, pick in enumerate(picks):
            lo, hi = k * per, min(width, (k + 1) * per)
            m.d.sync += mid[lo:hi].eq(Array(f[lo:hi] for f in fars)[pick])
        return mid

    def _compute_register(self, m: Module, fill: Signal, shifted: Value, completing: Value,
                          shifting: bool, load_n: Value, step_n: Value,
                          sf_next: Value) -> Value:
        """The compute register (the read side of the double buffer) and the step's slice of
        it, for the S1 register."""
        width, simd, eb, sf_n = self.mw * self.elem_bits, self.simd, self.elem_bits, self.sf
        # The compute register takes the filled vector on `load`. With a "pick" buffer
        # (:meth:`input_buffer`) it holds it, and the step's slice is picked by copies of the
        # sf counter; otherwise it rotates by one SIMD slice on every step, so its low bits
        # are always the step's inputs. Each FANOUT-bit chunk has its own copies of the
        # decisions.
        # A vector whose last beat arrived in the previous cycle is still one shift short in
        # the fill register: where that load is allowed (:meth:`loads_shifting`) it comes from
        # `shifted` (`fresh`), any other from `fill`; elsewhere every load is from `fill`,
        # one LUT per bit instead of two.
        x = Signal(width, reset_less=True)
        chunks = copies_for(width)
        picking = self.buffer == "pick"
        ld = replicated(m, "x_load", load_n, chunks, reset_less=True)
        if not picking:
            ce = replicated(m, "x_ce", step_n | load_n, chunks, reset_less=True)
            rotated = x.rotate_right(simd * eb)
        if shifting:
            fresh = replicated(m, "x_fresh", completing, chunks, reset_less=True)
        for k in range(chunks):
            lo, hi = k * FANOUT, min(width, (k + 1) * FANOUT)
            vector = Mux(fresh[k], shifted[lo:hi], fill[lo:hi]) if shifting else fill[lo:hi]
            if picking:
                with m.If(ld[k]):
                    m.d.sync += x[lo:hi].eq(vector)
            else:
                with m.If(ce[k]):
                    m.d.sync += x[lo:hi].eq(Mux(ld[k], vector, rotated[lo:hi]))
        slice_bits = simd * eb
        if picking:
            # One copy of the slice index per FANOUT multiplexers, each loaded with the
            # counter's next value, so it equals `sf`.
            pieces = copies_for(slice_bits)
            sel = replicated(m, "x_pick", sf_next, pieces, reset_less=True)
            bounds = [(k * FANOUT, min(slice_bits, (k + 1) * FANOUT)) for k in range(pieces)]
            x_slice = Cat(Array(x[j * slice_bits + lo:j * slice_bits + hi]
                                for j in range(sf_n))[sel[k]]
                          for k, (lo, hi) in enumerate(bounds))
        else:
            x_slice = x[:slice_bits]
        return x_slice

    def _beat(self, m: Module, take: Value, completing: Signal) -> Signal:
        """The input beat, registered every cycle (so a taken beat is there the cycle after its
        ``take``), with ``completing`` driven high when ``take`` brings a vector's last beat."""
        beat = Signal(self.in_width, reset_less=True)
        m.d.sync += beat.eq(self.i_stream.p.data)
        count_last = wrap_counter(m, "count", self.beats, take).last
        m.d.comb += completing.eq(take & count_last)
        return beat

    def _ram_buffer(self, m: Module, take: Value, completing: Signal, load: Value,
                    sf: Value, sf_next: Value) -> Value:
        """Both halves of the double buffer in LUT RAM of ``2 * SF`` slices (its banks): taken
        beats are registered and gathered into a slice, which is written whole into its slot
        of the bank being filled; the step's slice is read (asynchronously) from the bank being
        computed on, which changes with every load. Returns the slice, for the S1 register;
        ``completing`` is driven high when ``take`` brings a vector's last beat.

        The RAM is cut into one memory per :data:`~bnnflow.hw.fanout.FANOUT` slice bits, each
        with its own copies of the write enable, the write address and the read address, all
        flip-flops loaded with their next values, so no control net fans out over the whole
        slice and no write enable is decoded (CNV's conv7, 96 one-bit beats per slice, missed
        125 MHz when each beat had its own decoded enable). A slice is written in the cycle
        after its last beat's (the beat register's); it is read at the earliest ``SF - 1``
        cycles later (:meth:`input_buffer` asks for three slices at least).
        """
        width, sf_n = self.in_width, self.sf
        slice_bits = self.simd * self.elem_bits
        lanes = slice_bits // width
        beat = self._beat(m, take, completing)
        written = Signal()
        m.d.sync += written.eq(take)
        wlane = wrap_counter(m, "wlane", lanes, written)
        ends = written & wlane.last  # the beat register holds a slice's last beat
        wslot = wrap_counter(m, "wslot", sf_n, ends)
        slot, slot_last, slot_next = wslot.value, wslot.last, wslot.value_next
        wbank, rbank = Signal(), Signal(init=1)
        wbank_next, rbank_next = wbank ^ (ends & slot_last), rbank ^ load
        m.d.sync += [wbank.eq(wbank_next), rbank.eq(rbank_next)]
        # The slice's first lanes - 1 beats, shifted in at the top: beat 0 ends at bit 0.
        gathered = beat
        if lanes > 1:
            gather, _ = _shift_in(m, "x_gather", beat, (lanes - 1) * width, take)
            gathered = Cat(gather, beat)
        depth = 2 << ceil_log2(sf_n)
        chunks = copies_for(slice_bits)
        wes = replicated(m, "x_we", take & wlane.last_next, chunks, reset_less=True)
        waddrs = replicated(m, "x_waddr", Cat(slot_next[:len(slot)], wbank_next), chunks,
                            reset_less=True)
        raddrs = replicated(m, "x_raddr", Cat(sf_next[:len(sf)], rbank_next), chunks,
                            reset_less=True)
        parts = []
        for k in range(chunks):
            lo, hi = k * FANOUT, min(slice_bits, (k + 1) * FANOUT)
            ram = Memory(shape=unsigned(hi - lo), depth=depth, init=[],
                         attrs={"ram_style": "distributed"})
            m.submodules[f"x_ram{k}"] = ram
            wr, rd = ram.write_port(), ram.read_port(domain="comb")
            m.d.comb += [
                wr.addr.eq(waddrs[k]), wr.data.eq(gathered[lo:hi]), wr.en.eq(wes[k]),
                rd.addr.eq(raddrs[k]),
            ]
            parts.append(rd.data)
        return Cat(parts)

    def _fill(self, m: Module, take: Value, completing: Signal) -> tuple[Signal, Value]:
        """Collect input beats into a vector: the write side of the double buffer.

        A taken beat is registered first, then shifted in at the top of the fill register
        (:func:`_shift_in`), so after ``beats`` of them beat 0 sits at bit 0 and the pad bits
        of the last beat above bit MW, where nothing reads them. Returns the fill register and
        its value after the pending shift; ``completing`` is driven high when ``take`` brings
        a vector's last beat.
        """
        beat = self._beat(m, take, completing)
        return _shift_in(m, "fill", beat, self.in_width * self.beats, take)

    def _activate(self, m: Module, nf: Value, total: Value) -> Value:
        """The output lanes for the accumulated counts ``total``; ``nf`` is the output group
        four stages ahead, so its threshold word arrives together with ``total``."""
        if self.layer.is_scores:
            return total.as_value()
        if self.layer.integer_input:
            tshape = self.acc_shape
            init = packing.signed_threshold_words(self.layer.thresholds, self.bound, self.pe)
        else:
            tshape = unsigned(packing.threshold_bits(self.mw))
            init = packing.threshold_words(self.layer.thresholds, self.mw, self.pe)
        lane = data.StructLayout({"t": tshape, "invert": unsigned(1)})
        word = self._storage(m, "thresholds", storage.weight_storage(self.nf), init,
                             self.pe * lane.size, nf)
        t_lanes = data.View(data.ArrayLayout(lane, self.pe), word)
        return Cat((total[p] >= t_lanes[p].t) ^ t_lanes[p].invert for p in range(self.pe))


#: Most input slices per vector whose double buffer is a LUT RAM (:meth:`MVTU.input_buffer`):
#: 64 words, a four-way multiplexer after the RAM's 16-word blocks.
RAM_SLICES = 32

#: Copies of an input-slice register one register of the stage before feeds
#: (:func:`_copy_tree`).
COPY_GROUP = 4


def _copy_tree(m: Module, name: str, value: Value, copies: int) -> list[Signal]:
    """``copies`` registers equal to ``value`` two cycles later: ``value`` is registered in
    one copy per :data:`COPY_GROUP`, each copied again. With one register feeding all of them,
    CNV at 8,100 cycles missed 125 MHz on 12.6 ns of routing from an input slice register to
    one of its 16 per-PE copies across the die."""
    groups = copies_for(copies, COPY_GROUP)
    mids = replicated(m, f"{name}_mid", value, groups, reset_less=True)
    out = []
    for g, mid in enumerate(mids):
        out += replicated(m, f"{name}_g{g}", mid, min(COPY_GROUP, copies - g * COPY_GROUP),
                          reset_less=True)
    return out


def _shift_in(m: Module, name: str, beat: Value, bits: int,
              take: Value) -> tuple[Signal, Value]:
    """A ``bits``-bit shift register that takes ``beat`` in at its top in the cycle after each
    ``take`` (``beat`` is the registered input beat), so the first of ``bits / len(beat)``
    beats ends at bit 0. Its enable is ``take`` registered, one copy per
    :data:`~bnnflow.hw.fanout.FANOUT` bits (``<name>_shift``), and its data moves one beat
    along: neither fans out over the register however narrow the beats. Returns the register
    and its value after the pending shift."""
    reg = Signal(bits, name=name, reset_less=True)
    shifted = Cat(reg[len(beat):], beat)
    for k, en in enumerate(replicated(m, f"{name}_shift", take, copies_for(bits),
                                      reset_less=True)):
        lo, hi = k * FANOUT, min(bits, (k + 1) * FANOUT)
        with m.If(en):
            m.d.sync += reg[lo:hi].eq(shifted[lo:hi])
    return reg, shifted


def pick_bits(banks: int) -> int:
    """Word bits one copy of a banked ROM's bank index steers: :data:`FANOUT` multiplexer
    inputs, ``banks`` per bit."""
    return max(1, FANOUT // banks)


def _bram_read(m: Module, name: str, words: list[int], width: int,
               addr: Value | list[Value]) -> tuple[list[Value], Value]:
    """Word ``addr`` of a block-RAM ROM one cycle later (a synchronous read), from each of
    its banks (:func:`~bnnflow.hw.storage.rom_banks`), and the index of the bank that holds
    it, registered beside them.

    Each bank is cut into columns, one memory each, which Yosys maps onto one DP16KD in true
    dual-port mode: each port with its own clock, enable and output register, which the
    board build can then use (:mod:`bnnflow.boards.outreg`); which pins of the 36-bit pseudo
    dual-port mode its output register drives is not documented. Banks of
    :data:`~bnnflow.hw.storage.BRAM_HALF` words take their 18-bit columns two to a memory of
    1,024 words, read through both of its ports: the even column at ``addr``, the odd one at
    ``addr + 512``, as many blocks as the 36-bit mode would take.
    """
    bits, bank = storage.rom_banks(width, len(words))
    addrs = [Value.cast(a) for a in (addr if isinstance(addr, list) else [addr])]
    blocks = storage.rom_blocks(width, len(words))
    per_bank = blocks // -(-len(words) // bank)
    low = exact_log2(bank)
    banks = [words[i:i + bank] for i in range(0, len(words), bank)]
    reads = []
    for b, chunk in enumerate(banks):
        if len(banks) > 1:  # a short last bank repeats its last word up to a power of two
            chunk = chunk + chunk[-1:] * ((1 << ceil_log2(len(chunk))) - len(chunk))
        prefix = name if len(banks) == 1 else f"{name}_bank{b}"
        # Block k of the ROM reads the copy k * copies // blocks.
        lows = [addrs[(b * per_bank + k) * len(addrs) // blocks][:low] for k in range(per_bank)]
        if bits > storage.BRAM_PORT_BITS:
            reads.append(_pair_read(m, prefix, chunk, width, lows))
        else:
            reads.append(_column_read(m, prefix, chunk, width, bits, lows))
    select = Signal(range(len(banks)), name=f"{name}_bank", reset_less=True)
    m.d.sync += select.eq(addrs[0][low:])
    return reads, select


_ATTRS = {"ram_style": "block", "rom_style": "block"}


def _column_read(m: Module, name: str, words: list[int], width: int, bits: int,
                 addrs: list[Value]) -> Value:
    """One bank of a block-RAM ROM in ``bits``-bit columns, a memory each, column ``k`` read
    at ``addrs[k]``."""
    parts = []
    for k, lo in enumerate(range(0, width, bits)):
        addr = addrs[k]
        hi = min(width, lo + bits)
        init = [(w >> lo) & ((1 << (hi - lo)) - 1) for w in words]
        m.submodules[f"{name}_{k}"] = mem = Memory(shape=unsigned(hi - lo), depth=len(init),
                                                   init=init, attrs=_ATTRS)
        port = mem.read_port()
        m.d.comb += port.addr.eq(addr)
        parts.append(port.data)
    return Cat(parts)


def _pair_read(m: Module, name: str, words: list[int], width: int,
               addrs: list[Value]) -> Value:
    """One bank of at most :data:`~bnnflow.hw.storage.BRAM_HALF` words of a block-RAM ROM,
    in 18-bit columns two to a memory of 1,024 words read through both of its ports, memory
    ``k`` at ``addrs[k]``."""
    half = exact_log2(storage.BRAM_HALF)
    depth = len(words)
    parts = []
    columns = storage.port_columns(width)
    for k, pair in enumerate(columns[j:j + 2] for j in range(0, len(columns), 2)):
        addr = addrs[k]
        (lo, mid), hi = pair[0], pair[-1][1]  # hi == mid for a lone last column
        low = [(w >> lo) & ((1 << (mid - lo)) - 1) for w in words]
        high = [(w >> mid) & ((1 << (hi - mid)) - 1) for w in words]
        init = low + [0] * (storage.BRAM_HALF - depth) + high if hi > mid else low
        m.submodules[f"{name}_{k}"] = mem = Memory(shape=unsigned(mid - lo), depth=len(init),
                                                   init=init, attrs=_ATTRS)
        even = mem.read_port()
        m.d.comb += even.addr.eq(addr)
        parts.append(even.data)
        if hi > mid:
            odd = mem.read_port()
            m.d.comb += odd.addr.eq(Cat(addr[:half], Const(0, half - len(addr[:half])), 1))
            parts.append(odd.data[:hi - mid])
    return Cat(parts)


class _IssueState(NamedTuple):
    """The registers of an MVTU's S0 that decide its steps and loads (0/1 ints, or Amaranth
    values)."""

    full: object     # the fill register holds a whole vector not yet loaded
    load: object     # the compute register loads this cycle
    busy: object     # the compute register holds a vector with steps left
    step: object     # a step issues this cycle
    final: object    # the step counter is at its last step
    penult: object   # ... at its last but one
    sf_last: object  # the slice counter is at its last slice
    sf_penult: object
    above1: object   # credits > 1
    above0: object   # credits > 0


class _Issue(NamedTuple):
    full: object
    busy: object
    step: object
    load: object


def _issue(s: _IssueState, refund, completing, steps: int, sf_n: int, shifting: bool,
           mux=Mux) -> _Issue:
    """S0's next state from its registers, this cycle's credit ``refund`` and ``completing``
    (a taken beat ends a vector), on Amaranth values or, with ``mux=_int_mux``, 0/1 ints.

    A step needs a credit when it completes an output beat (its slice is the last); the
    compute register loads the filled vector when it is idle after this cycle or its next
    step is its final one. Without :meth:`MVTU.loads_shifting`, a vector still being
    shifted in is not loaded."""
    consume = s.step & s.sf_last
    final_n = _wrap_last(s.step, s.final, s.penult, steps, mux)
    sf_last_n = _wrap_last(s.step, s.sf_last, s.sf_penult, sf_n, mux)
    full_n = (s.full & (s.load ^ 1)) | completing
    busy_n = s.load | (s.busy & ((s.step & s.final) ^ 1))
    credit_n = mux(refund & (consume ^ 1), 1, mux(consume & (refund ^ 1), s.above1, s.above0))
    step_n = busy_n & ((sf_last_n ^ 1) | credit_n)
    load_n = full_n & ((busy_n ^ 1) | (step_n & final_n)) & (int(shifting) | (completing ^ 1))
    return _Issue(full_n, busy_n, step_n, load_n)


class Counter(NamedTuple):
    """The signals of a :func:`wrap_counter`."""

    #: The count.
    value: Signal
    #: Registered ``value == n - 1``.
    last: Signal
    #: What ``last`` takes at the clock edge: one LUT of the advance, ``last`` and ``penult``.
    last_next: Signal
    #: What ``value`` takes at the clock edge (for copies of the register).
    value_next: Value
    #: Registered ``value == n - 2``.
    penult: Signal
    #: What ``penult`` takes at the clock edge.
    penult_next: Value


def wrap_counter(m: Module, name: str, n: int, advance: Value) -> Counter:
    """A counter over ``range(n)`` that steps (wrapping to 0) when ``advance`` is high, with its
    wrap flag kept as a register, and the flag's own look-ahead (``value == n - 2``) too, so
    no comparison sits behind the counter's adder."""
    value = Signal(range(n), name=name)
    last = Signal(init=n == 1, name=f"{name}_last")
    penult = Signal(init=n == 2, name=f"{name}_penult")
    last_next = Signal(name=f"{name}_last_next")
    value_next = Mux(advance, Mux(last, 0, value + 1), value)
    penult_step = Mux(last, n == 2, value == n - 3) if n >= 3 else Mux(last, n == 2, 0)
    penult_next = Mux(advance, penult_step, penult)
    m.d.comb += last_next.eq(_wrap_last(advance, last, penult, n))
    m.d.sync += [value.eq(value_next), last.eq(last_next), penult.eq(penult_next)]
    return Counter(value, last, last_next, value_next, penult, penult_next)


def _wrap_last(advance, last, penult, n: int, mux=Mux):
    """The next wrap flag of a counter over ``range(n)``, from its advance and flags (Amaranth
    values, or 0/1 ints with ``mux=_int_mux``)."""
    return mux(advance, mux(last, int(n == 1), penult), last)


def _int_mux(sel: int, a: int, b: int) -> int:
    return a if sel else b


def _rom(m: Module, name: str, words: list[int], width: int, addr: Value) -> Value:
    """Word ``addr`` of a LUT ROM one cycle later: the address is registered in one copy per
    :data:`~bnnflow.hw.fanout.FANOUT` data bits, each looking up its own bits."""
    chunks = copies_for(width)
    regs = replicated(m, f"{name}_addr", addr, chunks, reset_less=True)
    parts = []
    for k, reg in enumerate(regs):
        lo, hi = k * FANOUT, min(width, (k + 1) * FANOUT)
        mask = (1 << (hi - lo)) - 1
        parts.append(rom_value([(w >> lo) & mask for w in words], hi - lo, reg))
    return Cat(parts)


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
