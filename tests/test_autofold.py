"""The automatic folder: the fastest balanced folding that fits, the cheapest that is fast
enough, and a fit check that refuses before anything is generated."""

import json

import pytest
from netutil import zoo_net

from bnnflow import autofold
from bnnflow.flow import CompileConfig, compile_model
from bnnflow.folding import Folding, LayerFold, default_folding
from bnnflow.hw.core import stream_elems
from bnnflow.resources import estimate


def fold(net, board, in_width=32, **kw):
    budget = autofold.board_budget(net, board, **kw)
    return budget, autofold.fold_for_budget(net, budget, stream_elems(net, in_width), in_width)


@pytest.mark.parametrize("name, board", [("tfc", "ulx3s-25f"), ("tfc", "ulx3s-85f"),
                                         ("sfc", "ulx3s-25f"), ("sfc", "ulx3s-85f"),
                                         ("cnv", "ulx3s-85f")])
def test_largest_fitting_folding(name, board):
    net = zoo_net(name)
    width = 24 if name == "cnv" else 32
    elems = stream_elems(net, width)
    budget, folding = fold(net, board, width)
    est = estimate(net, folding, width)
    assert est.lut4 <= budget.lut4 and est.ebr <= budget.ebr and est.ff <= budget.ff
    cycles = folding.cycles_per_frame(net, elems)
    # No faster candidate fits: the folder took the largest folding, not just any.
    for target in autofold.candidate_targets(net):
        faster = default_folding(net, target, elems)
        if faster.cycles_per_frame(net, elems) < cycles:
            with pytest.raises(autofold.FitError):
                autofold.check_fit(net, faster, budget, width)


def test_bigger_device_is_faster():
    net = zoo_net("sfc")
    elems = stream_elems(net, 32)
    small = fold(net, "ulx3s-12f")[1].cycles_per_frame(net, elems)
    big = fold(net, "ulx3s-85f")[1].cycles_per_frame(net, elems)
    assert big < small


def test_budgets_cap_the_board():
    net = zoo_net("sfc")
    full, _ = fold(net, "ulx3s-85f")
    capped, folding = fold(net, "ulx3s-85f", lut_budget=10_000, ebr_budget=40)
    assert (capped.lut4, capped.ebr) == (10_000, 40) and "--lut-budget" in capped.source
    est = estimate(net, folding, 32)
    assert est.lut4 <= 10_000 and est.ebr <= 40


def test_cnv_does_not_fit_a_25f():
    with pytest.raises(autofold.FitError) as e:
        fold(zoo_net("cnv"), "ulx3s-25f", 24)
    msg = str(e.value)
    assert "even the most folded design" in msg and "at PE 1 x SIMD 1" in msg
    assert "LUT4" in msg or "EBR" in msg


def test_nothing_fits_names_layer_and_resource():
    net = zoo_net("lfc")  # 2.9 Mbit of weights: more than a 12F's 32 EBR hold
    with pytest.raises(autofold.FitError) as e:
        fold(net, "ulx3s-12f")
    msg = str(e.value)
    assert "ulx3s-12f" in msg and "EBR" in msg and "layer fc" in msg, msg


def test_given_folding_checked_against_budget():
    net = zoo_net("tfc")
    budget = autofold.board_budget(net, "ulx3s-12f")
    big = Folding({"fc0": LayerFold(64, 392), "fc1": LayerFold(64, 32),
                   "fc2": LayerFold(64, 32), "fc3": LayerFold(10, 32)})
    with pytest.raises(autofold.FitError) as e:
        autofold.check_fit(net, big, budget, 32, "fold.json")
    msg = str(e.value)
    assert msg.startswith("fold.json does not fit ulx3s-12f") and "LUT4" in msg
    assert "layer fc0" in msg and "PE 64 x SIMD 392" in msg


def test_fold_for_fps():
    net = zoo_net("sfc")
    elems = stream_elems(net, 32)
    f = autofold.fold_for_fps(net, 1e6, 125e6, elems)
    assert f.cycles_per_frame(net, elems) <= 125
    slower = autofold.fold_for_fps(net, 1e5, 125e6, elems)
    assert estimate(net, slower, 32).lut4 < estimate(net, f, 32).lut4
    with pytest.raises(autofold.FitError, match="layer fc0 takes at least 25"):
        autofold.fold_for_fps(net, 10e6, 125e6, elems)  # the 784-bit input needs 25 beats


def test_unknown_board():
    with pytest.raises(autofold.FitError, match="unknown board"):
        autofold.board_budget(zoo_net("tfc"), "ulx3s-99f")


def test_compile_refuses_before_generating(tmp_path):
    net = zoo_net("lfc")
    out = tmp_path / "build"
    with pytest.raises(autofold.FitError, match="EBR"):
        compile_model(CompileConfig(tmp_path / "lfc", out, board="ulx3s-12f"), net=net)
    assert (out / "network.json").is_file() and not (out / "core.v").exists()


def test_compile_reports_estimate_and_budget(tmp_path):
    net = zoo_net("tfc")
    out = tmp_path / "build"
    compile_model(CompileConfig(tmp_path / "tfc", out, board="ulx3s-25f", in_width=32),
                  net=net)
    report = json.loads((out / "report.json").read_text())
    assert report["budget"]["lut4"] > 0 and "ulx3s-25f" in report["budget"]["source"]
    assert report["estimate"]["lut4"] <= report["budget"]["lut4"]
    total = sum(layer["estimate"]["lut4"] for layer in report["layers"])
    assert 0 < total <= report["estimate"]["lut4"]
    assert all(layer["estimate"]["storage"] in ("const", "lut", "bram")
               for layer in report["layers"])


def test_build_refuses_before_synthesis(tmp_path):
    from bnnflow.bitstream import build_bitstream

    net = zoo_net("tfc")
    out = tmp_path / "build"
    compile_model(CompileConfig(tmp_path / "tfc", out, target_cycles=8, in_width=32), net=net)
    with pytest.raises(autofold.FitError) as e:
        build_bitstream(out, "ulx3s-12f")
    assert "ulx3s-12f" in str(e.value) and "layer fc0" in str(e.value)
    assert not (out / "ulx3s-12f").exists()
