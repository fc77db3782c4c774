"""Host-link command execution: the responder FSM, the image replay into the core, the meter.

:class:`Responder` takes one checked request from :class:`~bnnflow.hw.framing.FrameRx` and
emits the body of one response frame (IDENTIFY info, ERROR, INFER records, or the REPLAY
summary and records), built from the core's output beats as they arrive. For INFER and REPLAY
it starts :class:`ImageReplay`, which streams the buffered images into the core while the
responder drains the core's results, so a pipelined core never stalls on a full output. For
REPLAY, :class:`ReplayMeter` counts cycles and folds every result into a CRC while the core's
output is always ready; only then is the summary sent and one more pass streamed back.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.crc.catalog import CRC32_ISO_HDLC
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..protocol import Command, DeviceInfo, ErrorCode, ReplaySummary
from .framing import RequestLayout, TxByteLayout

__all__ = ["core_in_layout", "core_out_layout", "ReplaySignature", "ImageReplay",
           "MeterSignature", "ReplayMeter", "Responder"]

CYCLE_BITS = 48  # 32 days at 100 MHz


def core_in_layout() -> data.StructLayout:
    """Payload of the core's input stream: one byte of a packed image per beat."""
    return data.StructLayout({"data": 8, "last": 1})


def core_out_layout(num_classes: int, cls_bits: int, score_bits: int) -> data.StructLayout:
    """Payload of the core's output stream: one beat per image."""
    return data.StructLayout({
        "cls": cls_bits,
        "scores": data.ArrayLayout(data.signed(score_bits), num_classes),
        "last": 1,
    })


#: Control of an :class:`ImageReplay`: a one-cycle ``start`` with the image ``count``, the
#: passes over them (``repeats``) and the buffer ``bank``; ``busy`` until the last byte has been
#: accepted by the core; ``beat`` pulses with each byte the core accepts.
ReplaySignature = wiring.Signature({
    "start": Out(1), "count": Out(8), "repeats": Out(16), "bank": Out(1),
    "busy": In(1), "beat": In(1),
})


class ImageReplay(wiring.Component):
    """Streams ``count`` images of ``image_size`` bytes from a buffer bank into the core,
    ``repeats`` times back to back.

    The buffer's synchronous read port is addressed one byte ahead on each transfer, so the
    output payload is the read data itself and holds while the core stalls.

    Parameters
    ----------
    bank_size : int
        Bytes per bank; the top read address bit selects the bank.
    image_size : int
        Bytes per image; ``last`` marks each image's final byte.

    Attributes
    ----------
    ctl : In(ReplaySignature)
    rd : In(ReadPort.Signature(addr_width=ceil_log2(bank_size) + 1, shape=8))
    o : Out(stream.Signature(core_in_layout()))
    """

    def __init__(self, bank_size, image_size):
        self.image_size = image_size
        super().__init__({
            "ctl": In(ReplaySignature),
            "rd": In(ReadPort.Signature(addr_width=ceil_log2(bank_size) + 1, shape=8)),
            "o": Out(stream.Signature(core_in_layout())),
        })

    def elaborate(self, platform):
        m = Module()
        ptr = Signal(len(self.rd.addr) - 1)
        bank = Signal()
        offset = Signal(range(self.image_size))
        count = Signal(8)
        left = Signal(8)
        passes = Signal(16)
        last_byte = offset == self.image_size - 1
        end_of_pass = last_byte & (left == 1)
        transfer = self.o.valid & self.o.ready
        starting = self.ctl.start & ~self.o.valid

        # While idle the read port shows byte 0 of the bank, ready for the next start.
        next_ptr = Signal.like(ptr)
        m.d.comb += [
            next_ptr.eq(Mux(transfer, Mux(end_of_pass, 0, ptr + 1), ptr)),
            self.rd.addr.eq(Cat(next_ptr, Mux(starting, self.ctl.bank, bank))),
            self.o.payload.data.eq(self.rd.data),
            self.o.payload.last.eq(last_byte),
            self.ctl.busy.eq(self.o.valid),
            self.ctl.beat.eq(transfer),
        ]
        with m.If(starting):
            m.d.sync += [self.o.valid.eq((self.ctl.count != 0) & (self.ctl.repeats != 0)),
                         count.eq(self.ctl.count), left.eq(self.ctl.count),
                         passes.eq(self.ctl.repeats), bank.eq(self.ctl.bank), ptr.eq(0),
                         offset.eq(0)]
        with m.If(transfer):
            m.d.sync += [ptr.eq(ptr + 1), offset.eq(offset + 1)]
            with m.If(last_byte):
                m.d.sync += [offset.eq(0), left.eq(left - 1)]
            with m.If(end_of_pass):
                m.d.sync += [ptr.eq(0), left.eq(count), passes.eq(passes - 1)]
                with m.If(passes == 1):
                    m.d.sync += self.o.valid.eq(0)
        return m


def MeterSignature(record_bits: int) -> wiring.Signature:  # noqa: N802 (a signature factory)
    """Ports of a :class:`ReplayMeter` from the controller's side."""
    return wiring.Signature({
        "clear": Out(1), "units": Out(8), "repeats": Out(16),
        "in_beat": Out(1), "out_beat": Out(1), "record": Out(record_bits),
        "done": In(1), "summary": In(8 * ReplaySummary.SIZE),
    })


class ReplayMeter(wiring.Component):
    """Cycle counter, result counter and CRC-32 of a REPLAY run.

    After ``clear``, counting starts with the first ``in_beat`` (an image byte entering the
    core) and stops with the ``units * repeats``-th ``out_beat`` (a result leaving it), which
    raises ``done``. ``summary`` is the packed :class:`~bnnflow.protocol.ReplaySummary`.

    Parameters
    ----------
    record_bits : int
        Width of ``record``, the result record as it goes on the wire (little-endian bytes);
        the CRC folds in one whole record per cycle.

    Attributes
    ----------
    bus : In(MeterSignature(record_bits))
    """

    def __init__(self, record_bits):
        super().__init__({"bus": In(MeterSignature(record_bits))})

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        m.submodules.crc = crc = CRC32_ISO_HDLC(data_width=len(bus.record)).create()
        running = Signal()
        started = Signal()
        elapsed = Signal(CYCLE_BITS)
        latency = Signal(32)
        frames = Signal(32)
        in_pass = Signal(8)
        passes = Signal(16)
        last = (in_pass + 1 == bus.units) & (passes + 1 == bus.repeats)
        counted = bus.out_beat & running

        m.d.comb += [crc.start.eq(bus.clear), crc.data.eq(bus.record), crc.valid.eq(counted),
                     bus.summary.eq(Cat(elapsed, Const(0, 64 - CYCLE_BITS), latency, frames,
                                        crc.crc))]
        with m.If(running):
            m.d.sync += elapsed.eq(elapsed + 1)
        with m.If(bus.in_beat & ~started):
            m.d.sync += [started.eq(1), running.eq(1), elapsed.eq(1)]
        with m.If(counted):
            m.d.sync += [frames.eq(frames + 1), in_pass.eq(in_pass + 1)]
            with m.If(frames == 0):
                m.d.sync += latency.eq(elapsed + 1)
            with m.If(in_pass + 1 == bus.units):
                m.d.sync += [in_pass.eq(0), passes.eq(passes + 1)]
            with m.If(last):
                m.d.sync += [running.eq(0), bus.done.eq(1)]
        with m.If(bus.clear):
            m.d.sync += [running.eq(0), started.eq(0), elapsed.eq(0), latency.eq(0),
                         frames.eq(0), in_pass.eq(0), passes.eq(0), bus.done.eq(0)]
        return m


class _Mode(enum.Enum, shape=2):
    IDENTIFY = 0
    ERROR = 1
    INFER = 2
    REPLAY = 3


class Responder(wiring.Component):
    """Executes one request and emits the body (``cmd`` .. payload) of its response frame.

    Parameters
    ----------
    info : DeviceInfo
        Reported by IDENTIFY; also gives the record size of INFER responses.
    out_layout : data.StructLayout
        The core's output payload, :func:`core_out_layout`.

    Attributes
    ----------
    req : In(stream.Signature(RequestLayout))
        Accepted whenever the responder is idle: the request's images sit in their own buffer
        bank, so the next request can arrive in the other one during the response.
    replay : Out(ReplaySignature)
    meter : Out(MeterSignature(8 * info.record_size))
    core_out : In(stream.Signature(out_layout))
    o : Out(stream.Signature(TxByteLayout))
    """

    def __init__(self, info: DeviceInfo, out_layout):
        self.info = info
        super().__init__({
            "req": In(stream.Signature(RequestLayout)),
            "replay": Out(ReplaySignature),
            "meter": Out(MeterSignature(8 * info.record_size)),
            "core_out": In(stream.Signature(out_layout)),
            "o": Out(stream.Signature(TxByteLayout)),
        })

    def _record_bytes(self, m):
        """The bytes of the INFER record of the current core output beat."""
        beat = self.core_out.payload
        cls = Signal(8)
        m.d.comb += cls.eq(beat.cls)
        out = [cls]
        for c in range(self.info.num_classes):
            score = Signal(data.signed(16), name=f"score{c}")
            m.d.comb += score.eq(beat.scores[c])  # sign-extends to int16
            out += [score[:8], score[8:]]
        return out

    def _start(self, m, mode, new, run, valid, repeats):
        """Enter ``run`` and replay the images of request ``new`` if ``valid``; else answer
        BAD_LENGTH."""
        m.d.sync += mode.eq(Mux(valid, run, _Mode.ERROR))
        with m.If(valid):
            m.d.comb += [self.replay.start.eq(1), self.replay.count.eq(new.units),
                         self.replay.repeats.eq(repeats), self.replay.bank.eq(new.bank)]

    def elaborate(self, platform):
        m = Module()
        info = self.info
        new = self.req.payload
        req = Signal(RequestLayout)  # latched, so FrameRx may take the next request early
        mode = Signal(_Mode)
        code = Signal(ErrorCode, init=ErrorCode.BAD_CRC)
        head = 4 + ReplaySummary.SIZE  # header and summary bytes before REPLAY's records
        pos = Signal(range(max(head, 4 + DeviceInfo.SIZE) + 1))
        rec_byte = Signal(range(info.record_size))
        rec_count = Signal(8)
        final = Signal()  # REPLAY's unmeasured pass has been started

        records = self._record_bytes(m)
        m.d.comb += [self.meter.record.eq(Cat(*records)), self.meter.units.eq(req.units),
                     self.meter.repeats.eq(req.arg), self.meter.in_beat.eq(self.replay.beat)]
        measuring = (mode == _Mode.REPLAY) & ~self.meter.done
        with m.If(measuring):  # AXI4-Stream sink always ready while the cycles are counted
            m.d.comb += [self.core_out.ready.eq(1),
                         self.meter.out_beat.eq(self.core_out.valid)]

        rec_bytes = req.units * info.record_size
        resp_len = Signal(16)
        m.d.comb += resp_len.eq(Array([DeviceInfo.SIZE, 2, rec_bytes,
                                       rec_bytes + ReplaySummary.SIZE])[mode.as_value()])
        resp_cmd = Mux(mode == _Mode.ERROR, Command.ERROR, req.cmd.as_value())
        header = Array([resp_cmd, req.seq, resp_len[:8], resp_len[8:16]])
        ident = Array(Const(b, 8) for b in info.pack())
        summary = Array(self.meter.summary.word_select(i, 8) for i in range(ReplaySummary.SIZE))
        at = Signal(range(max(DeviceInfo.SIZE, ReplaySummary.SIZE)))
        m.d.comb += at.eq(pos - 4)
        rec_last = rec_byte == info.record_size - 1
        in_records = (pos >= 4) & (mode == _Mode.INFER) | (pos >= head) & (mode == _Mode.REPLAY)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.req.ready.eq(1)
                with m.If(self.req.valid):
                    m.d.sync += [pos.eq(0), rec_byte.eq(0), rec_count.eq(0), req.eq(new),
                                 final.eq(0), code.eq(ErrorCode.BAD_LENGTH)]
                    m.next = "SEND"
                    images = new.aligned & (new.units != 0)
                    with m.If(new.error):
                        m.d.sync += [mode.eq(_Mode.ERROR), code.eq(new.code)]
                    with m.Elif(new.cmd == Command.IDENTIFY):
                        m.d.sync += mode.eq(Mux(new.length == 0, _Mode.IDENTIFY, _Mode.ERROR))
                    with m.Elif(new.cmd == Command.INFER):
                        self._start(m, mode, new, _Mode.INFER, images, 1)
                    with m.Elif(new.cmd == Command.REPLAY):
                        m.d.comb += self.meter.clear.eq(1)
                        self._start(m, mode, new, _Mode.REPLAY, images & (new.arg != 0),
                                    new.arg)
                    with m.Else():
                        m.d.sync += [mode.eq(_Mode.ERROR), code.eq(ErrorCode.UNKNOWN_COMMAND)]
            with m.State("SEND"):
                body = self.o.payload
                with m.If(pos < 4):
                    m.d.comb += [self.o.valid.eq(1), body.data.eq(header[pos[:2]])]
                with m.Elif(mode == _Mode.IDENTIFY):
                    m.d.comb += [self.o.valid.eq(1), body.data.eq(ident[at]),
                                 body.last.eq(pos == 3 + DeviceInfo.SIZE)]
                with m.Elif(mode == _Mode.ERROR):
                    m.d.comb += [self.o.valid.eq(1),
                                 body.data.eq(Mux(pos == 4, code.as_value(), req.cmd.as_value())),
                                 body.last.eq(pos == 5)]
                with m.Elif(~in_records):  # REPLAY's summary, once the measured passes are done
                    m.d.comb += [self.o.valid.eq(self.meter.done), body.data.eq(summary[at])]
                with m.Else():
                    m.d.comb += [self.o.valid.eq(self.core_out.valid),
                                 body.data.eq(Array(records)[rec_byte]),
                                 body.last.eq(rec_last & (rec_count + 1 == req.units)),
                                 self.core_out.ready.eq(self.o.ready & rec_last)]
                with m.If((mode == _Mode.REPLAY) & self.meter.done & ~final):
                    m.d.comb += [self.replay.start.eq(1), self.replay.count.eq(req.units),
                                 self.replay.repeats.eq(1), self.replay.bank.eq(req.bank)]
                    m.d.sync += final.eq(1)
                with m.If(self.o.valid & self.o.ready):
                    with m.If(~in_records):
                        m.d.sync += pos.eq(pos + 1)
                    with m.Else():
                        m.d.sync += rec_byte.eq(Mux(rec_last, 0, rec_byte + 1))
                        with m.If(rec_last):
                            m.d.sync += rec_count.eq(rec_count + 1)
                    with m.If(body.last):
                        m.next = "IDLE"
        return m
