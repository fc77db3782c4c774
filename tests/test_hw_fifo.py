"""The row FIFO (:class:`bnnflow.hw.fifo.RowFifo`) in the Amaranth simulator."""

from __future__ import annotations

import random

import pytest
from streams import recv, run, send

from bnnflow.hw.fifo import QUEUE_DEPTH, RowFifo


def _beats(n: int, width: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"data": rng.getrandbits(width), "last": rng.random() < 0.2} for _ in range(n)]


def _through(dut, beats, *, seed=0, idle=0.0, stall=0.0, wait=0):
    """Send ``beats`` and take as many; the sink starts ``wait`` cycles late. Returns the
    payloads out and the cycles of the input and output transfers."""
    got, in_cycles, out_cycles = [], [], []

    async def source(ctx):
        await send(ctx, dut.i_stream, beats, rng=random.Random(seed), idle=idle,
                   cycles=in_cycles)

    async def sink(ctx):
        await ctx.tick().repeat(wait) if wait else None
        got.extend(await recv(ctx, dut.o_stream, len(beats), rng=random.Random(seed + 1),
                              stall=stall, cycles=out_cycles))
        out_cycles[:] = [c + wait for c in out_cycles]

    run(dut, source, sink, checked=(dut.i_stream, dut.o_stream))
    return [{"data": int(g.data), "last": bool(g.last)} for g in got], in_cycles, out_cycles


@pytest.mark.parametrize(("width", "depth"), [(1, 2), (9, 5), (20, 16), (37, 64)])
@pytest.mark.parametrize(("idle", "stall"), [(0.3, 0.3), (0.0, 0.6), (0.6, 0.0)])
def test_fifo_in_order_under_stalls(width, depth, idle, stall):
    """Every beat, data and ``last``, in order, with random idle input and back-pressure;
    both streams keep the rules (a valid beat stays until it is taken)."""
    beats = _beats(300, width, width + depth)
    got, _, _ = _through(RowFifo(width, depth), beats, seed=depth, idle=idle, stall=stall)
    assert got == beats


def test_fifo_full_rate():
    """No idle input, no back-pressure: a beat in and a beat out every cycle, five cycles
    apart, and the input never waits."""
    beats = _beats(200, 8, 1)
    got, ins, outs = _through(RowFifo(8, 16), beats)
    assert got == beats
    assert ins == list(range(len(beats)))
    assert outs == [c + 5 for c in ins]


@pytest.mark.parametrize("depth", [2, 7, 30])
def test_fifo_holds_depth_plus_queue(depth):
    """With the output blocked the FIFO takes its block RAM's ``depth`` beats and its output
    queue's :data:`QUEUE_DEPTH`, then holds ``ready`` low; nothing is lost."""
    beats = _beats(depth + QUEUE_DEPTH + 20, 6, depth)
    wait = 3 * len(beats)
    got, ins, _ = _through(RowFifo(6, depth), beats, wait=wait)
    assert got == beats
    assert sum(c < wait for c in ins) == depth + QUEUE_DEPTH


def test_fifo_rejects_bad_shape():
    with pytest.raises(ValueError, match="FIFO of 8 bits x 1 beats"):
        RowFifo(8, 1)
