"""The benchmark's tables and options (no builds: the figures come from fake reports)."""

import pytest

from bnnflow import benchmark


def _row(name, fitted=True, build=True):
    report = {"layers": [{"name": "fc0", "pe": 8, "simd": 392, "cycles": 64}],
              "cycles_per_frame": 64, "compile_wall_seconds": 17.9}
    row = {"name": name, "report": report, "fitted": fitted,
           "sim": {"cycles_per_frame": 64.0, "seconds": 212.0, "frames": 100,
                   "blocked_cycles": {}}}
    if build:
        row["build"] = {"lut4": 21_542, "ff": 28_658, "ebr": 158, "target_mhz": 128.125,
                        "fmax_mhz": 129.10, "build_wall_seconds": 1087.0}
    return row


def test_headline_shows_target_and_achieved_clock():
    text = benchmark.headline([_row("sfc"), _row("cnv", fitted=False, build=False)],
                              "ulx3s-85f", 125)
    head, rule, sfc, cnv = text.strip().splitlines()
    assert "target (MHz)" in head and head.count("|") == rule.count("|") == sfc.count("|")
    cells = [c.strip() for c in sfc.strip("|").split("|")]
    assert cells[5:8] == ["128.125", "129.10", "64.0"]
    assert cells[8] == f"{129.10e6 / 64:,.0f}"  # fabric frames/s = Fmax / cycles
    assert cells[9] == f"{129.10e6 / 64 / (21_542 * 129.10):.3f}"
    assert cnv.startswith("| cnv * |") and cnv.count("|") == head.count("|")


@pytest.mark.parametrize(("flag", "value"), [("--mhz", "sfc=fast"), ("--seeds", "sfc=2.5"),
                                             ("--seeds", "cnv=4-2"), ("--seeds", "cnv=0-1"),
                                             ("--cycles", "cnv")])
def test_bad_per_network_option_names_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit):
        benchmark.main([flag, value, "--nets", "", "--cycle-nets", ""])
    assert f"{flag} {value!r}" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "tried"), [("1", [None]), ("4", [1, 2, 3, 4]), ("3-3", [3]),
                                             ("2-5", [2, 3, 4, 5])])
def test_seed_range(text, tried):
    """``N``: seeds 1 to N (one run: nextpnr's own seed); ``A-B``: seeds A to B, as the board
    build tries them."""
    from bnnflow.boards.build import _seed_list

    assert _seed_list(*benchmark.seed_range(text)) == tried
