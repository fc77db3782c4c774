"""The driver over a real serial port: a pseudo-terminal with a fake device on its far end."""

import json
import os
import select
import threading

import numpy as np
import pytest

from bnnflow.driver import Accelerator, DesignMismatch, DeviceTimeout, DriverError
from bnnflow.protocol import (
    Command,
    DeviceInfo,
    ErrorCode,
    Frame,
    FrameDecoder,
    encode_frame,
    pack_images,
    record_dtype,
)

N_INPUTS, CLASSES = 30, 4
INFO = DeviceInfo(bytes.fromhex("7e7d111300ff5e01"), N_INPUTS, CLASSES, max_images=8,
                  max_payload=32)
MASKS = np.random.default_rng(3).integers(0, 2, (CLASSES, N_INPUTS), dtype=np.int64)


def model(bits):
    scores = 2 * (np.asarray(bits, np.int64) @ MASKS.T) - MASKS.sum(1)
    return scores.argmax(1), scores


def cmd_byte(frame):
    return getattr(frame.cmd, "value", frame.cmd)


class FakeDevice(threading.Thread):
    """Answers frames on the master side of a pty like the gateware would, with faults.

    ``faults`` maps the index of a request (in arrival order) to one of ``"corrupt"`` (flip a
    payload bit of the response), ``"drop"`` (no response), ``"error"`` (ERROR BAD_CRC),
    ``"stale"`` (first an answer with another seq), ``"garbage"`` (noise before the answer),
    ``"split"`` (the answer in small delayed pieces) or ``"silent"`` (never answer again).
    """

    def __init__(self, fd, faults=None):
        super().__init__(daemon=True)
        self.fd, self.faults = fd, dict(faults or {})
        self.requests: list[Frame] = []
        self.halt = threading.Event()

    def respond(self, frame):
        if frame.cmd == Command.IDENTIFY:
            return encode_frame(Command.IDENTIFY, frame.seq, INFO.pack())
        if frame.cmd != Command.INFER:
            return encode_frame(Command.ERROR, frame.seq,
                                bytes([ErrorCode.UNKNOWN_COMMAND.value, cmd_byte(frame)]))
        k = len(frame.payload) // INFO.image_size
        bits = np.unpackbits(np.frombuffer(frame.payload, np.uint8).reshape(k, -1), axis=1,
                             bitorder="little")[:, :N_INPUTS]
        records = np.zeros(k, record_dtype(CLASSES))
        records["cls"], records["scores"] = model(bits)
        return encode_frame(Command.INFER, frame.seq, records.tobytes())

    def run(self):
        decoder = FrameDecoder()
        while not self.halt.is_set():
            if not select.select([self.fd], [], [], 0.02)[0]:
                continue
            try:
                data = os.read(self.fd, 4096)
            except OSError:  # the slave side closed
                return
            for frame in decoder.feed(data):
                assert isinstance(frame, Frame), frame
                index = len(self.requests)
                self.requests.append(frame)
                self.reply(self.faults.get(index), frame)

    def reply(self, fault, frame):
        response = self.respond(frame)
        if fault == "silent":
            self.faults = dict.fromkeys(range(10**6), "silent")
            return
        if fault == "drop":
            return
        if fault == "corrupt":
            response = bytearray(response)
            response[-3] ^= 0x08 if response[-3] not in (0x7E, 0x7D, 0x76, 0x75) else 0x01
            response = bytes(response)
        elif fault == "error":
            response = encode_frame(Command.ERROR, frame.seq,
                                    bytes([ErrorCode.BAD_CRC.value, cmd_byte(frame)]))
        elif fault == "stale":
            response = encode_frame(frame.cmd, (frame.seq - 1) & 0xFF, b"stale") + response
        elif fault == "garbage":
            response = b"\x00\x13\x55\xaa" + response
        if fault == "split":
            for i in range(0, len(response), 5):
                os.write(self.fd, response[i:i + 5])
                self.halt.wait(0.01)
        else:
            os.write(self.fd, response)


@pytest.fixture
def device():
    """Start a fake device; yields a factory ``(faults) -> (port, device)``."""
    started = []

    def start(faults=None):
        master, slave = os.openpty()
        dev = FakeDevice(master, faults)
        dev.start()
        started.append((dev, master, slave))
        return os.ttyname(slave), dev

    yield start
    for dev, master, slave in started:
        dev.halt.set()
        dev.join()
        os.close(master)
        os.close(slave)


def test_identify_and_predict(device):
    port, dev = device()
    bits = np.random.default_rng(0).integers(0, 2, (21, N_INPUTS), dtype=np.uint8)
    with Accelerator.open(f"serial:{port}@115200", expected_id=INFO.design_id.hex()) as acc:
        assert acc.info == INFO
        classes, scores = acc.predict(bits)
    want_cls, want_scores = model(bits)
    np.testing.assert_array_equal(classes, want_cls)
    np.testing.assert_array_equal(scores, want_scores)
    # 1 IDENTIFY, then 8 + 8 + 5 images.
    assert [f.cmd for f in dev.requests] == [Command.IDENTIFY] + [Command.INFER] * 3
    assert len({f.seq for f in dev.requests}) == 4


@pytest.mark.parametrize("window", [1, 2])
def test_faulty_responses_are_retried(device, window):
    faults = {1: "corrupt", 3: "drop", 5: "error", 7: "stale", 8: "garbage", 9: "split"}
    port, dev = device(faults)
    bits = np.random.default_rng(1).integers(0, 2, (50, N_INPUTS), dtype=np.uint8)
    with Accelerator.open(f"serial:{port}", timeout=1.0, window=window) as acc:
        classes, scores = acc.predict(bits)
        assert acc.retried == 3  # after "corrupt", "drop" and "error"
        assert acc.stats.device_errors == 1 and acc.stats.decode_errors >= 1
    want_cls, want_scores = model(bits)
    np.testing.assert_array_equal(classes, want_cls)
    np.testing.assert_array_equal(scores, want_scores)
    infers = [f.payload for f in dev.requests[1:]]
    chunks = [pack_images(bits[i:i + 8]) for i in range(0, 50, 8)]
    if window == 1:
        # One at a time, each resent right after its faulty attempt.
        assert infers == chunks[:1] + chunks[:1] + chunks[1:2] + chunks[1:2] + \
            chunks[2:3] * 2 + chunks[3:]
    else:
        # Pipelined: every chunk sent, the faulty ones twice, none more.
        assert sorted(infers) == sorted(chunks + [infers[0], infers[2], infers[4]])
    seqs = [f.seq for f in dev.requests]
    assert len(set(seqs)) == len(seqs)


def test_wrong_design_is_refused(device):
    port, _ = device()
    with pytest.raises(DesignMismatch, match=INFO.design_id.hex()):
        Accelerator.open(f"serial:{port}", expected_id=bytes(8))


def test_timeout_is_a_clear_error(device):
    port, dev = device({1: "silent"})
    acc = Accelerator.open(f"serial:{port}", timeout=0.2, retries=2)
    with acc, pytest.raises(DeviceTimeout, match=r"INFER .* failed 3 times: 3 x no response"):
        acc.predict(np.zeros((1, N_INPUTS), np.uint8))
    assert len(dev.requests) == 4


def test_rejected_request_is_not_retried(device):
    port, dev = device()
    with Accelerator.open(f"serial:{port}") as acc:
        with pytest.raises(DriverError, match="UNKNOWN_COMMAND"):
            acc._exchange(Command.ERROR, [b""], [0])
        with pytest.raises(ValueError, match="shape"):
            acc.predict(np.zeros((2, N_INPUTS + 1), np.uint8))
    assert len(dev.requests) == 2


def test_bad_spec():
    with pytest.raises(ValueError, match="serial:PORT"):
        Accelerator.open("COM3")
    with pytest.raises(ValueError, match="unknown transport"):
        Accelerator.open("usb:0")


def test_build_gives_the_design_id_and_the_baud(device, tmp_path):
    port, _ = device()
    (tmp_path / "manifest.json").write_text(json.dumps({"design_id": INFO.design_id.hex()}))
    (tmp_path / "report.json").write_text(json.dumps({"baud": 57600}))
    with Accelerator.open(f"serial:{port}", build=tmp_path) as acc:
        assert acc.transport.baud == 57600 and acc.expected_id == INFO.design_id
    with Accelerator.open(f"serial:{port}@230400", build=tmp_path) as acc:
        assert acc.transport.baud == 230400
    (tmp_path / "manifest.json").write_text(json.dumps({"design_id": "00" * 8}))
    with pytest.raises(DesignMismatch):
        Accelerator.open(f"serial:{port}", build=tmp_path)
    with pytest.raises(DriverError, match="manifest"):
        Accelerator.open(f"serial:{port}", build=tmp_path / "missing")
