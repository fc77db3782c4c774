"""The resource model (sw/resources.py) and its calibration harness (sw/calibrate.py)."""

from __future__ import annotations

import numpy as np
import pytest
from netutil import random_conv_net, random_net

from bnnflow import calibrate, resources
from bnnflow.folding import Folding, LayerFold, default_folding
from bnnflow.hw.popcount import stage_levels
from bnnflow.hw.storage import weight_storage
from bnnflow.resources import ebr_blocks, estimate, memory_map, rom_luts


@pytest.mark.parametrize(("width", "depth", "blocks"), [
    (1, 16384, 1),  # one block, 1 bit x 16k
    (16, 256, 1),  # 18 x 1024
    (36, 512, 1),  # the widest shape, full
    (37, 512, 2),
    (196, 256, 6),  # ceil(196 / 36)
    (512, 98, 15),  # ceil(512 / 36)
    (4, 16384, 4),  # 1 x 16k each, no read multiplexer
    (1, 16385, 1),  # nine 2k-word slices side by side in one 9-bit block (checked in Yosys)
    (10, 2048, 2),  # 9 x 2048 twice, cheaper than a multiplexed 18 x 1024 pair
])
def test_ebr_packing(width, depth, blocks):
    assert ebr_blocks(width, depth)[0] == blocks


def test_ebr_packs_address_slices_side_by_side():
    # 3 bits x 5000 words: three 2k-word slices of 3 bits fill one 9 x 2048 block, behind a
    # 3:1 read multiplexer (synth_ecp5 makes exactly one DP16KD of it).
    assert ebr_blocks(3, 5000) == (1, 128 + 0.5 * 2 * 3)


@pytest.mark.parametrize(("width", "depth", "writable", "kind", "ebr"), [
    (4, 160, False, "logic", 0),  # 40 < 128: a small ROM stays in LUTs
    (64, 64, False, "logic", 0),  # 256 = 2 blocks: a tie goes to logic
    (10, 256, False, "bram", 1),  # 160 > 128
    (196, 256, False, "bram", 6),
    (8, 64, True, "lutram", 0),  # a small RAM becomes DPR16X4
    (8, 4096, True, "bram", 2),
])
def test_memory_map(width, depth, writable, kind, ebr):
    mem = memory_map(width, depth, writable)
    assert (mem.kind, mem.ebr) == (kind, ebr)


def test_rom_luts():
    assert [rom_luts(d) for d in (1, 2, 16, 17, 64, 256)] == [0, 1, 1, 2, 4, 17]


def test_tree_profile_counts_adders_and_stage_registers():
    # 8 one-bit terms: 4 two-bit, 2 three-bit, 1 four-bit adders, in one stage of 3 levels.
    assert resources.tree_profile(8, levels_per_stage=3) == (4 * 2 + 2 * 3 + 4, 0, 1)
    # 16 terms: the fourth level runs after a register of the two 4-bit partial sums.
    assert resources.tree_profile(16, levels_per_stage=3) == (8 * 2 + 4 * 3 + 2 * 4 + 5, 2 * 4, 2)
    # Two levels per stage (the generator's): 8 terms register their two 3-bit sums, 16 terms
    # their four 3-bit ones; two levels, then one per stage, registers the two 4-bit ones too.
    assert resources.tree_profile(8) == (4 * 2 + 2 * 3 + 4, 2 * 3, 2)
    assert resources.tree_profile(16) == (8 * 2 + 4 * 3 + 2 * 4 + 5, 4 * 3, 2)
    assert resources.tree_profile(16, levels_per_stage=(2, 1)) == (
        8 * 2 + 4 * 3 + 2 * 4 + 5, 4 * 3 + 2 * 4, 3)


def test_stage_levels():
    assert stage_levels(0) == [0]
    assert stage_levels(1) == [1]
    assert stage_levels(5) == [2, 2, 1]
    assert stage_levels(5, (2, 1)) == [2, 1, 1, 1]
    assert stage_levels(7, (3, 2)) == [3, 2, 2]
    with pytest.raises(ValueError, match="at least 1"):
        stage_levels(3, (2, 0))


def _tfc():
    return random_net((784, 64, 64, 64, 10), pixel_max=255)


def test_totals_are_layers_plus_glue():
    net = random_net()
    est = estimate(net, default_folding(net, 32))
    assert [c.name for c in est.layers] == [layer.name for layer in net.layers]
    assert [c.name for c in est.glue] == ["argmax"]
    for key in ("lut4", "ff", "ebr"):
        assert getattr(est, key) == sum(getattr(c, key) for c in est.layers + est.glue)
    assert est.lut4 > 0 and est.ff > 0
    for c in est.layers:
        assert c.ebr == c.weight_ebr + c.threshold_ebr + c.buffer_ebr


def test_storage_follows_fold_depth():
    net = random_net((64, 32, 32, 10))
    for pe, simd in [(32, 64), (4, 64), (1, 64), (1, 1)]:
        folding = Folding({"fc0": LayerFold(pe, simd), "fc1": LayerFold(1, 32),
                           "fc2": LayerFold(1, 32)})
        cost = estimate(net, folding)["fc0"]
        depth = (32 // pe) * (64 // simd)
        assert (cost.depth, cost.lanes) == (depth, pe * simd)
        assert cost.storage == weight_storage(depth)
        if cost.storage != "bram":
            assert cost.weight_ebr == 0


def test_lut4_grows_with_lanes():
    net = _tfc()
    # fc0's 64 PEs make fc1's input beats 64 bits, wider than its slices: no LUT RAM buffer
    # (MVTU.input_buffer), whose saving at some foldings would break the monotony.
    rest = {"fc0": LayerFold(64, 784), "fc2": LayerFold(1, 64), "fc3": LayerFold(1, 64)}
    chain = [(1, s) for s in (1, 2, 4, 8, 16, 32, 64)] + [(p, 64) for p in (2, 4, 8, 16, 32)]
    luts, ffs = [], []
    for pe, simd in chain:
        cost = estimate(net, Folding({**rest, "fc1": LayerFold(pe, simd)}))["fc1"]
        luts.append(cost.lut4)
        ffs.append(cost.ff)
    # Up to the counters and their next-state logic, which shrink as the fold gets shallower
    # (about 5 LUT4 per counter bit, a few percent of a one-lane layer).
    for small, big in zip(luts, luts[1:], strict=False):
        assert big >= 0.95 * small
    assert luts[-1] > 10 * luts[0]
    for small, big in zip(ffs, ffs[1:], strict=False):
        assert big >= 0.98 * small


def test_conv_network_has_windows_pools_and_pixels():
    levels = list(range(-128, 128))
    net = random_conv_net((1, 12, 12), [("conv", 8, 3, 1, 0, 0), ("pool", 2, 2),
                                        ("conv", 16, 3, 1, 0, 0), ("dense", 10)], levels=levels)
    est = estimate(net, default_folding(net, 512))
    kinds = [c.kind for c in est.layers]
    assert kinds == ["conv", "pool", "conv", "dense"]
    assert [c.name for c in est.glue] == ["pixels", "argmax"]
    assert all(c.lut4 > 0 and c.ff > 0 for c in est.layers + est.glue[1:])
    # 256 levels of 9 bits: Yosys puts the pixel ROM, its output register moved into the read
    # port, in one DP16KD (2,304 bits cost more as logic).
    assert est["pixels"].ebr == 1
    assert est.layers[0].features["lut4:mvtu.int_lane_bits"] > 0  # integer-input first layer


def test_attribution_of_flattened_cells():
    # layer0's output register drives a top-level net also seen as layer1's input: it belongs
    # to layer0; an unnamed carry cell fed by layer1 goes with layer1.
    netlist = {"modules": {"bnn_core": {
        "attributes": {"top": "00000000000000000000000000000001"},
        "netnames": {"layer0.o_stream__payload": {"bits": [5]},
                     "layer1.i_stream__payload": {"bits": [5]},
                     "layer1.acc": {"bits": [6]}},
        "cells": {
            "i_stream__payload_TRELLIS_FF_Q": {
                "type": "TRELLIS_FF", "port_directions": {"Q": "output", "DI": "input"},
                "connections": {"Q": [5], "DI": [2]}},
            "layer1.acc_LUT4_Z": {
                "type": "LUT4", "port_directions": {"Z": "output", "A": "input"},
                "connections": {"Z": [6], "A": [5]}},
            "$auto$1": {"type": "CCU2C", "port_directions": {"S0": "output", "A0": "input"},
                        "connections": {"S0": [7], "A0": [6]}},
        }}}}
    cells = calibrate.cells_per_block(netlist, ["layer0", "layer1"])
    assert cells == {"layer0": {"TRELLIS_FF": 1}, "layer1": {"LUT4": 1, "CCU2C": 1}}
    assert calibrate.lut4_ff_ebr(cells["layer1"]) == (3, 0, 0)


@pytest.mark.slow
def test_estimate_within_15_percent_of_yosys():
    case = calibrate.Case("TFC", (784, 64, 64, 64, 10), 1024)
    (run,) = calibrate.collect([case], log=lambda s: None)
    est = resources.estimate(run.net, run.folding, case.in_width)
    real = [sum(t[k] for t in run.truth.values()) for k in range(3)]
    assert abs(est.lut4 - real[0]) <= 0.15 * real[0]
    assert abs(est.ff - real[1]) <= 0.15 * real[1]
    assert est.ebr == real[2]


def test_collect_takes_the_next_seed_when_yosys_fails(monkeypatch):
    seen = []

    def synthesize(net, folding, in_width, log=print):
        seen.append(net)
        if len(seen) == 1:
            raise RuntimeError(f"yosys failed on {net.name} (exit 1): ")
        return {}

    monkeypatch.setattr(calibrate, "synthesize", synthesize)
    monkeypatch.setattr(calibrate, "truth_per_block", lambda net, cells: {})
    logs = []
    case = calibrate.Case("TFC", (784, 64, 64, 64, 10), 1024)
    (run,) = calibrate.collect([case], log=logs.append)
    assert run.net is seen[1] and len(seen) == 2
    assert not np.array_equal(seen[0].layers[0].weights, seen[1].layers[0].weights)
    assert "trying weight seed 1" in logs[-1]


def test_collect_gives_up_after_the_last_seed(monkeypatch):
    def synthesize(net, folding, in_width, log=print):
        raise RuntimeError(f"yosys failed on {net.name} (exit 1): ")

    monkeypatch.setattr(calibrate, "synthesize", synthesize)
    case = calibrate.Case("TFC", (784, 64, 64, 64, 10), 1024)
    with pytest.raises(RuntimeError, match="yosys failed on TFC"):
        calibrate.collect([case], log=lambda s: None)


def test_calibrated_coefficients_exist():
    coefs = {"lut4": resources.LUT_COEF, "ff": resources.FF_COEF}
    for name in resources.CALIBRATED:
        resource, _, feature = name.partition(":")
        assert feature in coefs[resource]
    # Every feature the model counts has a coefficient.
    net = calibrate.random_lenet()
    for block in resources.block_features(net, default_folding(net, 1296, in_elems=1)):
        assert set(block["lut"]) <= set(resources.LUT_COEF)
        assert set(block["ff"]) <= set(resources.FF_COEF)


def test_storage_override_moves_weights_out_of_block_ram():
    net = _tfc()
    folding = default_folding(net, 256)
    base = estimate(net, folding)
    moved = estimate(net, folding, storages={"fc0": "lut"})
    assert base["fc0"].storage == "bram" and moved["fc0"].storage == "lut"
    assert moved["fc0"].weight_ebr == 0 < base["fc0"].weight_ebr
    assert moved["fc0"].lut4 > base["fc0"].lut4
    assert moved["fc1"] == base["fc1"]


def test_truth_per_block_groups_every_block_of_a_layer():
    """A layer's synthesized cells are its MVTU's, its window's, its row FIFO's and that
    FIFO's register slice's; a block the grouping does not know is an error, not lost."""
    from bnnflow.calibrate import truth_per_block
    from bnnflow.ir import Conv
    from bnnflow.synthetic import zoo_net

    net = zoo_net("lenet", 0)
    index = next(i for i, layer in enumerate(net.layers) if i > 0 and isinstance(layer, Conv))
    name = net.layers[index].name
    cells = {f"layer{index}": {"LUT4": 10, "TRELLIS_FF": 4},
             f"window{index}": {"LUT4": 5}, f"fifo{index}": {"LUT4": 2, "DP16KD": 1},
             f"fifo{index}_out": {"TRELLIS_FF": 9}}
    assert truth_per_block(net, cells)[name] == (17, 13, 1)
    with pytest.raises(ValueError, match="unexpected blocks"):
        truth_per_block(net, {**cells, "mystery": {"LUT4": 1}})
