"""The driver against an in-memory device: pipelining, fault injection, benchmark arithmetic,
pixel inputs with a build, and the lazily imported top-level API."""

import json
import subprocess
import sys

import numpy as np
import pytest
from fakedevice import MaskModel, ModelDevice
from netutil import random_net

from bnnflow import reference
from bnnflow.driver import Accelerator, DeviceTimeout
from bnnflow.protocol import (
    MINIMAL_ESCAPED,
    Command,
    DeviceInfo,
    FrameDecoder,
    encode_frame,
    pack_images,
    pack_records,
)
from bnnflow.sim.faults import FaultInjector, Faults, FrameSplitter

N_INPUTS, CLASSES = 30, 4
INFO = DeviceInfo(bytes.fromhex("7e7d111300ff5e01"), N_INPUTS, CLASSES, max_images=8,
                  max_payload=32, clk_hz=50_000_000)
MODEL = MaskModel(N_INPUTS, CLASSES)


def images(k, seed=0):
    return np.random.default_rng(seed).integers(0, 2, (k, N_INPUTS), dtype=np.uint8)


def test_pipelined_predict_keeps_two_requests_outstanding():
    device = ModelDevice(INFO, MODEL)
    acc = Accelerator(device, expected_id=INFO.design_id)
    bits = images(50)
    classes, scores = acc.predict(bits)
    np.testing.assert_array_equal(scores, MODEL(bits)[1])
    np.testing.assert_array_equal(classes, MODEL(bits)[0])
    assert [f.cmd for f in device.requests] == [Command.IDENTIFY] + [Command.INFER] * 7
    assert acc.stats.retries == 0 and acc.stats.requests == 8
    with pytest.raises(ValueError, match="bits"):
        acc.predict(bits * 3)
    acc.close()
    assert device.closed


def test_requests_use_the_bridge_escapes():
    device = ModelDevice(INFO, MODEL)
    written = []
    write = device.write
    device.write = lambda data: (written.append(data), write(data))
    acc = Accelerator(device, escaped=MINIMAL_ESCAPED)
    acc.identify()
    bits = np.zeros((1, N_INPUTS), np.uint8)
    bits[0, [0, 4]] = 1  # the first image byte is 0x11 (XON)
    np.testing.assert_array_equal(acc.predict(bits)[1], MODEL(bits)[1])
    assert written[-1] == encode_frame(Command.INFER, 1, pack_images(bits),
                                       escaped=MINIMAL_ESCAPED)
    assert b"\x11" in written[-1]


def test_splitter_keeps_every_byte_and_finds_frames():
    frames = [encode_frame(Command.INFER, s, bytes([0x7E, 0x7D, s] * s)) for s in range(5)]
    wire = b"\x00\x01" + b"".join(frames) + b"\x7d"
    splitter = FrameSplitter()
    pieces = []
    for i in range(0, len(wire), 3):
        pieces += splitter.feed(wire[i:i + 3])
    assert b"".join(pieces) == wire
    assert [p for p in pieces if p[0] == 0x7E] == frames


def test_every_fault_kind_is_injected_and_recovered():
    device = ModelDevice(INFO, MODEL)
    faults = Faults(drop=0.05, truncate=0.05, corrupt=0.1, delay=0.05, delay_seconds=0.01,
                    byte_error=0.002)
    link = FaultInjector(device, to_device=faults, from_device=faults, seed=1)
    acc = Accelerator(link, timeout=0.02, retries=10)
    acc.identify()
    bits = images(600, 1)
    classes, scores = acc.predict(bits, batch=3)
    np.testing.assert_array_equal(scores, MODEL(bits)[1])
    np.testing.assert_array_equal(classes, MODEL(bits)[0])
    for direction in ("to_device", "from_device"):
        assert set(link.injected[direction]) >= {"drop", "truncate", "corrupt", "delay"}
    stats = acc.stats
    # Every damaged frame cost one resend at most (damage to a stale response costs none).
    assert 0 < stats.retries <= link.frames_damaged + link.injected["to_device"]["byte_error"] \
        + link.injected["from_device"]["byte_error"]
    assert stats.decode_errors > 0 and stats.lost + stats.timeouts > 0
    # The device saw every batch at least once and the results came out in order anyway.
    seen = {f.payload for f in device.requests if f.cmd == Command.INFER}
    assert len(seen) == 200


def test_retries_run_out_on_a_dead_link():
    device = ModelDevice(INFO, MODEL)
    acc = Accelerator(device, timeout=0.01, retries=2)
    acc.identify()
    link = FaultInjector(device, to_device=Faults(drop=1.0))
    acc.transport = link
    with pytest.raises(DeviceTimeout, match=r"INFER .* failed 3 times: 3 x no response within"):
        acc.predict(images(20))
    assert link.injected["to_device"] == {"frames": 6, "drop": 6}  # 2 outstanding, 3 times


def test_benchmark_arithmetic_and_checks():
    device = ModelDevice(INFO, MODEL, cycles_per_frame=12, latency=40)
    acc = Accelerator(device)
    bits = images(20, 2)
    result = acc.benchmark(bits, repeats=50, link_images=64)
    assert result.ok and result.checked_against == "itself"
    assert (result.images, result.frames) == (8, 400)  # REPLAY takes at most max_images
    assert result.cycles == 40 + 399 * 12 and result.fabric_cycles_per_frame == 12
    assert result.fabric_fps == pytest.approx(400 * 50e6 / (40 + 399 * 12))
    assert result.link_images == 64 and result.link_limit_fps is None  # baud unknown
    text = result.report()
    assert "fabric:" in text and "link:" in text and "frames/s wall clock" in text
    # One repetition differing from the others is caught although it is never sent back.
    bad = Accelerator(ModelDevice(INFO, MODEL, bad_repeat=17)).benchmark(bits, repeats=50)
    assert not bad.ok and bad.crc != bad.expected_crc and "MISMATCH" in bad.report()


def test_link_limit_and_utilisation():
    from bnnflow.bench import BenchResult

    result = BenchResult(images=8, repeats=1, frames=8, cycles=100, latency_cycles=30,
                         clk_hz=25e6, crc=1, expected_crc=1, checked_against="reference",
                         mismatches=0, link_images=100, link_seconds=2.0, link_bytes_out=1000,
                         link_bytes_in=2500, baud=25e6 / 8, sim_cycles=2_000_000,
                         sim_tx_busy=0.99)
    assert result.link_fps == 50
    assert result.link_limit_fps == pytest.approx(312_500 / 25)  # 25 B per image in
    assert result.sim_link_fps == pytest.approx(100 * 25e6 / 2e6)
    assert result.link_utilisation == pytest.approx(1250 / 12_500)
    assert "of the byte limit" in result.report()


def test_pixels_with_a_build(tmp_path):
    net = random_net((N_INPUTS, 16, CLASSES), seed=2)
    net.save(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"design_id": INFO.design_id.hex()}))

    def model(bits):
        want = reference.run(net, bits, bits=True)
        return want.classes, want.scores

    acc = Accelerator(ModelDevice(INFO, model), build=tmp_path)
    pixels = np.random.default_rng(4).integers(0, 17, (12, N_INPUTS)).astype(np.uint8)
    classes, scores = acc.predict(pixels)
    np.testing.assert_array_equal(scores, reference.run(net, pixels).scores)
    # Bits stay bits when said so (uint8 would otherwise be pixels).
    bits = reference.binarize(net, pixels)
    np.testing.assert_array_equal(acc.predict(bits, bits=True)[1], scores)
    result = acc.benchmark(pixels, repeats=3)
    assert result.ok and result.checked_against == "reference"


def test_wrong_size_response_is_an_error():
    device = ModelDevice(INFO, MODEL)
    acc = Accelerator(device)
    acc.identify()
    device.respond = lambda frame: pack_records(*MODEL(np.zeros((1, N_INPUTS))))
    with pytest.raises(Exception, match="returned 9 bytes, expected 18"):
        acc.predict(images(2))


def test_top_level_api_is_lazy():
    code = ("import sys, bnnflow; heavy = ('torch', 'amaranth.hdl', 'bnnflow.driver'); "
            "assert not [m for m in heavy if m in sys.modules]; "
            "from bnnflow import Accelerator; import bnnflow.driver as d; "
            "assert Accelerator is d.Accelerator and 'Accelerator' in dir(bnnflow); "
            "assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_decoder_limit_follows_the_device():
    acc = Accelerator(ModelDevice(INFO, MODEL))
    acc.identify()
    assert acc._decoder.max_payload == INFO.max_response
    assert isinstance(FrameDecoder().max_payload, int)
