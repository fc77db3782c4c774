"""An in-memory accelerator behind the Transport interface: the host-link protocol in Python.

It answers IDENTIFY, INFER and REPLAY like the gateware (in order, corrupted requests
ignored), with a random-mask model for results, so driver logic, pipelining, faults and the
benchmark arithmetic are tested in milliseconds.
"""

import time
import zlib

import numpy as np

from bnnflow.driver import Transport
from bnnflow.protocol import (
    Command,
    DeviceInfo,
    ErrorCode,
    Frame,
    FrameDecoder,
    ReplaySummary,
    encode_frame,
    pack_records,
)

__all__ = ["MaskModel", "ModelDevice"]


class MaskModel:
    """Scores ``2*popcount(bits & mask_c) - popcount(mask_c)``, class their first argmax."""

    def __init__(self, n_inputs, num_classes, seed=3):
        rng = np.random.default_rng(seed)
        self.masks = rng.integers(0, 2, (num_classes, n_inputs), dtype=np.int64)

    def __call__(self, bits):
        scores = 2 * (np.asarray(bits, np.int64) @ self.masks.T) - self.masks.sum(1)
        return scores.argmax(1), scores


class ModelDevice(Transport):
    """A fake device. ``cycles_per_frame`` and ``latency`` shape REPLAY's cycle count;
    ``bad_repeat`` makes one REPLAY repetition produce a wrong score (caught by the CRC)."""

    def __init__(self, info: DeviceInfo, model, *, cycles_per_frame=10, latency=7,
                 bad_repeat=None):
        self.info, self.model = info, model
        self.cycles_per_frame, self.latency, self.bad_repeat = cycles_per_frame, latency, \
            bad_repeat
        self.requests: list[Frame] = []
        self._decoder = FrameDecoder()
        self._out = bytearray()
        self.closed = False

    def _bits(self, payload):
        k = len(payload) // self.info.image_size
        rows = np.frombuffer(payload, np.uint8).reshape(k, -1)
        return np.unpackbits(rows, axis=1, bitorder="little")[:, :self.info.n_inputs]

    def respond(self, frame: Frame) -> bytes:
        info = self.info
        if frame.cmd == Command.IDENTIFY:
            return info.pack()
        if frame.cmd == Command.INFER:
            return pack_records(*self.model(self._bits(frame.payload)))
        if frame.cmd == Command.REPLAY:
            repeats = int.from_bytes(frame.payload[:2], "little")
            classes, scores = self.model(self._bits(frame.payload[2:]))
            frames = repeats * len(classes)
            crc = 0
            for r in range(repeats):
                got = scores.copy()
                if r == self.bad_repeat:
                    got[0, 0] += 2
                crc = zlib.crc32(pack_records(classes, got), crc)
            summary = ReplaySummary(self.latency + (frames - 1) * self.cycles_per_frame,
                                    self.latency, frames, crc)
            return summary.pack() + pack_records(classes, scores)
        raise ValueError(frame.cmd)

    def write(self, data: bytes) -> None:
        for event in self._decoder.feed(data):
            if not isinstance(event, Frame):
                continue  # a corrupted request: the gateware answers BAD_CRC or nothing
            self.requests.append(event)
            try:
                cmd, payload = event.cmd, self.respond(event)
            except ValueError:
                cmd = Command.ERROR
                payload = bytes([ErrorCode.UNKNOWN_COMMAND.value, int(event.cmd)])
            self._out += encode_frame(cmd, event.seq, payload)

    def read(self, n: int, timeout: float) -> bytes:
        if not self._out:
            time.sleep(timeout)  # nothing will come
            return b""
        out = bytes(self._out[:n])
        del self._out[:n]
        return out

    def close(self) -> None:
        self.closed = True

