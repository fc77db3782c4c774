# amaranth: UnusedElaboratable=no
"""Amaranth-simulator tests of the UART (hw/uart.py): loopback, bit timing, framing errors."""

import random
from fractions import Fraction

import pytest
from amaranth.hdl import Module
from streams import recv, run, send

from bnnflow.hw.uart import UARTRx, UARTTx, baud_divisor

DIVISOR = 8


async def drive_byte(ctx, pin, byte, period, stop=1):
    """Bit-bang one 8N1 byte (``stop`` as the stop bit) with ``period`` cycles per bit."""
    for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [stop]:
        ctx.set(pin, bit)
        await ctx.tick().repeat(period)
    ctx.set(pin, 1)


async def sample_byte(ctx, pin, period):
    """Wait for a start bit on ``pin`` and decode one byte, sampling mid-bit."""
    await ctx.tick().until(pin == 0)
    await ctx.tick().repeat(period // 2)
    assert ctx.get(pin) == 0, "start bit shorter than half a bit"
    byte = 0
    for i in range(8):
        await ctx.tick().repeat(period)
        byte |= ctx.get(pin) << i
    await ctx.tick().repeat(period)
    assert ctx.get(pin) == 1, "stop bit is not 1"
    return byte


def test_loopback_random_bytes():
    rng = random.Random(1)
    data = [rng.randrange(256) for _ in range(40)] + [0x00, 0xFF, 0x55, 0xAA]
    m = Module()
    m.submodules.tx = tx = UARTTx(DIVISOR)
    m.submodules.rx = rx = UARTRx(DIVISOR)
    m.d.comb += rx.rx.eq(tx.tx)
    got, errors = [], []

    async def source(ctx):
        await send(ctx, tx.i, [{"data": b} for b in data], rng=rng, idle=0.3)

    async def sink(ctx):
        got.extend(p.data for p in await recv(ctx, rx.o, len(data), rng=rng, stall=0.5))

    async def monitor(ctx):
        async for _, _, err, ovr in ctx.tick().sample(rx.error, rx.overrun):
            if err or ovr:
                errors.append((err, ovr))

    run(m, source, sink, checked=[tx.i, rx.o], background=[monitor])
    assert got == data
    assert errors == []


@pytest.mark.parametrize("period", [31, 32, 33])
def test_rx_tolerates_baud_mismatch(period):
    # +-3 % drifts less than half a bit by the stop bit when sampling mid-bit.
    rng = random.Random(period)
    data = [rng.randrange(256) for _ in range(12)]
    dut = UARTRx(32)

    async def line(ctx):
        ctx.set(dut.rx, 1)
        for byte in data:
            await ctx.tick().repeat(rng.randrange(1, 20))
            await drive_byte(ctx, dut.rx, byte, period)

    got = []

    async def sink(ctx):
        got.extend(p.data for p in await recv(ctx, dut.o, len(data)))

    run(dut, line, sink, checked=[dut.o])
    assert got == data


def test_rx_framing_error_drops_byte():
    dut = UARTRx(DIVISOR)
    errors = []

    async def line(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(5)
        await drive_byte(ctx, dut.rx, 0x3C, DIVISOR, stop=0)
        await ctx.tick().repeat(3 * DIVISOR)  # the line recovers; the receiver waits for it
        await drive_byte(ctx, dut.rx, 0xA5, DIVISOR)

    async def monitor(ctx):
        async for _, _, err in ctx.tick().sample(dut.error):
            if err:
                errors.append(err)

    got = []

    async def sink(ctx):
        got.extend(p.data for p in await recv(ctx, dut.o, 1))

    run(dut, line, sink, checked=[dut.o], background=[monitor])
    assert got == [0xA5]
    assert errors == [1]


def test_rx_ignores_glitch():
    dut = UARTRx(DIVISOR)

    async def line(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(5)
        ctx.set(dut.rx, 0)  # a low pulse of 2 cycles (< half a bit) is not a start bit
        await ctx.tick().repeat(2)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(2 * DIVISOR)
        await drive_byte(ctx, dut.rx, 0x7E, DIVISOR)

    got = []

    async def sink(ctx):
        got.extend(p.data for p in await recv(ctx, dut.o, 1))

    run(dut, line, sink)
    assert got == [0x7E]


def test_tx_bit_timing():
    rng = random.Random(7)
    data = [rng.randrange(256) for _ in range(6)]
    dut = UARTTx(DIVISOR)
    got = []

    async def source(ctx):
        await send(ctx, dut.i, [{"data": b} for b in data], rng=rng, idle=0.5)

    async def line(ctx):
        for _ in data:
            got.append(await sample_byte(ctx, dut.tx, DIVISOR))

    run(dut, source, line, checked=[dut.i])
    assert got == data


def test_divisor_must_allow_mid_bit_sampling():
    with pytest.raises(ValueError, match="divisor"):
        UARTTx(2)


async def drive_bytes_at(ctx, pin, data, period):
    """Bit-bang bytes back to back with a possibly fractional ``period``: every edge at the
    cycle nearest to where an ideal UART puts it."""
    edges = []
    for byte in data:
        edges += [0] + [(byte >> i) & 1 for i in range(8)] + [1]
    now = 0
    for k, bit in enumerate(edges):
        ctx.set(pin, bit)
        until = round((k + 1) * period)
        await ctx.tick().repeat(until - now)
        now = until


def receive(divisor, period, data):
    dut = UARTRx(divisor)
    got, errors = [], []

    async def line(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(7)
        await drive_bytes_at(ctx, dut.rx, data, period)
        await ctx.tick().repeat(4 * int(period) + 8)

    async def sink(ctx):
        async for _, _, valid, payload, err in ctx.tick().sample(dut.o.valid, dut.o.payload,
                                                                 dut.error):
            ctx.set(dut.o.ready, 1)
            if valid:
                got.append(payload.data)
            if err:
                errors.append(1)

    run(dut, line, background=[sink])
    return got, errors


def test_3_mbaud_at_25_mhz_needs_the_fractional_divisor():
    data = [0x00, 0xFF, 0x55, 0xAA, 0x80, 0x01, 0x7E, 0x7D] + list(range(0, 256, 17))
    # 25/3 clocks per bit is 3 Mbaud exactly: a 3 Mbaud bridge may be 3 % off either way.
    for error in (-0.03, 0, 0.03):
        assert receive(Fraction(25, 3), 25 / 3 * (1 + error), data) == (data, []), error
    # Divisor 8 is 3.125 Mbaud, fine within 3 % of that; a 3 Mbaud line is 4.2 % slower, at
    # the very edge of what the receiver takes: 1 % more and bytes are lost.
    for error in (-0.03, 0, 0.03):
        assert receive(8, 8 * (1 + error), data) == (data, []), error
    got, errors = receive(8, 25 / 3 * 1.01, data)
    assert got != data or errors


@pytest.mark.parametrize("divisor", [8, Fraction(25, 3), Fraction(48, 11)])
def test_tx_back_to_back_rate_is_exact(divisor):
    data = [0x00, 0xFF, 0x0F, 0xA5, 0x3C, 0x80]
    dut = UARTTx(divisor)
    levels = []

    async def source(ctx):
        await send(ctx, dut.i, [{"data": b} for b in data])
        # The last byte waits in the holding register while the one before it is sent.
        await ctx.tick().repeat(21 * int(divisor) + 2)

    async def line(ctx):
        async for _, _, tx in ctx.tick().sample(dut.tx):
            levels.append(tx)

    run(dut, source, background=[line])

    # Every edge is within one clock of the ideal UART's, with no idle time between bytes.
    bits = []
    for byte in data:
        bits += [0] + [(byte >> i) & 1 for i in range(8)] + [1]
    start = levels.index(0)
    for k, bit in enumerate(bits):
        lo, hi = start + float(k * divisor), start + float((k + 1) * divisor)
        for cycle in range(int(lo) + 1, int(hi) - 1):
            assert levels[cycle] == bit, (k, cycle)


def test_fractional_loopback():
    rng = random.Random(3)
    data = [rng.randrange(256) for _ in range(30)]
    m = Module()
    m.submodules.tx = tx = UARTTx(Fraction(25, 3))
    m.submodules.rx = rx = UARTRx(Fraction(25, 3))
    m.d.comb += rx.rx.eq(tx.tx)
    got = []

    async def source(ctx):
        await send(ctx, tx.i, [{"data": b} for b in data], rng=rng, idle=0.3)

    async def sink(ctx):
        got.extend(p.data for p in await recv(ctx, rx.o, len(data), rng=rng, stall=0.3))

    run(m, source, sink, checked=[tx.i, rx.o])
    assert got == data


def test_baud_divisor():
    assert baud_divisor(25e6, 1e6) == 25 and isinstance(baud_divisor(25e6, 1e6), int)
    assert baud_divisor(25e6, 3e6) == Fraction(25, 3)
    assert baud_divisor(25e6, 3e6, fractional=False) == 8
    assert baud_divisor(48e6, 3e6) == 16 and baud_divisor(12e6, 3e6) == 4
    with pytest.raises(ValueError, match="4 clocks per bit"):
        baud_divisor(12e6, 12e6)
    with pytest.raises(ValueError, match="denominator"):
        UARTRx(Fraction(1001, 100))
