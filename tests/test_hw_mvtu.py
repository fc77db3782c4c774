# amaranth: UnusedElaboratable=no
"""Amaranth-simulator tests of one MVTU (hw/mvtu.py) against the numpy reference."""

# The pragma above: test_storage_rule builds MVTUs only to read their attributes or to see
# them refused, never to elaborate them.

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import Out
from amaranth.sim import Simulator
from streams import recv, rule_checker, run, send

from bnnflow import packing, reference
from bnnflow.hw.mvtu import MVTU, _int_mux, _issue, _IssueState, beat_layout, rom_value
from bnnflow.hw.popcount import (
    adder_tree,
    popcount,
    popcount_width,
    tree_levels,
    tree_stages,
    xnor_pairs,
)
from bnnflow.hw.storage import LUT_MAX_DEPTH, rom_banks, weight_storage
from bnnflow.ir import Dense, Thresholds


def random_layer(rng: np.random.Generator, mh: int, mw: int, scores: bool = False) -> Dense:
    """Random weights; thresholds near mw/2 so outputs vary, plus every special channel."""
    weights = rng.integers(0, 2, (mh, mw))
    if scores:
        return Dense("fc", weights, None)
    t = np.clip(np.rint(rng.normal(mw / 2, np.sqrt(mw) / 2, mh)), 0, mw + 1).astype(np.int64)
    invert = rng.integers(0, 2, mh).astype(bool)
    # Constant channels (t = 0 with and without invert) and the never-firing t = mw + 1.
    t[:4] = [0, 0, mw + 1, mw + 1]
    invert[:4] = [False, True, False, True]
    return Dense("fc", weights, Thresholds(t, invert))


def input_beats(rng: np.random.Generator, x: np.ndarray, width: int) -> list[dict]:
    """Beats of input vectors, with random (must-be-ignored) pad bits in each last beat."""
    n = x.shape[1]
    beats = -(-n // width)
    out = []
    for row in x:
        padded = np.concatenate([row, rng.integers(0, 2, beats * width - n)])
        words = packing.pack_words(padded, width)
        out += [{"data": w, "last": int(k == beats - 1)} for k, w in enumerate(words)]
    return out


def expected_beats(layer: Dense, pe: int, x: np.ndarray) -> list[tuple[int, int]]:
    """Golden ``(data, last)`` output beats of an MVTU for input vectors ``x``."""
    counts = reference.popcounts(x, layer.weights)
    nf = layer.out_features // pe
    lane = 1 if not layer.is_scores else popcount_width(layer.in_features)
    values = counts if layer.is_scores else layer.thresholds.apply(counts)
    out = []
    for row in values:
        for k in range(nf):
            word = sum(int(v) << (p * lane) for p, v in enumerate(row[k * pe:(k + 1) * pe]))
            out.append((word, int(k == nf - 1)))
    return out


def simulate(layer, pe, simd, in_width, x, *, seed=0, idle=0.0, stall=0.0, storage=None):
    """Run an MVTU on ``x``; returns received ``(data, last)`` beats and their cycles."""
    dut = MVTU(layer, pe, simd, in_width, weight_storage=storage)
    rng = random.Random(seed)
    beats = input_beats(np.random.default_rng(seed), x, in_width)
    n_out = len(x) * dut.nf
    got, cycles, sent = [], [], []

    async def source(ctx):
        await send(ctx, dut.i_stream, beats, rng=rng, idle=idle, cycles=sent)

    async def sink(ctx):
        payloads = await recv(ctx, dut.o_stream, n_out, rng=random.Random(seed + 1), stall=stall,
                              cycles=cycles)
        got.extend((int(p.data), int(p.last)) for p in payloads)

    run(dut, source, sink, checked=(dut.i_stream, dut.o_stream))
    return dut, got, cycles, sent


FOLDINGS = [
    # (mh, mw, pe, simd, in_width)
    (12, 24, 1, 1, 5),  # fully serial
    (12, 24, 2, 4, 8),
    (12, 24, 4, 8, 3),
    (12, 24, 3, 24, 24),  # SF = 1, whole vector per beat
    (12, 24, 12, 2, 1),  # NF = 1, one bit per beat
    (12, 24, 12, 24, 7),  # fully parallel: a one-word memory
    (12, 24, 2, 4, 4),  # a LUT RAM buffer: 6 one-beat slices
    (16, 64, 4, 16, 8),  # a LUT RAM buffer: 4 slices of 2 beats
    (6, 72, 2, 24, 3),  # a LUT RAM buffer: 3 slices of 8 three-bit beats
    (4, 96, 1, 16, 1),  # a LUT RAM buffer: 6 slices of 16 one-bit beats
    (4, 384, 2, 96, 2),  # a LUT RAM buffer in two memories: 4 slices of 48 two-bit beats
]


@pytest.mark.parametrize(("in_width", "simd", "sf", "eb", "buffer"), [
    (8, 8, 32, 1, "ram"), (8, 16, 4, 1, "ram"), (4, 4, 6, 1, "ram"), (24, 3, 9, 8, "ram"),
    (1, 96, 24, 1, "ram"), (2, 8, 9, 1, "ram"), (8, 128, 4, 1, "ram"), (8, 64, 9, 1, "ram"),
    (3, 384, 6, 1, "ram"),
    (8, 8, 2, 1, "pick"), (32, 392, 2, 1, "pick"), (5, 8, 3, 1, "pick"),
    (8, 8, 33, 1, "rotate"), (16, 8, 4, 1, "rotate"), (32, 128, 1, 1, "rotate"),
    (3, 8, 4, 1, "rotate"), (1, 1, 512, 1, "rotate"),
])
def test_input_buffer_choice(in_width, simd, sf, eb, buffer):
    """LUT RAM where a slice is whole beats and there are 3 to 32 slices; a picked slice for
    2 or 3 otherwise; else the rotating register."""
    assert MVTU.input_buffer(in_width, simd, sf, eb) == buffer


@pytest.mark.parametrize(("mh", "mw", "pe", "simd", "in_width"), FOLDINGS)
def test_thresholds_random_stalls(mh, mw, pe, simd, in_width):
    rng = np.random.default_rng(mh * 1000 + pe * 100 + simd)
    layer = random_layer(rng, mh, mw)
    vectors = 8 if pe * simd == 1 else 24
    x = rng.integers(0, 2, (vectors, mw))
    _, got, _, _ = simulate(layer, pe, simd, in_width, x, seed=pe + simd, idle=0.3, stall=0.3)
    assert got == expected_beats(layer, pe, x)


@pytest.mark.parametrize(("mh", "mw", "pe", "simd", "in_width"), [
    (12, 24, 3, 24, 24),  # SF = 1: a new output beat every cycle, the queue's worst case
    (32, 24, 1, 12, 24),  # many short output groups per vector
])
def test_output_queue_never_overflows_under_heavy_back_pressure(mh, mw, pe, simd, in_width):
    # The consumer refuses 90 % of cycles: S0 must run out of credits and wait, and no beat
    # may be lost or duplicated while the queue is full.
    rng = np.random.default_rng(5)
    layer = random_layer(rng, mh, mw)
    x = rng.integers(0, 2, (12, mw))
    dut, got, _, _ = simulate(layer, pe, simd, in_width, x, seed=9, stall=0.9)
    assert got == expected_beats(layer, pe, x)
    assert MVTU.queue_depth(simd, dut.sf) < len(got)  # the queue did fill up


@pytest.mark.parametrize(("mh", "mw", "pe", "simd", "in_width"), [
    (10, 24, 1, 4, 6),
    (10, 24, 5, 8, 8),
    (10, 24, 10, 24, 24),
])
def test_scores_mode(mh, mw, pe, simd, in_width):
    rng = np.random.default_rng(7 + pe)
    layer = random_layer(rng, mh, mw, scores=True)
    x = rng.integers(0, 2, (20, mw))
    # Include the extreme counts 0 and mw, which need the full count width.
    x[0], x[1] = layer.weights[0], 1 - layer.weights[0]
    dut, got, _, _ = simulate(layer, pe, simd, in_width, x, seed=3, idle=0.25, stall=0.4)
    assert dut.out_width == pe * popcount_width(mw)
    assert got == expected_beats(layer, pe, x)


@pytest.mark.parametrize(("mh", "mw", "pe", "simd", "in_width"), [
    (16, 32, 2, 8, 4),  # input beats (8) well under the 32 compute cycles
    (16, 16, 4, 16, 4),  # input beats == NF*SF == 4: the load bypass must avoid a bubble
    (8, 12, 4, 6, 4),  # 3 beats, 4 steps: loading a cycle after the last shift costs none
    (8, 16, 4, 8, 4),  # 2 picked slices, 4 beats == 4 steps: loads the still-shifting fill
    (8, 24, 4, 8, 8),  # 3 one-beat slices in a LUT RAM, two output groups
    (4, 32, 4, 8, 8),  # a LUT RAM buffer, beats == steps: reads a slice the cycle it is written
    (8, 256, 2, 32, 8),  # 8 slices of 4 beats each in a LUT RAM, a 4-lane write
    (10, 256, 5, 8, 8),  # SFC's last layer: 32 one-beat slices, 64 words of LUT RAM
    (8, 8, 8, 4, 8),  # two cycles per vector
    (8, 128, 2, 64, 32),  # a two-stage adder tree
    (4, 512, 2, 512, 256),  # a three-stage adder tree, one slice per vector
])
@pytest.mark.parametrize("storage", [None, "lut", "bram"])
def test_throughput_and_latency(mh, mw, pe, simd, in_width, storage):
    rng = np.random.default_rng(11)
    layer = random_layer(rng, mh, mw)
    x = rng.integers(0, 2, (40 if mw < 128 else 12, mw))
    dut, got, cycles, sent = simulate(layer, pe, simd, in_width, x, storage=storage)
    assert dut.buffer == MVTU.input_buffer(in_width, simd, dut.sf)
    assert got == expected_beats(layer, pe, x)
    tails = [c for c, (_, last) in zip(cycles, got, strict=True) if last]
    # Steady state is exactly one (nf, sf) step per cycle: no bubble between vectors.
    assert np.all(np.diff(tails) == dut.cycles)
    # The latency is the same whatever the storage; it grows with the adder tree, and by the
    # cycle a vector waits in the fill register where the steps outnumber the beats.
    waits = dut.beats < dut.cycles
    assert waits == (not MVTU.loads_shifting(dut.beats, dut.cycles))
    assert dut.latency == MVTU.pipeline_latency(simd, dut.beats, dut.cycles)
    assert dut.latency == 9 + tree_stages(simd) + waits
    assert cycles[0] - sent[dut.beats - 1] == dut.latency + dut.sf - 1


@pytest.mark.parametrize("storage", [None, "lut", "bram"])
@pytest.mark.parametrize(("mh", "mw", "pe", "simd", "in_width"), [
    (12, 24, 12, 24, 7),  # the rule's choice (None) is constants here
    (12, 24, 4, 8, 3),
    (16, 96, 4, 48, 16),
])
def test_reset_mid_stream(mh, mw, pe, simd, in_width, storage):
    # The datapath registers are left out of the reset (only valid flags, counters and
    # credits are reset), so a reset in the middle of a frame must leave nothing behind:
    # a half-filled vector, steps in flight and a full output queue are all discarded, and
    # the vectors sent after it come out exact.
    rng = np.random.default_rng(mh + pe * simd)
    layer = random_layer(rng, mh, mw)
    dut = MVTU(layer, pe, simd, in_width, weight_storage=storage)
    before = input_beats(rng, rng.integers(0, 2, (24, mw)), in_width)
    before = before[:len(before) - 1]  # the last vector stays incomplete
    x = rng.integers(0, 2, (10, mw))
    after = input_beats(rng, x, in_width)
    top = Module()
    top.domains.sync = cd = ClockDomain()
    top.submodules.dut = dut
    started, got = [], []

    async def source(ctx):
        # Nothing is taken out: the output queue fills up, S0 waits, the compute register
        # and the fill register hold whole vectors, and the input stalls on a partial one.
        budget = len(before) + 24 * dut.cycles + dut.latency
        beats = iter(before)
        beat = next(beats)
        for _ in range(budget):
            ctx.set(dut.i_stream.payload, beat)
            ctx.set(dut.i_stream.valid, 1)
            _, _, ready = await ctx.tick().sample(dut.i_stream.ready)
            if ready:
                beat = next(beats, None)
                if beat is None:
                    break
        assert beat is not None and not ctx.get(dut.i_stream.ready), "did not stall"
        ctx.set(dut.i_stream.valid, 0)
        ctx.set(cd.rst, 1)
        await ctx.tick()
        ctx.set(cd.rst, 0)
        started.append(True)
        await send(ctx, dut.i_stream, after, rng=random.Random(1), idle=0.3)

    async def sink(ctx):
        while not started:
            ctx.set(dut.o_stream.ready, 0)
            await ctx.tick()
        payloads = await recv(ctx, dut.o_stream, len(x) * dut.nf, rng=random.Random(2),
                              stall=0.3)
        got.extend((int(p.data), int(p.last)) for p in payloads)
        await ctx.tick().repeat(dut.latency + dut.cycles)  # nothing more may come out
        assert not ctx.get(dut.o_stream.valid)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    assert got == expected_beats(layer, pe, x)


# (mh, mw, pe, simd, in_width, storage): every storage on shapes it is not the rule's choice
# for, too (the override exists to measure them against each other).
STORAGE_CASES = [
    (12, 24, 12, 24, 7, "const"),
    (12, 24, 12, 24, 7, "lut"),
    (12, 24, 12, 24, 7, "bram"),
    (12, 24, 4, 8, 3, "lut"),  # depth 9
    (12, 24, 4, 8, 3, "bram"),
    (12, 24, 2, 4, 8, "lut"),  # depth 36, beyond the rule's LUT depth
    (12, 24, 3, 24, 24, "lut"),  # SF = 1: the ROM steps through output groups only
    (12, 24, 12, 2, 1, "lut"),  # NF = 1: one threshold word, constant
    (16, 96, 4, 48, 16, "lut"),  # two-stage tree
    (32, 48, 16, 24, 16, "bram"),  # 11 blocks read from 3 copies of the address register
    (12, 24, 4, 3, 5, "bram"),  # odd SIMD: a lone last lane beside the xnor_pairs
    (16, 96, 2, 96, 16, "bram"),  # pairs save a tree stage: the sum waits one cycle
]


@pytest.mark.parametrize(("mh", "mw", "pe", "simd", "in_width", "storage"), STORAGE_CASES)
def test_storage_bit_exact_random_stalls(mh, mw, pe, simd, in_width, storage):
    rng = np.random.default_rng(mh + mw + pe * simd)
    layer = random_layer(rng, mh, mw)
    x = rng.integers(0, 2, (16, mw))
    dut, got, _, _ = simulate(layer, pe, simd, in_width, x, seed=simd, idle=0.3, stall=0.4,
                              storage=storage)
    assert dut.weight_storage == storage
    assert got == expected_beats(layer, pe, x)


# (width, depth, (column bits, bank depth), banks): block-RAM ROMs cut into several banks
# (storage.rom_banks), of column pairs and of single columns, with and without a short last
# bank, and ROMs of one bank.
BANKED_ROMS = [
    (36, 1152, (36, 512), 3),
    (64, 9256, (36, 512), 19),
    (64, 9216, (18, 1024), 9),
    (64, 8792, (18, 1024), 9),
    (40, 1100, (9, 2048), 1),
    (20, 300, (36, 512), 1),
    (3, 5000, (2, 8192), 1),
]


@pytest.mark.parametrize(("width", "depth", "shape", "banks"), BANKED_ROMS)
def test_bram_banks_read_every_word(width, depth, shape, banks):
    """MVTU._storage("bram") returns word ``addr`` four cycles after ``addr``, for random
    addresses, however the ROM is cut into banks and columns."""
    rng = np.random.default_rng(width + depth)
    words = [int(w) for w in rng.integers(0, 1 << width, depth, dtype=np.uint64)]
    bank = shape[1]
    assert rom_banks(width, depth) == shape and -(-depth // bank) == banks
    m = Module()
    addr = Signal(range(depth))
    word = MVTU._storage(m, "rom", "bram", words, width, addr)
    ends = [depth - 1, 0, min(bank, depth - 1), min(bank, depth) - 1]
    sequence = [int(a) for a in rng.integers(0, depth, 400)] + ends

    async def bench(ctx):
        seen = []
        for a in sequence + [0] * 3:
            ctx.set(addr, a)
            await ctx.tick()
            seen.append(ctx.get(word))
        assert seen[3:] == [words[a] for a in sequence]

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_banked_weights_bit_exact_random_stalls():
    """An MVTU whose weight ROM is three banks of column pairs (36 bits x 1,152 words)."""
    rng = np.random.default_rng(11)
    layer = random_layer(rng, 128, 324)
    assert rom_banks(4 * 9, 1152) == (36, 512)
    x = rng.integers(0, 2, (3, 324))
    _, got, _, _ = simulate(layer, 4, 9, 16, x, seed=3, idle=0.2, stall=0.3)
    assert got == expected_beats(layer, 4, x)


@pytest.mark.parametrize("storage", ["const", "lut", "bram"])
def test_storage_scores_mode(storage):
    rng = np.random.default_rng(17)
    layer = random_layer(rng, 10, 24, scores=True)
    x = rng.integers(0, 2, (12, 24))
    x[0] = layer.weights[0]
    _, got, _, _ = simulate(layer, 10, 24, 24, x, seed=5, idle=0.2, stall=0.5, storage=storage)
    assert got == expected_beats(layer, 10, x)


def test_storage_rule():
    assert weight_storage(1) == "const"
    assert weight_storage(2) == "lut"
    assert weight_storage(LUT_MAX_DEPTH) == "lut"
    assert weight_storage(LUT_MAX_DEPTH + 1) == "bram"
    with pytest.raises(ValueError, match="fold depth 0"):
        weight_storage(0)
    layer = random_layer(np.random.default_rng(0), 12, 24)
    assert MVTU(layer, 12, 24, 8).weight_storage == "const"
    assert MVTU(layer, 4, 8, 8).weight_storage == "lut"
    assert MVTU(layer, 1, 1, 8).weight_storage == "bram"
    with pytest.raises(ValueError, match="layer fc: weight storage 'rom' is not one of"):
        MVTU(layer, 4, 8, 8, weight_storage="rom")
    with pytest.raises(ValueError, match="layer fc: constant weights need a fold depth of 1"):
        MVTU(layer, 4, 8, 8, weight_storage="const")


@pytest.mark.parametrize(("steps", "sf"), [(1, 1), (2, 2), (64, 2), (6, 3)])
def test_load_lookahead_ignores_completion_without_shifting(steps, sf):
    """The MVTU registers its load decision for each value of the credit refund, and for a
    completion only where loads may shift: elsewhere a completing beat is taken only while
    the fill register is empty or being loaded, which already rules the load out, so the
    decision for "not completing" is the exact one. Checked over every state."""
    for bits in range(1 << 10):
        s = _IssueState(*((bits >> k) & 1 for k in range(10)))
        for refund in (0, 1):
            for completing in (0, 1):
                if completing and s.full and not s.load:
                    continue  # i.ready = ~full | load: no beat is taken
                exact = _issue(s, refund, completing, steps, sf, False, mux=_int_mux)
                ahead = _issue(s, refund, 0, steps, sf, False, mux=_int_mux)
                assert exact.load == ahead.load, (s, refund, completing)
                assert exact.load in (0, 1)


def test_rom_value_exhaustive():
    words = [0b1011, 0b0110, 0b0001, 0b1111, 0b0000, 0b1000, 0b0101]
    m = Module()
    addr = Signal(range(len(words)))
    o = Signal(4)
    m.d.comb += o.eq(rom_value(words, 4, addr))

    async def bench(ctx):
        for a, w in enumerate(words):
            ctx.set(addr, a)
            assert ctx.get(o) == w

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize(("n", "signed_terms"), [(1, False), (7, False), (64, False),
                                                  (300, False), (9, True)])
def test_adder_tree_pipelined_with_stalls(n, signed_terms):
    """The pipelined tree against Python's sum, its registers held while ``en`` is low."""
    assert tree_levels(n) == (n - 1).bit_length()
    stages = tree_stages(n)
    # two adder levels per stage
    assert stages == {1: 1, 7: 2, 9: 2, 64: 3, 300: 5}[n]
    lo, hi = (-8, 8) if signed_terms else (0, 2)
    m = Module()
    en = Signal()
    ins = [Signal(range(lo, hi), name=f"t{i}") for i in range(n)]
    total = adder_tree(m, en, ins, range(lo * n, (hi - 1) * n + 1), "t")
    rng = random.Random(n)
    vectors = [[rng.randrange(lo, hi) for _ in range(n)] for _ in range(12)]

    async def bench(ctx):
        # One input vector per enabled cycle; the sum of the vector applied `stages` enabled
        # cycles earlier must then be at the output, whatever the disabled cycles in between.
        applied, seen = [], []
        k = 0
        while len(seen) < len(vectors) - stages:
            enable = rng.random() < 0.6
            if enable and k < len(vectors):
                for s, v in zip(ins, vectors[k], strict=True):
                    ctx.set(s, v)
            ctx.set(en, enable)
            await ctx.tick()
            if enable:
                applied.append(sum(vectors[k]) if k < len(vectors) else None)
                k += 1
                if len(applied) >= stages:
                    seen.append(ctx.get(total))
        assert seen == applied[:len(seen)]

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_popcount_exhaustive():
    """The adder tree against Python's bit count, for every width up to 9 and every value."""
    for width in range(1, 10):
        m = Module()
        i = Signal(width)
        o = Signal(popcount_width(width))
        m.d.comb += o.eq(popcount(i))

        async def bench(ctx, i=i, o=o, width=width):
            for v in range(1 << width):
                ctx.set(i, v)
                assert ctx.get(o) == bin(v).count("1")

        sim = Simulator(m)
        sim.add_testbench(bench)
        sim.run()


def test_xnor_pairs_exhaustive():
    """The pair counts of xnor_pairs add up to the matches of w and x, for every w and x up to
    4 bits and random ones of 9 and 10; each pair term is at most 2 bits."""
    rng = random.Random(3)
    for width in (1, 2, 3, 4, 9, 10):
        m = Module()
        w, x = Signal(width), Signal(width)
        terms = xnor_pairs(w, x)
        assert len(terms) == -(-width // 2) and all(len(t) <= 2 for t in terms)
        o = Signal(popcount_width(width))
        m.d.comb += o.eq(sum(terms))
        cases = ([(a, b) for a in range(1 << width) for b in range(1 << width)] if width <= 4
                 else [(rng.getrandbits(width), rng.getrandbits(width)) for _ in range(300)])

        async def bench(ctx, w=w, x=x, o=o, width=width, cases=cases):
            for a, b in cases:
                ctx.set(w, a)
                ctx.set(x, b)
                assert ctx.get(o) == width - bin(a ^ b).count("1")

        sim = Simulator(m)
        sim.add_testbench(bench)
        sim.run()


class _Misbehaving(wiring.Component):
    """Drops valid and changes the payload without waiting for ready."""

    def __init__(self):
        super().__init__({"o_stream": Out(stream.Signature(beat_layout(4)))})

    def elaborate(self, platform):
        m = Module()
        count = Signal(4)
        m.d.sync += count.eq(count + 1)
        m.d.comb += [self.o_stream.valid.eq(count[1]), self.o_stream.p.data.eq(count)]
        return m


def test_rule_checker_catches_violation():
    dut = _Misbehaving()

    # The checker alone, as the critical testbench: it must end the simulation by failing.
    with pytest.raises(AssertionError, match="bad: .* before"):
        run(dut, rule_checker(dut.o_stream, "bad"))


def test_valid_and_payload_hold_under_backpressure():
    """Heavy back-pressure on the output: every offered beat must wait unchanged."""
    rng = np.random.default_rng(5)
    layer = random_layer(rng, 8, 16)
    x = rng.integers(0, 2, (12, 16))
    _, got, _, _ = simulate(layer, 2, 4, 8, x, seed=9, stall=0.85)
    assert got == expected_beats(layer, 2, x)
