"""Amaranth-simulator tests of the conv blocks: sliding window, max-pool, integer-input MVTU."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from streams import recv, run, send

from bnnflow import packing, reference
from bnnflow.hw.mvtu import MVTU
from bnnflow.hw.pixels import PixelLevels
from bnnflow.hw.pool import MaxPoolUnit
from bnnflow.hw.swu import SlidingWindow
from bnnflow.ir import Conv, Dense, MaxPool, Thresholds


def pixel_beats(x: np.ndarray, elems: int, eb: int = 1) -> list[dict]:
    """Beats of frames ``x (N, C, H, W)`` of elements of ``eb`` bits: HWC, ``elems`` per beat."""
    out = []
    for frame in x:
        flat = frame.transpose(1, 2, 0).reshape(-1, elems).astype(np.int64) & ((1 << eb) - 1)
        out += [{"data": sum(int(v) << (j * eb) for j, v in enumerate(row)), "last": 0}
                for row in flat]
    return out


def im2col(x: np.ndarray, k: int, s: int, p: int, pad) -> np.ndarray:
    """numpy im2col ``(N, OH, OW, k, k, C)`` of ``(N, C, H, W)``, the window's (ky, kx, c)."""
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=pad)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return win.transpose(0, 2, 3, 4, 5, 1)


class Chain(wiring.Component):
    """Blocks connected in a row, as one component with the ends' streams."""

    def __init__(self, *blocks):
        self.blocks = blocks
        super().__init__({
            "i_stream": In(stream.Signature(blocks[0].i_stream.p.shape())),
            "o_stream": Out(stream.Signature(blocks[-1].o_stream.p.shape())),
        })

    def elaborate(self, platform):
        m = Module()
        upstream = wiring.flipped(self.i_stream)
        for k, block in enumerate(self.blocks):
            m.submodules[f"b{k}"] = block
            wiring.connect(m, upstream, block.i_stream)
            upstream = block.o_stream
        wiring.connect(m, upstream, wiring.flipped(self.o_stream))
        return m


def stream_through(dut, beats, n_out, *, seed=0, idle=0.3, stall=0.3):
    got, out_cycles = [], []

    async def source(ctx):
        await send(ctx, dut.i_stream, beats, rng=random.Random(seed), idle=idle)

    async def sink(ctx):
        got.extend(await recv(ctx, dut.o_stream, n_out, rng=random.Random(seed + 1), stall=stall,
                              cycles=out_cycles))

    run(dut, source, sink, checked=(dut.i_stream, dut.o_stream))
    return got, out_cycles


@pytest.mark.parametrize(("shape", "k", "s", "p", "pad", "elems"), [
    ((4, 6, 5), 3, 1, 1, 0, 2),  # -1 padding, two beats per pixel
    ((2, 7, 7), 3, 2, 1, 1, 2),  # stride 2, +1 padding
    ((3, 5, 6), 2, 2, 0, 0, 1),  # pooling geometry, unused bottom row
    ((1, 6, 6), 5, 1, 2, 1, 1),  # padding 2 on a 5x5 kernel
    ((8, 4, 4), 1, 1, 0, 0, 8),  # 1x1
])
def test_sliding_window_matches_im2col(shape, k, s, p, pad, elems):
    rng = np.random.default_rng(sum(shape) + k * 10 + s)
    x = rng.integers(0, 2, (3, *shape))
    dut = SlidingWindow(shape, k, s, p, pad, elems)
    cols = im2col(x, k, s, p, pad)
    n, oh, ow = cols.shape[:3]
    assert (oh, ow) == (dut.oh, dut.ow)
    expected = pixel_beats(cols.reshape(n * oh * ow * k * k, shape[0], 1, 1), elems)
    got, _ = stream_through(dut, pixel_beats(x, elems), len(expected), seed=k + s + p)
    assert [int(g.data) for g in got] == [e["data"] for e in expected]
    assert [int(g.last) for g in got] == [int((j + 1) % dut.window_beats == 0)
                                          for j in range(len(got))]


def test_sliding_window_integer_levels_zero_pad():
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (2, 3, 5, 5))
    dut = SlidingWindow((3, 5, 5), 3, 1, 1, 0, 3, elem_bits=8)
    cols = im2col(x, 3, 1, 1, 0)
    expected = pixel_beats(cols.reshape(-1, 3, 1, 1), 3, 8)
    got, _ = stream_through(dut, pixel_beats(x, 3, 8), len(expected), seed=5)
    assert [int(g.data) for g in got] == [e["data"] for e in expected]


def test_sliding_window_full_rate():
    """No idle input, no back-pressure: one window beat per cycle after the first rows."""
    x = np.random.default_rng(0).integers(0, 2, (4, 4, 8, 8))
    dut = SlidingWindow((4, 8, 8), 3, 1, 1, 0, 4)
    expected = len(x) * dut.cycles
    _, cycles = stream_through(dut, pixel_beats(x, 4), expected, idle=0.0, stall=0.0)
    per_frame = np.diff(cycles[::dut.cycles])
    assert np.all(per_frame[1:] == dut.cycles)


@pytest.mark.parametrize(("shape", "k", "s", "elems"), [
    ((4, 6, 6), 2, 2, 2), ((3, 7, 5), 3, 2, 1), ((8, 4, 4), 2, 1, 8),
])
def test_max_pool(shape, k, s, elems):
    rng = np.random.default_rng(k + s + elems)
    x = (rng.random((4, *shape)) < 0.25).astype(np.uint8)  # mostly -1, so OR is not trivial
    layer = MaxPool("pool", shape, k, s)
    dut = MaxPoolUnit(shape, k, s, elems)
    want = reference._maxpool(x, layer)
    expected = pixel_beats(want, elems)
    got, _ = stream_through(dut, pixel_beats(x, elems), len(expected), seed=3)
    assert [int(g.data) for g in got] == [e["data"] for e in expected]


def test_max_pool_full_rate():
    """No idle input, no back-pressure: the OR-reduce passes one window beat per cycle, so the
    pool's frames come as fast as its sliding window's beats (overlapping windows, so the
    window's beats and not the input bound the rate)."""
    shape, k, s, elems = (8, 6, 6), 2, 1, 2
    x = (np.random.default_rng(1).random((4, *shape)) < 0.25).astype(np.uint8)
    dut = MaxPoolUnit(shape, k, s, elems)
    want = pixel_beats(reference._maxpool(x, MaxPool("pool", shape, k, s)), elems)
    got, cycles = stream_through(dut, pixel_beats(x, elems), len(want), idle=0.0, stall=0.0)
    assert [int(g.data) for g in got] == [e["data"] for e in want]
    window = SlidingWindow(shape, k, s, 0, 0, elems)
    _, w_cycles = stream_through(window, pixel_beats(x, elems), len(x) * window.cycles,
                                 idle=0.0, stall=0.0)
    pool_frames = np.diff(cycles[::len(want) // len(x)])
    window_frames = np.diff(w_cycles[::window.cycles])
    assert list(pool_frames) == list(window_frames)
    assert np.all(window_frames >= window.cycles)


def test_pixel_levels():
    levels = np.arange(256) - 100
    dut = PixelLevels(levels, 2, 8)
    px = np.random.default_rng(0).integers(0, 256, (40, 2))
    beats = [{"data": int(a) | int(b) << 8, "last": 0} for a, b in px]
    got, _ = stream_through(dut, beats, len(beats))
    eb = dut.level_bits
    want = [(int(levels[a]) & ((1 << eb) - 1)) | (int(levels[b]) & ((1 << eb) - 1)) << eb
            for a, b in px]
    assert [int(g.data) for g in got] == want


@pytest.mark.parametrize(("pe", "simd", "elems", "lo", "hi"), [
    (2, 9, 3, -100, 100), (4, 3, 1, -100, 100), (8, 27, 3, -100, 100),
    (4, 9, 3, -128, 127),  # the full 8-bit range
])
def test_integer_input_conv_layer(pe, simd, elems, lo, hi):
    """SWU + integer MVTU against ``reference.accumulate`` + thresholds, on signed levels."""
    rng = np.random.default_rng(pe * simd)
    oc, shape, k = 8, (3, 6, 6), 3
    w = rng.integers(0, 2, (oc, 3, k, k))
    bound = max(-lo, hi) * 27
    t = rng.integers(-400, 400, oc)
    t[:3] = [-bound - 50, bound + 50, 0]  # clipped thresholds: constant channels
    layer = Conv("c", w, Thresholds(t, rng.random(oc) < 0.3), shape, 1, 1, 0, True)
    x = rng.integers(lo, hi + 1, (3, *shape))
    x[0, :2, :2] = lo  # the most negative level in every tap position of some windows
    eb = packing.level_bits(range(lo, hi + 1))
    swu = SlidingWindow(shape, k, 1, 1, 0, elems, eb)
    dense = Dense("c", packing.conv_weight_matrix(layer), layer.thresholds, True)
    mvtu = MVTU(dense, pe, simd, elems * eb, eb, max(-lo, hi))
    n_pixels = len(x) * 36
    got, _ = stream_through(Chain(swu, mvtu), pixel_beats(x, elems, eb), n_pixels * oc // pe,
                            seed=pe)
    bits = layer.thresholds.apply(reference.accumulate(layer, x))  # (N, OH, OW, OC)
    want = [sum(int(v) << q for q, v in enumerate(px[g * pe:(g + 1) * pe]))
            for px in bits.reshape(-1, oc) for g in range(oc // pe)]
    assert [int(g.data) for g in got] == want
