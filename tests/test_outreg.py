"""The DP16KD output-register pass (boards/outreg.py), on Yosys' real netlists and on
hand-made ones for each reason to leave a port alone."""

from __future__ import annotations

import copy
import json
import subprocess

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, Signal

from bnnflow.boards.outreg import absorb_output_registers
from bnnflow.boards.toolchain import toolchain_env
from bnnflow.hw.mvtu import MVTU
from bnnflow.hw.storage import rom_banks


def _synth(tmp_path, width: int, depth: int) -> dict:
    """A block-RAM ROM read as the MVTU reads it (MVTU._storage: a read and a register per
    bank, then a register of the bank picked), through synth_ecp5."""
    rng = np.random.default_rng(width * depth)
    words = [int(w) for w in rng.integers(0, 1 << min(width, 62), depth)]
    m = Module()
    addr = Signal(range(depth))
    out = Signal(width)
    m.d.sync += [addr.eq(addr + 1), out.eq(MVTU._storage(m, "rom", "bram", words, width, addr))]
    (tmp_path / "rom.il").write_text(rtlil.convert(m, name="rom", ports=[out]))
    env = toolchain_env()
    script = "read_rtlil rom.il; synth_ecp5 -top rom -json rom.json"
    subprocess.run([env["YOSYS"], "-q", "-p", script], cwd=tmp_path, env=env, check=True)
    return json.loads((tmp_path / "rom.json").read_text())


def _cells(doc, kind):
    return [c for c in doc["modules"]["rom"]["cells"].values() if c["type"] == kind]


@pytest.mark.parametrize(("width", "depth", "blocks"), [
    (40, 300, 2),  # two 18-bit columns in one block, both ports; 4 bits in a second block
    (20, 512, 1),  # a threshold word: 18 + 2 bits
    (18, 1000, 1),  # deeper than half a block: one port of a 1,024 x 18 block
    (36, 1152, 3),  # three banks of 512 words, each a block read through both ports
    (40, 1100, 5),  # one bank of five 9 x 2,048 blocks
])
def test_real_netlist_every_read_register_moves(tmp_path, width, depth, blocks):
    before = _synth(tmp_path, width, depth)
    brams = _cells(before, "DP16KD")
    assert len(brams) == blocks
    # The generator never asks for the 36-bit pseudo dual-port mode.
    assert all(int(b["parameters"]["DATA_WIDTH_A"], 2) <= 18 for b in brams)
    assert all(int(b["parameters"]["DATA_WIDTH_B"], 2) <= 18 for b in brams)
    ffs = len(_cells(before, "TRELLIS_FF"))

    banks = -(-depth // rom_banks(width, depth)[1])
    result = absorb_output_registers(tmp_path / "rom.json")
    after = json.loads((tmp_path / "rom.json").read_text())
    assert result["bits"] == width * banks and result["left"] == 0
    assert len(_cells(after, "TRELLIS_FF")) == ffs - width * banks
    # Every port that is read uses its output register, and what read its register now
    # reads the block's pins directly.
    cells = after["modules"]["rom"]["cells"].values()
    used = {bit for c in cells if c["type"] != "DP16KD"
            for bits in c["connections"].values() for bit in bits}
    modes = [b["parameters"][f"REGMODE_{p}"] for b in _cells(after, "DP16KD") for p in "AB"
             if any(b["connections"][f"DO{p}{k}"][0] in used for k in range(18))]
    assert result["ports"] == len(modes) and set(modes) == {"OUTREG"}
    pins = {c["connections"][f"DO{p}{k}"][0] for c in _cells(after, "DP16KD")
            for p in "AB" for k in range(18)}
    assert len(used & pins) == width * banks

    # nextpnr takes the rewritten netlist.
    env = toolchain_env()
    subprocess.run([env["NEXTPNR_ECP5"], "--quiet", "--25k", "--package", "CABGA381",
                    "--json", "rom.json", "--timing-allow-fail"],
                   cwd=tmp_path, env=env, check=True, capture_output=True)


def _netlist(**changes) -> dict:
    """One DP16KD whose port A bit 0 feeds one plain flip-flop, then ``changes`` applied."""
    doc = {"modules": {"top": {
        "attributes": {"top": "00000000000000000000000000000001"},
        "ports": {"clk": {"direction": "input", "bits": [2]}},
        "cells": {
            "ram": {"type": "DP16KD", "parameters": {
                "DATA_WIDTH_A": "00000000000000000000000000010010",
                "DATA_WIDTH_B": "00000000000000000000000000010010",
                "REGMODE_A": "NOREG", "REGMODE_B": "NOREG", "CLKAMUX": "CLKA"},
                "port_directions": {"DOA0": "output", "CLKA": "input", "OCEA": "input",
                                    "RSTA": "input"},
                "connections": {"DOA0": [10], "CLKA": [2], "OCEA": ["1"], "RSTA": ["0"]}},
            "ff": {"type": "TRELLIS_FF", "attributes": {}, "parameters": {
                "CEMUX": "1 ", "CLKMUX": "CLK", "LSRMUX": "LSR", "REGSET": "RESET"},
                "port_directions": {"CLK": "input", "DI": "input", "LSR": "input",
                                    "Q": "output"},
                "connections": {"CLK": [2], "DI": [10], "LSR": ["0"], "Q": [11]}},
            "use": {"type": "LUT4", "parameters": {}, "port_directions": {"A": "input"},
                    "connections": {"A": [11]}},
        }}}}
    cells = doc["modules"]["top"]["cells"]
    for path, value in changes.items():
        cell, group, key = path.split("__")
        cells[cell][group][key] = value
    return doc


def _absorb(tmp_path, doc):
    path = tmp_path / "n.json"
    path.write_text(json.dumps(doc))
    return absorb_output_registers(path), json.loads(path.read_text())


def test_hand_netlist_absorbed(tmp_path):
    result, after = _absorb(tmp_path, _netlist())
    cells = after["modules"]["top"]["cells"]
    assert result == {"ports": 1, "bits": 1, "left": 0}
    assert "ff" not in cells and cells["ram"]["parameters"]["REGMODE_A"] == "OUTREG"
    assert cells["ram"]["connections"]["DOA0"] == [11] == cells["use"]["connections"]["A"]


@pytest.mark.parametrize("changes", [
    {"ram__parameters__DATA_WIDTH_B": "00000000000000000000000000100100"},  # 36-bit PDP
    {"ram__parameters__REGMODE_A": "OUTREG"},
    {"ram__parameters__CLKAMUX": "INV"},
    {"ram__connections__OCEA": [5]},
    {"ram__connections__RSTA": [5]},
    {"ff__connections__LSR": [5]},  # a reset
    {"ff__parameters__REGSET": "SET"},
    {"ff__parameters__CEMUX": "CE", "ff__connections__CE": [5]},  # an enable
    {"ff__connections__CLK": [3]},  # another clock
    {"ff__parameters__CLKMUX": "INV"},
    {"ff__attributes__keep": "00000000000000000000000000000001"},
    {"use__connections__A": [10]},  # a second load on the block's pin
], ids=lambda c: ",".join(c))
def test_hand_netlist_left_alone(tmp_path, changes):
    original = _netlist(**changes)
    result, after = _absorb(tmp_path, copy.deepcopy(original))
    assert result == {"ports": 0, "bits": 0, "left": 1}
    assert after == original


def test_no_top_module(tmp_path):
    doc = _netlist()
    del doc["modules"]["top"]["attributes"]["top"]
    with pytest.raises(ValueError, match="no top module"):
        _absorb(tmp_path, doc)
