"""Amaranth-simulator tests of the whole core (hw/core.py) against ``reference.run``."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Fragment, Module, Signal
from streams import recv, run, send

from bnnflow import packing, reference
from bnnflow.folding import Folding, LayerFold, default_folding
from bnnflow.hw.core import (
    BnnCore,
    generate_verilog,
    input_layout,
    latency,
    output_layout,
    score_bits,
    storage_plan,
)
from bnnflow.hw.storage import ebr_count
from bnnflow.ir import Dense, InputSpec, Network, Thresholds


def random_network(rng: np.random.Generator, sizes: list[int]) -> Network:
    """A random network ``sizes[0] -> ... -> sizes[-1]`` with varied, reachable thresholds."""
    layers = []
    for k, (mw, mh) in enumerate(zip(sizes, sizes[1:], strict=False)):
        weights = rng.integers(0, 2, (mh, mw))
        th = None
        if k < len(sizes) - 2:
            t = np.clip(np.rint(rng.normal(mw / 2, np.sqrt(mw) / 2, mh)), 0, mw + 1)
            invert = rng.random(mh) < 0.3
            t[0], invert[0] = 0, False  # a constant-1 channel
            th = Thresholds(t.astype(np.int64), invert)
        layers.append(Dense(f"fc{k}", weights, th))
    return Network(InputSpec((sizes[0],), 1, 1.0, 1), tuple(layers))


def frame_beats(rng: np.random.Generator, bits: np.ndarray, width: int) -> list[dict]:
    """``s_axis`` beats of each frame; pad bits are random because the core must ignore them."""
    n = bits.shape[1]
    beats = -(-n // width)
    out = []
    for row in bits:
        padded = np.concatenate([row, rng.integers(0, 2, beats * width - n)])
        words = packing.pack_words(padded, width)
        out += [{"data": w, "last": int(k == beats - 1)} for k, w in enumerate(words)]
    return out


def simulate(net, folding, bits, *, in_width=8, seed=0, idle=0.0, stall=0.0, ebr_budget=None):
    """Run ``BnnCore`` on input bit rows; returns (classes, scores, out cycles, in cycles)."""
    dut = BnnCore(net, folding, in_width, ebr_budget)
    beats = frame_beats(np.random.default_rng(seed), bits, in_width)
    results, out_cycles, in_cycles = [], [], []

    async def source(ctx):
        await send(ctx, dut.s_axis, beats, rng=random.Random(seed), idle=idle, cycles=in_cycles)

    async def sink(ctx):
        results.extend(await recv(ctx, dut.m_axis, len(bits), rng=random.Random(seed + 1),
                                  stall=stall, cycles=out_cycles))

    run(dut, source, sink, checked=(dut.s_axis, dut.m_axis))
    assert all(r.last == 1 for r in results)
    classes = np.array([r.cls for r in results])
    scores = np.array([[r.scores[k] for k in range(net.num_classes)] for r in results])
    return classes, scores, out_cycles, in_cycles


def folding_of(net: Network, *pairs: tuple[int, int]) -> Folding:
    return Folding({layer.name: LayerFold(pe, simd)
                    for layer, (pe, simd) in zip(net.layers, pairs, strict=True)})


def test_layouts():
    rng = np.random.default_rng(0)
    net = random_network(rng, [32, 16, 10])
    assert input_layout(8).size == 9
    assert score_bits(net) == 6  # [-16, 16]
    out = output_layout(net)
    assert out.size == 4 + 10 * 6 + 1
    assert list(dict(out.members)) == ["cls", "scores", "last"]


@pytest.mark.parametrize("folds", [
    [(4, 8), (4, 4), (2, 8)],
    [(1, 32), (16, 1), (5, 16)],
    [(16, 32), (2, 2), (1, 1)],
])
def test_core_random_stalls(folds):
    rng = np.random.default_rng(len(str(folds)))
    net = random_network(rng, [32, 16, 16, 10])
    bits = rng.integers(0, 2, (32, 32))
    classes, scores, _, _ = simulate(net, folding_of(net, *folds), bits, seed=4,
                                     idle=0.3, stall=0.3)
    ref = reference.run(net, bits, bits=True)
    np.testing.assert_array_equal(scores, ref.scores)
    np.testing.assert_array_equal(classes, ref.classes)


def test_ties_take_first_maximum():
    """Duplicate rows in the final layer force exact ties; numpy's first-max rule must hold."""
    rng = np.random.default_rng(3)
    net = random_network(rng, [16, 8, 6])
    w = np.array(net.layers[-1].weights)
    w[3], w[5], w[4] = w[1], w[1], w[0]
    net = Network(net.input, (net.layers[0], Dense("fc1", w, None)))
    bits = rng.integers(0, 2, (30, 16))
    ref = reference.run(net, bits, bits=True)
    assert np.any(ref.scores[:, 1] == ref.scores[:, 3])
    for folds in ([(2, 4), (2, 8)], [(8, 16), (6, 8)], [(1, 16), (1, 1)]):
        classes, scores, _, _ = simulate(net, folding_of(net, *folds), bits, seed=1,
                                         idle=0.2, stall=0.2)
        np.testing.assert_array_equal(scores, ref.scores)
        np.testing.assert_array_equal(classes, ref.classes)


@pytest.mark.parametrize("in_width", [8, 5, 36])
def test_input_width_not_dividing(in_width):
    rng = np.random.default_rng(36)
    net = random_network(rng, [36, 12, 10])
    bits = rng.integers(0, 2, (30, 36))
    classes, scores, _, _ = simulate(net, folding_of(net, (3, 6), (2, 4)), bits,
                                     in_width=in_width, seed=2, idle=0.3, stall=0.3)
    ref = reference.run(net, bits, bits=True)
    np.testing.assert_array_equal(scores, ref.scores)
    np.testing.assert_array_equal(classes, ref.classes)


@pytest.mark.parametrize("sizes", [[32, 16, 16, 10], [64, 64, 64, 64, 10]])
def test_throughput_matches_model(sizes):
    rng = np.random.default_rng(9)
    net = random_network(rng, sizes)
    folding = default_folding(net)
    bits = rng.integers(0, 2, (40, sizes[0]))
    classes, scores, out_cycles, in_cycles = simulate(net, folding, bits)
    ref = reference.run(net, bits, bits=True)
    np.testing.assert_array_equal(scores, ref.scores)
    np.testing.assert_array_equal(classes, ref.classes)
    # With the input always valid and the output always ready the pipeline is exactly as fast
    # as its slowest layer: the spacing of results is the model's cycles per frame.
    per_frame = np.diff(out_cycles)
    assert np.all(per_frame == folding.cycles_per_frame(net))
    beats = -(-sizes[0] // 8)
    assert out_cycles[0] - in_cycles[beats - 1] == latency(net, folding)


@pytest.mark.parametrize("folds", [[(2, 128), (5, 32)], [(32, 16), (10, 32)]])
def test_latency_deep_adder_trees(folds):
    """Three-stage (SIMD 128) and differing adder trees: the latency model stays exact."""
    rng = np.random.default_rng(12)
    net = random_network(rng, [128, 32, 10])
    folding = folding_of(net, *folds)
    bits = rng.integers(0, 2, (10, 128))
    classes, scores, out_cycles, in_cycles = simulate(net, folding, bits)
    ref = reference.run(net, bits, bits=True)
    np.testing.assert_array_equal(scores, ref.scores)
    np.testing.assert_array_equal(classes, ref.classes)
    assert out_cycles[0] - in_cycles[128 // 8 - 1] == latency(net, folding)


def test_ebr_count():
    assert ebr_count(36, 512) == 1
    assert ebr_count(37, 512) == 2
    assert ebr_count(36, 513) == 2
    assert ebr_count(18, 1024) == 1
    assert ebr_count(1, 16384) == 1
    assert ebr_count(3584, 56) == 100  # SFC's first layer at PE 32, SIMD 112


def test_storage_plan_budget():
    """Shallow block-RAM layers move to LUT ROMs, shallowest first, until the budget fits."""
    rng = np.random.default_rng(2)
    net = random_network(rng, [784, 256, 256, 256, 10])
    folding = folding_of(net, (32, 112), (16, 128), (16, 128), (1, 64))
    plan, ebr = storage_plan(net, folding, 16)
    assert plan == dict.fromkeys(["fc0", "fc1", "fc2", "fc3"], "bram") and ebr > 208
    plan, ebr = storage_plan(net, folding, 16, ebr_budget=208)
    assert ebr <= 208
    assert plan["fc0"] == "bram" and sorted(plan.values()).count("lut") == 1
    plan, _ = storage_plan(net, folding, 16, ebr_budget=0)
    assert set(plan.values()) == {"lut"}


def test_core_with_budget_bit_exact():
    """A budget that demotes a layer changes its storage, never the results."""
    rng = np.random.default_rng(21)
    net = random_network(rng, [64, 32, 16, 10])
    folding = folding_of(net, (1, 4), (2, 8), (1, 8))
    plan, _ = storage_plan(net, folding, 8, ebr_budget=0)
    assert plan["fc0"] == "lut" and storage_plan(net, folding, 8)[0]["fc0"] == "bram"
    bits = rng.integers(0, 2, (4, 64))
    dut_results = []
    for budget in (None, 0):
        core = BnnCore(net, folding, 8, ebr_budget=budget)
        assert core.storages == storage_plan(net, folding, 8, budget)[0]
        top = core.elaborate(None)
        assert top.submodules["layer0"].weight_storage == core.storages["fc0"]
        Fragment.get(top, None)  # elaborates (and so uses) the MVTUs just built
        Fragment.get(core, None)
        dut_results.append(simulate(net, folding, bits, seed=1, idle=0.2, stall=0.2,
                                    ebr_budget=budget)[:2])
    ref = reference.run(net, bits, bits=True)
    for classes, scores in dut_results:
        np.testing.assert_array_equal(scores, ref.scores)
        np.testing.assert_array_equal(classes, ref.classes)


def test_generate_verilog(tmp_path):
    rng = np.random.default_rng(1)
    net = random_network(rng, [36, 12, 10])
    path = tmp_path / "core.v"
    generate_verilog(net, default_folding(net), path, in_width=8, name="bnn_core")
    text = path.read_text()
    assert "module bnn_core" in text
    for port in ("s_axis__payload", "s_axis__valid", "s_axis__ready", "m_axis__payload",
                 "m_axis__valid", "m_axis__ready", "clk", "rst"):
        assert port in text


def test_reset_tree_in_a_reset_less_domain():
    """On a board the ``sync`` domain has no reset and the blocks are reset only through the
    reset tree (``reset_req``, bnnflow.hw.resets). A request in the middle of a frame, with
    vectors half filled and results queued in every layer, must clear them all: the frames
    sent afterwards come out exact, and nothing from before."""
    rng = np.random.default_rng(31)
    net = random_network(rng, [32, 16, 16, 10])
    folding = folding_of(net, (4, 8), (2, 4), (2, 8))
    dut = BnnCore(net, folding, 8)
    top = Module()
    top.domains.sync = ClockDomain(reset_less=True)
    top.submodules.core = dut
    request = Signal()
    top.d.comb += dut.reset_req.eq(request)
    before = frame_beats(rng, rng.integers(0, 2, (6, 32)), 8)[:-2]
    bits = rng.integers(0, 2, (12, 32))
    after = frame_beats(rng, bits, 8)
    started, results = [], []

    async def source(ctx):
        for beat in before:  # the sink takes nothing yet: the pipeline fills and stalls
            ctx.set(dut.s_axis.payload, beat)
            ctx.set(dut.s_axis.valid, 1)
            await ctx.tick()
        ctx.set(dut.s_axis.valid, 0)
        ctx.set(request, 1)
        await ctx.tick()
        ctx.set(request, 0)
        await ctx.tick().repeat(2)  # the hops and the leaves: blocks leave reset now
        started.append(True)
        await send(ctx, dut.s_axis, after, rng=random.Random(2), idle=0.2)

    async def sink(ctx):
        while not started:
            await ctx.tick()
        results.extend(await recv(ctx, dut.m_axis, len(bits), rng=random.Random(3),
                                  stall=0.3))
        await ctx.tick().repeat(200)
        assert not ctx.get(dut.m_axis.valid), "a result from before the reset came out"

    run(top, source, sink)
    ref = reference.run(net, bits, bits=True)
    np.testing.assert_array_equal([r.cls for r in results], ref.classes)
    np.testing.assert_array_equal(
        [[r.scores[k] for k in range(net.num_classes)] for r in results], ref.scores)
