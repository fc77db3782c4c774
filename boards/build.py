"""Wrap a host-link design for a board, build its bitstream, and report what it used.

:func:`build` runs Yosys, nextpnr-ecp5 and ecppack on Amaranth's build plan and writes
``report.json`` from the tools' own output: nextpnr's ``--report`` JSON and log for placed
utilisation and Fmax, Yosys' synthesized netlist for cell counts such as carry chains.
"""

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from amaranth import ClockDomain, Const, Elaboratable, Module, Shape, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import FFSynchronizer, ResetSynchronizer

from .toolchain import (
    BUILD_TOOLS,
    count_netlist_cells,
    log_tail,
    parse_nextpnr_log,
    parse_nextpnr_report,
    toolchain_env,
)
from .ulx3s import BoardInfo, get_board

__all__ = ["BoardTop", "build", "BuildError", "ResourceError", "TimingError"]

#: Tool name in Amaranth's command list -> (step name, log file suffix or None).
_STEPS = {
    "yosys": ("yosys", ".rpt"),
    "nextpnr-ecp5": ("nextpnr", ".tim"),
    "ecppack": ("ecppack", None),
}


class BuildError(RuntimeError):
    """A tool failed; the message carries the tail of its log."""


class ResourceError(BuildError):
    """The design needs more of some resource than the device has."""


class TimingError(BuildError):
    """The routed design is slower than the board clock (``report.json`` is still written)."""


def _check_host(host) -> None:
    if not isinstance(host, wiring.Component):
        raise TypeError(f"the host top must be a wiring.Component, not {host!r}")
    members = host.signature.members
    for port, flow in (("rx", wiring.In), ("tx", wiring.Out)):
        member = members[port] if port in members else None
        if (member is None or not member.is_port or member.flow != flow
                or Shape.cast(member.shape).width != 1):
            raise TypeError(f"the host top needs a port `{port}: {flow.name}(1)`; "
                            f"its signature is {host.signature!r}")


class BoardTop(Elaboratable):
    """The top level of a board build: clock, reset, host link pins and a heartbeat LED.

    The ``sync`` domain runs directly from the board oscillator with a power-on reset. The
    UART receive pin is synchronized (it is asynchronous to the fabric clock) and the transmit
    pin is driven from a register that starts high, so the line idles rather than sending a
    break while the design comes out of configuration.

    Parameters
    ----------
    host_top_factory : callable
        Called once as ``host_top_factory(board)`` with the :class:`BoardInfo` (for the clock
        frequency and link limits); returns a ``wiring.Component`` with ports
        ``rx: In(1)`` and ``tx: Out(1)``, e.g. ``hw.hostlink.HostTop``.
    board : str or BoardInfo
        The board, by registry name or description.

    Attributes
    ----------
    board : BoardInfo
    host : wiring.Component
        The component built by ``host_top_factory``.
    """

    def __init__(self, host_top_factory: Callable[[BoardInfo], wiring.Component],
                 board: str | BoardInfo):
        self.board = get_board(board)
        try:
            self.host = host_top_factory(self.board)
            _check_host(self.host)
        except BaseException:
            # Amaranth would also warn that this half-built top was never elaborated.
            self._MustUse__silence = True
            raise

    def elaborate(self, platform):
        if platform is None:
            raise TypeError("BoardTop needs the board's platform; simulate the host top instead")
        board = self.board
        m = Module()

        # Explicit rather than the platform's implicit default domain, so that a PLL can be
        # put here once the accelerator wants more than the oscillator's 25 MHz.
        m.submodules.clk_buf = clk_buf = io.Buffer("i", platform.request(board.clock, dir="-"))
        m.domains.sync = cd_sync = ClockDomain("sync")
        m.d.comb += cd_sync.clk.eq(clk_buf.i)
        m.submodules.reset_sync = ResetSynchronizer(Const(0), domain="sync")

        m.submodules.host = host = self.host
        link = platform.request(*board.link_resource, dir="-")
        m.submodules.rx_buf = rx_buf = io.Buffer("i", link.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", link.tx)
        m.submodules.rx_sync = FFSynchronizer(rx_buf.i, host.rx, init=1)
        tx = Signal(init=1)
        m.d.sync += tx.eq(host.tx)
        m.d.comb += tx_buf.o.eq(tx)

        if board.led is not None:
            m.submodules.led_buf = led_buf = io.Buffer("o", platform.request(*board.led, dir="-"))
            beat = Signal(max(1, int(board.clk_freq) - 1).bit_length())
            m.d.sync += beat.eq(beat + 1)
            m.d.comb += led_buf.o.eq(beat[-1])
        return m


def _run_step(argv, cwd, env, console):
    with open(console, "w") as out:
        start = time.perf_counter()
        code = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).returncode
        return code, time.perf_counter() - start


def _failure(step, code, log, console, board) -> BuildError:
    if step == "nextpnr" and log is not None and log.exists():
        parsed = parse_nextpnr_log(log.read_text(errors="replace"))
        if parsed["overflow"]:
            util = parsed["utilisation"]
            over = [f"{bel} {util[bel]['used']} used of {util[bel]['available']}"
                    if bel in util else f"{bel} (no sites left)" for bel in parsed["overflow"]]
            errors = "\n".join(parsed["errors"])
            return ResourceError(f"design does not fit {board.name} ({board.part}): "
                                 f"{'; '.join(over)}\n{errors}")
    tails = []
    if step == "yosys" and log is not None and log.exists():
        # A trapped YoWASP Yosys prints only a backtrace; its log says which pass died.
        passes = re.findall(r"^\d+(?:\.\d+)*\. \S.*$", log.read_text(errors="replace"),
                            re.MULTILINE)
        if passes:
            tails.append(f"last Yosys step: {passes[-1]}")
    tails += [f"--- {path.name} ---\n{log_tail(path, lines=15)}"
              for path in (log, console) if path is not None and log_tail(path)]
    return BuildError(f"{step} failed with exit code {code}\n" + "\n".join(tails))


def _sync_clock(fmax: dict) -> tuple[str, dict]:
    if not fmax:
        raise BuildError("nextpnr reported no clock; is the sync domain used?")
    named = [clk for clk in fmax if "sync" in clk]
    # Only one clock today; with more, the slowest is the honest number to report.
    clk = named[0] if len(named) == 1 else min(fmax, key=lambda c: fmax[c]["achieved"])
    return clk, fmax[clk]


def _report(board, name, out, tools_seconds) -> dict:
    nextpnr = parse_nextpnr_report(out / f"{name}_nextpnr.json")
    log = parse_nextpnr_log((out / f"{name}.tim").read_text(errors="replace"))
    cells, yosys_version = count_netlist_cells(out / f"{name}.json")
    util = nextpnr["utilisation"]
    clock, fmax = _sync_clock(nextpnr["fmax"] or log["fmax"])
    bitstream = out / f"{name}.bit"

    def used(bel):
        return util.get(bel, {}).get("used", 0)

    resources = {"lut4": "TRELLIS_COMB", "ff": "TRELLIS_FF", "ebr": "DP16KD",
                 "dsp": "MULT18X18D", "lutram": "TRELLIS_RAMW", "io": "TRELLIS_IO",
                 "dcca": "DCCA", "pll": "EHXPLLL"}
    target = board.clk_freq / 1e6
    return {
        "board": board.name,
        "part": board.part,
        "device": board.device,
        "name": name,
        **{key: used(bel) for key, bel in resources.items()},
        "ccu2": cells.get("CCU2C", 0),
        **{key: log["prepack"][key] for key in ("lut4_logic", "lut4_carry", "lut4_ram")
           if key in log["prepack"]},
        "available": {key: util[bel]["available"] for key, bel in resources.items()
                      if bel in util},
        "fmax_mhz": round(fmax["achieved"], 2),
        "target_mhz": target,
        "timing_met": fmax["achieved"] >= target,
        "clock_net": clock,
        "clocks": nextpnr["fmax"] or log["fmax"],
        "bitstream": str(bitstream),
        "bitstream_bytes": bitstream.stat().st_size,
        "seconds": {step: round(s, 2) for step, s in tools_seconds.items()},
        "yosys_version": yosys_version,
        "yosys_cells": cells,
        "utilisation": util,
        "files": {kind: f"{name}{suffix}" for kind, suffix in (
            ("rtlil", ".il"), ("verilog", ".debug.v"), ("netlist", ".json"),
            ("yosys_log", ".rpt"), ("nextpnr_log", ".tim"), ("nextpnr_report", "_nextpnr.json"),
            ("config", ".config"), ("bitstream", ".bit"), ("svf", ".svf"))},
    }


def build(board_name: str, top_component_factory: Callable[[BoardInfo], wiring.Component],
          build_dir: str | Path, *, name: str = "bnnflow_top",
          progress: Callable[[str, float | None], None] | None = None,
          seed: int | None = None, allow_timing_fail: bool = False) -> dict:
    """Build a bitstream for a board and write ``build_dir/report.json``.

    The design is ``BoardTop(top_component_factory, board)``. Amaranth prepares the build plan
    (RTLIL, debug Verilog, Yosys script, LPF); its command list (``build_<name>.json``) is then
    run one tool at a time with the tools from :func:`~bnnflow.boards.toolchain.find_tools`.
    Amaranth's ``platform.build()`` cannot be given an environment and its shell script runs
    all tools as one process, which would hide per-tool time and which tool failed.

    Parameters
    ----------
    board_name : str
        A key of :data:`~bnnflow.boards.ulx3s.BOARDS`, e.g. ``"ulx3s-85f"``.
    top_component_factory : callable
        ``factory(board_info) -> wiring.Component`` with ports ``rx: In(1)``, ``tx: Out(1)``.
    build_dir : str or Path
        Created if needed; keeps every product (``.il``, ``.debug.v``, ``.json``, ``.config``,
        ``.bit``, ``.svf``), the tool logs (``.rpt``, ``.tim``, ``_<step>.out``) and
        ``report.json``.
    name : str
        Base name of the products; alphanumerics and ``_`` only.
    progress : callable, optional
        ``progress(step, seconds)`` with ``seconds=None`` when a step (``"amaranth"``,
        ``"yosys"``, ``"nextpnr"``, ``"ecppack"``) starts and its duration when it ends.
    seed : int, optional
        nextpnr placement seed.
    allow_timing_fail : bool
        Return normally even if Fmax is below the board clock.

    Returns
    -------
    dict
        The contents of ``report.json``: ``board``, ``part``, ``lut4`` (placed LUT4 slots,
        carry included), ``ff``, ``ebr``, ``dsp``, ``ccu2``, ``lutram``, ``io``, ``available``,
        ``fmax_mhz``, ``target_mhz``, ``timing_met``, ``bitstream``, ``seconds`` and more.

    Raises
    ------
    ToolchainError
        A tool is not installed.
    ResourceError
        The design does not fit; names the resource.
    BuildError
        A tool failed; carries the tail of its log.
    TimingError
        Fmax is below the board clock and ``allow_timing_fail`` is false.
    """
    board = get_board(board_name)
    env = toolchain_env(BUILD_TOOLS)
    progress = progress or (lambda step, seconds: None)
    out = Path(build_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", f"{name}_nextpnr.json", f"{name}.config", f"{name}.bit"):
        (out / stale).unlink(missing_ok=True)

    seconds = {}
    progress("amaranth", None)
    start = time.perf_counter()
    nextpnr_opts = ["--report", f"{name}_nextpnr.json", "--timing-allow-fail"]
    if seed is not None:
        nextpnr_opts += ["--seed", str(seed)]
    plan = board.platform().prepare(BoardTop(top_component_factory, board), name,
                                    debug_verilog=True, nextpnr_opts=nextpnr_opts)
    plan.extract(out)
    seconds["amaranth"] = time.perf_counter() - start
    progress("amaranth", seconds["amaranth"])

    commands = json.loads((out / f"{plan.script}.json").read_text())["commands"]
    for tool, *args in commands:
        step, log_suffix = _STEPS[tool]
        progress(step, None)
        console = out / f"{name}_{step}.out"
        code, seconds[step] = _run_step([env[tool.upper().replace("-", "_")], *args],
                                        out, env, console)
        if code != 0:
            log = out / f"{name}{log_suffix}" if log_suffix else None
            raise _failure(step, code, log, console, board)
        progress(step, seconds[step])
    seconds["total"] = sum(seconds.values())

    report = _report(board, name, out, seconds)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if not report["timing_met"] and not allow_timing_fail:
        raise TimingError(f"{board.name}: Fmax {report['fmax_mhz']} MHz is below the "
                          f"{report['target_mhz']} MHz clock (see {out / 'report.json'})")
    return report
