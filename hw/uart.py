"""8N1 UART receiver and transmitter with byte streams.

Both take ``divisor``, the clock cycles per bit ``clk_hz / baud``: an integer, or a
:class:`~fractions.Fraction` for rates the clock does not divide. A fractional divisor ``p/q``
runs a phase accumulator (``+q`` per cycle, a bit boundary whenever it reaches ``p``), so bits
last ``floor(p/q)`` or ``ceil(p/q)`` cycles and the average rate is exact; every edge is within
one clock of where an ideal UART puts it. The receiver synchronizes the pin through two
flip-flops, samples each bit in its middle, and reports a stop bit of 0 as a framing error
(dropping the byte), so a glitch or a baud mismatch never produces a plausible-looking byte.
The transmitter sends back-to-back bytes with no idle time between a stop bit and the next
start bit.

Achievable rates (divisor at least 4). The receiver accepts a sender off by about +-4 % in
simulation (-5 %..+4 % at 8 clocks per bit, less margin at smaller divisors since the start
edge is found to within one clock); allow for the bridge's own error on a board:

============  ==========================  ==============================================
clock         integer divisors            fractional divisors
============  ==========================  ==============================================
12 MHz        4: 3 Mbaud, 12: 1 Mbaud     any rate up to 3 Mbaud
25 MHz        8: 3.125 Mbaud (3 Mbaud is  25/3: 3 Mbaud exactly (the FT231X's maximum on
              4.2 % slower: no margin),   the ULX3S); any rate up to 6.25 Mbaud
              25: 1 Mbaud, 217: 115200
48 MHz        16: 3 Mbaud, 48: 1 Mbaud    any rate up to 12 Mbaud
============  ==========================  ==============================================

:func:`baud_divisor` picks the divisor for a clock and a rate.
"""

from fractions import Fraction

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["ByteLayout", "baud_divisor", "UARTRx", "UARTTx"]

#: Payload of every byte stream in the host link.
ByteLayout = data.StructLayout({"data": 8})

_MAX_DENOMINATOR = 64
_LAG = 1


def _check_divisor(divisor) -> Fraction:
    if isinstance(divisor, bool) or not isinstance(divisor, int | Fraction):
        raise ValueError(f"UART divisor must be an int or a Fraction, got {divisor!r}")
    divisor = Fraction(divisor)
    if divisor < 4 or divisor.denominator > _MAX_DENOMINATOR:
        raise ValueError(f"UART divisor must be >= 4 clocks per bit with a denominator of at "
                         f"most {_MAX_DENOMINATOR}, got {divisor}")
    return divisor


def baud_divisor(clk_hz, baud, *, fractional: bool = True):
    """Clock cycles per bit for ``baud`` at ``clk_hz``.

    Parameters
    ----------
    clk_hz, baud : float
        Clock frequency and baud rate in Hz.
    fractional : bool
        If False, round to the nearest integer divisor (the rate is then off by up to half a
        clock per bit); otherwise an exact :class:`~fractions.Fraction` when the clock does
        not divide the rate (denominator at most 64).

    Returns
    -------
    int or fractions.Fraction
    """
    ratio = Fraction(clk_hz) / Fraction(baud)
    ratio = round(ratio) if not fractional else ratio.limit_denominator(_MAX_DENOMINATOR)
    if ratio.denominator == 1:
        ratio = int(ratio)
    if ratio < 4:
        raise ValueError(f"{baud} baud needs at least 4 clocks per bit: {clk_hz / 4:.0f} Hz at "
                         f"most at {clk_hz} Hz")
    return ratio


def _bit_timer(m, divisor: Fraction, run):
    """A phase accumulator ticking once per bit (on average) while ``run``; returns
    ``(phase, tick)``. Set ``phase`` to ``p - x`` for a first tick after ``ceil(x/q)``
    cycles."""
    p, q = divisor.numerator, divisor.denominator
    phase = Signal(range(p + q))
    # One adder, its sign the tick: ``phase + q - p`` is the next phase after a tick, and
    # ``phase + q`` (the other candidate, from a parallel adder) the next one otherwise.
    wrapped = Signal(signed(len(phase) + 1))
    tick = Signal()
    m.d.comb += [wrapped.eq(phase + (q - p)), tick.eq(run & ~wrapped[-1])]
    with m.If(run):
        m.d.sync += phase.eq(Mux(wrapped[-1], phase + q, wrapped))
    return phase, tick


class UARTRx(wiring.Component):
    """UART receiver, 8N1.

    Parameters
    ----------
    divisor : int or fractions.Fraction
        Clock cycles per bit, at least 4.

    Attributes
    ----------
    rx : In(1)
        The serial line (idle high); asynchronous to the clock.
    o : Out(stream.Signature(ByteLayout))
        Received bytes. A byte that completes while the previous one is still waiting is
        dropped and reported on ``overrun``.
    error : Out(1)
        One-cycle pulse on a framing error (stop bit 0).
    overrun : Out(1)
        One-cycle pulse when a byte is dropped because ``o`` was not ready.
    """

    rx: In(1, init=1)
    o: Out(stream.Signature(ByteLayout))
    error: Out(1)
    overrun: Out(1)

    def __init__(self, divisor):
        self.divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)
        p, q = self.divisor.numerator, self.divisor.denominator
        # The start edge reaches the FSM through the synchronizer; a half-bit wait one cycle
        # short centres the samples, so fast and slow senders are tolerated alike (about
        # +-4 % at 8 clocks per bit; it matters at the few clocks per bit of a 3 Mbaud link).
        to_middle = min(p - p // 2 + _LAG * q, p - q)

        running = Signal()
        phase, tick = _bit_timer(m, self.divisor, running)
        bit = Signal(range(8))
        shreg = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    # First tick half a bit after the edge: the middle of the start bit.
                    m.d.sync += phase.eq(to_middle)
                    m.next = "START"
            with m.State("START"):
                m.d.comb += running.eq(1)
                with m.If(tick):
                    m.d.sync += bit.eq(0)
                    # A low pulse shorter than half a bit is noise, not a start bit.
                    m.next = "IDLE"
                    with m.If(~rx):
                        m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += running.eq(1)
                with m.If(tick):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.comb += running.eq(1)
                with m.If(tick):
                    with m.If(rx):
                        with m.If(self.o.valid & ~self.o.ready):
                            m.d.comb += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [self.o.payload.data.eq(shreg), self.o.valid.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.error.eq(1)
                        m.next = "BREAK"
            with m.State("BREAK"):
                # Wait for the line to return high so a break is not read as many bytes.
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UARTTx(wiring.Component):
    """UART transmitter, 8N1.

    A byte waits in a holding register while the previous one is sent, so ``i.ready``
    depends on that register only and bytes still leave back to back.

    Parameters
    ----------
    divisor : int or fractions.Fraction
        Clock cycles per bit, at least 4.

    Attributes
    ----------
    i : In(stream.Signature(ByteLayout))
        Bytes to send; one is accepted whenever the holding register is empty.
    tx : Out(1)
        The serial line, idle high.
    """

    i: In(stream.Signature(ByteLayout))
    tx: Out(1, init=1)

    def __init__(self, divisor):
        self.divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        shreg = Signal(10, init=0x3FF)  # stop bit, 8 data bits LSB first, start bit
        bits = Signal(range(11))  # bits left to send, 0 when idle
        phase, tick = _bit_timer(m, self.divisor, bits != 0)
        held = Signal(8)
        full = Signal()  # ``held`` waits to be sent
        load = full & ((bits == 0) | ((bits == 1) & tick))

        m.d.comb += [self.tx.eq(shreg[0]), self.i.ready.eq(~full)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [held.eq(self.i.payload.data), full.eq(1)]
        with m.If(tick):
            m.d.sync += [shreg.eq((shreg >> 1) | (1 << 9)), bits.eq(bits - 1)]
        with m.If(load):
            m.d.sync += [shreg.eq(Cat(0, held, 1)), bits.eq(10), full.eq(0)]
            with m.If(bits == 0):  # back to back, the phase carries on to keep the rate exact
                m.d.sync += phase.eq(0)
        return m
