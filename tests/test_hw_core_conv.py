"""Amaranth-simulator tests of BnnCore on convolutional networks against ``reference.run``."""

from __future__ import annotations

import random

import numpy as np
import pytest
from netutil import random_conv_net
from streams import recv, run, send

from bnnflow import packing, reference
from bnnflow.folding import Folding, LayerFold, default_folding
from bnnflow.hw.core import BnnCore

LEVELS = tuple(int(v) for v in np.rint((np.arange(256) - 127.5) / 2))  # signed, 8-bit pixels

SMALL = [("conv", 8, 3, 1, 1, 0), ("pool", 2, 2), ("conv", 8, 3, 1, 1, -1),
         ("conv", 16, 3, 2, 1, 1), ("dense", 12), ("dense", 10)]


def simulate(net, folding, pixels, *, in_width=8, seed=0, idle=0.0, stall=0.0):
    """Run BnnCore on pixels (integer-input) or bits; returns classes, scores, result cycles."""
    dut = BnnCore(net, folding, in_width)
    if net.input.binary:
        flat = reference.binarize(net, pixels).reshape(len(pixels), *net.input.shape)
        flat = packing.frame_pixels(net, flat)
        words = [packing.pack_words(row, in_width) for row in flat]
    else:
        pb = packing.pixel_bits(net.input.pixel_max)
        per = in_width // pb
        words = [[sum(int(v) << (j * pb) for j, v in enumerate(row[i:i + per]))
                  for i in range(0, len(row), per)] for row in packing.frame_pixels(net, pixels)]
    beats = [{"data": w, "last": int(k == len(f) - 1)} for f in words for k, w in enumerate(f)]
    results, cycles = [], []

    async def source(ctx):
        await send(ctx, dut.s_axis, beats, rng=random.Random(seed), idle=idle)

    async def sink(ctx):
        results.extend(await recv(ctx, dut.m_axis, len(pixels), rng=random.Random(seed + 1),
                                  stall=stall, cycles=cycles))

    run(dut, source, sink, checked=(dut.s_axis, dut.m_axis))
    classes = np.array([r.cls for r in results])
    scores = np.array([[r.scores[k] for k in range(net.num_classes)] for r in results])
    return classes, scores, cycles


def check(net, folding, pixels, **kw):
    classes, scores, cycles = simulate(net, folding, pixels, **kw)
    ref = reference.run(net, pixels)
    np.testing.assert_array_equal(scores, ref.scores)
    np.testing.assert_array_equal(classes, ref.classes)
    return cycles


@pytest.mark.parametrize("folds", [
    [(2, 3), (4, 8), (4, 9), (3, 16), (2, 4)],
    [(8, 9), (1, 72), (16, 2), (12, 64), (5, 12)],
])
def test_integer_conv_net_random_stalls(folds):
    net = random_conv_net((1, 8, 8), SMALL, seed=len(str(folds)), levels=LEVELS)
    names = [layer.name for layer in net.layers if not layer.name.startswith("pool")]
    folding = Folding({n: LayerFold(*f) for n, f in zip(names, folds, strict=True)})
    pixels = np.random.default_rng(1).integers(0, 256, (12, 1, 8, 8))
    check(net, folding, pixels, seed=3, idle=0.3, stall=0.3)


def test_integer_conv_net_two_pixels_per_beat():
    net = random_conv_net((2, 6, 6), [("conv", 4, 3, 1, 0, 0), ("dense", 10)], seed=4,
                          levels=LEVELS)
    pixels = np.random.default_rng(2).integers(0, 256, (10, 2, 6, 6))
    check(net, default_folding(net, in_elems=2), pixels, in_width=16, seed=1, idle=0.3,
          stall=0.3)


def test_binary_conv_net():
    net = random_conv_net((4, 6, 6), [("conv", 8, 3, 1, 1, 1), ("pool", 2, 2),
                                      ("dense", 10)], seed=7)
    pixels = np.random.default_rng(3).integers(0, 256, (10, 4, 6, 6))
    check(net, default_folding(net, in_elems=4), pixels, in_width=4, seed=2, idle=0.3,
          stall=0.3)


def test_integer_dense_first_layer():
    net = random_conv_net((20,), [("dense", 8), ("dense", 10)], seed=5, levels=LEVELS)
    pixels = np.random.default_rng(4).integers(0, 256, (16, 20))
    check(net, Folding({"fc0": LayerFold(2, 5), "fc1": LayerFold(5, 4)}), pixels, seed=5,
          idle=0.3, stall=0.3)


def test_throughput_matches_model():
    net = random_conv_net((1, 8, 8), SMALL, seed=9, levels=LEVELS)
    folding = default_folding(net, 200)
    pixels = np.random.default_rng(5).integers(0, 256, (8, 1, 8, 8))
    cycles = check(net, folding, pixels)
    per_frame = np.diff(cycles)[2:]
    predicted = folding.cycles_per_frame(net)
    assert np.all(np.abs(per_frame - predicted) <= 0.05 * predicted), (per_frame, predicted)
