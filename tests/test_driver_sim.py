"""The driver against the simulated design: HostTop Verilog under Verilator via SimTransport."""

import json
import time

import numpy as np
import pytest
from fakecore import FakeCore
from netutil import random_net

from bnnflow import reference
from bnnflow.driver import Accelerator, DesignMismatch
from bnnflow.folding import default_folding
from bnnflow.hw.core import BnnCore
from bnnflow.hw.hostlink import generate_top_verilog
from bnnflow.sim.faults import FaultInjector, Faults
from bnnflow.sim.transport import SimTransport

pytestmark = pytest.mark.sim

DESIGN_ID = "5eed5eed7e7d1113"
DIVISOR = 8


def make_build(build_dir, core, **kwargs):
    generate_top_verilog(core, DESIGN_ID, DIVISOR, build_dir / "top.v", **kwargs)
    manifest = {"sim_divisor": DIVISOR, "design_id": DESIGN_ID}
    if hasattr(core, "net"):  # a BnnCore: the reference and the predicted cycles per frame
        core.net.save(build_dir)
        manifest["cycles_per_frame"] = core.folding.cycles_per_frame(core.net)
    (build_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def real_build(tmp_path_factory):
    """A random 60-32-16-10 network behind the host link, 128 images per request."""
    build = tmp_path_factory.mktemp("real")
    net = random_net((60, 32, 16, 10), seed=4)  # 60 bits: 8 bytes with 4 pad bits
    make_build(build, BnnCore(net, default_folding(net)), max_payload=1024)
    SimTransport(build).close()  # compile once, outside the tests' own time
    return build, net


def test_fake_core_through_verilator(tmp_path):
    core = FakeCore(20, 3, stall=True)
    make_build(tmp_path, core, max_payload=45)
    bits = np.random.default_rng(0).integers(0, 2, (100, 20), dtype=np.uint8)
    with Accelerator.open(f"sim:{tmp_path}") as acc:  # expected ID from the manifest
        info = acc.identify()
        assert (info.n_inputs, info.num_classes, info.max_images) == (20, 3, 15)
        began = time.monotonic()
        classes, scores = acc.predict(bits)
        seconds = time.monotonic() - began
        assert acc.retried == 0
    want_cls, want_scores = core.predict(bits)
    np.testing.assert_array_equal(classes, want_cls)
    np.testing.assert_array_equal(scores, want_scores)
    cycles = acc.transport.cycles
    assert cycles > 100 * 3 * 10 * DIVISOR  # every image byte crossed the UART
    print(f"\n{len(bits) / seconds:.0f} images/s, {cycles / seconds / 1e6:.1f} Mcycles/s, "
          f"harness compiled in {acc.transport.build_seconds:.1f} s")

    # The harness is reused while top.v is unchanged, and a wrong ID is refused.
    transport = SimTransport(tmp_path)
    assert transport.build_seconds == 0
    with pytest.raises(DesignMismatch):
        Accelerator(transport, expected_id=bytes(8)).identify()
    transport.close()


def test_real_core_matches_reference(real_build):
    build, net = real_build
    bits = np.random.default_rng(5).integers(0, 2, (300, 60), dtype=np.uint8)
    with Accelerator.open(f"sim:{build}", expected_id=DESIGN_ID) as acc:
        assert acc.info.max_images == 128 and acc.info.clk_hz == 25_000_000
        classes, scores = acc.predict(bits, bits=True, batch=24)
    want = reference.run(net, bits, bits=True)
    np.testing.assert_array_equal(scores, want.scores)
    np.testing.assert_array_equal(classes, want.classes)


def test_benchmark_on_chip_and_over_the_link(real_build):
    build, net = real_build
    manifest = json.loads((build / "manifest.json").read_text())
    pixels = np.random.default_rng(6).integers(0, 17, (200, 60)).astype(np.uint8)
    with Accelerator.open(f"sim:{build}") as acc:
        result = acc.benchmark(pixels, repeats=20, link_images=256)
    print("\n" + result.report())
    assert result.ok and result.checked_against == "reference"
    assert (result.images, result.frames) == (128, 128 * 20)
    # The fabric runs at the folding's predicted rate (or one 8-bit input beat per cycle, whichever
    # is slower): REPLAY measures the core, not the link.
    assert result.fabric_cycles_per_frame == pytest.approx(
        max(manifest["cycles_per_frame"], 8), rel=0.02)
    assert result.fabric_fps > 50 * result.link_limit_fps
    assert result.baud == 25e6 / DIVISOR and result.sim_cycles > 0


def test_two_outstanding_requests_fill_the_link(real_build):
    """In simulated cycles: one request at a time leaves the transmit line idle while the next
    request arrives; two outstanding keep it busy."""
    build, _ = real_build
    bits = np.random.default_rng(7).integers(0, 2, (512, 60), dtype=np.uint8)
    busy = {}
    for window in (1, 2):
        with Accelerator.open(f"sim:{build}", window=window) as acc:
            acc.transport.counters()
            acc.predict(bits, bits=True)
            counters = acc.transport.counters()
        assert counters.tx_bytes >= 4 * (4 + 128 * 21 + 2)
        busy[window] = counters.busy("tx")
    print(f"\ntx line busy: {busy[1]:.1%} one request at a time, {busy[2]:.1%} two outstanding")
    assert busy[1] < 0.85 and busy[2] > 0.95


def test_faults_in_both_directions_lose_no_image(real_build):
    """240 images in batches of 4 through the simulated top; 5 % of frames corrupted (one
    byte), 2 % dropped and 2 % delayed each way: every class and score still matches."""
    build, net = real_build
    faults = Faults(corrupt=0.05, drop=0.02, delay=0.02, delay_seconds=0.05)
    bits = np.random.default_rng(8).integers(0, 2, (240, 60), dtype=np.uint8)
    link = FaultInjector(SimTransport(build), to_device=faults, from_device=faults, seed=5)
    with Accelerator(link, expected_id=DESIGN_ID, timeout=0.3, retries=8) as acc:
        acc.identify()
        classes, scores = acc.predict(bits, bits=True, batch=4)
        stats = acc.stats
    want = reference.run(net, bits, bits=True)
    np.testing.assert_array_equal(scores, want.scores)
    np.testing.assert_array_equal(classes, want.classes)
    injected = {d: dict(c) for d, c in link.injected.items()}
    print(f"\ninjected {injected}\ndriver {stats}")
    assert link.frames_damaged > 5 and stats.retries >= 1
    for direction in injected.values():
        assert direction["corrupt"] and direction["drop"]


def test_pixel_conv_net_with_wide_input_through_verilator(tmp_path):
    """An integer-input conv network on 3-channel 8-bit pixels, three pixels per 24-bit core
    beat (one buffer word each), driven with pixels through the simulated top."""
    from netutil import random_conv_net

    from bnnflow.folding import default_folding

    levels = tuple(int(v) for v in np.rint((np.arange(256) - 127.5) / 2))
    net = random_conv_net((3, 8, 8), [("conv", 8, 3, 1, 0, 0), ("pool", 2, 2), ("dense", 10)],
                          seed=11, levels=levels)
    core = BnnCore(net, default_folding(net, in_elems=3), in_width=24)
    make_build(tmp_path, core, max_payload=1024)
    pixels = np.random.default_rng(12).integers(0, 256, (12, 3, 8, 8)).astype(np.uint8)
    with Accelerator.open(f"sim:{tmp_path}") as acc:
        assert acc.takes_pixels and acc.info.n_inputs == 3 * 8 * 8 * 8
        assert acc.info.max_images == 1024 // 192
        classes, scores = acc.predict(pixels)
        result = acc.benchmark(pixels, repeats=3)
        with pytest.raises(ValueError, match="pixels"):
            acc.predict(pixels.reshape(12, -1) & 1, bits=True)
    want = reference.run(net, pixels)
    np.testing.assert_array_equal(scores, want.scores)
    np.testing.assert_array_equal(classes, want.classes)
    print("\n" + result.report())
    assert result.ok and result.checked_against == "reference"
    assert (result.images, result.frames) == (5, 15)
    # The buffer hands the core a whole beat per cycle (64 per image), so REPLAY measures the
    # core's own rate: the folding model's 324 cycles per frame, plus the few per frame the
    # model leaves out (340 measured).
    predicted = core.folding.cycles_per_frame(net, in_elems=3)
    assert predicted <= result.fabric_cycles_per_frame <= 1.1 * predicted
