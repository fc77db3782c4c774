"""Per-lane hardware cost of each weight storage, measured with Yosys ``synth_ecp5``.

A lane is one XNOR-popcount input of one PE (``PE*SIMD`` lanes per MVTU). For each storage
choice of :mod:`bnnflow.hw.storage` this module generates a single MVTU at a representative
shape, synthesizes it for ECP5 and divides the cell counts by its lanes. LUT4s are counted as
nextpnr's ``TRELLIS_COMB`` slots: ``LUT4 + 2*CCU2C``, since each carry-chain cell fills two.
The figures are all-in (control, accumulators, thresholds and input registers included), so
they fall slightly with wider layers.

Run ``python -m bnnflow.lanecost`` for a markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LaneCost", "lane_costs", "synth_cells", "markdown", "main"]

#: ``synth_ecp5`` options of a second attempt when Yosys fails on an MVTU (the table says so).
FALLBACK_OPTIONS = "-dff"

#: Fold depth (``NF*SF``) measured for each storage by default.
DEFAULT_DEPTHS = {"const": 1, "lut": 8, "bram": 64}


@dataclass(frozen=True)
class LaneCost:
    """Synthesis result of one MVTU, and its cost per lane.

    Attributes
    ----------
    storage
        ``"const"``, ``"lut"`` or ``"bram"``.
    options
        Extra ``synth_ecp5`` options it took (see :func:`lane_costs`); ``""`` normally.
    pe, simd, depth
        The MVTU's shape: ``PE*SIMD`` lanes, each cycling through ``depth`` weights.
    cells
        Cell type -> count in the synthesized netlist.
    """

    storage: str
    pe: int
    simd: int
    depth: int
    cells: dict
    options: str = ""

    @property
    def lanes(self) -> int:
        return self.pe * self.simd

    @property
    def ccu2c(self) -> int:
        return self.cells.get("CCU2C", 0)

    @property
    def lut4(self) -> int:
        """``TRELLIS_COMB`` slots: LUT4 cells plus two per carry cell."""
        return self.cells.get("LUT4", 0) + 2 * self.ccu2c

    @property
    def ff(self) -> int:
        return self.cells.get("TRELLIS_FF", 0)

    @property
    def ebr(self) -> int:
        return self.cells.get("DP16KD", 0)

    def per_lane(self) -> dict[str, float]:
        """LUT4 (incl. carry), CCU2C, FF and EBR divided by :attr:`lanes`."""
        n = self.lanes
        return {"lut4": self.lut4 / n, "ccu2c": self.ccu2c / n, "ff": self.ff / n,
                "ebr": self.ebr / n}


def _mvtu(storage: str, pe: int, simd: int, depth: int, seed: int):
    """A hidden-layer MVTU of ``depth`` output groups and one input slice, random weights."""
    from bnnflow.hw.mvtu import MVTU
    from bnnflow.ir import Dense, Thresholds

    rng = np.random.default_rng(seed)
    mh, mw = pe * depth, simd
    weights = rng.integers(0, 2, (mh, mw))
    t = rng.integers(mw // 4, 3 * mw // 4 + 1, mh)
    layer = Dense("lane", weights, Thresholds(t, rng.random(mh) < 0.5))
    return MVTU(layer, pe, simd, in_width=simd, weight_storage=storage)


def synth_cells(verilog_path: str | Path, top: str, options: str = "") -> dict[str, int]:
    """Synthesize ``verilog_path`` with ``synth_ecp5``, its options
    :data:`~bnnflow.boards.toolchain.SYNTH_OPTIONS` (as the board build) and ``options``, and
    count the netlist's cells.

    The netlist ``<top>.json`` is written next to the Verilog file.

    Raises
    ------
    RuntimeError
        If Yosys fails; the message ends with its last output lines.
    """
    from bnnflow.boards.toolchain import (
        SYNTH_OPTIONS,
        count_netlist_cells,
        find_tool,
        toolchain_env,
    )

    # YoWASP tools see the working directory, not necessarily the whole file system.
    verilog_path = Path(verilog_path).resolve()
    workdir, netlist = verilog_path.parent, f"{top}.json"
    script = (f"read_verilog {verilog_path.name}; synth_ecp5 {SYNTH_OPTIONS} {options} "
              f"-top {top} -json {netlist}")
    proc = subprocess.run([find_tool("YOSYS"), "-q", "-p", script], capture_output=True,
                          text=True, env=toolchain_env(("YOSYS",)), cwd=workdir, check=False)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-10:])
        raise RuntimeError(f"yosys failed on {verilog_path}:\n{tail}")
    return count_netlist_cells(workdir / netlist)[0]


def lane_costs(simd=(32, 128), pe: int = 8, depths: dict[str, int] | None = None,
               storages=("const", "lut", "bram"), seed: int = 0,
               workdir: str | Path | None = None) -> list[LaneCost]:
    """Synthesize one MVTU per storage and SIMD width and return their costs.

    Parameters
    ----------
    simd
        SIMD widths to measure (an int or a sequence).
    pe
        PE of every MVTU.
    depths
        Fold depth per storage; :data:`DEFAULT_DEPTHS` where missing. ``"const"`` needs 1.
    storages
        Storages to measure.
    seed
        Seed of the random weights and thresholds.
    workdir
        Where the Verilog and netlists go; a temporary directory by default.

    Returns
    -------
    list of LaneCost
        In ``storages`` then ``simd`` order. About 10-30 s of Yosys each.
    """
    from amaranth.back import verilog

    depths = {**DEFAULT_DEPTHS, **(depths or {})}
    simds = (simd,) if isinstance(simd, int) else tuple(simd)
    out = []
    with tempfile.TemporaryDirectory(prefix="lanecost-") as tmp:
        base = Path(workdir) if workdir is not None else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        for storage in storages:
            for s in simds:
                depth = depths[storage]
                top = f"mvtu_{storage}_p{pe}_s{s}_d{depth}"
                path = base / f"{top}.v"
                path.write_text(verilog.convert(_mvtu(storage, pe, s, depth, seed), name=top))
                try:
                    cells, options = synth_cells(path, top), ""
                except RuntimeError:
                    # YoWASP Yosys 0.70's abc9 exits without a message on some of these
                    # netlists (const 8 x 32, seed 0); its -dff mode maps them.
                    options = FALLBACK_OPTIONS
                    cells = synth_cells(path, top, options)
                out.append(LaneCost(storage, pe, s, depth, cells, options))
    return out


def markdown(costs: list[LaneCost]) -> str:
    """A markdown table of per-lane costs."""
    lines = ["| storage | PE x SIMD | depth | LUT4/lane (LUT4+2*CCU2C) | CCU2C/lane | FF/lane "
             "| EBR | LUT4 | CCU2C | FF |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in costs:
        p = c.per_lane()
        storage = f"{c.storage} (synth_ecp5 {c.options})" if c.options else c.storage
        lines.append(f"| {storage} | {c.pe} x {c.simd} | {c.depth} | {p['lut4']:.2f} | "
                     f"{p['ccu2c']:.2f} | {p['ff']:.2f} | {c.ebr} | {c.cells.get('LUT4', 0)} | "
                     f"{c.ccu2c} | {c.ff} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Print the per-lane cost table (``python -m bnnflow.lanecost``)."""
    parser = argparse.ArgumentParser(prog="python -m bnnflow.lanecost", description=__doc__
                                     .splitlines()[0])
    parser.add_argument("--pe", type=int, default=8)
    parser.add_argument("--simd", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--lut-depth", type=int, default=DEFAULT_DEPTHS["lut"])
    parser.add_argument("--bram-depth", type=int, default=DEFAULT_DEPTHS["bram"])
    args = parser.parse_args(argv)
    costs = lane_costs(args.simd, args.pe, {"lut": args.lut_depth, "bram": args.bram_depth})
    print(markdown(costs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
