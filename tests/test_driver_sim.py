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
from bnnflow.sim.transport import SimTransport

pytestmark = pytest.mark.sim

DESIGN_ID = "5eed5eed7e7d1113"
DIVISOR = 8


def make_build(build_dir, core, **kwargs):
    generate_top_verilog(core, DESIGN_ID, DIVISOR, build_dir / "top.v", **kwargs)
    manifest = {"sim_divisor": DIVISOR, "design_id": DESIGN_ID}
    (build_dir / "manifest.json").write_text(json.dumps(manifest))


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


def test_real_core_matches_reference(tmp_path):
    net = random_net((60, 32, 16, 10), seed=4)  # 60 bits: 8 bytes with 4 pad bits
    core = BnnCore(net, default_folding(net))
    make_build(tmp_path, core, max_payload=64)
    bits = np.random.default_rng(5).integers(0, 2, (24, 60), dtype=np.uint8)
    with Accelerator.open(f"sim:{tmp_path}", expected_id=DESIGN_ID) as acc:
        assert acc.info.max_images == 8
        classes, scores = acc.predict(bits)
    want = reference.run(net, bits, bits=True)
    np.testing.assert_array_equal(scores, want.scores)
    np.testing.assert_array_equal(classes, want.classes)
