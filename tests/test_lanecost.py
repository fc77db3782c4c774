"""The per-lane cost table (sw/lanecost.py): a real synth_ecp5 run and the fallback when
Yosys fails."""

from __future__ import annotations

import pytest

from bnnflow import lanecost


def test_lane_cost_of_a_small_bram_mvtu():
    (cost,) = lanecost.lane_costs(simd=16, pe=2, storages=("bram",))
    assert (cost.storage, cost.lanes, cost.depth, cost.options) == ("bram", 32, 64, "")
    assert cost.ebr >= 1 and cost.lut4 > cost.lanes and cost.ff > cost.lanes
    row = lanecost.markdown([cost]).splitlines()[-1]
    assert row.startswith("| bram | 2 x 16 | 64 | ")


def test_yosys_failure_retries_with_the_fallback_and_says_so(monkeypatch):
    calls = []

    def synth(path, top, options=""):
        calls.append(options)
        if not options:
            raise RuntimeError(f"yosys failed on {path}")
        return {"LUT4": 10, "CCU2C": 1, "TRELLIS_FF": 8}

    monkeypatch.setattr(lanecost, "synth_cells", synth)
    (cost,) = lanecost.lane_costs(simd=4, pe=1, storages=("const",))
    assert calls == ["", lanecost.FALLBACK_OPTIONS]
    assert cost.options == lanecost.FALLBACK_OPTIONS and cost.lut4 == 12
    assert f"const (synth_ecp5 {lanecost.FALLBACK_OPTIONS})" in lanecost.markdown([cost])


def test_yosys_failing_twice_is_an_error(monkeypatch):
    def synth(path, top, options=""):
        raise RuntimeError(f"yosys failed on {path}")

    monkeypatch.setattr(lanecost, "synth_cells", synth)
    with pytest.raises(RuntimeError, match="yosys failed on .*mvtu_const_p1_s4_d1.v"):
        lanecost.lane_costs(simd=4, pe=1, storages=("const",))
