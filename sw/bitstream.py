"""``bnnflow build`` and ``bnnflow program``: a compiled build folder on an ECP5 board.

The board design is the build's core behind the UART host link (``bnnflow.hw.hostlink``),
inside the board's top (``bnnflow.boards``), optionally clocked from a PLL. Products go to
``BUILD/<board>/``; the tools' figures are written to ``BUILD/<board>/report.json`` and merged
into ``BUILD/report.json``. Bitstreams are cached under a hash of the design ID (IR, folding,
generator version), the baud rate, the board, the clock and the tool versions.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from .autofold import board_budget, check_fit
from .flow import load_build, update_report

__all__ = ["DEFAULT_BAUD", "build_bitstream", "program_board"]

#: 25 MHz / 1 Mbaud = 25 clocks per bit exactly on the ULX3S; FTDI bridges run it reliably.
#: Boards whose bridge is slower (Colorlight's DAPLink) are capped at their own maximum.
DEFAULT_BAUD = 1_000_000

_REPORT_KEYS = ("board", "part", "lut4", "ff", "ebr", "dsp", "ccu2", "fmax_mhz", "target_mhz",
                "timing_met", "bitstream", "seconds", "cached", "critical_path", "placer",
                "tmg_ripup", "seed", "seed_tries")


def build_bitstream(build: Path, board: str, *, baud: int | None = None,
                    target_mhz: float | None = None, allow_timing_fail: bool = False,
                    seed: int | None = None, seeds: int = 1,
                    progress: Callable[[str], None] | None = None) -> dict:
    """Build the bitstream of ``build`` for ``board``; returns the merged report.

    With ``allow_timing_fail`` a design that misses its clock still gets its bitstream and
    report (``timing_met`` false) instead of a :class:`~bnnflow.boards.build.TimingError`.
    ``seed`` and ``seeds`` choose nextpnr's placement seeds as in
    :func:`bnnflow.boards.build.build`.
    """
    from bnnflow.boards.build import build as board_build
    from bnnflow.boards.registry import get_board
    from bnnflow.hw.core import BnnCore
    from bnnflow.hw.hostlink import HostTop
    from bnnflow.hw.uart import baud_divisor

    info = get_board(board)
    baud = min(baud or DEFAULT_BAUD, info.max_baud)
    net, folding, manifest = load_build(build)
    # Refuse in a second what could only fail after synthesis and placement.
    budget = board_budget(net, info.name, utilization=1.0)
    check_fit(net, folding, budget, manifest.in_width, source=f"{build}")
    used = {}

    def top(board_info):
        # board_info.clk_freq is the real sync clock (the PLL's output when one is used); a
        # fractional divisor hits e.g. 3 Mbaud exactly from 25 MHz.
        used["divisor"] = baud_divisor(board_info.clk_freq, baud)
        core = BnnCore(net, folding, manifest.in_width)
        return HostTop(core, manifest.design_id_bytes, used["divisor"],
                       clk_hz=int(board_info.clk_freq))

    def step(name, seconds):
        if progress:
            progress(f"[build] {name} ..." if seconds is None else
                     f"[build] {name} done in {seconds:.1f} s")

    out = Path(build) / info.name
    report = board_build(info, top, out, name="bnnflow_top", progress=step,
                         target_mhz=target_mhz, design_key=f"{manifest.design_id}:{baud}",
                         allow_timing_fail=allow_timing_fail, seed=seed, seeds=seeds)
    shutil.copyfile(report["bitstream"], Path(build) / f"{info.name}.bit")
    fields = {k: report.get(k) for k in _REPORT_KEYS if k in report}
    fields["baud"] = baud
    if "divisor" in used:
        fields["uart_divisor"] = str(used["divisor"])
    return update_report(build, fields)


def program_board(target: Path, board: str, *, cable: str | None = None, flash: bool = False,
                  loader: str | None = None) -> str:
    """Load ``target`` (a build folder or a ``.bit`` file) onto ``board``."""
    from bnnflow.boards.program import program
    from bnnflow.boards.registry import get_board

    info = get_board(board)
    bit = Path(target)
    if bit.is_dir():
        bit = bit / f"{info.name}.bit"
    return program(info, bit, cable=cable, flash=flash, loader=loader)
