"""Reusable Amaranth-simulator helpers for ``amaranth.lib.stream`` interfaces.

* :func:`send` drives beats into a stream with random idle cycles.
* :func:`recv` takes beats from a stream with random back-pressure, optionally recording the
  cycle of each transfer.
* :func:`rule_checker` returns a background testbench that fails the simulation when a stream
  breaks the rules: once ``valid`` is high it must stay high, with the same payload, until a
  transfer (``valid & ready``) happens.

All of them sample at the clock edge (``ctx.tick().sample(...)``), so they see exactly the
values the design's registers see, whatever order the testbenches run in.
"""

from __future__ import annotations

import random

from amaranth.hdl import Value
from amaranth.sim import Simulator

__all__ = ["send", "recv", "rule_checker", "run", "uart_send", "uart_recv"]


async def send(ctx, stream, beats, *, rng: random.Random | None = None, idle: float = 0.0,
               cycles: list[int] | None = None) -> None:
    """Transfer each of ``beats`` (ints or field dicts) into ``stream`` in order.

    Before each beat, with probability ``idle`` (repeated), the sender waits an idle cycle with
    ``valid`` low. When ``cycles`` is given, the cycle of each transfer, counted from the call
    like :func:`recv` counts, is appended to it.
    """
    cycle = 0
    for beat in beats:
        while rng is not None and rng.random() < idle:
            await ctx.tick()
            cycle += 1
        ctx.set(stream.payload, beat)
        ctx.set(stream.valid, 1)
        while True:
            _, _, ready = await ctx.tick().sample(stream.ready)
            cycle += 1
            if ready:
                break
        if cycles is not None:
            cycles.append(cycle - 1)
        ctx.set(stream.valid, 0)


async def recv(ctx, stream, count: int, *, rng: random.Random | None = None, stall: float = 0.0,
               cycles: list[int] | None = None) -> list:
    """Take ``count`` beats from ``stream``; each cycle ``ready`` is low with probability ``stall``.

    Returns the payloads (``data.Const`` views for layout payloads). When ``cycles`` is given,
    the cycle of each transfer, counted from the call, is appended to it.
    """
    out = []
    cycle = 0
    while len(out) < count:
        ready = rng is None or rng.random() >= stall
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if ready and valid:
            out.append(payload)
            if cycles is not None:
                cycles.append(cycle)
        cycle += 1
    ctx.set(stream.ready, 0)
    return out


def rule_checker(stream, name: str = "stream"):
    """A background testbench asserting the stream rules on ``stream`` every cycle."""
    payload_value = Value.cast(stream.payload)

    async def checker(ctx):
        held = None  # payload offered but not taken at the previous edge
        async for _, rst, valid, ready, payload in ctx.tick().sample(
                stream.valid, stream.ready, payload_value):
            if rst:
                held = None
                continue
            if held is not None:
                assert valid, f"{name}: valid fell before the payload was transferred"
                assert payload == held, (f"{name}: payload changed from {held:#x} to "
                                         f"{payload:#x} before it was transferred")
            held = payload if valid and not ready else None

    return checker


def run(dut, *testbenches, checked=(), background=(), vcd: str | None = None) -> None:
    """Simulate ``dut`` (10 ns ``sync`` clock) until every testbench in ``testbenches`` returns.

    ``checked`` streams get a :func:`rule_checker` each; ``background`` testbenches run beside.
    """
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in testbenches:
        sim.add_testbench(tb)
    for tb in background:
        sim.add_testbench(tb, background=True)
    for index, stream in enumerate(checked):
        sim.add_testbench(rule_checker(stream, f"stream {index}"), background=True)
    if vcd is None:
        sim.run()
    else:
        with sim.write_vcd(vcd):
            sim.run()


async def uart_send(ctx, pin, data, divisor):
    for byte in data:
        for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
            ctx.set(pin, bit)
            await ctx.tick().repeat(divisor)


async def uart_recv(ctx, pin, divisor):
    """One byte from ``pin``; returns it and the cycles waited for its start bit."""
    waited = 0
    while True:
        _, _, level = await ctx.tick().sample(pin)
        if not level:
            break
        waited += 1
    await ctx.tick().repeat(divisor // 2)
    byte = 0
    for i in range(8):
        await ctx.tick().repeat(divisor)
        byte |= ctx.get(pin) << i
    await ctx.tick().repeat(divisor)
    assert ctx.get(pin) == 1
    return byte, waited
