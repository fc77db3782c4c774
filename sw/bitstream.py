"""``bnnflow build``: a compiled build folder to an ECP5 bitstream with its host link.

The board design is the build's core behind the UART host link (``bnnflow.hw.hostlink``),
inside the board's top (``bnnflow.boards``). Products go to ``BUILD/<board>/``; the tools'
figures are written to ``BUILD/<board>/report.json`` and merged into ``BUILD/report.json``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from .flow import load_build, update_report
from .manifest import Manifest

__all__ = ["DEFAULT_BAUD", "build_bitstream"]

#: 25 MHz / 1 Mbaud = 25 clocks per bit exactly on the ULX3S; FTDI bridges run it reliably.
DEFAULT_BAUD = 1_000_000

_REPORT_KEYS = ("board", "part", "lut4", "ff", "ebr", "dsp", "ccu2", "fmax_mhz", "target_mhz",
                "timing_met", "bitstream", "seconds")


def build_bitstream(build: Path, board: str, *, baud: int = DEFAULT_BAUD,
                    progress: Callable[[str], None] | None = None) -> dict:
    """Build the bitstream of ``build`` for ``board``; returns the merged report."""
    from bnnflow.boards.build import build as board_build
    from bnnflow.boards.ulx3s import get_board
    from bnnflow.hw.core import BnnCore
    from bnnflow.hw.hostlink import HostTop

    info = get_board(board)
    net, folding, manifest = load_build(build)
    divisor = round(info.clk_freq / baud)

    def top(board_info):
        core = BnnCore(net, folding, manifest.in_width)
        return HostTop(core, manifest.design_id_bytes, divisor)

    def step(name, seconds):
        if progress:
            progress(f"[build] {name} ..." if seconds is None else
                     f"[build] {name} done in {seconds:.1f} s")

    out = Path(build) / info.name
    report = board_build(info.name, top, out, name="bnnflow_top", progress=step)
    bit = Path(report["bitstream"])
    shutil.copyfile(bit, Path(build) / f"{info.name}.bit")
    fields = {k: report.get(k) for k in _REPORT_KEYS}
    fields["baud"] = baud
    fields["uart_divisor"] = divisor
    Manifest.load(build)  # the build must still be a valid compile output
    return update_report(build, fields)
