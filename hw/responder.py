"""Host-link command execution: the responder FSM, the image replay into the core, the meter.

:class:`Responder` takes one checked request from :class:`~bnnflow.hw.framing.FrameRx` and
emits the body of one response frame (IDENTIFY info, ERROR, INFER records, or the REPLAY
summary and records), built from the core's output beats as they arrive. For INFER and REPLAY
it starts :class:`ImageReplay`, which streams the buffered images into the core, one whole
input beat per cycle, while the responder drains the core's results, so a pipelined core never
stalls on a full output. For REPLAY, :class:`ReplayMeter` counts cycles and folds every result
into a CRC, a chunk of each result per cycle, as fast as the core can deliver results; only then
is the summary sent and one more pass streamed back.

Every comparison that decides what happens next is kept in a flip-flop ahead of time (the beat
counters, the last image of a pass, the last result of a response), every response byte leaves
a register of a :class:`~bnnflow.hw.framing.ByteSerializer`, and the REPLAY CRC's XOR
tree is split by a register, so the host link runs well above the clock of any core it serves.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..protocol import Command, DeviceInfo, ErrorCode, ReplaySummary
from .fanout import FANOUT, copies_for, replicated
from .framing import ByteSerializer, RequestLayout, TxByteLayout, one_hot_pick

__all__ = ["core_in_layout", "core_out_layout", "ReplaySignature", "ImageReplay",
           "MeterSignature", "ReplayMeter", "Responder"]

CYCLE_BITS = 48  # 32 days at 100 MHz


def core_in_layout(width: int = 8) -> data.StructLayout:
    """Payload of the core's input stream: ``width`` bits (whole bytes) of an image per beat."""
    return data.StructLayout({"data": width, "last": 1})


def core_out_layout(num_classes: int, cls_bits: int, score_bits: int) -> data.StructLayout:
    """Payload of the core's output stream: one beat per image."""
    return data.StructLayout({
        "cls": cls_bits,
        "scores": data.ArrayLayout(data.signed(score_bits), num_classes),
        "last": 1,
    })


#: Control of an :class:`ImageReplay`: a one-cycle ``start`` with the image ``count``, the
#: passes over them (``repeats``) and the buffer ``bank`` (ignored while ``busy``); ``busy``
#: until the last beat has been accepted downstream.
ReplaySignature = wiring.Signature({
    "start": Out(1), "count": Out(8), "repeats": Out(16), "bank": Out(1), "busy": In(1),
})


class ImageReplay(wiring.Component):
    """Streams ``count`` images of ``image_beats`` words from a buffer bank into the core,
    ``repeats`` times back to back.

    The buffer holds each image as whole core input beats (see
    :class:`~bnnflow.hw.framing.FrameRx`), so a word read is a beat sent: one per cycle while
    the core takes them, whatever the beat width. The block RAM's read data goes straight into
    the output register (a block RAM's clock-to-output time is most of a cycle at the host
    link's clock, so nothing else may be on that path): a read is issued whenever the output
    register will have room for its word, and a word the output cannot take yet is held by
    reading its address again (a read enable would be emulated by Yosys with a multiplexer on
    that path).

    Parameters
    ----------
    bank_words : int
        Words per bank, a power of two; the top read address bit selects the bank.
    image_beats : int
        Words per image; ``last`` marks each image's final word.
    width : int
        Bits per word and per output beat.

    Attributes
    ----------
    ctl : In(ReplaySignature)
    rd : In(ReadPort.Signature(addr_width=ceil_log2(bank_words) + 1, shape=width))
    o : Out(stream.Signature(core_in_layout(width)))
    """

    def __init__(self, bank_words, image_beats, width=8):
        self.image_beats = image_beats
        super().__init__({
            "ctl": In(ReplaySignature),
            "rd": In(ReadPort.Signature(addr_width=ceil_log2(bank_words) + 1, shape=width)),
            "o": Out(stream.Signature(core_in_layout(width))),
        })

    def elaborate(self, platform):
        m = Module()
        size = self.image_beats
        reading = Signal()  # words are left to read
        ptr = Signal(len(self.rd.addr) - 1)
        bank = Signal()
        offset = Signal(range(size))
        count = Signal(8)
        left = Signal(8)
        passes = Signal(16)
        # Flags kept ahead of the counters: the word is an image's last, the image a pass's
        # last, the pass the final one.
        last_word = Signal(init=size == 1)
        last_image = Signal()
        last_pass = Signal()
        end_of_pass = last_word & last_image
        fetched = Signal()  # the read port shows a word not yet taken
        fetched_last = Signal()
        data = Signal(len(self.rd.data), reset_less=True)
        take = fetched & (~self.o.valid | self.o.ready)
        issue = reading & (~fetched | take)
        busy = reading | fetched | self.o.valid
        starting = self.ctl.start & ~busy

        fetched_addr = Signal.like(self.rd.addr)
        m.d.comb += [
            self.rd.addr.eq(Mux(issue, Cat(ptr, bank), fetched_addr)),
            self.o.payload.data.eq(data),
            self.ctl.busy.eq(busy),
        ]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(take):
            m.d.sync += [data.eq(self.rd.data), self.o.payload.last.eq(fetched_last),
                         self.o.valid.eq(1)]
        m.d.sync += fetched.eq(issue | (fetched & ~take))
        with m.If(starting):
            m.d.sync += [reading.eq((self.ctl.count != 0) & (self.ctl.repeats != 0)),
                         count.eq(self.ctl.count), left.eq(self.ctl.count),
                         last_image.eq(self.ctl.count == 1), passes.eq(self.ctl.repeats),
                         last_pass.eq(self.ctl.repeats == 1), bank.eq(self.ctl.bank),
                         ptr.eq(0), offset.eq(0), last_word.eq(size == 1)]
        with m.If(issue):
            m.d.sync += [ptr.eq(ptr + 1), offset.eq(offset + 1), fetched_last.eq(last_word),
                         fetched_addr.eq(Cat(ptr, bank))]
            if size >= 2:
                m.d.sync += last_word.eq(offset == size - 2)
            with m.If(last_word):
                m.d.sync += [offset.eq(0), last_word.eq(size == 1), left.eq(left - 1),
                             last_image.eq(left == 2)]
            with m.If(end_of_pass):
                m.d.sync += [ptr.eq(0), left.eq(count), last_image.eq(count == 1),
                             passes.eq(passes - 1), last_pass.eq(passes == 2)]
                with m.If(last_pass):
                    m.d.sync += reading.eq(0)
        return m


class _WordCrc32(wiring.Component):
    """CRC-32/ISO-HDLC (zlib's) over one ``width``-bit word per cycle, least significant bit
    first, in two pipeline stages.

    The next CRC register is ``A(crc) ^ B(word)`` over GF(2). ``B(word)``, an XOR of up to
    ``width`` bits per CRC bit, has no feedback, so its first levels are registered as partial
    XORs of at most :attr:`CHUNK` bits; the loop through the CRC register then XORs only those
    partials and the register's own taps. ``crc`` includes a word ``valid`` two cycles after
    it was given; ``start`` (re)initialises the register.
    """

    #: Word bits per registered partial XOR: two LUT4 levels.
    CHUNK = 16
    POLY = 0xEDB88320  # reflected

    def __init__(self, width):
        self.width = width
        super().__init__({"start": In(1), "valid": In(1), "word": In(width), "crc": Out(32)})

    def _taps(self, state, word):
        """The CRC register after one word from ``state``, bit by bit (a linear map)."""
        for i in range(self.width):
            state = (state >> 1) ^ (self.POLY if (state ^ (word >> i)) & 1 else 0)
        return state

    def elaborate(self, platform):
        m = Module()
        a = [self._taps(1 << i, 0) for i in range(32)]
        b = [self._taps(0, 1 << i) for i in range(self.width)]
        reg = Signal(32, init=0xFFFFFFFF)
        partials = []  # per CRC bit, the registered XORs of chunks of its word taps
        for j in range(32):
            taps = [i for i in range(self.width) if b[i] >> j & 1]
            chunks = [taps[k:k + self.CHUNK] for k in range(0, len(taps), self.CHUNK)]
            part = Signal(len(chunks), name=f"part{j}")
            m.d.sync += part.eq(Cat(_xor(self.word[i] for i in c) for c in chunks))
            partials.append(part)
        pending = Signal()  # the partials hold a word
        m.d.sync += pending.eq(self.valid & ~self.start)
        with m.If(pending):
            m.d.sync += reg.eq(Cat(_xor([reg[i] for i in range(32) if a[i] >> j & 1]
                                        + [partials[j][k] for k in range(len(partials[j]))])
                                   for j in range(32)))
        with m.If(self.start):
            m.d.sync += reg.eq(0xFFFFFFFF)
        m.d.comb += self.crc.eq(~reg)
        return m


def crc_chunk_bytes(record_size: int, spacing: int) -> int:
    """Bytes of a result record :class:`ReplayMeter` folds into its CRC per cycle: the
    smallest divisor of ``record_size`` that takes at most ``spacing`` cycles per record.

    A record arrives at most once every ``spacing`` cycles (the core's cycles per frame), so
    that many chunks per record keep up with the core. CRC logic grows with the chunk (about
    a LUT4 per chunk bit and CRC bit, over 16): SFC's 21-byte records at 64 cycles per frame
    take one byte per cycle instead of the whole record: the meter's 1,270 LUT4 in
    ``synth_ecp5`` became 448."""
    if record_size < 1 or spacing < 1:
        raise ValueError(f"records of {record_size} bytes every {spacing} cycles")
    return next(b for b in range(1, record_size + 1)
                if record_size % b == 0 and record_size // b <= spacing)


class _RecordCrc32(wiring.Component):
    """Folds whole records into a :class:`_WordCrc32`, ``chunk`` bits per cycle, least
    significant first: the CRC of all records' bits in order, as if taken whole.

    A record is accepted (``ready``) when none is held or the held one's last chunk goes out
    this cycle, so records ``n`` chunks long go in one every ``n`` cycles, back to back.
    ``idle``: no record held and the CRC register includes every chunk.
    """

    def __init__(self, record_bits, chunk):
        if record_bits % chunk:
            raise ValueError(f"{record_bits}-bit records in {chunk}-bit chunks")
        self.record_bits, self.chunk = record_bits, chunk
        super().__init__({"start": In(1), "valid": In(1), "ready": Out(1),
                          "record": In(record_bits), "idle": Out(1), "crc": Out(32)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = _WordCrc32(self.chunk)
        n, c = self.record_bits // self.chunk, self.chunk
        hold = Signal(self.record_bits, reset_less=True)
        busy, last = Signal(), Signal()  # a record is held; its last chunk goes out now
        hot = Signal(n, reset_less=True)  # the chunk going out, one-hot
        word = Signal(c, reset_less=True)
        word_valid, pending = Signal(), Signal()  # a chunk is in `word`; in the CRC's stage
        take = self.valid & self.ready
        m.d.comb += [self.ready.eq(~busy | last), crc.start.eq(self.start),
                     crc.word.eq(word), crc.valid.eq(word_valid), self.crc.eq(crc.crc),
                     self.idle.eq(~busy & ~word_valid & ~pending)]
        m.d.sync += [word_valid.eq(busy & ~self.start), pending.eq(word_valid & ~self.start),
                     word.eq(one_hot_pick(hold, hot, c)), hot.eq(Mux(take, 1, hot.rotate_left(1)))]
        with m.If(busy):
            m.d.sync += last.eq(hot[n - 2] if n > 1 else 1)
            with m.If(last):
                m.d.sync += busy.eq(0)
        with m.If(take):
            m.d.sync += [hold.eq(self.record), busy.eq(1), last.eq(n == 1)]
        with m.If(self.start):
            m.d.sync += [busy.eq(0), last.eq(0)]
        return m


def _xor(bits):
    """The XOR of ``bits`` (a constant 0 for none)."""
    out = Const(0, 1)
    for bit in bits:
        out = out ^ bit
    return out


def MeterSignature(record_bits: int) -> wiring.Signature:  # noqa: N802 (a signature factory)
    """Ports of a :class:`ReplayMeter` from the controller's side."""
    return wiring.Signature({
        "clear": Out(1), "units": Out(8), "repeats": Out(16),
        "out_beat": Out(1), "record": Out(record_bits), "ready": In(1),
        "done": In(1), "summary": In(8 * ReplaySummary.SIZE),
    })


class ReplayMeter(wiring.Component):
    """Cycle counter, result counter and CRC-32 of a REPLAY run.

    After ``clear``, counting starts with the first ``in_beat`` (a beat entering the core) and
    stops with the ``units * repeats``-th ``out_beat`` (a result leaving it), which raises
    ``done``. ``summary`` is the packed :class:`~bnnflow.protocol.ReplaySummary`. ``clear``
    and both beats are registered before they act (the counts are not delayed); the record
    is taken whole at its ``out_beat``, which must come with ``ready``, and folded into the
    CRC ``chunk_bytes`` at a time (:func:`crc_chunk_bytes`), so ``done`` waits for the last
    chunk to be folded in. ``units`` and ``repeats`` are read at the first ``in_beat``, which
    must come at least a cycle after ``clear``.

    Parameters
    ----------
    record_bits : int
        Width of ``record``, the result record as it goes on the wire (little-endian bytes).
    chunk_bytes : int
        Bytes of a record folded into the CRC per cycle; they divide the record. ``ready``
        is low while a record's chunks are still going in, so a core that delivers records
        faster than one per ``record_bits / (8 * chunk_bytes)`` cycles is slowed down, never
        a record lost. By default the whole record, one per cycle.

    Attributes
    ----------
    bus : In(MeterSignature(record_bits))
    in_beat : In(1)
    """

    def __init__(self, record_bits, chunk_bytes=None):
        self.chunk = record_bits if chunk_bytes is None else 8 * chunk_bytes
        if record_bits % 8 or record_bits % self.chunk:
            raise ValueError(f"{record_bits}-bit records in chunks of {chunk_bytes} bytes")
        super().__init__({"bus": In(MeterSignature(record_bits)), "in_beat": In(1)})

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        m.submodules.crc = crc = _RecordCrc32(len(bus.record), self.chunk)
        clear, in_beat, out_beat = Signal(), Signal(), Signal()
        m.d.sync += [clear.eq(bus.clear), in_beat.eq(self.in_beat), out_beat.eq(bus.out_beat)]
        running = Signal()
        started = Signal()
        first = Signal()  # no result counted yet
        elapsed = Signal(CYCLE_BITS)
        latency = Signal(32)
        frames = Signal(32)
        units, in_pass = Signal(8), Signal(8)  # results per pass, and left in this one
        passes = Signal(16)  # passes left after this one
        last_in_pass, last_pass = Signal(), Signal()
        counted = out_beat & running
        finished = Signal()  # the last record is counted

        # A record is taken at its out_beat (the responder gives one only while it measures
        # and the meter is ready), and counted a cycle later with the registered beat, when
        # `running` is sure to be set (the first result can follow the first input beat by
        # one cycle).
        m.d.comb += [crc.start.eq(clear), crc.record.eq(bus.record), bus.ready.eq(crc.ready),
                     crc.valid.eq(bus.out_beat & ~clear),
                     bus.summary.eq(Cat(elapsed, Const(0, 64 - CYCLE_BITS), latency, frames,
                                        crc.crc))]
        with m.If(running):
            m.d.sync += elapsed.eq(elapsed + 1)
        with m.If(in_beat & ~started):
            m.d.sync += [started.eq(1), running.eq(1), elapsed.eq(1), first.eq(1),
                         units.eq(bus.units), in_pass.eq(bus.units),
                         last_in_pass.eq(bus.units == 1), passes.eq(bus.repeats - 1),
                         last_pass.eq(bus.repeats == 1)]
        with m.If(counted):
            m.d.sync += [frames.eq(frames + 1), first.eq(0), in_pass.eq(in_pass - 1),
                         last_in_pass.eq(in_pass == 2)]
            with m.If(first):
                m.d.sync += latency.eq(elapsed + 1)
            with m.If(last_in_pass):
                m.d.sync += [in_pass.eq(units), last_in_pass.eq(units == 1),
                             passes.eq(passes - 1), last_pass.eq(passes == 1)]
                with m.If(last_pass):
                    m.d.sync += [running.eq(0), finished.eq(1)]
        m.d.sync += bus.done.eq(finished & crc.idle)  # the CRC has taken in the last record
        with m.If(clear):
            m.d.sync += [running.eq(0), started.eq(0), elapsed.eq(0), latency.eq(0),
                         frames.eq(0), finished.eq(0), bus.done.eq(0)]
        return m


class _Mode(enum.Enum, shape=2):
    IDENTIFY = 0
    ERROR = 1
    INFER = 2
    REPLAY = 3


class _Part(enum.Enum, shape=2):
    """Which word the serializer is offered."""
    IDENTIFY = 0  # the header and the IDENTIFY info
    HEADER = 1  # the header and the ERROR payload (or nothing)
    SUMMARY = 2
    RECORD = 3


class Responder(wiring.Component):
    """Executes one request and emits the body (``cmd`` .. payload) of its response frame.

    The response goes out in parts through a :class:`~bnnflow.hw.framing.ByteSerializer`:
    the header (with the IDENTIFY info or the ERROR payload), REPLAY's summary once the
    measured passes are done, then one result record per core output beat. A record is taken
    from the core as soon as the previous one has been sent, whatever the transmit side does.

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

    def _record(self, m):
        """The INFER record of the current core output beat, as the wire has it."""
        beat = self.core_out.payload
        cls = Signal(8)
        m.d.comb += cls.eq(beat.cls)
        out = [cls]
        for c in range(self.info.num_classes):
            score = Signal(data.signed(16), name=f"score{c}")
            m.d.comb += score.eq(beat.scores[c])  # sign-extends to int16
            out.append(score)
        return Cat(*out)

    def elaborate(self, platform):
        m = Module()
        info = self.info
        new = self.req.payload
        req = Signal(RequestLayout)  # latched, so FrameRx may take the next request early
        mode = Signal(_Mode)
        code = Signal(ErrorCode, init=ErrorCode.BAD_CRC)
        resp_len = Signal(16)
        kick = Signal()  # start the replay (a flip-flop: ImageReplay's loads fan out wide)
        repeats = Signal(16)
        m.d.comb += [self.replay.start.eq(kick), self.replay.count.eq(req.units),
                     self.replay.repeats.eq(repeats), self.replay.bank.eq(req.bank)]
        m.d.sync += kick.eq(0)
        records = Signal(8)  # records still to send
        last_record = Signal()  # the next record is the response's last
        size = max(4 + DeviceInfo.SIZE, ReplaySummary.SIZE, info.record_size)
        m.submodules.serializer = ser = ByteSerializer(size)
        wiring.connect(m, ser.o, wiring.flipped(self.o))

        record = self._record(m)
        m.d.comb += [self.meter.record.eq(record), self.meter.units.eq(req.units),
                     self.meter.repeats.eq(req.arg)]
        measuring = (mode == _Mode.REPLAY) & ~self.meter.done
        with m.If(measuring):  # sink ready whenever the meter's CRC can take a record
            m.d.comb += [self.core_out.ready.eq(self.meter.ready),
                         self.meter.out_beat.eq(self.core_out.valid & self.meter.ready)]

        # The response length: units * record_size (+ the summary) by shifts and a pipelined
        # tree of adds, one level per cycle while the FSM waits in LENGTH.
        terms = [req.units << i for i in range(info.record_size.bit_length())
                 if info.record_size >> i & 1]
        terms.append(Mux(mode == _Mode.REPLAY, ReplaySummary.SIZE, 0))
        levels = 0
        while len(terms) > 1:
            sums = []
            for k in range(0, len(terms), 2):
                total = Signal(16, name=f"len_sum{levels}_{k // 2}")
                m.d.sync += total.eq(sum(terms[k:k + 2]))
                sums.append(total)
            terms, levels = sums, levels + 1
        wait = Signal(range(levels + 1))
        header = Cat(Mux(mode == _Mode.ERROR, Command.ERROR, req.cmd.as_value()), req.seq,
                     resp_len)
        ident = Const(int.from_bytes(info.pack(), "little"), 8 * DeviceInfo.SIZE)

        # The serializer's word is picked by a register set with the state that sends it
        # (copies, one per FANOUT bits), not decoded from the state and the mode: that decode
        # steered every bit of the word, and CNV's build missed 125 MHz on its 5.4 ns of
        # routing. Outside the states that load the serializer the word does not matter.
        width = 8 * size
        part_n = Signal(_Part)
        parts = replicated(m, "ser_part", part_n, copies_for(width), reset_less=True)
        m.d.comb += part_n.eq(parts[0])
        sources = [Value.cast(v) for v in (  # in _Part's order
            Cat(header, ident), Cat(header, code.as_value(), req.cmd.as_value()),
            self.meter.summary, record)]
        sources = [Cat(v, Const(0, width - len(v)))[:width] for v in sources]
        word = Cat(Array(v[lo:lo + FANOUT] for v in sources)[part]
                   for lo, part in zip(range(0, width, FANOUT), parts, strict=True))
        m.d.comb += ser.word.eq(word)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.req.ready.eq(1)
                with m.If(self.req.valid):
                    m.d.sync += [req.eq(new), code.eq(ErrorCode.BAD_LENGTH), wait.eq(levels)]
                    m.next = "LENGTH"
                    images = new.aligned & (new.units != 0)
                    with m.If(new.error):
                        m.d.sync += [mode.eq(_Mode.ERROR), code.eq(new.code)]
                    with m.Elif(new.cmd == Command.IDENTIFY):
                        m.d.sync += mode.eq(Mux(new.length == 0, _Mode.IDENTIFY, _Mode.ERROR))
                    with m.Elif(new.cmd == Command.INFER):
                        m.d.sync += mode.eq(Mux(images, _Mode.INFER, _Mode.ERROR))
                    with m.Elif(new.cmd == Command.REPLAY):
                        m.d.comb += self.meter.clear.eq(1)
                        m.d.sync += mode.eq(Mux(images & (new.arg != 0), _Mode.REPLAY,
                                                _Mode.ERROR))
                    with m.Else():
                        m.d.sync += [mode.eq(_Mode.ERROR), code.eq(ErrorCode.UNKNOWN_COMMAND)]
            with m.State("LENGTH"):  # then the images go into the core
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 0):
                    m.d.sync += [kick.eq((mode == _Mode.INFER) | (mode == _Mode.REPLAY)),
                                 repeats.eq(Mux(mode == _Mode.REPLAY, req.arg, 1)),
                                 resp_len.eq(Mux(mode == _Mode.IDENTIFY, DeviceInfo.SIZE,
                                                 Mux(mode == _Mode.ERROR, 2, terms[0]))),
                                 records.eq(req.units), last_record.eq(req.units == 1)]
                    m.d.comb += part_n.eq(Mux(mode == _Mode.IDENTIFY, _Part.IDENTIFY,
                                              _Part.HEADER))
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += [ser.load.eq(1),
                             ser.count.eq(Mux(mode == _Mode.IDENTIFY, 4 + DeviceInfo.SIZE,
                                              Mux(mode == _Mode.ERROR, 6, 4))),
                             ser.last.eq((mode == _Mode.IDENTIFY) | (mode == _Mode.ERROR))]
                with m.If(ser.idle):
                    with m.Switch(mode):
                        with m.Case(_Mode.IDENTIFY, _Mode.ERROR):
                            m.next = "IDLE"
                        with m.Case(_Mode.INFER):
                            m.d.comb += part_n.eq(_Part.RECORD)
                            m.next = "RECORDS"
                        with m.Case(_Mode.REPLAY):
                            m.d.comb += part_n.eq(_Part.SUMMARY)
                            m.next = "SUMMARY"
            with m.State("SUMMARY"):  # once the measured passes are done; then one more pass
                m.d.comb += ser.count.eq(ReplaySummary.SIZE)
                with m.If(ser.idle & self.meter.done):
                    m.d.comb += [ser.load.eq(1), part_n.eq(_Part.RECORD)]
                    m.d.sync += [kick.eq(1), repeats.eq(1)]
                    m.next = "RECORDS"
            with m.State("RECORDS"):
                m.d.comb += [ser.count.eq(info.record_size),
                             ser.last.eq(last_record)]
                with m.If(ser.idle):
                    m.d.comb += [self.core_out.ready.eq(1), ser.load.eq(self.core_out.valid)]
                    with m.If(self.core_out.valid):
                        m.d.sync += [records.eq(records - 1), last_record.eq(records == 2)]
                        with m.If(last_record):
                            m.next = "IDLE"
        return m
