"""The host-link protocol (sw/protocol.py): CRC, escaping, framing, payload structs."""

import random
import zlib

import numpy as np
import pytest
from amaranth.hdl import Shape
from amaranth.lib.crc.catalog import CRC16_CCITT_FALSE, CRC32_ISO_HDLC
from hypothesis import given
from hypothesis import strategies as st

from bnnflow.packing import bytes_to_bits
from bnnflow.protocol import (
    DEFAULT_ESCAPED,
    ESCAPE,
    MAX_REPEATS,
    START,
    Command,
    DecodeError,
    DeviceInfo,
    ErrorCode,
    Frame,
    FrameDecoder,
    ReplaySummary,
    crc16,
    encode_frame,
    escape,
    pack_images,
    pack_records,
    pack_replay,
    record_dtype,
    results_crc,
    unpack_results,
)


def test_crc_known_answer():
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF


def test_crc_matches_gateware_crc_model():
    rng = random.Random(0)
    model = CRC16_CCITT_FALSE(data_width=8)
    for length in (1, 2, 7, 64):
        data = bytes(rng.randrange(256) for _ in range(length))
        assert crc16(data) == model.compute(data)


def test_enums_are_byte_shapes():
    assert Shape.cast(Command).width == 8 and Shape.cast(ErrorCode).width == 8
    assert len({c.value for c in Command}) == len(Command)


@pytest.mark.parametrize("byte", range(256))
def test_every_byte_value_round_trips(byte):
    payload = bytes([byte, byte ^ 0xFF, byte])
    frame = encode_frame(Command.INFER, byte, payload)
    assert frame[0] == START and START not in frame[1:]
    raw = set(frame[1:])
    for escaped in DEFAULT_ESCAPED - {ESCAPE}:
        assert escaped not in raw
    assert FrameDecoder().feed(frame) == [Frame(Command.INFER, byte, payload)]


def test_escape_everything_escapable():
    payload = bytes(range(256))
    frame = encode_frame(Command.INFER, 0x5E, payload, escaped=set(range(256)) - {0x5E})
    assert len(frame) == 1 + 2 * (4 + 256 + 2) - 2  # 0x5E is sent raw, once as seq
    assert START not in frame[1:]
    assert FrameDecoder().feed(frame) == [Frame(Command.INFER, 0x5E, payload)]
    with pytest.raises(ValueError, match="START"):
        encode_frame(Command.INFER, 1, b"", escaped={0x11})
    with pytest.raises(ValueError, match="0x5e"):
        encode_frame(Command.INFER, 1, b"", escaped=set(range(256)))


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=300)),
                max_size=5), st.integers(1, 17))
def test_stream_of_frames_in_any_chunking(frames, chunk):
    wire = b"".join(encode_frame(c, s, p) for c, s, p in frames)
    decoder = FrameDecoder()
    events = []
    for i in range(0, len(wire), chunk):
        events += decoder.feed(wire[i:i + chunk])
    assert [(int(getattr(e.cmd, "value", e.cmd)), e.seq, e.payload) for e in events] == frames
    assert not decoder.in_frame


def test_unknown_command_is_kept_as_int():
    assert FrameDecoder().feed(encode_frame(0x42, 0, b"x")) == [Frame(0x42, 0, b"x")]


def test_resync_after_garbage():
    good = encode_frame(Command.IDENTIFY, 3)
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\x11garbage\x7d" + good) == [Frame(Command.IDENTIFY, 3, b"")]
    assert decoder.discarded == 10


def test_corruption_is_reported_then_next_frame_decodes():
    good = encode_frame(Command.INFER, 5, b"\x01\x02\x03")
    for index in range(1, len(good)):
        for bit in range(8):
            bad = bytearray(good)
            bad[index] ^= 1 << bit
            if START in bad[1:] or bad[index] == ESCAPE:
                continue  # becomes a truncation or an escape; covered below
            events = FrameDecoder(max_payload=64).feed(bytes(bad) + good)
            assert isinstance(events[0], DecodeError), (index, bit)
            assert events[-1] == Frame(Command.INFER, 5, b"\x01\x02\x03")


def test_truncated_frame_then_good_frame():
    good = encode_frame(Command.INFER, 6, b"abcdef")
    events = FrameDecoder().feed(good[:5] + good)
    assert [type(e) for e in events] == [DecodeError, Frame]
    assert events[0].kind == "truncated"
    # An escape followed by START is an abort too.
    events = FrameDecoder().feed(good[:3] + bytes([ESCAPE]) + good)
    assert events[0].kind == "truncated" and events[1] == Frame(Command.INFER, 6, b"abcdef")


def test_incomplete_frame_waits():
    good = encode_frame(Command.INFER, 6, b"abcdef")
    decoder = FrameDecoder()
    assert decoder.feed(good[:-1]) == [] and decoder.in_frame
    assert decoder.feed(good[-1:]) == [Frame(Command.INFER, 6, b"abcdef")]


def test_oversize_is_skipped():
    decoder = FrameDecoder(max_payload=4)
    events = decoder.feed(encode_frame(Command.INFER, 1, bytes(5)) + encode_frame(
        Command.INFER, 2, bytes(4)))
    assert events[0].kind == "oversize" and events[1] == Frame(Command.INFER, 2, bytes(4))


def test_device_info_round_trip():
    info = DeviceInfo(b"\x00\x7e\x7d\x11\x13\xff\x01\x02", 784, 10, 12, 1176, 25_000_000)
    assert len(info.pack()) == DeviceInfo.SIZE == 20
    assert DeviceInfo.unpack(info.pack()) == info
    assert (info.image_size, info.record_size) == (98, 21)
    assert info.max_response == ReplaySummary.SIZE + 12 * 21
    with pytest.raises(ValueError, match="20"):
        DeviceInfo.unpack(info.pack()[:-1])
    with pytest.raises(ValueError, match="8 bytes"):
        DeviceInfo(b"short", 1, 1, 1, 1).pack()
    old = bytearray(info.pack()[:16])
    old[8] = 1  # a protocol version 1 device
    with pytest.raises(ValueError, match="protocol version 1"):
        DeviceInfo.unpack(bytes(old))


def test_replay_payloads():
    bits = np.random.default_rng(2).integers(0, 2, (3, 13), dtype=np.uint8)
    assert pack_replay(bits, 0x1234) == b"\x34\x12" + pack_images(bits)
    for repeats in (0, MAX_REPEATS + 1):
        with pytest.raises(ValueError, match="repeats"):
            pack_replay(bits, repeats)
    summary = ReplaySummary(cycles=2**40 + 5, latency=17, frames=300, crc=0xDEADBEEF)
    assert ReplaySummary.unpack(summary.pack() + b"records") == summary
    assert len(summary.pack()) == ReplaySummary.SIZE == 20


def test_results_crc_is_crc32_of_repeated_records():
    classes, scores = np.array([1, 0]), np.array([[-3, 300], [7, -1]])
    records = pack_records(classes, scores)
    assert records == bytes([1]) + (-3).to_bytes(2, "little", signed=True) + \
        (300).to_bytes(2, "little") + bytes([0, 7, 0, 0xFF, 0xFF])
    assert results_crc(classes, scores) == zlib.crc32(records)
    assert results_crc(classes, scores, 3) == zlib.crc32(records * 3)
    # The gateware folds one whole record per cycle: the same CRC.
    wide = CRC32_ISO_HDLC(data_width=8 * 5)
    words = [int.from_bytes(records[i:i + 5], "little") for i in range(0, 10, 5)] * 3
    assert wide.compute(words) == results_crc(classes, scores, 3)


def test_images_and_records():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2, (5, 13), dtype=np.uint8)
    payload = pack_images(bits)
    assert len(payload) == 5 * 2
    for k in range(5):
        np.testing.assert_array_equal(bytes_to_bits(payload[2 * k:2 * k + 2], 13), bits[k])
    records = np.zeros(3, record_dtype(4))
    records["cls"] = [3, 0, 2]
    records["scores"] = [[-5, 7, 300, -32768], [0, 1, 2, 3], [32767, -1, 0, 9]]
    classes, scores = unpack_results(records.tobytes(), 4)
    np.testing.assert_array_equal(classes, [3, 0, 2])
    np.testing.assert_array_equal(scores, records["scores"])
    with pytest.raises(ValueError, match="records"):
        unpack_results(b"\x00" * 8, 4)


def test_escape_helper():
    assert escape(bytes([0x7E, 0x00, 0x7D])) == bytes([0x7D, 0x5E, 0x00, 0x7D, 0x5D])
