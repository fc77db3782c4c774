"""cocotb + Verilator: whole conv accelerators (LeNet-like, CNV-w1a1) against the reference."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from netutil import LEVELS, random_conv_net

from bnnflow.flow import CompileConfig, compile_model
from bnnflow.synthetic import ARCHITECTURES

#: LeNet-like: 28x28 8-bit input, integer-input conv with zero padding, -1 and +1 padded
#: convs, a stride-2 conv, two pools, two dense layers.
LENET = ARCHITECTURES["lenet"][1]


def simulate_build(net, build, pixels, **kw):
    from bnnflow.sim.runner import simulate_core

    manifest = json.loads((build / "manifest.json").read_text())
    start = time.perf_counter()
    out = simulate_core(net, build / "core.v", pixels.reshape(len(pixels), -1),
                        in_width=manifest["in_width"],
                        predicted_cycles=manifest["cycles_per_frame"], work_dir=build / "sim",
                        **kw)
    out["seconds"] = time.perf_counter() - start
    return out, manifest


@pytest.mark.sim
def test_lenet_like_simulates_bit_exact(tmp_path):
    net = random_conv_net((1, 28, 28), LENET, seed=11, levels=LEVELS, name="lenet")
    build = tmp_path / "build"
    state = compile_model(CompileConfig(tmp_path / "lenet", build), net=net)
    pixels = np.random.default_rng(3).integers(0, 256, (100, 1, 28, 28))
    out, manifest = simulate_build(net, build, pixels)
    assert out["mismatches"] == 0 and out["frames"] == 100
    assert out["cycles_per_frame"] == pytest.approx(manifest["cycles_per_frame"], rel=0.02)
    assert_bottleneck_never_blocked(state, out)


def assert_bottleneck_never_blocked(state, out):
    """The slowest layers' outputs never waited on the next block over the watched frames."""
    cycles = state.folding.layer_cycles(state.net, manifest_elems(state))
    slowest = max(cycles.values())
    assert out["steady_cycles_watched"] >= 4 * slowest
    for index, layer in enumerate(state.net.layers):
        if cycles[layer.name] == slowest:
            assert out["blocked_cycles"][f"layer{index}"] == 0, layer.name


def manifest_elems(state):
    from bnnflow.hw.core import stream_elems

    return stream_elems(state.net, 8)


@pytest.mark.sim
@pytest.mark.slow
def test_cnv_simulates_bit_exact(tmp_path):
    from test_bnn_pynq import pynq_export

    from bnnflow.inputs import to_pixels

    path = tmp_path / "cnv.onnx"
    pynq_export("CNV_1W1A", path, seed=2)
    build = tmp_path / "build"
    state = compile_model(CompileConfig(path, build, target_cycles=24300))
    pixels = np.random.default_rng(4).integers(0, 256, (100, 3, 32, 32)).astype(np.uint8)
    out, manifest = simulate_build(state.net, build, to_pixels(state.net, pixels))
    assert out["mismatches"] == 0 and out["frames"] == 100
    assert out["cycles_per_frame"] == pytest.approx(manifest["cycles_per_frame"], rel=0.02)
    assert_bottleneck_never_blocked(state, out)


def test_input_frames_and_pixels():
    """The bench's beats: integer nets send HWC pixels, one byte each; bits stay bits."""
    from bnnflow.inputs import InputError, to_bits, to_inputs, to_pixels
    from bnnflow.sim.runner import input_frames

    net = random_conv_net((3, 4, 4), [("conv", 4, 3, 1, 0, 0), ("dense", 10)], levels=LEVELS)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 4)).astype(np.uint8)
    flat = to_pixels(net, pixels)
    assert flat.shape == (2, 48) and np.array_equal(to_inputs(net, pixels), flat)
    with pytest.raises(InputError, match="integer pixels"):
        to_bits(net, pixels)
    with pytest.raises(InputError, match="not input bits"):
        to_pixels(net, np.zeros((2, 48), np.bool_))
    frames = input_frames(net, flat, 16)
    hwc = pixels.transpose(0, 2, 3, 1).reshape(2, -1).astype(int)
    assert frames.shape == (2, 24)
    assert list(frames[1]) == [hwc[1, 2 * j] | hwc[1, 2 * j + 1] << 8 for j in range(24)]
