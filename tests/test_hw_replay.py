# amaranth: UnusedElaboratable=no
"""Amaranth-simulator tests of REPLAY (the on-chip benchmark) and of pipelined requests."""

import random

import numpy as np
import pytest
from amaranth.hdl import Array, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out, connect
from fakecore import FakeCore, byte_host
from streams import run, uart_recv, uart_send

from bnnflow.hw.framing import bank_words
from bnnflow.hw.hostlink import HostLink, HostTop, core_in_layout, core_out_layout
from bnnflow.hw.responder import crc_chunk_bytes
from bnnflow.packing import image_bytes
from bnnflow.protocol import (
    Command,
    ErrorCode,
    Frame,
    FrameDecoder,
    ReplaySummary,
    encode_frame,
    pack_images,
    pack_replay,
    results_crc,
    unpack_results,
)

N_INPUTS, CLASSES = 20, 3
DESIGN_ID = bytes.fromhex("0123456789abcdef")


def images(k, seed):
    return np.random.default_rng(seed).integers(0, 2, (k, N_INPUTS), dtype=np.uint8)


def run_link(requests, responses, *, seed=0, stall=True, result_spacing=1):
    """Send ``requests`` into a HostLink with a FakeCore; return the decoded responses and the
    cycles of every core input transfer, core output transfer, and core output stall."""
    m = Module()
    core = FakeCore(N_INPUTS, CLASSES, stall=stall)
    link = HostLink(N_INPUTS, CLASSES, core.cls_bits, core.score_bits, DESIGN_ID, 30,
                    clk_hz=12_000_000, result_spacing=result_spacing)
    m.submodules.core, m.submodules.link = core, link
    connect(m, link.core_in, core.s_axis)
    connect(m, core.m_axis, link.core_out)
    rng = random.Random(seed)
    events, log = [], {"in": [], "out": [], "stall": []}

    host_tx, host_rx = byte_host(link, requests, events, responses, rng)

    async def monitor(ctx):
        cycle = 0
        async for _, _, iv, ir, ov, orr in ctx.tick().sample(
                core.s_axis.valid, core.s_axis.ready, core.m_axis.valid, core.m_axis.ready):
            for key, hit in (("in", iv and ir), ("out", ov and orr), ("stall", ov and not orr)):
                if hit:
                    log[key].append(cycle)
            cycle += 1

    run(m, host_tx, host_rx, checked=[link.tx, link.core_in, link.core_out],
        background=[monitor])
    return events, log, core


@pytest.mark.parametrize("k, repeats", [(1, 1), (3, 4), (10, 3)])
def test_replay_counts_cycles_and_checks_every_result(k, repeats):
    bits = images(k, k + repeats)
    requests = [encode_frame(Command.REPLAY, 0x7E, pack_replay(bits, repeats)),
                encode_frame(Command.INFER, 2, pack_images(bits[::-1]))]
    events, log, core = run_link(requests, 2, seed=k)
    assert [(e.cmd, e.seq) for e in events] == [(Command.REPLAY, 0x7E), (Command.INFER, 2)]
    summary = ReplaySummary.unpack(events[0].payload)
    frames = k * repeats
    classes, scores = core.predict(bits)
    assert summary.frames == frames
    assert summary.crc == results_crc(classes, scores, repeats)
    # From the first image byte into the core to the last measured result out, inclusive.
    assert summary.cycles == log["out"][frames - 1] - log["in"][0] + 1
    assert summary.latency == log["out"][0] - log["in"][0] + 1
    # The core's output was never held while the cycles were counted.
    assert not [c for c in log["stall"] if c <= log["out"][frames - 1]]
    # Then one unmeasured pass, returned like INFER; and the next request runs normally.
    got = unpack_results(events[0].payload[ReplaySummary.SIZE:], CLASSES)
    np.testing.assert_array_equal(got[0], classes)
    np.testing.assert_array_equal(got[1], scores)
    np.testing.assert_array_equal(unpack_results(events[1].payload, CLASSES)[1], scores[::-1])
    assert len(log["in"]) == (repeats + 2) * k * 3


def test_replay_summary_with_a_fast_core():
    bits = images(10, 1)
    events, log, _ = run_link([encode_frame(Command.REPLAY, 1, pack_replay(bits, 5))], 1,
                              stall=False)
    summary = ReplaySummary.unpack(events[0].payload)
    # Without stalls FakeCore has a constant period (3 bytes, then its latency), also across
    # the seams between passes: images are replayed back to back.
    (period,) = set(np.diff(log["out"][:50]))
    assert summary.cycles - summary.latency == 49 * period


@pytest.mark.parametrize("record_size, spacing, chunk", [
    (21, 64, 1), (21, 21, 1), (21, 20, 3), (21, 7, 3), (21, 6, 7), (21, 2, 21), (21, 1, 21),
    (7, 7, 1), (7, 6, 7), (1, 1, 1)])
def test_crc_chunk_bytes_keep_up_with_the_core(record_size, spacing, chunk):
    assert crc_chunk_bytes(record_size, spacing) == chunk


def test_crc_chunk_bytes_rejects_nonsense():
    with pytest.raises(ValueError, match="every 0 cycles"):
        crc_chunk_bytes(21, 0)


@pytest.mark.parametrize("spacing", [3, 7, 40])
def test_replay_crc_in_chunks_measures_a_core_that_keeps_up(spacing):
    """A meter whose CRC takes a 7-byte record a byte per cycle (``result_spacing`` 7 or
    more; whole records below) measures FakeCore, a result every 8 cycles, exactly: never
    held, every result counted and checked."""
    bits = images(10, spacing)
    requests = [encode_frame(Command.REPLAY, 1, pack_replay(bits, 3)),
                encode_frame(Command.INFER, 2, pack_images(bits))]
    events, log, core = run_link(requests, 2, stall=False, result_spacing=spacing)
    summary = ReplaySummary.unpack(events[0].payload)
    classes, scores = core.predict(bits)
    assert summary.frames == 30 and summary.crc == results_crc(classes, scores, 3)
    assert summary.cycles == log["out"][29] - log["in"][0] + 1
    assert not [c for c in log["stall"] if c <= log["out"][29]]
    np.testing.assert_array_equal(unpack_results(events[1].payload, CLASSES)[1], scores)


def error(seq, code):
    return Frame(Command.ERROR, seq, bytes([code.value, Command.REPLAY.value]))


def test_replay_rejects_bad_requests():
    bits = images(10, 2)
    requests = [
        encode_frame(Command.REPLAY, 1, b"\x00\x00" + pack_images(bits[:2])),  # no repeats
        encode_frame(Command.REPLAY, 2, b"\x01\x00"),  # no image
        encode_frame(Command.REPLAY, 3, b"\x01"),  # not even the repeat count
        encode_frame(Command.REPLAY, 4, pack_replay(bits[:2], 1) + b"\x00"),  # not aligned
        encode_frame(Command.REPLAY, 5, pack_replay(bits, 1) + b"\x00"),  # one byte too long
        encode_frame(Command.REPLAY, 6, pack_replay(bits, 2)),  # a full bank
    ]
    events, log, core = run_link(requests, len(requests))
    assert events[:5] == [error(1, ErrorCode.BAD_LENGTH), error(2, ErrorCode.BAD_LENGTH),
                          error(3, ErrorCode.BAD_LENGTH), error(4, ErrorCode.BAD_LENGTH),
                          error(5, ErrorCode.OVERFLOW)]
    assert ReplaySummary.unpack(events[5].payload).frames == 20
    assert len(log["in"]) == 3 * 10 * 3


def test_two_outstanding_requests_keep_tx_busy():
    """Through the UART pins: requests 0 and 1 back to back, request 2 as soon as response 0
    is complete. The second bank takes request 1 during response 0, so response 1 follows
    with no idle line, and request 2 is not overrun."""
    divisor = 4
    core = FakeCore(N_INPUTS, CLASSES)
    top = HostTop(core, DESIGN_ID, divisor, max_payload=12)
    batches = [images(4, 10 + i) for i in range(3)]
    frames = [encode_frame(Command.INFER, i, pack_images(b)) for i, b in enumerate(batches)]
    events, gaps = [], []
    first_done = []

    async def host_tx(ctx):
        ctx.set(top.rx, 1)
        await ctx.tick().repeat(10)
        await uart_send(ctx, top.rx, frames[0] + frames[1], divisor)
        while not first_done:
            await ctx.tick()
        await uart_send(ctx, top.rx, frames[2], divisor)

    async def host_rx(ctx):
        decoder = FrameDecoder()
        while len(events) < 3:
            byte, waited = await uart_recv(ctx, top.tx, divisor)
            if decoder.in_frame is False and events:
                gaps.append(waited)
            new = decoder.feed(bytes([byte]))
            events.extend(new)
            if new and not first_done:
                first_done.append(1)

    run(top, host_tx, host_rx)
    assert [e.seq for e in events] == [0, 1, 2]
    for event, bits in zip(events, batches, strict=True):
        assert event.cmd == Command.INFER
        np.testing.assert_array_equal(unpack_results(event.payload, CLASSES)[1],
                                      core.predict(bits)[1])
    # The line idles less than a byte time between responses 0 and 1 (host-limited after).
    assert gaps[0] < 10 * divisor


class BeatProbe(wiring.Component):
    """A core of ``width``-bit input beats that takes one beat per cycle while its output is
    free, and answers each image (at its ``last`` beat) like :class:`FakeCore`: scores
    ``2*popcount(image & mask_c) - popcount(mask_c)``, class their first argmax."""

    def __init__(self, n_inputs, num_classes, width, seed=0):
        self.n_inputs, self.width = n_inputs, width
        self.beats = -(-n_inputs // width)
        self.score_bits = n_inputs.bit_length() + 1
        self.cls_bits = max(1, (num_classes - 1).bit_length())
        self.masks = np.random.default_rng(seed).integers(0, 2, (num_classes, n_inputs),
                                                          dtype=np.uint8)
        super().__init__({
            "s_axis": In(stream.Signature(core_in_layout(width))),
            "m_axis": Out(stream.Signature(
                core_out_layout(num_classes, self.cls_bits, self.score_bits))),
        })

    predict = FakeCore.predict  # the same masks model

    def elaborate(self, platform):
        m = Module()
        beat = Signal(range(self.beats))
        inp, out = self.s_axis.payload, self.m_axis.payload
        m.d.comb += self.s_axis.ready.eq(~self.m_axis.valid | self.m_axis.ready)
        with m.If(self.m_axis.valid & self.m_axis.ready):
            m.d.sync += self.m_axis.valid.eq(0)
        with m.If(self.s_axis.valid & self.s_axis.ready):
            m.d.sync += beat.eq(beat + 1)
            for c, mask in enumerate(self.masks):
                words = int.from_bytes(image_bytes(mask), "little")
                word = Array(Const(words >> (self.width * b), self.width)
                             for b in range(self.beats))[beat]
                acc = Signal(data.signed(self.score_bits), init=-int(mask.sum()), name=f"acc{c}")
                new = acc + 2 * sum((inp.data & word)[i] for i in range(self.width))
                m.d.sync += acc.eq(new)
                with m.If(inp.last):
                    m.d.sync += [acc.eq(-int(mask.sum())), out.scores[c].eq(new)]
            with m.If(inp.last):
                m.d.sync += [beat.eq(0), self.m_axis.valid.eq(1)]
        best, best_c = out.scores[0], Const(0, self.cls_bits)
        for c in range(1, len(self.masks)):
            better = out.scores[c] > best
            best, best_c = Mux(better, out.scores[c], best), Mux(better, c, best_c)
        m.d.comb += [out.cls.eq(best_c), out.last.eq(1)]
        return m


def beats_of(bits, width):
    """The core input beats of each image: its bytes, ``width // 8`` per beat, zero-padded."""
    k = width // 8
    out = []
    for row in bits:
        raw = image_bytes(row)
        raw += bytes(-len(raw) % k)
        out += [(int.from_bytes(raw[s:s + k], "little"), int(s + k == len(raw)))
                for s in range(0, len(raw), k)]
    return out


@pytest.mark.parametrize("n_inputs, width", [(784, 32), (20, 32), (56, 24), (48, 24), (60, 16)])
def test_wide_beats_replay_at_one_beat_per_cycle(n_inputs, width):
    """A core that takes a ``width``-bit beat every cycle is measured at its own rate, one beat
    per cycle (a 784-bit image: 25 cycles per frame, not its 98 bytes), and gets each image's
    bytes in order, ``width // 8`` per beat, the last beat zero-padded."""
    k, repeats = 3, 4
    core = BeatProbe(n_inputs, CLASSES, width, seed=n_inputs)
    nbytes = -(-n_inputs // 8)
    link = HostLink(n_inputs, CLASSES, core.cls_bits, core.score_bits, DESIGN_ID, k * nbytes,
                    in_width=width)
    m = Module()
    m.submodules.core, m.submodules.link = core, link
    connect(m, link.core_in, core.s_axis)
    connect(m, core.m_axis, link.core_out)
    bits = np.random.default_rng(width).integers(0, 2, (k, n_inputs), dtype=np.uint8)
    bits[0, -1] = 1  # the last input bit, next to the padding
    requests = [encode_frame(Command.REPLAY, 1, pack_replay(bits, repeats)),
                encode_frame(Command.INFER, 2, pack_images(bits[::-1]))]
    events, beats_in, outs = [], [], []
    host_tx, host_rx = byte_host(link, requests, events, 2, random.Random(n_inputs))

    async def monitor(ctx):
        cycle = 0
        async for _, _, iv, ir, payload, ov, orr in ctx.tick().sample(
                core.s_axis.valid, core.s_axis.ready, core.s_axis.payload, core.m_axis.valid,
                core.m_axis.ready):
            if iv and ir:
                beats_in.append((cycle, payload.data, payload.last))
            if ov and orr:
                outs.append(cycle)
            cycle += 1

    run(m, host_tx, host_rx, checked=[link.tx, link.core_in, link.core_out],
        background=[monitor])
    per_image = core.beats
    assert per_image == -(-nbytes // (width // 8))
    want = beats_of(bits, width)
    assert [b[1:] for b in beats_in] == want * (repeats + 1) + beats_of(bits[::-1], width)
    frames = k * repeats
    measured = [c for c, _, _ in beats_in[:frames * per_image]]
    assert measured == list(range(measured[0], measured[0] + frames * per_image))
    summary = ReplaySummary.unpack(events[0].payload)
    classes, scores = core.predict(bits)
    assert summary.frames == frames and summary.crc == results_crc(classes, scores, repeats)
    # The meter sees one frame every ``per_image`` cycles: the core's rate, not the buffer's.
    assert summary.cycles - summary.latency == (frames - 1) * per_image
    assert summary.cycles == outs[frames - 1] - measured[0] + 1
    got = unpack_results(events[1].payload, CLASSES)
    np.testing.assert_array_equal(got[0], classes[::-1])
    np.testing.assert_array_equal(got[1], scores[::-1])


def test_meter_holds_a_core_faster_than_its_crc():
    """A core with a result every cycle, on a link built for one every 7 (``result_spacing``
    7: its CRC takes a 7-byte record a byte per cycle): REPLAY holds the core's output while
    the CRC is busy, so results leave 7 cycles apart, none lost, the CRC right."""
    k, repeats, n_inputs = 3, 4, 20
    core = BeatProbe(n_inputs, CLASSES, 32, seed=5)
    link = HostLink(n_inputs, CLASSES, core.cls_bits, core.score_bits, DESIGN_ID, k * 3,
                    in_width=32, result_spacing=7)
    assert link.crc_chunk_bytes == 1
    m = Module()
    m.submodules.core, m.submodules.link = core, link
    connect(m, link.core_in, core.s_axis)
    connect(m, core.m_axis, link.core_out)
    bits = np.random.default_rng(5).integers(0, 2, (k, n_inputs), dtype=np.uint8)
    events, outs, ins = [], [], []
    host_tx, host_rx = byte_host(link, [encode_frame(Command.REPLAY, 1,
                                                      pack_replay(bits, repeats))],
                                 events, 1, random.Random(5))

    async def monitor(ctx):
        cycle = 0
        async for _, _, iv, ir, ov, orr in ctx.tick().sample(
                core.s_axis.valid, core.s_axis.ready, core.m_axis.valid, core.m_axis.ready):
            if iv and ir:
                ins.append(cycle)
            if ov and orr:
                outs.append(cycle)
            cycle += 1

    run(m, host_tx, host_rx, checked=[link.tx, link.core_in, link.core_out],
        background=[monitor])
    frames = k * repeats
    summary = ReplaySummary.unpack(events[0].payload)
    classes, scores = core.predict(bits)
    assert summary.frames == frames and summary.crc == results_crc(classes, scores, repeats)
    assert min(np.diff(outs[:frames])) == 7
    assert summary.cycles == outs[frames - 1] - ins[0] + 1
    got = unpack_results(events[0].payload[ReplaySummary.SIZE:], CLASSES)
    np.testing.assert_array_equal(got[1], scores)


def test_bank_words_start_each_image_in_a_new_word():
    assert bank_words(1024, 98, 8) == 1024
    assert bank_words(980, 98, 32) == 256  # 10 images of 25 words
    assert bank_words(3072, 3072, 24) == 1024
    assert bank_words(7, 3, 16) == 8  # 2 + 2 + 1 words
    with pytest.raises(ValueError, match="whole number of bytes"):
        bank_words(1024, 98, 12)


def test_word_crc_matches_zlib_with_gaps_and_restart():
    """The two-stage CRC of the meter equals zlib's CRC-32 over the words' little-endian bytes,
    whatever the gaps between words, and ``start`` begins a new one."""
    import zlib

    from bnnflow.hw.responder import _WordCrc32

    dut = _WordCrc32(40)
    rng = random.Random(3)
    runs = [[rng.getrandbits(40) for _ in range(n)] for n in (7, 1, 0, 12)]
    got = []

    async def bench(ctx):
        for words in runs:
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            for word in words:
                while rng.random() < 0.4:
                    await ctx.tick()
                ctx.set(dut.word, word)
                ctx.set(dut.valid, 1)
                await ctx.tick()
                ctx.set(dut.valid, 0)
            await ctx.tick().repeat(2)
            got.append(ctx.get(dut.crc))

    run(dut, bench)
    assert got == [zlib.crc32(b"".join(w.to_bytes(5, "little") for w in words))
                   for words in runs]
