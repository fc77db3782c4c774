"""The host-link protocol: one definition shared by the gateware and the host driver.

A frame on the wire::

    START  cmd  seq  len_lo len_hi  payload[len]  crc_lo crc_hi
    0x7E   \\_______________ escaped ______________________/

* ``START`` (0x7E) is sent raw and only ever marks the start of a frame, so a receiver
  resynchronizes on it after garbage, corruption or truncation.
* Every later byte in the sender's escaped set (by default :data:`DEFAULT_ESCAPED`: 0x7E, 0x7D
  and XON/XOFF 0x11/0x13, which some USB-serial bridges swallow; :data:`MINIMAL_ESCAPED` for
  bridges that pass every byte) is sent HDLC-style as ``0x7D, byte ^ 0x20``. A receiver
  un-escapes *any* byte that follows 0x7D, so each side chooses its set independently.
* ``crc`` is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, not reflected) over the
  un-escaped ``cmd .. payload``, little-endian on the wire like ``len``.
* A response echoes ``cmd`` and ``seq``; a request that fails is answered by an
  :attr:`Command.ERROR` frame with the request's ``seq`` and the payload
  ``(ErrorCode, request cmd)``. Requests are answered in order.

Payloads (all integers little-endian):

* :attr:`Command.IDENTIFY` takes none and returns a :class:`DeviceInfo`.
* :attr:`Command.INFER` takes ``k`` images of ``ceil(n/8)`` bytes each (bit-packed, see
  :func:`bnnflow.packing.image_bytes`) and returns ``k`` records of ``(class: u8,
  scores: C x int16)``.
* :attr:`Command.REPLAY` takes ``repeats: u16`` then ``k`` images, stored on chip and run
  through the core ``repeats`` times back to back with its output always ready. It returns a
  :class:`ReplaySummary` (the cycles from the first image byte entering the core to the last
  result leaving it, the first result's latency, the frames run, and the CRC-32 of all their
  records, see :func:`results_crc`) followed by the ``k`` records of one more, unmeasured
  pass, as INFER would return them.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
from amaranth.lib import enum

from .packing import image_bytes

__all__ = [
    "START",
    "ESCAPE",
    "ESCAPE_XOR",
    "DEFAULT_ESCAPED",
    "MINIMAL_ESCAPED",
    "HEADER_SIZE",
    "CRC_SIZE",
    "SCORE_BYTES",
    "PROTOCOL_VERSION",
    "REPLAY_ARG_SIZE",
    "MAX_REPEATS",
    "Command",
    "ErrorCode",
    "crc16",
    "check_escaped",
    "escape",
    "encode_frame",
    "Frame",
    "DecodeError",
    "FrameDecoder",
    "DeviceInfo",
    "ReplaySummary",
    "pack_images",
    "pack_pixels",
    "pack_replay",
    "record_dtype",
    "pack_records",
    "unpack_results",
    "results_crc",
]

START = 0x7E
ESCAPE = 0x7D
ESCAPE_XOR = 0x20
DEFAULT_ESCAPED = frozenset({0x7E, 0x7D, 0x11, 0x13})
MINIMAL_ESCAPED = frozenset({0x7E, 0x7D})
HEADER_SIZE = 4  # cmd, seq, len (2 B)
CRC_SIZE = 2
SCORE_BYTES = 2  # scores travel as int16 LE whatever the core's score width
PROTOCOL_VERSION = 2
REPLAY_ARG_SIZE = 2  # the u16 repeat count before REPLAY's images
MAX_REPEATS = 0xFFFF


class Command(enum.Enum, shape=8):
    """Frame commands, used by the gateware FSM and the host packer alike."""

    IDENTIFY = 0x01
    INFER = 0x02
    REPLAY = 0x03  # images stored on chip, run back to back: the fabric benchmark
    ERROR = 0x80  # response only


class ErrorCode(enum.Enum, shape=8):
    """First payload byte of an :attr:`Command.ERROR` response."""

    BAD_CRC = 0x01  # CRC mismatch: the request may be resent
    BAD_LENGTH = 0x02  # length (or REPLAY's repeat count) not valid for the command
    UNKNOWN_COMMAND = 0x03
    OVERFLOW = 0x04  # length above the design's max payload


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (``crc16(b"123456789") == 0x29B1``)."""
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ byte]
    return crc


def check_escaped(escaped) -> frozenset:
    """Validate a set of bytes to escape: it must contain ``START`` and ``ESCAPE``, and not
    ``START ^ 0x20`` (its escaped form would be a raw START)."""
    escaped = frozenset(escaped)
    if not {START, ESCAPE} <= escaped:
        raise ValueError("the escaped set must contain START (0x7E) and ESCAPE (0x7D)")
    if START ^ ESCAPE_XOR in escaped:
        raise ValueError(f"0x{START ^ ESCAPE_XOR:02x} cannot be escaped: it would become START")
    return escaped


def escape(data: bytes, escaped=DEFAULT_ESCAPED) -> bytes:
    """HDLC-style escaping of every byte of ``data`` that is in ``escaped``."""
    out = bytearray()
    for byte in data:
        if byte in escaped:
            out += bytes((ESCAPE, byte ^ ESCAPE_XOR))
        else:
            out.append(byte)
    return bytes(out)


def encode_frame(cmd, seq: int, payload: bytes = b"", *, escaped=DEFAULT_ESCAPED) -> bytes:
    """One frame, ready for the wire.

    Parameters
    ----------
    cmd : Command or int
        Command byte (an int allows testing unknown commands).
    seq : int
        Sequence number, 0..255.
    payload : bytes
        At most 65535 bytes.
    escaped : set of int
        Bytes to escape; see :func:`check_escaped`.

    Returns
    -------
    bytes
    """
    check_escaped(escaped)
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes exceeds 65535")
    body = struct.pack("<BBH", int(getattr(cmd, "value", cmd)), seq & 0xFF, len(payload))
    body += bytes(payload)
    body += struct.pack("<H", crc16(body))
    return bytes((START,)) + escape(body, escaped)


@dataclass(frozen=True)
class Frame:
    """A decoded frame with a good CRC. ``cmd`` is an int when not a known :class:`Command`."""

    cmd: Command | int
    seq: int
    payload: bytes


@dataclass(frozen=True)
class DecodeError:
    """A frame that started but could not be decoded.

    ``kind`` is ``"bad_crc"``, ``"truncated"`` (a new START arrived first) or ``"oversize"``
    (length above the decoder's limit).
    """

    kind: str
    detail: str = ""


class FrameDecoder:
    """Incremental frame decoder: :meth:`feed` bytes, get :class:`Frame`/:class:`DecodeError`.

    Parameters
    ----------
    max_payload : int
        Frames announcing a longer payload are reported as ``"oversize"`` and skipped.
    """

    def __init__(self, max_payload: int = 0xFFFF):
        self.max_payload = max_payload
        self.discarded = 0  # bytes seen outside any frame
        self._body: bytearray | None = None  # None: hunting for START
        self._escape = False

    @property
    def in_frame(self) -> bool:
        """Whether a frame has started but not yet completed."""
        return self._body is not None

    def feed(self, data: bytes) -> list[Frame | DecodeError]:
        """Consume ``data``; return the frames and errors completed by it, in order."""
        events: list[Frame | DecodeError] = []
        for byte in data:
            if byte == START:
                if self._body:
                    events.append(DecodeError("truncated", f"{len(self._body)} bytes"))
                self._body, self._escape = bytearray(), False
                continue
            if self._body is None:
                self.discarded += 1
                continue
            if self._escape:
                byte ^= ESCAPE_XOR
                self._escape = False
            elif byte == ESCAPE:
                self._escape = True
                continue
            self._body.append(byte)
            event = self._check()
            if event is not None:
                events.append(event)
                self._body = None
        return events

    def _check(self) -> Frame | DecodeError | None:
        body = self._body
        if len(body) < HEADER_SIZE:
            return None
        cmd, seq, length = struct.unpack_from("<BBH", body)
        if length > self.max_payload:
            return DecodeError("oversize", f"length {length} > {self.max_payload}")
        if len(body) < HEADER_SIZE + length + CRC_SIZE:
            return None
        (crc,) = struct.unpack_from("<H", body, HEADER_SIZE + length)
        want = crc16(bytes(body[:HEADER_SIZE + length]))
        if crc != want:
            return DecodeError("bad_crc", f"cmd 0x{cmd:02x} seq {seq}: got 0x{crc:04x}, "
                                          f"computed 0x{want:04x}")
        try:
            cmd = Command(cmd)
        except ValueError:
            pass
        return Frame(cmd, seq, bytes(body[HEADER_SIZE:HEADER_SIZE + length]))


@dataclass(frozen=True)
class DeviceInfo:
    """The IDENTIFY response payload: a design ID and a fixed 12-byte info struct.

    Parameters
    ----------
    design_id : bytes
        8 bytes (a hash of IR + folding + generator version).
    n_inputs : int
        Input bits per image.
    num_classes : int
        Scores per image.
    max_images : int
        Most images one INFER or REPLAY request may carry.
    max_payload : int
        Most image bytes one request may carry (``max_images * image_size``).
    clk_hz : int
        The fabric clock in Hz, as the design was built for (0 if unknown); turns REPLAY's
        cycle counts into seconds.
    score_bytes : int
        Bytes per score on the wire (always 2, int16 LE).
    version : int
        Protocol version.
    """

    design_id: bytes
    n_inputs: int
    num_classes: int
    max_images: int
    max_payload: int
    clk_hz: int = 0
    score_bytes: int = SCORE_BYTES
    version: int = PROTOCOL_VERSION

    FORMAT = "<8sBHBBBHI"
    SIZE = struct.calcsize(FORMAT)

    @property
    def image_size(self) -> int:
        """Bytes of one image in an INFER request."""
        return (self.n_inputs + 7) // 8

    @property
    def record_size(self) -> int:
        """Bytes of one result record in an INFER response."""
        return 1 + self.score_bytes * self.num_classes

    @property
    def max_response(self) -> int:
        """The longest response payload the device can send."""
        return max(self.SIZE, ReplaySummary.SIZE + self.max_images * self.record_size)

    def pack(self) -> bytes:
        """The payload bytes."""
        if len(self.design_id) != 8:
            raise ValueError(f"design ID must be 8 bytes, got {len(self.design_id)}")
        return struct.pack(self.FORMAT, self.design_id, self.version, self.n_inputs,
                           self.num_classes, self.score_bytes, self.max_images, self.max_payload,
                           self.clk_hz)

    @classmethod
    def unpack(cls, payload: bytes) -> DeviceInfo:
        """Parse an IDENTIFY response payload; a wrong size or version is a
        :class:`ValueError`."""
        if len(payload) >= 9 and payload[8] != PROTOCOL_VERSION:
            raise ValueError(f"the device speaks host-link protocol version {payload[8]}, this "
                             f"driver version {PROTOCOL_VERSION}: rebuild the design or update "
                             f"bnnflow")
        if len(payload) != cls.SIZE:
            raise ValueError(f"IDENTIFY payload is {len(payload)} bytes, expected {cls.SIZE}")
        did, ver, n, c, sb, k, mp, clk = struct.unpack(cls.FORMAT, payload)
        return cls(did, n, c, k, mp, clk, sb, ver)


@dataclass(frozen=True)
class ReplaySummary:
    """The head of a REPLAY response payload.

    Parameters
    ----------
    cycles : int
        Clock cycles from the first image byte entering the core to the last measured result
        leaving it, both cycles included.
    latency : int
        Cycles from the first image byte entering the core to the first result leaving it.
    frames : int
        Results measured (``repeats * k``).
    crc : int
        CRC-32 of the records of all measured results, in order (:func:`results_crc`).
    """

    cycles: int
    latency: int
    frames: int
    crc: int

    FORMAT = "<QIII"
    SIZE = struct.calcsize(FORMAT)

    def pack(self) -> bytes:
        """The payload bytes."""
        return struct.pack(self.FORMAT, self.cycles, self.latency, self.frames, self.crc)

    @classmethod
    def unpack(cls, payload: bytes) -> ReplaySummary:
        """Parse the first :attr:`SIZE` bytes of a REPLAY response payload."""
        if len(payload) < cls.SIZE:
            raise ValueError(f"REPLAY payload of {len(payload)} bytes has no summary")
        return cls(*struct.unpack_from(cls.FORMAT, payload))


def pack_images(bits: np.ndarray) -> bytes:
    """An INFER request payload: images ``(k, n)`` of bits, each as ``ceil(n/8)`` bytes."""
    bits = np.asarray(bits, dtype=np.uint8)
    return b"".join(image_bytes(row) for row in bits.reshape(len(bits), -1))


def pack_pixels(pixels: np.ndarray) -> bytes:
    """An INFER request payload of an integer-input network: images ``(k, n)`` of pixels in
    ``0..255``, already in the core's order (:func:`bnnflow.packing.frame_pixels`), one byte
    each."""
    pixels = np.asarray(pixels)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise ValueError(f"pixels travel as bytes: found {pixels.min()}..{pixels.max()}")
    return pixels.astype(np.uint8).tobytes()


def pack_replay(images: np.ndarray, repeats: int, *, pixels: bool = False) -> bytes:
    """A REPLAY request payload: the repeat count, then the images as for INFER (bits, or
    with ``pixels`` the bytes of :func:`pack_pixels`)."""
    if not 1 <= repeats <= MAX_REPEATS:
        raise ValueError(f"repeats must be in 1..{MAX_REPEATS}, got {repeats}")
    return struct.pack("<H", repeats) + (pack_pixels(images) if pixels else pack_images(images))


def record_dtype(num_classes: int) -> np.dtype:
    """The numpy dtype of one INFER response record."""
    return np.dtype([("cls", "u1"), ("scores", "<i2", (num_classes,))])


def pack_records(classes: np.ndarray, scores: np.ndarray) -> bytes:
    """The INFER response records of classes ``(k,)`` and scores ``(k, C)``."""
    scores = np.asarray(scores)
    records = np.zeros(len(scores), record_dtype(scores.shape[1]))
    records["cls"], records["scores"] = classes, scores
    return records.tobytes()


def unpack_results(payload: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes ``(k,)`` and scores ``(k, C)`` (int64) of an INFER response payload."""
    dtype = record_dtype(num_classes)
    if len(payload) % dtype.itemsize:
        raise ValueError(f"INFER response of {len(payload)} bytes is not a whole number of "
                         f"{dtype.itemsize}-byte records")
    rec = np.frombuffer(payload, dtype=dtype)
    return rec["cls"].astype(np.int64), rec["scores"].astype(np.int64).reshape(len(rec), -1)


def results_crc(classes: np.ndarray, scores: np.ndarray, repeats: int = 1) -> int:
    """The CRC that REPLAY reports for these results run ``repeats`` times.

    CRC-32 (ISO-HDLC, as :func:`zlib.crc32`) of the records of every measured result in
    order; the gateware folds in one whole record per cycle.
    """
    records = pack_records(classes, scores)
    crc = 0
    for _ in range(repeats):
        crc = zlib.crc32(records, crc)
    return crc
