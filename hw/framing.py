"""Host-link framing gateware: un-escaping, frame reception into a buffer, frame transmission.

The frame format is defined in :mod:`bnnflow.protocol`. The CRC is amaranth's
CRC-16/CCITT-FALSE processor, one byte per cycle.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.crc.catalog import CRC16_CCITT_FALSE
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..protocol import (
    DEFAULT_ESCAPED,
    ESCAPE,
    ESCAPE_XOR,
    REPLAY_ARG_SIZE,
    START,
    Command,
    ErrorCode,
    check_escaped,
)
from .uart import ByteLayout

__all__ = ["RxByteLayout", "TxByteLayout", "RequestLayout", "Unescaper", "FrameRx", "FrameTx"]

#: An un-escaped received byte; ``start`` marks a raw START (the byte value is then moot).
RxByteLayout = data.StructLayout({"data": 8, "start": 1})

#: A frame body byte to transmit (``cmd`` .. payload); ``last`` marks the final one.
TxByteLayout = data.StructLayout({"data": 8, "last": 1})

#: A received request. ``units`` is the number of whole ``unit``-byte items in the payload after
#: the command's argument bytes (``arg``, little-endian: the repeat count of REPLAY), and
#: ``aligned`` whether nothing is left over; ``bank`` is the buffer half holding the items.
RequestLayout = data.StructLayout({
    "cmd": Command,
    "seq": 8,
    "length": 16,
    "arg": 8 * REPLAY_ARG_SIZE,
    "units": 8,
    "aligned": 1,
    "bank": 1,
    "error": 1,
    "code": ErrorCode,
})


class Unescaper(wiring.Component):
    """Marks raw START bytes and removes HDLC escapes (``0x7D, b`` becomes ``b ^ 0x20``)."""

    i: In(stream.Signature(ByteLayout))
    o: Out(stream.Signature(RxByteLayout))

    def elaborate(self, platform):
        m = Module()
        pending = Signal()  # the previous byte was ESCAPE
        byte = self.i.payload.data
        is_start = byte == START
        prefix = (byte == ESCAPE) & ~pending & ~is_start  # swallowed, not forwarded
        m.d.comb += [
            self.o.payload.data.eq(Mux(pending, byte ^ ESCAPE_XOR, byte)),
            self.o.payload.start.eq(is_start),
            self.o.valid.eq(self.i.valid & ~prefix),
            self.i.ready.eq(self.o.ready | prefix),
        ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += pending.eq(prefix)
        return m


class _Rx(enum.Enum, shape=4):
    HUNT = 0
    CMD = 1
    SEQ = 2
    LEN0 = 3
    LEN1 = 4
    PAYLOAD = 5
    CRC0 = 6
    CRC1 = 7
    CHECK = 8
    HOLD = 9


class FrameRx(wiring.Component):
    """Receives frames, writes their payload to a buffer and emits one request per frame.

    The buffer has two banks of ``2**ceil_log2(max_payload)`` bytes; each accepted request
    switches reception to the other bank, so the next request can arrive while the responder
    still replays this one's images. A START anywhere restarts reception, so a truncated frame
    is dropped. The request is emitted after the CRC has been checked (``error`` with
    ``BAD_CRC``), or right after the header when the length exceeds ``max_payload`` plus the
    command's argument bytes (``OVERFLOW``); it stays valid until the responder accepts it.
    Meanwhile no byte is consumed.

    Parameters
    ----------
    max_payload : int
        Bank size in bytes (the items of one request).
    unit : int
        Item size in bytes for ``units``/``aligned`` (an image).

    Attributes
    ----------
    i : In(stream.Signature(RxByteLayout))
    wr : In(WritePort.Signature(addr_width=ceil_log2(max_payload) + 1, shape=8))
        Drives the buffer's write port; the top address bit is the bank.
    req : Out(stream.Signature(RequestLayout))
    """

    def __init__(self, max_payload, unit):
        self.max_payload, self.unit = max_payload, unit
        super().__init__({
            "i": In(stream.Signature(RxByteLayout)),
            "wr": In(WritePort.Signature(addr_width=ceil_log2(max_payload) + 1, shape=8)),
            "req": Out(stream.Signature(RequestLayout)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = CRC16_CCITT_FALSE(data_width=8).create()
        phase = Signal(_Rx)
        count = Signal(range(self.max_payload + REPLAY_ARG_SIZE + 1))  # payload bytes so far
        addr = Signal(ceil_log2(self.max_payload))
        args = Signal(range(REPLAY_ARG_SIZE + 1))  # argument bytes still to come
        rem = Signal(range(self.unit))
        fcs = Signal(16)
        req = self.req.payload
        byte = self.i.payload.data
        length = Cat(req.length[:8], byte)  # the full length while receiving its high byte
        arg_bytes = Mux(req.cmd == Command.REPLAY, REPLAY_ARG_SIZE, 0)

        m.d.comb += [crc.data.eq(byte), self.wr.addr.eq(Cat(addr, req.bank)),
                     self.wr.data.eq(byte)]
        m.d.comb += self.i.ready.eq((phase != _Rx.CHECK) & (phase != _Rx.HOLD))
        with m.If(self.i.valid & self.i.ready):
            with m.If(self.i.payload.start):
                m.d.comb += crc.start.eq(1)
                m.d.sync += [phase.eq(_Rx.CMD), req.error.eq(0)]
            with m.Else():
                in_body = (phase != _Rx.HUNT) & (phase.as_value() <= _Rx.PAYLOAD.value)
                m.d.comb += crc.valid.eq(in_body)
                with m.Switch(phase):
                    with m.Case(_Rx.CMD):
                        m.d.sync += [req.cmd.eq(byte), phase.eq(_Rx.SEQ)]
                    with m.Case(_Rx.SEQ):
                        m.d.sync += [req.seq.eq(byte), phase.eq(_Rx.LEN0)]
                    with m.Case(_Rx.LEN0):
                        m.d.sync += [req.length[:8].eq(byte), phase.eq(_Rx.LEN1)]
                    with m.Case(_Rx.LEN1):
                        m.d.sync += [req.length[8:].eq(byte), count.eq(0), addr.eq(0), rem.eq(0),
                                     req.units.eq(0), req.arg.eq(0), args.eq(arg_bytes)]
                        with m.If(length > self.max_payload + arg_bytes):
                            m.d.sync += [req.error.eq(1), req.code.eq(ErrorCode.OVERFLOW),
                                         self.req.valid.eq(1), phase.eq(_Rx.HOLD)]
                        with m.Elif(length == 0):
                            m.d.sync += phase.eq(_Rx.CRC0)
                        with m.Else():
                            m.d.sync += phase.eq(_Rx.PAYLOAD)
                    with m.Case(_Rx.PAYLOAD):
                        m.d.sync += count.eq(count + 1)
                        with m.If(args != 0):
                            m.d.sync += [args.eq(args - 1),
                                         req.arg.eq(Cat(req.arg[8:], byte))]
                        with m.Else():
                            m.d.comb += self.wr.en.eq(1)
                            m.d.sync += [addr.eq(addr + 1), rem.eq(rem + 1)]
                            with m.If(rem == self.unit - 1):
                                m.d.sync += [rem.eq(0), req.units.eq(req.units + 1)]
                        with m.If(count + 1 == req.length):
                            m.d.sync += phase.eq(_Rx.CRC0)
                    with m.Case(_Rx.CRC0):
                        m.d.sync += [fcs[:8].eq(byte), phase.eq(_Rx.CRC1)]
                    with m.Case(_Rx.CRC1):
                        m.d.sync += [fcs[8:].eq(byte), phase.eq(_Rx.CHECK)]
        with m.If(phase == _Rx.CHECK):
            # The CRC register has absorbed the last payload byte at least two cycles ago.
            m.d.sync += [req.error.eq(crc.crc != fcs), req.code.eq(ErrorCode.BAD_CRC),
                         req.aligned.eq((rem == 0) & (args == 0)), self.req.valid.eq(1),
                         phase.eq(_Rx.HOLD)]
        with m.If((phase == _Rx.HOLD) & self.req.ready):
            m.d.sync += [self.req.valid.eq(0), phase.eq(_Rx.HUNT), req.bank.eq(~req.bank)]
        return m


class _Tx(enum.Enum, shape=2):
    IDLE = 0
    BODY = 1
    CRC0 = 2
    CRC1 = 3


class FrameTx(wiring.Component):
    """Frames a body byte stream: START, escaped body, escaped CRC computed on the fly.

    Parameters
    ----------
    escaped : set of int
        Bytes sent as ``0x7D, b ^ 0x20``.

    Attributes
    ----------
    i : In(stream.Signature(TxByteLayout))
        ``cmd`` .. payload of one frame after the other, ``last`` on each frame's final byte.
    o : Out(stream.Signature(ByteLayout))
    """

    i: In(stream.Signature(TxByteLayout))
    o: Out(stream.Signature(ByteLayout))

    def __init__(self, escaped=DEFAULT_ESCAPED):
        self.escaped = check_escaped(escaped)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = CRC16_CCITT_FALSE(data_width=8).create()
        phase = Signal(_Tx)
        second = Signal()  # the ESCAPE of an escape pair has been sent
        cur = Signal(8)
        cur_valid = Signal()
        need_escape = Signal()

        with m.Switch(phase):
            with m.Case(_Tx.IDLE):  # a frame starts when its first body byte is offered
                m.d.comb += [cur.eq(START), cur_valid.eq(self.i.valid)]
            with m.Case(_Tx.BODY):
                m.d.comb += [cur.eq(self.i.payload.data), cur_valid.eq(self.i.valid)]
            with m.Case(_Tx.CRC0):
                m.d.comb += [cur.eq(crc.crc[:8]), cur_valid.eq(1)]
            with m.Case(_Tx.CRC1):
                m.d.comb += [cur.eq(crc.crc[8:]), cur_valid.eq(1)]
        escapable = 0
        for byte in sorted(self.escaped):
            escapable |= cur == byte
        m.d.comb += need_escape.eq((phase != _Tx.IDLE) & escapable)

        sent = self.o.valid & self.o.ready
        done = Signal()  # ``cur`` has been sent completely
        m.d.comb += [
            self.o.valid.eq(cur_valid),
            self.o.payload.data.eq(Mux(need_escape & ~second, ESCAPE,
                                       Mux(need_escape, cur ^ ESCAPE_XOR, cur))),
            done.eq(sent & (~need_escape | second)),
            self.i.ready.eq((phase == _Tx.BODY) & done),
            crc.data.eq(self.i.payload.data),
            crc.valid.eq(self.i.valid & self.i.ready),
        ]
        with m.If(sent):
            m.d.sync += second.eq(need_escape & ~second)
        with m.If(done):
            with m.Switch(phase):
                with m.Case(_Tx.IDLE):
                    m.d.comb += crc.start.eq(1)
                    m.d.sync += phase.eq(_Tx.BODY)
                with m.Case(_Tx.BODY):
                    with m.If(self.i.payload.last):
                        m.d.sync += phase.eq(_Tx.CRC0)
                with m.Case(_Tx.CRC0):
                    m.d.sync += phase.eq(_Tx.CRC1)
                with m.Case(_Tx.CRC1):
                    m.d.sync += phase.eq(_Tx.IDLE)
        return m
