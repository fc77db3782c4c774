# amaranth: UnusedElaboratable=no
"""Amaranth-simulator tests of the host link (hw/hostlink.py) with a fake core."""

import random

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module, Signal
from amaranth.lib.wiring import connect
from fakecore import FakeCore, byte_host
from streams import run, uart_recv, uart_send

from bnnflow.hw.hostlink import HostLink, HostTop, generate_top_verilog
from bnnflow.protocol import (
    DEFAULT_ESCAPED,
    MINIMAL_ESCAPED,
    START,
    Command,
    DeviceInfo,
    ErrorCode,
    Frame,
    FrameDecoder,
    encode_frame,
    pack_images,
    unpack_results,
)

N_INPUTS, CLASSES = 20, 3
DESIGN_ID = bytes.fromhex("0123456789abcdef")


def make_link(max_payload=30, stall=True, **kwargs):
    m = Module()
    core = FakeCore(N_INPUTS, CLASSES, stall=stall)
    link = HostLink(N_INPUTS, CLASSES, core.cls_bits, core.score_bits, DESIGN_ID, max_payload,
                    **kwargs)
    m.submodules.core, m.submodules.link = core, link
    connect(m, link.core_in, core.s_axis)
    connect(m, core.m_axis, link.core_out)
    return m, link, core


def exchange(requests, responses, *, seed=0, max_payload=30, **kwargs):
    """Send ``requests`` (bytes) into the link; return ``responses`` decoded events and the
    number of image bytes the core accepted."""
    m, link, core = make_link(max_payload, **kwargs)
    rng = random.Random(seed)
    events, core_beats, wire = [], [], bytearray()

    host_tx, host_rx = byte_host(link, requests, events, responses, rng, wire=wire)

    async def core_monitor(ctx):
        async for _, _, valid, ready in ctx.tick().sample(core.s_axis.valid, core.s_axis.ready):
            if valid and ready:
                core_beats.append(1)

    run(m, host_tx, host_rx, checked=[link.tx, link.core_in, link.core_out],
        background=[core_monitor])
    exchange.wire = bytes(wire)
    return events, len(core_beats), link, core


def random_images(k, seed):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (k, N_INPUTS), dtype=np.uint8)
    # Images whose bytes are START, ESCAPE, XON and XOFF exercise escaping both ways.
    for i, byte in enumerate([0x7E, 0x7D, 0x11, 0x13][:k]):
        bits[i, :8] = [(byte >> j) & 1 for j in range(8)]
    return bits


def test_identify():
    events, beats, link, _ = exchange([encode_frame(Command.IDENTIFY, 42)], 1)
    assert events == [Frame(Command.IDENTIFY, 42, link.info.pack())]
    info = DeviceInfo.unpack(events[0].payload)
    assert info.design_id == DESIGN_ID
    assert (info.n_inputs, info.num_classes, info.score_bytes) == (N_INPUTS, CLASSES, 2)
    assert info.max_images == 10 and info.max_payload == 30  # 30 bytes = 10 images of 3 bytes
    assert beats == 0


@pytest.mark.parametrize("k", [1, 4, 10])
def test_infer(k):
    bits = random_images(k, k)
    requests = [encode_frame(Command.INFER, 0x7E, pack_images(bits)),
                encode_frame(Command.INFER, 0x13, pack_images(bits[::-1]))]
    events, beats, _, core = exchange(requests, 2, seed=k)
    assert [(e.cmd, e.seq) for e in events] == [(Command.INFER, 0x7E), (Command.INFER, 0x13)]
    want_cls, want_scores = core.predict(bits)
    for event, order in zip(events, [slice(None), slice(None, None, -1)], strict=True):
        classes, scores = unpack_results(event.payload, CLASSES)
        np.testing.assert_array_equal(classes, want_cls[order])
        np.testing.assert_array_equal(scores, want_scores[order])
    assert beats == 2 * k * 3
    assert (want_scores < 0).any()  # sign extension is exercised


def test_every_byte_escaped_by_host():
    bits = random_images(3, 5)
    bits[2, :8] = [0, 1, 1, 1, 1, 0, 1, 0]  # 0x5E, whose escaped form would be START
    request = encode_frame(Command.INFER, 0x7D, pack_images(bits),
                           escaped=set(range(256)) - {0x5E})
    events, _, _, core = exchange([request], 1)
    np.testing.assert_array_equal(unpack_results(events[0].payload, CLASSES)[0],
                                  core.predict(bits)[0])


def corrupt(frame, index):
    return frame[:index] + bytes([frame[index] ^ 0x04]) + frame[index + 1:]


def test_bad_crc_never_reaches_core():
    bits = random_images(2, 1)
    good = encode_frame(Command.INFER, 9, pack_images(bits))
    bad = corrupt(good, len(good) - 4)  # a payload byte (never escaped here)
    assert bad != good and bad.count(START) == 1
    events, beats, _, _ = exchange([bad], 1)
    assert events == [Frame(Command.ERROR, 9, bytes([ErrorCode.BAD_CRC.value, 2]))]
    assert beats == 0
    # The same link recovers: the corrupted request then the good one.
    events, beats, _, _ = exchange([bad, good], 2)
    assert events[0].cmd == Command.ERROR and events[1].cmd == Command.INFER
    assert beats == 2 * 3


def error_frame(seq, code, cmd):
    return Frame(Command.ERROR, seq, bytes([code.value, cmd]))


def test_unknown_command_and_bad_lengths():
    requests = [
        encode_frame(0x55, 1, b"abc"),
        encode_frame(Command.ERROR, 2),
        encode_frame(Command.IDENTIFY, 3, b"\x00"),
        encode_frame(Command.INFER, 4, b"\x01\x02"),  # not a whole image
        encode_frame(Command.INFER, 5),  # no image
    ]
    events, beats, _, _ = exchange(requests, len(requests))
    assert events == [
        error_frame(1, ErrorCode.UNKNOWN_COMMAND, 0x55),
        error_frame(2, ErrorCode.UNKNOWN_COMMAND, Command.ERROR.value),
        error_frame(3, ErrorCode.BAD_LENGTH, Command.IDENTIFY.value),
        error_frame(4, ErrorCode.BAD_LENGTH, Command.INFER.value),
        error_frame(5, ErrorCode.BAD_LENGTH, Command.INFER.value),
    ]
    assert beats == 0


def test_overflow_then_resync():
    too_long = encode_frame(Command.INFER, 6, bytes(33))
    events, beats, _, _ = exchange([too_long, encode_frame(Command.IDENTIFY, 7)], 2)
    assert events[0] == error_frame(6, ErrorCode.OVERFLOW, Command.INFER.value)
    assert events[1].cmd == Command.IDENTIFY and events[1].seq == 7
    assert beats == 0


def test_garbage_and_truncated_frames_are_dropped():
    good = encode_frame(Command.IDENTIFY, 8)
    truncated = encode_frame(Command.INFER, 1, bytes(9))[:7]
    events, beats, _, _ = exchange([b"\x00\x7d\x55garbage", truncated, good], 1)
    assert events == [Frame(Command.IDENTIFY, 8, events[0].payload)]
    assert beats == 0


@pytest.mark.parametrize("escaped", [DEFAULT_ESCAPED, MINIMAL_ESCAPED])
def test_response_bytes_match_host_encoder(escaped):
    # The gateware escapes the set chosen for the bridge and computes the same CRC as
    # encode_frame; the identify struct carries the clock.
    bits = random_images(4, 3)
    requests = [encode_frame(Command.INFER, 0x11, pack_images(bits)),
                encode_frame(Command.IDENTIFY, 0x13)]
    events, _, link, _ = exchange(requests, 2, escaped=escaped, clk_hz=48_000_000)
    assert exchange.wire == b"".join(encode_frame(e.cmd, e.seq, e.payload, escaped=escaped)
                                     for e in events)
    assert DeviceInfo.unpack(events[1].payload).clk_hz == 48_000_000 == link.info.clk_hz
    assert (0x11 in exchange.wire) == (escaped == MINIMAL_ESCAPED)  # the seq of both frames


def test_hosttop_through_uart_pins():
    divisor = 4
    core = FakeCore(N_INPUTS, CLASSES)
    top = HostTop(core, DESIGN_ID.hex(), divisor, max_payload=12)
    bits = random_images(2, 9)
    requests = encode_frame(Command.IDENTIFY, 1) + encode_frame(Command.INFER, 2,
                                                                 pack_images(bits))
    events = []

    async def host_tx(ctx):
        ctx.set(top.rx, 1)
        await ctx.tick().repeat(10)
        await uart_send(ctx, top.rx, requests, divisor)

    async def host_rx(ctx):
        decoder = FrameDecoder()
        while len(events) < 2:
            events.extend(decoder.feed(bytes([(await uart_recv(ctx, top.tx, divisor))[0]])))

    run(top, host_tx, host_rx)
    assert DeviceInfo.unpack(events[0].payload) == top.info
    assert top.info.max_images == 4
    classes, scores = unpack_results(events[1].payload, CLASSES)
    np.testing.assert_array_equal(scores, core.predict(bits)[1])


def test_hosttop_reset_tree_stops_a_response():
    """In a reset-less domain (a board build) ``reset_req`` resets every block through the
    reset tree: a response half sent stops, the line goes idle, and the next request is
    answered in full."""
    divisor = 4
    core = FakeCore(N_INPUTS, CLASSES)
    top = HostTop(core, DESIGN_ID.hex(), divisor, max_payload=12)
    m = Module()
    m.domains.sync = ClockDomain(reset_less=True)
    m.submodules.top = top
    request = Signal()
    m.d.comb += top.reset_req.eq(request)
    events = []

    async def host(ctx):
        ctx.set(top.rx, 1)
        await ctx.tick().repeat(10)
        await uart_send(ctx, top.rx, encode_frame(Command.IDENTIFY, 1), divisor)
        while ctx.get(top.tx):  # the response starts
            await ctx.tick()
        await ctx.tick().repeat(3 * 10 * divisor)  # three bytes into it
        ctx.set(request, 1)
        await ctx.tick()
        ctx.set(request, 0)
        await ctx.tick().repeat(3)
        for _ in range(40 * 10 * divisor):  # the rest of the response never comes
            assert ctx.get(top.tx), "the transmitter kept sending through the reset"
            await ctx.tick()
        await uart_send(ctx, top.rx, encode_frame(Command.IDENTIFY, 2), divisor)

    async def host_rx(ctx):
        decoder = FrameDecoder()
        while not any(e.seq == 2 for e in events if hasattr(e, "seq")):
            events.extend(decoder.feed(bytes([(await uart_recv(ctx, top.tx, divisor))[0]])))

    run(m, host, host_rx)
    answers = [e for e in events if isinstance(e, Frame)]
    assert [e.seq for e in answers] == [2]
    assert DeviceInfo.unpack(answers[0].payload) == top.info


def test_hosttop_needs_input_size():
    class Bare:
        m_axis = FakeCore(N_INPUTS, CLASSES).m_axis
    with pytest.raises(TypeError, match="n_inputs"):
        HostTop(Bare(), DESIGN_ID, 8)


def test_hosttop_buffers_at_least_one_image_by_default():
    # A 3x32x32 pixel image is 3,072 bytes: more than the 1,024-byte default bank, which
    # grows to hold one image (the CNV board build used to stop here).
    from bnnflow.folding import default_folding
    from bnnflow.hw.core import BnnCore
    from bnnflow.synthetic import zoo_net

    net = zoo_net("cnv", 0)
    top = HostTop(BnnCore(net, default_folding(net), 24), DESIGN_ID, 8)
    small = HostTop(FakeCore(N_INPUTS, CLASSES), DESIGN_ID, 8)
    for t in (top, small):  # built for their info only, never elaborated
        t.link._MustUse__silence = True
    assert top.info.max_payload == 3072 and top.info.max_images == 1
    assert small.info.max_payload <= 1024  # the 1,024-byte default bank


def test_generate_top_verilog(tmp_path):
    text = generate_top_verilog(FakeCore(N_INPUTS, CLASSES), DESIGN_ID, 16, tmp_path / "top.v")
    assert (tmp_path / "top.v").read_text() == text
    header = text[text.index("module bnn_top("):].split(";")[0]
    assert sorted(header[header.index("(") + 1:-1].replace(" ", "").split(",")) == [
        "clk", "rst", "rx", "tx"]


@pytest.mark.parametrize("skid", [False, True])
@pytest.mark.parametrize(("idle", "stall"), [(0.0, 0.0), (0.3, 0.5), (0.0, 0.8)])
def test_stream_register(skid, idle, stall):
    """Every beat once, in order, under random idle and back-pressure (the rule checker
    watches both sides), and at full rate when neither side waits."""
    from amaranth.hdl import unsigned
    from streams import recv, send

    from bnnflow.hw.framing import StreamRegister

    dut = StreamRegister(unsigned(12), skid=skid)
    beats = [random.Random(3).randrange(4096) for _ in range(200)]
    got, cycles = [], []

    async def source(ctx):
        await send(ctx, dut.i, beats, rng=random.Random(1), idle=idle)

    async def sink(ctx):
        got.extend(int(p) for p in await recv(ctx, dut.o, len(beats), rng=random.Random(2),
                                              stall=stall, cycles=cycles))

    run(dut, source, sink, checked=(dut.i, dut.o))
    assert got == beats
    if idle == stall == 0:
        assert cycles[-1] - cycles[0] == len(beats) - 1


@pytest.mark.parametrize("skid", [False, True])
def test_stream_register_ready_path(skid):
    """With ``skid``, ``i.ready`` never follows the consumer's ready within a cycle; plain, it
    does whenever the output holds a beat."""
    from amaranth.hdl import unsigned

    from bnnflow.hw.framing import StreamRegister

    dut = StreamRegister(unsigned(4), skid=skid)
    followed = []

    async def bench(ctx):
        rng = random.Random(5)
        ctx.set(dut.i.valid, 1)
        for _ in range(100):
            ctx.set(dut.o.ready, 0)
            stalled = ctx.get(dut.i.ready)
            ctx.set(dut.o.ready, 1)
            followed.append(ctx.get(dut.i.ready) != stalled)
            ctx.set(dut.o.ready, rng.random() < 0.5)
            await ctx.tick()

    run(dut, bench)
    assert any(followed) != skid
