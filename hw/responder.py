"""Host-link command execution: the responder FSM and the image replay into the core.

:class:`Responder` takes one checked request from :class:`~bnnflow.hw.framing.FrameRx` and
emits the body of one response frame (IDENTIFY info, ERROR, or INFER records built from the
core's output beats as they arrive). For INFER it starts :class:`ImageReplay`, which streams
the buffered images into the core while the responder drains the core's results, so a
pipelined core never stalls on a full output.
"""

from amaranth.hdl import Array, Const, Module, Mux, Signal
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..protocol import Command, DeviceInfo, ErrorCode
from .framing import RequestLayout, TxByteLayout

__all__ = ["core_in_layout", "core_out_layout", "ReplaySignature", "ImageReplay", "Responder"]


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


#: Control of an :class:`ImageReplay`: a one-cycle ``start`` with the image ``count``; ``busy``
#: until the last byte has been accepted by the core.
ReplaySignature = wiring.Signature({"start": Out(1), "count": Out(8), "busy": In(1)})


class ImageReplay(wiring.Component):
    """Streams ``count`` images of ``image_size`` bytes from the buffer into the core.

    The buffer's synchronous read port is addressed one byte ahead on each transfer, so the
    output payload is the read data itself and holds while the core stalls.

    Parameters
    ----------
    depth : int
        Buffer size in bytes.
    image_size : int
        Bytes per image; ``last`` marks each image's final byte.

    Attributes
    ----------
    ctl : In(ReplaySignature)
    rd : In(ReadPort.Signature(addr_width=ceil_log2(depth), shape=8))
    o : Out(stream.Signature(core_in_layout()))
    """

    def __init__(self, depth, image_size):
        self.image_size = image_size
        super().__init__({
            "ctl": In(ReplaySignature),
            "rd": In(ReadPort.Signature(addr_width=ceil_log2(depth), shape=8)),
            "o": Out(stream.Signature(core_in_layout())),
        })

    def elaborate(self, platform):
        m = Module()
        ptr = Signal.like(self.rd.addr)
        offset = Signal(range(self.image_size))
        left = Signal(8)
        last_byte = offset == self.image_size - 1
        finish = last_byte & (left == 1)
        transfer = self.o.valid & self.o.ready

        # While idle the read port shows byte 0, ready for the next start.
        m.d.comb += [
            self.rd.addr.eq(Mux(transfer, Mux(finish, 0, ptr + 1), ptr)),
            self.o.payload.data.eq(self.rd.data),
            self.o.payload.last.eq(last_byte),
            self.ctl.busy.eq(self.o.valid),
        ]
        with m.If(self.ctl.start & ~self.o.valid):
            m.d.sync += [self.o.valid.eq(self.ctl.count != 0), left.eq(self.ctl.count),
                         ptr.eq(0), offset.eq(0)]
        with m.If(transfer):
            m.d.sync += [ptr.eq(ptr + 1), offset.eq(offset + 1)]
            with m.If(last_byte):
                m.d.sync += [offset.eq(0), left.eq(left - 1)]
            with m.If(finish):
                m.d.sync += [self.o.valid.eq(0), ptr.eq(0)]
        return m


class _Mode(enum.Enum, shape=2):
    IDENTIFY = 0
    ERROR = 1
    INFER = 2


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
        Accepted as soon as the buffer is no longer needed: at once for IDENTIFY and errors,
        after the replay for INFER, so the next request can arrive during the response.
    replay : Out(ReplaySignature)
    core_out : In(stream.Signature(out_layout))
    o : Out(stream.Signature(TxByteLayout))
    """

    def __init__(self, info: DeviceInfo, out_layout):
        self.info = info
        super().__init__({
            "req": In(stream.Signature(RequestLayout)),
            "replay": Out(ReplaySignature),
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
        return Array(out)

    def elaborate(self, platform):
        m = Module()
        info = self.info
        new = self.req.payload
        req = Signal(RequestLayout)  # latched, so FrameRx may take the next request early
        holding = Signal()  # the request's images are still being replayed from the buffer
        mode = Signal(_Mode)
        code = Signal(ErrorCode, init=ErrorCode.BAD_CRC)
        pos = Signal(range(5 + DeviceInfo.SIZE))  # header, then payload byte index + 4
        rec_byte = Signal(range(info.record_size))
        rec_count = Signal(8)

        resp_len = Mux(mode == _Mode.ERROR, 2,
                       Mux(mode == _Mode.IDENTIFY, DeviceInfo.SIZE, req.units * info.record_size))
        resp_cmd = Mux(mode == _Mode.ERROR, Command.ERROR, req.cmd.as_value())
        header = Array([resp_cmd, req.seq, resp_len[:8], resp_len[8:16]])
        ident = Array(Const(b, 8) for b in info.pack())
        records = self._record_bytes(m)
        ident_at = Signal(range(DeviceInfo.SIZE))
        m.d.comb += ident_at.eq(pos - 4)
        rec_last = rec_byte == info.record_size - 1

        # The buffer is free once the core has taken every image, before the records are sent.
        with m.If(holding & ~self.replay.busy):
            m.d.comb += self.req.ready.eq(1)
            m.d.sync += holding.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.req.valid):
                    m.d.sync += [pos.eq(0), rec_byte.eq(0), rec_count.eq(0), req.eq(new)]
                    m.next = "SEND"
                    with m.If(new.error):
                        m.d.sync += [mode.eq(_Mode.ERROR), code.eq(new.code)]
                    with m.Elif(new.cmd == Command.IDENTIFY):
                        m.d.sync += [mode.eq(_Mode.IDENTIFY), code.eq(ErrorCode.BAD_LENGTH)]
                        with m.If(new.length != 0):
                            m.d.sync += mode.eq(_Mode.ERROR)
                    with m.Elif(new.cmd == Command.INFER):
                        m.d.sync += [mode.eq(_Mode.INFER), code.eq(ErrorCode.BAD_LENGTH)]
                        with m.If(new.aligned & (new.units != 0)):
                            m.d.comb += [self.replay.start.eq(1), self.replay.count.eq(new.units)]
                            m.d.sync += holding.eq(1)
                        with m.Else():
                            m.d.sync += mode.eq(_Mode.ERROR)
                    with m.Else():
                        m.d.sync += [mode.eq(_Mode.ERROR), code.eq(ErrorCode.UNKNOWN_COMMAND)]
                    with m.If(~self.replay.start):
                        m.d.comb += self.req.ready.eq(1)
            with m.State("SEND"):
                body = self.o.payload
                with m.If(pos < 4):
                    m.d.comb += [self.o.valid.eq(1), body.data.eq(header[pos[:2]])]
                with m.Elif(mode == _Mode.IDENTIFY):
                    m.d.comb += [self.o.valid.eq(1), body.data.eq(ident[ident_at]),
                                 body.last.eq(pos == 3 + DeviceInfo.SIZE)]
                with m.Elif(mode == _Mode.ERROR):
                    m.d.comb += [self.o.valid.eq(1),
                                 body.data.eq(Mux(pos == 4, code.as_value(), req.cmd.as_value())),
                                 body.last.eq(pos == 5)]
                with m.Else():
                    m.d.comb += [self.o.valid.eq(self.core_out.valid),
                                 body.data.eq(records[rec_byte]),
                                 body.last.eq(rec_last & (rec_count + 1 == req.units)),
                                 self.core_out.ready.eq(self.o.ready & rec_last)]
                with m.If(self.o.valid & self.o.ready):
                    with m.If((pos < 4) | (mode != _Mode.INFER)):
                        m.d.sync += pos.eq(pos + 1)
                    with m.Else():
                        m.d.sync += rec_byte.eq(Mux(rec_last, 0, rec_byte + 1))
                        with m.If(rec_last):
                            m.d.sync += rec_count.eq(rec_count + 1)
                    with m.If(body.last):
                        m.next = "IDLE"
        return m
