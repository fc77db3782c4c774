"""The host link: frames from the UART to the accelerator core and back.

Pipeline (every arrow a stream connected with ``connect``)::

    rx bytes -> Unescaper -> FrameRx --req--> Responder -> FrameTx -> tx bytes
                              | write          |  ^  +--meter--> ReplayMeter
                              v                |  | core_out
                  Memory (2 banks) --read--> ImageReplay -> core_in

The buffer's words are the core's input beats (``in_width`` bits, e.g. 32 image bits or three
8-bit pixels): :class:`FrameRx` writes each received byte into its byte lane, and
:class:`~.responder.ImageReplay` reads one whole beat per cycle, so REPLAY measures the core
rather than the buffer whatever the beat width.

:class:`FrameRx` buffers a whole request and checks its CRC and length before anything reaches
the core, so a corrupted request is answered by an ERROR frame and never runs. The buffer has
two banks: while one request is replayed and answered, the next one arrives in the other bank,
so a host that keeps two requests outstanding (sending request ``n + 2`` once response ``n``
is complete) keeps the transmit line busy. A third outstanding request would overrun the UART
receiver and be lost (and retried by the driver). The protocol (frame format,
:class:`~bnnflow.protocol.Command`, :class:`~bnnflow.protocol.ErrorCode`,
:class:`~bnnflow.protocol.DeviceInfo`) is defined once in :mod:`bnnflow.protocol`.
"""


from amaranth.back import verilog
from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, connect, flipped

from ..protocol import DEFAULT_ESCAPED, DeviceInfo, ReplaySummary
from .framing import (
    ByteRegister,
    FrameRx,
    FrameTx,
    StreamRegister,
    TxByteLayout,
    Unescaper,
    bank_words,
)
from .resets import local_reset, reset_root
from .responder import (
    ImageReplay,
    ReplayMeter,
    Responder,
    core_in_layout,
    core_out_layout,
    crc_chunk_bytes,
)
from .uart import ByteLayout, UARTRx, UARTTx

__all__ = [
    "DEFAULT_CLK_HZ",
    "core_in_layout",
    "core_out_layout",
    "core_params",
    "HostLink",
    "HostTop",
    "generate_top_verilog",
]

MAX_IMAGES = 255  # the IDENTIFY struct reports the image count in one byte
#: The clock a :class:`HostTop` reports when none is given: the ULX3S's oscillator, and the
#: nominal clock of the simulated board (``sim_divisor`` 8 is then 3.125 Mbaud).
DEFAULT_CLK_HZ = 25_000_000


def core_params(core: wiring.Component) -> dict:
    """``num_classes``, ``cls_bits`` and ``score_bits`` read off a core's ``m_axis`` payload."""
    layout = data.Layout.cast(core.m_axis.payload.shape())
    scores = layout["scores"].shape
    return {"num_classes": scores.length, "cls_bits": Shape.cast(layout["cls"].shape).width,
            "score_bits": Shape.cast(scores.elem_shape).width}


def _in_width(core: wiring.Component) -> int:
    """Bits of ``data`` in a core's ``s_axis`` payload."""
    layout = data.Layout.cast(core.s_axis.payload.shape())
    return Shape.cast(layout["data"].shape).width


def _design_id(design_id) -> bytes:
    if isinstance(design_id, str):
        design_id = bytes.fromhex(design_id)
    design_id = bytes(design_id)
    if len(design_id) != 8:
        raise ValueError(f"design ID must be 8 bytes, got {len(design_id)}")
    return design_id


class HostLink(wiring.Component):
    """Frame parser, command FSM and response framer between a byte stream and the core.

    Parameters
    ----------
    n_inputs : int
        Input bits per image (pixels count 8 bits each); an image is ``ceil(n_inputs / 8)``
        bytes in a request.
    num_classes, cls_bits, score_bits : int
        Shape of the core's output (``score_bits <= 16``: scores travel as int16).
    design_id : bytes or str
        8 bytes (or 16 hex digits) reported by IDENTIFY.
    max_payload : int
        Request bank size in bytes; rounded down to whole images (at most 255). The buffer
        holds two banks.
    escaped : set of int
        Bytes escaped on transmit (choose for the board's USB-serial bridge).
    clk_hz : int
        The clock frequency reported by IDENTIFY (0: unknown).
    in_width : int
        Bits per ``core_in`` beat, a multiple of 8: ``in_width / 8`` image bytes per beat,
        the first in the low bits; an image's last beat is padded with zeros.
    result_spacing : int
        Fewest cycles between two of the core's results (its cycles per frame): REPLAY's CRC
        then folds in just enough of a record per cycle to keep up
        (:func:`~bnnflow.hw.responder.crc_chunk_bytes`). A core that is faster is slowed
        down while measured, never a result lost; 1 (the default) folds whole records.

    Attributes
    ----------
    rx : In(stream.Signature(ByteLayout))
    tx : Out(stream.Signature(ByteLayout))
    core_in : Out(stream.Signature(core_in_layout(in_width)))
    core_out : In(stream.Signature(core_out_layout(...)))
    info : DeviceInfo
        What IDENTIFY reports.
    """

    def __init__(self, n_inputs, num_classes, cls_bits, score_bits, design_id, max_payload=1024,
                 *, escaped=DEFAULT_ESCAPED, clk_hz=0, in_width=8, result_spacing=1):
        if in_width < 8 or in_width % 8:
            raise ValueError(f"in_width {in_width} must be a multiple of 8 (whole image bytes "
                             f"per core input beat)")
        if not 1 <= score_bits <= 16:
            raise ValueError(f"score_bits {score_bits} must be in 1..16 (int16 on the wire)")
        if not 1 <= cls_bits <= 8 or num_classes > 1 << cls_bits:
            raise ValueError(f"cls_bits {cls_bits} cannot index {num_classes} classes in a byte")
        image_size = (n_inputs + 7) // 8
        record_size = 1 + 2 * num_classes
        max_images = min(MAX_IMAGES, max_payload // image_size,
                         (0xFFFF - ReplaySummary.SIZE) // record_size)
        if max_images < 1:
            raise ValueError(f"max_payload {max_payload} cannot hold one {image_size}-byte image")
        if not 0 <= clk_hz < 1 << 32:
            raise ValueError(f"clk_hz {clk_hz} does not fit the IDENTIFY struct's u32")
        self.info = DeviceInfo(_design_id(design_id), n_inputs, num_classes, max_images,
                               max_images * image_size, int(clk_hz))
        self.cls_bits, self.score_bits, self.escaped = cls_bits, score_bits, escaped
        self.in_width = in_width
        #: Bytes of a result record REPLAY's CRC folds in per cycle.
        self.crc_chunk_bytes = crc_chunk_bytes(record_size, result_spacing)
        #: Reset request of the link's blocks, each reset by its own leaf
        #: (:mod:`bnnflow.hw.resets`): with one leaf for the whole link, SFC at 64 cycles
        #: missed 125 MHz on 7.8 ns of routing from it to a meter register.
        self.reset_req = Signal(name="link_reset_req")
        super().__init__({
            "rx": In(stream.Signature(ByteLayout)),
            "tx": Out(stream.Signature(ByteLayout)),
            "core_in": Out(stream.Signature(core_in_layout(in_width))),
            "core_out": In(stream.Signature(core_out_layout(num_classes, cls_bits, score_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        info = self.info
        unescaper = Unescaper()
        # Between the unescaper and the frame decoder, so the decoder's phase decode and the
        # unescaper's compare chain are not one path.
        rx_reg = ByteRegister()
        width = self.in_width
        frame_rx = FrameRx(info.max_payload, info.image_size, width)
        words = bank_words(info.max_payload, info.image_size, width)
        # Initially zero: the lanes that pad each image's last beat are never written. A read
        # never uses a word written in the same cycle (the bank being replayed is not written
        # until its response is complete), so Yosys need not guard the block RAM's read data
        # against a collision with a bypass multiplexer on that critical path.
        m.submodules.buffer = buffer = Memory(shape=width, depth=2 * words, init=[],
                                              attrs={"no_rw_check": 1})
        replay = ImageReplay(words, -(-info.image_size // (width // 8)), width)
        responder = Responder(info, core_out_layout(info.num_classes, self.cls_bits,
                                                    self.score_bits))
        meter = ReplayMeter(8 * info.record_size, self.crc_chunk_bytes)
        frame_tx = FrameTx(self.escaped)
        # Keeps the frame encoder's ready off the responder's serializer enables.
        tx_reg = ByteRegister(TxByteLayout)
        # The replay's output register takes the image buffer's read data; this one takes it
        # to the core, so that register can sit by the block (SFC missed 125 MHz on 3.9 ns of
        # routing from the block to it, placed by the core), and keeps the core's ready out
        # of the replay's control.
        replay_reg = StreamRegister(core_in_layout(width), skid=True)
        for name, block in (("unescaper", unescaper), ("rx_reg", rx_reg),
                            ("frame_rx", frame_rx), ("replay", replay),
                            ("replay_reg", replay_reg),
                            ("responder", responder), ("meter", meter),
                            ("frame_tx", frame_tx), ("tx_reg", tx_reg)):
            local_reset(m, name, block, self.reset_req)

        connect(m, flipped(self.rx), unescaper.i)
        connect(m, unescaper.o, rx_reg.i)
        connect(m, rx_reg.o, frame_rx.i)
        # The write is registered: the frame decoder's enable and address logic and the way
        # to the block RAM are not one path (SFC missed 125 MHz on it: 4 LUTs, then 3.6 ns of
        # routing to the block). A bank is read only after its request's CRC has arrived,
        # bytes after its last word's write.
        wr = buffer.write_port(granularity=8)
        m.d.sync += [wr.addr.eq(frame_rx.wr.addr), wr.data.eq(frame_rx.wr.data),
                     wr.en.eq(frame_rx.wr.en)]
        connect(m, frame_rx.req, responder.req)
        connect(m, responder.replay, replay.ctl)
        connect(m, responder.meter, meter.bus)
        connect(m, replay.rd, buffer.read_port())
        connect(m, replay.o, replay_reg.i)
        connect(m, replay_reg.o, flipped(self.core_in))
        m.d.comb += meter.in_beat.eq(self.core_in.valid & self.core_in.ready)
        connect(m, flipped(self.core_out), responder.core_out)
        connect(m, responder.o, tx_reg.i)
        connect(m, tx_reg.o, frame_tx.i)
        connect(m, frame_tx.o, flipped(self.tx))
        return m


class HostTop(wiring.Component):
    """UART + :class:`HostLink` + an accelerator core: what a board top instantiates.

    Parameters
    ----------
    core : wiring.Component
        Has ``s_axis: In(stream.Signature(core_in_layout(in_width)))`` (``in_width`` a
        multiple of 8) and ``m_axis: Out(stream.Signature(core_out_layout(...)))``, e.g. a
        :class:`~bnnflow.hw.core.BnnCore`; its ``result_spacing``, if it has one, is passed to
        :class:`HostLink`.
    design_id : bytes or str
        8 bytes (or 16 hex digits) reported by IDENTIFY.
    divisor : int or fractions.Fraction
        UART clock cycles per bit, ``clk_hz / baud`` (see
        :func:`bnnflow.hw.uart.baud_divisor`).
    n_inputs : int, optional
        Input bits per image (8 per pixel of an integer-input network); defaults to
        ``core.n_inputs``, else ``core.net.input.size``.
    max_payload : int, optional
        Request bank size in bytes (block RAM holds two banks); by default 1024, or one image
        when an image is larger (3072 bytes for a 3x32x32 pixel image).
    escaped : set of int
        Bytes escaped on transmit.
    clk_hz : int
        The ``sync`` clock frequency, reported by IDENTIFY so the host can turn REPLAY's cycle
        counts into frames per second. Pass the board's actual clock (the PLL output when
        there is one); the default is :data:`DEFAULT_CLK_HZ`.

    Attributes
    ----------
    rx : In(1)
        UART receive pin (idle high).
    tx : Out(1)
        UART transmit pin (idle high).
    """

    rx: In(1, init=1)
    tx: Out(1, init=1)

    def __init__(self, core, design_id, divisor, *, n_inputs=None, max_payload=None,
                 escaped=DEFAULT_ESCAPED, clk_hz=DEFAULT_CLK_HZ):
        if n_inputs is None:
            n_inputs = getattr(core, "n_inputs", None)
            if n_inputs is None and hasattr(core, "net"):  # a BnnCore
                n_inputs = core.net.input.size
            if n_inputs is None:
                raise TypeError(f"{type(core).__name__} has neither n_inputs nor net; pass "
                                f"n_inputs= to HostTop")
        if max_payload is None:
            max_payload = max(1024, (n_inputs + 7) // 8)
        self.core = core
        self.divisor = divisor
        #: Reset request for every block (:mod:`bnnflow.hw.resets`), on top of the ``sync``
        #: domain's own reset; a board top, whose domain has none, drives it.
        self.reset_req = Signal(name="reset_req")
        self.link = HostLink(n_inputs, design_id=design_id, max_payload=max_payload,
                             escaped=escaped, clk_hz=clk_hz, in_width=_in_width(core),
                             result_spacing=getattr(core, "result_spacing", 1),
                             **core_params(core))
        super().__init__()

    @property
    def info(self) -> DeviceInfo:
        """What IDENTIFY reports."""
        return self.link.info

    def elaborate(self, platform):
        m = Module()
        # The reset tree (bnnflow.hw.resets): every block by its own registered copy of the
        # root, a BnnCore's layers each by theirs.
        root = reset_root(m, self.reset_req)
        uart_rx, uart_tx = UARTRx(self.divisor), UARTTx(self.divisor)
        link, core = self.link, self.core
        for name, block in (("uart_rx", uart_rx), ("uart_tx", uart_tx), ("link", link),
                            ("core", core)):
            local_reset(m, name, block, root)
        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
        connect(m, uart_rx.o, link.rx)
        connect(m, link.tx, uart_tx.i)
        connect(m, link.core_in, core.s_axis)
        connect(m, core.m_axis, link.core_out)
        return m


def generate_top_verilog(core, design_id, divisor, path, name="bnn_top", **kwargs) -> str:
    """Write the Verilog of a :class:`HostTop` (ports ``clk``, ``rst``, ``rx``, ``tx``).

    Parameters
    ----------
    core, design_id, divisor, **kwargs
        Passed to :class:`HostTop`.
    path : str or os.PathLike
        Output file.
    name : str
        Verilog module name.

    Returns
    -------
    str
        The Verilog text.
    """
    top = HostTop(core, design_id, divisor, **kwargs)
    text = verilog.convert(top, name=name)
    with open(path, "w") as f:
        f.write(text)
    return text
