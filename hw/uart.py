"""8N1 UART receiver and transmitter with byte streams.

Both take ``divisor``, the number of clock cycles per bit (``clk_hz // baud``). The receiver
synchronizes the pin through two flip-flops, samples each bit in its middle, and reports a
stop bit of 0 as a framing error (dropping the byte), so a glitch or a baud mismatch never
produces a plausible-looking byte.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["ByteLayout", "UARTRx", "UARTTx"]

#: Payload of every byte stream in the host link.
ByteLayout = data.StructLayout({"data": 8})


def _check_divisor(divisor):
    if not isinstance(divisor, int) or divisor < 4:
        raise ValueError(f"UART divisor must be an integer >= 4 clocks per bit, got {divisor!r}")


class UARTRx(wiring.Component):
    """UART receiver, 8N1.

    Parameters
    ----------
    divisor : int
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
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(self.divisor))
        bit = Signal(range(8))
        shreg = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                    # A low pulse shorter than half a bit is noise, not a start bit.
                    m.next = "IDLE"
                    with m.If(~rx):
                        m.next = "DATA"
            with m.State("DATA"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), shreg.eq(Cat(shreg[1:], rx)),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
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

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Attributes
    ----------
    i : In(stream.Signature(ByteLayout))
        Bytes to send; one is accepted whenever the transmitter is idle.
    tx : Out(1)
        The serial line, idle high.
    """

    i: In(stream.Signature(ByteLayout))
    tx: Out(1, init=1)

    def __init__(self, divisor):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        shreg = Signal(10, init=0x3FF)  # stop bit, 8 data bits LSB first, start bit
        bits = Signal(range(11))

        m.d.comb += self.tx.eq(shreg[0])
        with m.If(bits == 0):
            m.d.comb += self.i.ready.eq(1)
            with m.If(self.i.valid):
                m.d.sync += [shreg.eq((self.i.payload.data << 1) | (1 << 9)),
                             bits.eq(10), timer.eq(self.divisor - 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
            with m.If(timer == 0):
                m.d.sync += [shreg.eq((shreg >> 1) | (1 << 9)), bits.eq(bits - 1),
                             timer.eq(self.divisor - 1)]
        return m
