"""Host-link framing gateware: un-escaping, frame reception into a buffer, frame transmission.

The frame format is defined in :mod:`bnnflow.protocol`. The CRC is amaranth's
CRC-16/CCITT-FALSE processor, one byte per cycle.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
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
from .fanout import copies_for, replicated
from .uart import ByteLayout

__all__ = ["RxByteLayout", "TxByteLayout", "RequestLayout", "bank_words", "ByteRegister",
           "StreamRegister", "Unescaper", "FrameRx",
           "ByteSerializer", "FrameTx", "one_hot_pick", "SHIFT_BYTES"]

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


def bank_words(max_payload: int, unit: int, width: int = 8) -> int:
    """Words in one bank of the request buffer, a power of two (the bank is the top address bit).

    A bank holds ``max_payload`` bytes of ``unit``-byte items in words of ``width`` bits (a
    multiple of 8), each item starting a new word: byte ``j`` of an item is byte lane
    ``j % (width // 8)`` of the item's word ``j // (width // 8)``.
    """
    if width < 8 or width % 8:
        raise ValueError(f"buffer word width {width} is not a whole number of bytes")
    per_word = width // 8
    items, rest = divmod(max_payload, unit)
    words = items * -(-unit // per_word) + -(-rest // per_word)
    return 1 << ceil_log2(max(words, 1))


class ByteRegister(wiring.Component):
    """A register slice for a slow byte stream: ``i.ready`` is ``~o.valid``, a flip-flop, so
    neither valid nor ready passes through combinationally. It takes a byte every other cycle
    at most, far more than a UART moves (one per ten bit times).

    Parameters
    ----------
    layout
        The payload layout, :data:`RxByteLayout` by default.
    """

    def __init__(self, layout=None):
        layout = RxByteLayout if layout is None else layout
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(~self.o.valid)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(self.i.payload)]
        return m


class StreamRegister(wiring.Component):
    """A full-rate register slice: ``o`` is a flip-flop (valid and payload). Put after a block
    RAM's read data (a FIFO's, the image buffer's), it gives that data a register with no
    logic before it, so the block's 5.8 ns clock-to-output time is not followed by a
    multiplexer or a long route to a distant load.

    Plain, ``i.ready`` is ``~o.valid | o.ready``, through to the producer. With ``skid``, a
    second register takes the beat that arrives while the output stalls, and ``i.ready`` is a
    flip-flop too, so no path runs from the consumer's ready into the producer's control
    (SFC missed 125 MHz on one from the core's input through the image replay's counters).

    Parameters
    ----------
    layout
        The payload layout.
    skid
        Register ``i.ready`` as well (one more payload register).
    """

    def __init__(self, layout, *, skid: bool = False):
        self.skid = skid
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        width = len(Value.cast(i.payload))
        data = Signal(width, reset_less=True)
        m.d.comb += o.payload.eq(data)
        if not self.skid:
            m.d.comb += i.ready.eq(~o.valid | o.ready)
            with m.If(i.ready):
                m.d.sync += [o.valid.eq(i.valid), data.eq(i.payload)]
            return m
        held, held_valid = Signal(width, reset_less=True), Signal()
        m.d.comb += i.ready.eq(~held_valid)
        with m.If(~o.valid | o.ready):
            with m.If(held_valid):
                m.d.sync += [data.eq(held), o.valid.eq(1), held_valid.eq(0)]
            with m.Else():
                m.d.sync += [data.eq(i.payload), o.valid.eq(i.valid)]
        with m.Elif(i.valid & ~held_valid):
            m.d.sync += [held.eq(i.payload), held_valid.eq(1)]
        return m


class Unescaper(wiring.Component):
    """Marks raw START bytes and removes HDLC escapes (``0x7D, b`` becomes ``b ^ 0x20``).

    The output is a register, so the byte comparisons end at a flip-flop."""

    i: In(stream.Signature(ByteLayout))
    o: Out(stream.Signature(RxByteLayout))

    def elaborate(self, platform):
        m = Module()
        pending = Signal()  # the previous byte was ESCAPE
        byte = self.i.payload.data
        is_start = byte == START
        prefix = (byte == ESCAPE) & ~pending & ~is_start  # swallowed, not forwarded
        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [pending.eq(prefix), self.o.valid.eq(~prefix),
                         self.o.payload.data.eq(Mux(pending, byte ^ ESCAPE_XOR, byte)),
                         self.o.payload.start.eq(is_start)]
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
    LENGTH = 10  # the header is in: check the length


class FrameRx(wiring.Component):
    """Receives frames, writes their payload to a buffer and emits one request per frame.

    The buffer has two banks of :func:`bank_words` words of ``width`` bits, each byte written
    through its own lane enable. Each payload item (an image) starts a new word, so a reader
    gets a whole item in consecutive words, one per cycle; the lanes after an item's last byte
    in its last word are never written (every item has the same size) and keep the buffer's
    initial zeros. Each accepted request
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
    width : int
        Bits per buffer word, a multiple of 8.

    Attributes
    ----------
    i : In(stream.Signature(RxByteLayout))
    wr : In(WritePort.Signature(addr_width=ceil_log2(bank_words(...)) + 1, shape=width,
        granularity=8))
        Drives the buffer's write port, one enable per byte lane; the top address bit is the
        bank.
    req : Out(stream.Signature(RequestLayout))
    """

    def __init__(self, max_payload, unit, width=8):
        self.max_payload, self.unit, self.width = max_payload, unit, width
        self.words = bank_words(max_payload, unit, width)
        super().__init__({
            "i": In(stream.Signature(RxByteLayout)),
            "wr": In(WritePort.Signature(addr_width=ceil_log2(self.words) + 1, shape=width,
                                         granularity=8)),
            "req": Out(stream.Signature(RequestLayout)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = CRC16_CCITT_FALSE(data_width=8).create()
        phase = Signal(_Rx)
        left = Signal(16)  # payload bytes still to come
        lanes, unit = self.width // 8, self.unit
        addr = Signal(ceil_log2(self.words))  # the word of the next item byte
        lane = Signal(lanes, init=1)  # and its byte lane, one-hot
        rem = Signal(range(unit))  # its index in the item
        unit_end = Signal(init=unit == 1)  # it is the item's last
        args = Signal(range(REPLAY_ARG_SIZE + 1))  # argument bytes still to come
        # `args != 0` and `left == 1` kept as registers: a payload byte's enables then come
        # from flip-flops and the phase, not from comparisons behind them.
        arg_pending, left_one = Signal(), Signal()
        fcs = Signal(16)
        req = self.req.payload
        byte = self.i.payload.data
        arg_bytes = Signal(range(REPLAY_ARG_SIZE + 1))  # of the command being received
        limit = Signal(16)  # its longest payload

        m.d.comb += [crc.data.eq(byte), self.wr.addr.eq(Cat(addr, req.bank)),
                     self.wr.data.eq(byte.replicate(lanes))]
        m.d.comb += self.i.ready.eq((phase != _Rx.CHECK) & (phase != _Rx.HOLD)
                                    & (phase != _Rx.LENGTH))
        with m.If(self.i.valid & self.i.ready):
            with m.If(self.i.payload.start):
                m.d.comb += crc.start.eq(1)
                m.d.sync += [phase.eq(_Rx.CMD), req.error.eq(0)]
            with m.Else():
                in_body = (phase != _Rx.HUNT) & (phase.as_value() <= _Rx.PAYLOAD.value)
                m.d.comb += crc.valid.eq(in_body)
                with m.Switch(phase):
                    with m.Case(_Rx.CMD):
                        is_replay = byte == Command.REPLAY.value
                        m.d.sync += [req.cmd.eq(byte), phase.eq(_Rx.SEQ),
                                     arg_bytes.eq(Mux(is_replay, REPLAY_ARG_SIZE, 0)),
                                     limit.eq(self.max_payload + Mux(is_replay,
                                                                     REPLAY_ARG_SIZE, 0))]
                    with m.Case(_Rx.SEQ):
                        m.d.sync += [req.seq.eq(byte), phase.eq(_Rx.LEN0)]
                    with m.Case(_Rx.LEN0):
                        m.d.sync += [req.length[:8].eq(byte), phase.eq(_Rx.LEN1)]
                    with m.Case(_Rx.LEN1):
                        m.d.sync += [req.length[8:].eq(byte), left.eq(Cat(req.length[:8], byte)),
                                     left_one.eq(Cat(req.length[:8], byte) == 1),
                                     addr.eq(0), lane.eq(1), rem.eq(0), unit_end.eq(unit == 1),
                                     req.units.eq(0), req.arg.eq(0), args.eq(arg_bytes),
                                     arg_pending.eq(arg_bytes != 0), phase.eq(_Rx.LENGTH)]
                    with m.Case(_Rx.PAYLOAD):
                        m.d.sync += [left.eq(left - 1), left_one.eq(left == 2)]
                        with m.If(arg_pending):
                            m.d.sync += [args.eq(args - 1), arg_pending.eq(args != 1),
                                         req.arg.eq(Cat(req.arg[8:], byte))]
                        with m.Else():
                            m.d.comb += self.wr.en.eq(lane)
                            m.d.sync += [lane.eq(lane.rotate_left(1)), rem.eq(rem + 1)]
                            if unit >= 2:
                                m.d.sync += unit_end.eq(rem == unit - 2)
                            with m.If(lane[-1] | unit_end):
                                m.d.sync += addr.eq(addr + 1)
                            with m.If(unit_end):
                                m.d.sync += [lane.eq(1), rem.eq(0), unit_end.eq(unit == 1),
                                             req.units.eq(req.units + 1)]
                        with m.If(left_one):
                            m.d.sync += phase.eq(_Rx.CRC0)
                    with m.Case(_Rx.CRC0):
                        m.d.sync += [fcs[:8].eq(byte), phase.eq(_Rx.CRC1)]
                    with m.Case(_Rx.CRC1):
                        m.d.sync += [fcs[8:].eq(byte), phase.eq(_Rx.CHECK)]
        with m.If(phase == _Rx.LENGTH):
            with m.If(req.length > limit):
                m.d.sync += [req.error.eq(1), req.code.eq(ErrorCode.OVERFLOW),
                             self.req.valid.eq(1), phase.eq(_Rx.HOLD)]
            with m.Elif(req.length == 0):
                m.d.sync += phase.eq(_Rx.CRC0)
            with m.Else():
                m.d.sync += phase.eq(_Rx.PAYLOAD)
        with m.If(phase == _Rx.CHECK):
            # The CRC register has absorbed the last payload byte at least two cycles ago.
            m.d.sync += [req.error.eq(crc.crc != fcs), req.code.eq(ErrorCode.BAD_CRC),
                         req.aligned.eq((rem == 0) & ~arg_pending), self.req.valid.eq(1),
                         phase.eq(_Rx.HOLD)]
        with m.If((phase == _Rx.HOLD) & self.req.ready):
            m.d.sync += [self.req.valid.eq(0), phase.eq(_Rx.HUNT), req.bank.eq(~req.bank)]
        return m


#: Widest word a :class:`ByteSerializer` sends from a shift register.
SHIFT_BYTES = 4


def one_hot_pick(word: Value, hot: Value, width: int) -> Value:
    """The ``width``-bit chunk ``k`` of ``word`` where ``hot`` (one bit per chunk) has bit
    ``k`` set, as an AND-OR: Yosys maps a multiplexer indexed by a counter worse (735 LUT4
    against 335 for REPLAY's CRC of 21-byte records)."""
    picked = Const(0, width)
    for k in range(len(hot)):
        picked = picked | (word[k * width:(k + 1) * width] & hot[k].replicate(width))
    return picked


class ByteSerializer(wiring.Component):
    """Sends a word of up to ``size`` bytes, least significant byte first, as a byte stream.

    The one byte-serialisation shape of the host link: the responder sends every part of a
    response (header, IDENTIFY info, REPLAY summary, result records) and :class:`FrameTx` its
    CRC through it. The word is loaded into a register, so each byte leaves a flip-flop
    however many sources the word was selected from.

    Parameters
    ----------
    size : int
        The widest word in bytes.

    Attributes
    ----------
    load : In(1)
        Takes ``word``, ``count`` and ``last`` when ``idle`` (ignored otherwise).
    word : In(8 * size)
    count : In(range(size + 1))
        Bytes of ``word`` to send, from the lowest; at least 1.
    last : In(1)
        Mark the final byte of the word with ``last``.
    idle : Out(1)
        Every byte of the previous word has been sent.
    o : Out(stream.Signature(TxByteLayout))
    """

    def __init__(self, size):
        self.size = size
        super().__init__({
            "load": In(1), "word": In(8 * size), "count": In(range(size + 1)), "last": In(1),
            "idle": Out(1), "o": Out(stream.Signature(TxByteLayout)),
        })

    def elaborate(self, platform):
        m = Module()
        size = self.size
        left = Signal(range(size + 1))  # bytes left after the next one
        final = Signal()
        last = Signal()  # the next byte is the word's last
        o = self.o
        # The loaded word is registered first (`word_r`, taken every idle cycle, and `pend`
        # the cycle after a load): whatever selects the word (the responder's state and
        # modes) ends at a register. Its bytes then go out in order into the output byte
        # register, which is refilled when empty, so no enable depends on the consumer's
        # ready: from a shift register for a short word, else picked by a one-hot pointer
        # (`hot`) through an AND-OR (a shift register takes a LUT4 and a flip-flop per word
        # bit, the AND-OR about two LUT4 per byte; for FrameTx's 2-byte CRC the shift register
        # is smaller). One byte every other cycle at most, far above a UART's rate.
        word_r = Signal(8 * size, reset_less=True)
        count_r, last_r = Signal.like(self.count), Signal()
        hot = Signal(size, reset_less=True) if size > SHIFT_BYTES else None
        pend = Signal()  # word_r's first byte is next
        idle_n, out_n, refill, pend_n = Signal(), Signal(), Signal(), Signal()
        idle = Signal(init=1)
        m.d.comb += [
            self.idle.eq(idle),
            pend_n.eq(self.load & idle),
            refill.eq(~o.valid & ~idle & ~pend),
            out_n.eq(refill | (o.valid & ~o.ready)),
            idle_n.eq(Mux(pend_n, 0, Mux(refill, last, idle))),
        ]
        m.d.sync += [idle.eq(idle_n), o.valid.eq(out_n), pend.eq(pend_n)]
        chunks = copies_for(len(word_r), 32)
        take_k = replicated(m, "ser_take", idle_n, chunks, reset_less=True)
        for k in range(chunks):
            lo, hi = 32 * k, min(len(word_r), 32 * (k + 1))
            with m.If(take_k[k]):
                m.d.sync += word_r[lo:hi].eq(self.word[lo:hi])
        if size > SHIFT_BYTES:
            picked, advance, start = one_hot_pick(word_r, hot, 8), hot.eq(hot << 1), hot.eq(1)
        else:
            shreg = Signal(8 * size, reset_less=True)
            picked, advance, start = shreg[:8], shreg.eq(shreg >> 8), shreg.eq(word_r)
        with m.If(idle):
            m.d.sync += [count_r.eq(self.count), last_r.eq(self.last)]
        with m.If(refill):
            m.d.sync += [o.payload.data.eq(picked), o.payload.last.eq(final & last),
                         left.eq(left - 1), last.eq(left == 1), advance]
        with m.If(pend):
            m.d.sync += [left.eq(count_r - 1), final.eq(last_r), last.eq(count_r == 1), start]
        return m


class _Tx(enum.Enum, shape=2):
    IDLE = 0
    BODY = 1
    CRC_LOAD = 2
    CRC = 3


class FrameTx(wiring.Component):
    """Frames a body byte stream: START, escaped body, escaped CRC computed on the fly.

    The output is a register; an escaped byte's second half waits in another.

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
        m.submodules.fcs = fcs = ByteSerializer(2)
        phase = Signal(_Tx)
        pending = Signal()  # the second byte of an escape pair is due
        second = Signal(8)
        free = ~self.o.valid | self.o.ready  # the output register takes a byte
        take = free & ~pending  # a new byte may be sent

        def emit(byte):
            escape = 0
            for value in sorted(self.escaped):
                escape |= byte == value
            m.d.sync += [self.o.valid.eq(1), self.o.payload.data.eq(Mux(escape, ESCAPE, byte)),
                         pending.eq(escape), second.eq(byte ^ ESCAPE_XOR)]

        m.d.comb += [
            self.i.ready.eq(take & (phase == _Tx.BODY)),
            crc.data.eq(self.i.payload.data),
            crc.valid.eq(self.i.valid & self.i.ready),
            fcs.word.eq(crc.crc), fcs.count.eq(2), fcs.last.eq(1),
            fcs.o.ready.eq(take & (phase == _Tx.CRC)),
        ]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(free & pending):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.data.eq(second), pending.eq(0)]
        with m.Switch(phase):
            with m.Case(_Tx.IDLE):  # a frame starts when its first body byte is offered
                with m.If(take & self.i.valid):
                    m.d.comb += crc.start.eq(1)
                    m.d.sync += [self.o.valid.eq(1), self.o.payload.data.eq(START),
                                 phase.eq(_Tx.BODY)]
            with m.Case(_Tx.BODY):
                with m.If(self.i.valid & self.i.ready):
                    emit(self.i.payload.data)
                    with m.If(self.i.payload.last):
                        m.d.sync += phase.eq(_Tx.CRC_LOAD)
            with m.Case(_Tx.CRC_LOAD):  # the CRC register has absorbed the last body byte
                m.d.comb += fcs.load.eq(1)
                m.d.sync += phase.eq(_Tx.CRC)
            with m.Case(_Tx.CRC):
                with m.If(fcs.o.valid & fcs.o.ready):
                    emit(fcs.o.payload.data)
                    with m.If(fcs.o.payload.last):
                        m.d.sync += phase.eq(_Tx.IDLE)
        return m
