"""Wrap a host-link design for a board, build its bitstream, and report what it used.

:func:`build` runs Yosys, nextpnr-ecp5 and ecppack on Amaranth's build plan and writes
``report.json`` from the tools' own output: nextpnr's ``--report`` JSON and log for placed
utilisation and Fmax, Yosys' synthesized netlist for cell counts such as carry chains. Between
Yosys and nextpnr, :func:`~bnnflow.boards.outreg.absorb_output_registers` moves block-RAM read
registers into the blocks (``bram_outreg`` in the report).
"""

import importlib
import json
import re
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from amaranth.lib import wiring

from bnnflow.hw.fanout import DUP_SUFFIX

from . import cache
from .outreg import absorb_output_registers
from .registry import DEVICES, BoardInfo, get_board
from .toolchain import (
    BUILD_TOOLS,
    SYNTH_OPTIONS,
    count_netlist_cells,
    log_tail,
    lut4_slots,
    parse_nextpnr_log,
    parse_nextpnr_report,
    toolchain_env,
)
from .top import BoardTop

__all__ = ["BoardTop", "build", "BuildError", "ResourceError", "TimingError", "choose_placer",
           "portable_sources", "router_iterations", "STATIC_PLACER_MAX_SHARE",
           "TMG_RIPUP_MAX_ITER"]

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


#: Router2 iterations after which a timing-driven rip-up (``--tmg-ripup``) is given up. Router2
#: rips up the arcs that miss the clock until none does, and gives up with an error only at
#: iteration 1,000; a design that cannot close timing would spend an hour there. Where it
#: can, it stops early: SFC at 64 cycles per frame routed at 125.0 MHz in 29 iterations.
TMG_RIPUP_MAX_ITER = 80

#: Seconds between two looks at a watched step's log.
WATCH_SECONDS = 5.0


def _run_step(argv, cwd, env, console, watch: Callable[[], bool] | None = None):
    """Run one tool; returns ``(exit code, seconds)``, the code ``None`` when ``watch()``
    (asked every :data:`WATCH_SECONDS`) returned true and the tool was stopped."""
    with open(console, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        while True:
            try:
                code = proc.wait(timeout=None if watch is None else WATCH_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if watch():
                    proc.kill()
                    proc.wait()
                    code = None
                    break
        return code, time.perf_counter() - start


def router_iterations(log_text: str) -> int:
    """The last router2 iteration a nextpnr log reports (``iter=N wires=...``), 0 before
    routing; the static placer's own ``iter=N steplen=...`` lines do not count."""
    found = re.findall(r"^Info:\s+iter=(\d+) wires=", log_text, re.MULTILINE)
    return int(found[-1]) if found else 0


def _ripup_stalled(log: Path) -> bool:
    return log.exists() and router_iterations(log.read_text(errors="replace")) >= TMG_RIPUP_MAX_ITER


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


def _sync_clock(fmax: dict, target_mhz: float) -> tuple[str, dict]:
    if not fmax:
        raise BuildError("nextpnr reported no clock; is the sync domain used?")
    # The sync clock is the one constrained at the target; the oscillator feeding a PLL drives
    # no flip-flops and is usually not reported. With several, the slowest is the honest one.
    named = [clk for clk in fmax if abs(fmax[clk]["constraint"] - target_mhz) < 1e-3 * target_mhz]
    clk = named[0] if len(named) == 1 else min(fmax, key=lambda c: fmax[c]["achieved"])
    return clk, fmax[clk]


def _report(board, name, out, tools_seconds, outreg, netlist) -> dict:
    """The build's report; ``netlist`` is Yosys' ``(cells, version)``
    (:func:`~bnnflow.boards.toolchain.count_netlist_cells`)."""
    nextpnr = parse_nextpnr_report(out / f"{name}_nextpnr.json")
    log = parse_nextpnr_log((out / f"{name}.tim").read_text(errors="replace"))
    cells, yosys_version = netlist
    util = nextpnr["utilisation"]
    target = board.clk_freq / 1e6
    clock, fmax = _sync_clock(nextpnr["fmax"] or log["fmax"], target)
    bitstream = out / f"{name}.bit"

    def used(bel):
        return util.get(bel, {}).get("used", 0)

    resources = {"lut4": "TRELLIS_COMB", "ff": "TRELLIS_FF", "ebr": "DP16KD",
                 "dsp": "MULT18X18D", "lutram": "TRELLIS_RAMW", "io": "TRELLIS_IO",
                 "dcca": "DCCA", "pll": "EHXPLLL"}
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
        "target_mhz": round(target, 6),
        "timing_met": fmax["achieved"] >= target,
        "osc_mhz": board.osc_freq / 1e6,
        "requested_mhz": board.pll.requested_hz / 1e6 if board.pll is not None else None,
        "pll_config": board.pll.as_dict() if board.pll is not None else None,
        "link": board.link,
        "link_via": board.link_via,
        "max_baud": board.max_baud,
        "clock_net": clock,
        "clocks": nextpnr["fmax"] or log["fmax"],
        "critical_path": nextpnr["critical_path"],
        # Read registers moved into the block RAMs (bnnflow.boards.outreg), before nextpnr.
        "bram_outreg": outreg,
        "bitstream": str(bitstream),
        "bitstream_bytes": bitstream.stat().st_size,
        "seconds": {step: round(s, 2) for step, s in tools_seconds.items()},
        "yosys_version": yosys_version,
        "tool_versions": cache.tool_versions(),
        "yosys_cells": cells,
        "utilisation": util,
        "files": {kind: f"{name}{suffix}" for kind, suffix in (
            ("rtlil", ".il"), ("verilog", ".debug.v"), ("netlist", ".json"),
            ("yosys_log", ".rpt"), ("nextpnr_log", ".tim"), ("nextpnr_report", "_nextpnr.json"),
            ("config", ".config"), ("bitstream", ".bit"), ("svf", ".svf"))},
    }


def build(board_name: str | BoardInfo,
          top_component_factory: Callable[[BoardInfo], wiring.Component],
          build_dir: str | Path, *, name: str = "bnnflow_top",
          progress: Callable[[str, float | None], None] | None = None,
          seed: int | None = None, seeds: int = 1, allow_timing_fail: bool = False,
          target_mhz: float | None = None, design_key: str | None = None,
          cache_dir: str | Path | None = None) -> dict:
    """Build a bitstream for a board and write ``build_dir/report.json``.

    The design is ``BoardTop(top_component_factory, board, target_mhz=target_mhz)``. Amaranth
    prepares the build plan (RTLIL, debug Verilog, Yosys script, LPF); its command list
    (``build_<name>.json``) is then run one tool at a time with the tools from
    :func:`~bnnflow.boards.toolchain.find_tools`. Amaranth's ``platform.build()`` cannot be
    given an environment and its shell script runs all tools as one process, which would hide
    per-tool time and which tool failed.

    Parameters
    ----------
    board_name : str or BoardInfo
        A key of :data:`~bnnflow.boards.registry.BOARDS`, e.g. ``"ulx3s-85f"``.
    top_component_factory : callable
        ``factory(board_info) -> wiring.Component`` with ports ``rx: In(1)``, ``tx: Out(1)``;
        ``board_info.clk_freq`` is the actual ``sync`` frequency (see :class:`BoardTop`).
    build_dir : str or Path
        Created if needed; keeps every product (``.il``, ``.debug.v``, ``.json``, ``.config``,
        ``.bit``, ``.svf``), the tool logs (``.rpt``, ``.tim``, ``_<step>.out``) and
        ``report.json``.
    name : str
        Base name of the products; alphanumerics and ``_`` only.
    progress : callable, optional
        ``progress(step, seconds)`` with ``seconds=None`` when a step (``"amaranth"``,
        ``"yosys"``, ``"nextpnr"``, ``"ecppack"``) starts and its duration when it ends. Not
        called on a cache hit.
    seed : int, optional
        nextpnr placement seed.
    seeds : int
        Placements to try: with more than one, nextpnr runs with seeds ``seed`` (1 by
        default), ``seed + 1``, ... until one meets the clock, and the fastest is kept (its
        seed is ``report["seed"]``, every run in ``report["seed_tries"]``). The placement
        decides more than the router can mend: SFC at 64 cycles per frame, one netlist,
        routed at 123.95 MHz with nextpnr's default seed and 125.74 MHz with seed 3.
    allow_timing_fail : bool
        Return normally even if Fmax is below the ``sync`` clock.
    target_mhz : float, optional
        Run ``sync`` from the ECP5 PLL at the closest frequency it can make to this; by
        default ``sync`` runs from the board oscillator.
    design_key : str, optional
        Identity of the design the factory builds (e.g. the design ID over IR, folding and
        generator version). When given, the bitstream is cached under a hash of it, the
        board, the clock, ``name``, ``seed`` and the tool versions
        (:func:`~bnnflow.boards.cache.cache_key`), and an identical build later returns the
        cached report without elaborating or running any tool.
    cache_dir : str or Path, optional
        Where the cache lives; :func:`~bnnflow.boards.cache.default_cache_dir` by default.

    Returns
    -------
    dict
        The contents of ``report.json``: ``board``, ``part``, ``lut4`` (placed LUT4 slots,
        carry included), ``ff``, ``ebr``, ``dsp``, ``ccu2``, ``lutram``, ``io``, ``available``,
        ``fmax_mhz``, ``target_mhz`` (the actual ``sync`` frequency), ``requested_mhz``,
        ``pll_config``, ``timing_met``, ``bitstream``, ``seconds``, ``cached``,
        ``cache_key``, ``tool_versions`` and more.

    Raises
    ------
    PLLError
        The PLL cannot make ``target_mhz``.
    ToolchainError
        A tool is not installed.
    ResourceError
        The design does not fit; names the resource.
    BuildError
        A tool failed; carries the tail of its log.
    TimingError
        Fmax is below the ``sync`` clock and ``allow_timing_fail`` is false.
    """
    board = get_board(board_name).with_clock(target_mhz)
    out = Path(build_dir).absolute()
    tried = _seed_list(seed, seeds)
    key = None
    if design_key is not None:
        cache_dir = Path(cache_dir) if cache_dir is not None else cache.default_cache_dir()
        key = cache.cache_key(design_key, board, name=name, seed=seed if seeds == 1 else tried)
        if (entry := cache.lookup(cache_dir, key)) is not None:
            report = cache.restore(entry, out)
            _check_timing(report, board, out, allow_timing_fail)
            return report

    report = _run_tools(board, top_component_factory, out, name=name, progress=progress,
                        seeds=tried)
    report["cached"] = False
    report["cache_key"] = key
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if key is not None:
        cache.store(cache_dir, key, report, out, name)
    _check_timing(report, board, out, allow_timing_fail)
    return report


def _seed_list(seed: int | None, seeds: int) -> list[int | None]:
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, not {seeds}")
    if seeds == 1:
        return [seed]
    first = 1 if seed is None else seed
    return list(range(first, first + seeds))


def _check_timing(report, board, out, allow_timing_fail) -> None:
    if not report["timing_met"] and not allow_timing_fail:
        raise TimingError(f"{board.name}: Fmax {report['fmax_mhz']} MHz is below the "
                          f"{report['target_mhz']} MHz clock (see {out / 'report.json'})")


#: Yosys script run after reading the design: memories marked ``no_rw_check`` (a read never
#: wants the word written in the same cycle, e.g. the host link's image buffer) lose the
#: read/write collision bypass multiplexer. ``read_rtlil`` ignores the attribute that
#: ``read_verilog`` honours, and Amaranth's RTLIL always asks for the bypass; without it the
#: block RAM's output goes straight into a flip-flop (about 7 ns instead of 7.7 ns at -6).
#: ``proc`` first, as ``synth_ecp5`` would, so ``memory_collect`` sees every module.
NO_RW_CHECK = ("proc\nmemory_collect\n"
               "setparam -set RD_COLLISION_X_MASK 1'1 t:$mem_v2 a:no_rw_check %i")

#: Yosys script run after :data:`NO_RW_CHECK`: the flip-flops driving a wire named
#: ``*_dup*`` (:func:`bnnflow.hw.fanout.replicated`) are marked ``keep``, so ``opt_merge``
#: does not fold the copies of a high-fanout register back into one.
KEEP_DUPLICATES = f"setattr -set keep 1 w:*{DUP_SUFFIX}* %ci1:+[Q] w:* %d"


def _run_tools(board, factory, out, *, name, progress, seeds) -> dict:
    env = toolchain_env(BUILD_TOOLS)
    progress = progress or (lambda step, seconds: None)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("report.json", f"{name}_nextpnr.json", f"{name}.config", f"{name}.bit",
                  f"{name}_ripup.tim", *(p.name for p in out.glob(f"{name}_seed*"))):
        (out / stale).unlink(missing_ok=True)

    seconds = {}
    progress("amaranth", None)
    start = time.perf_counter()
    # router2: on designs of tens of thousands of LUTs router1 spends most of an hour ripping
    # up congested arcs that router2 routes in minutes. The placer is chosen after Yosys
    # (choose_placer).
    nextpnr_opts = ["--report", f"{name}_nextpnr.json", "--timing-allow-fail",
                    "--router", "router2"]
    plan = board.platform().prepare(BoardTop(factory, board), name,
                                    debug_verilog=True, nextpnr_opts=nextpnr_opts,
                                    synth_opts=SYNTH_OPTIONS,
                                    script_after_read=NO_RW_CHECK + "\n" + KEEP_DUPLICATES)
    for file in (f"{name}.il", f"{name}.debug.v"):
        if file in plan.files:
            plan.files[file] = portable_sources(plan.files[file])
    plan.extract(out)
    seconds["amaranth"] = time.perf_counter() - start
    progress("amaranth", seconds["amaranth"])

    commands = json.loads((out / f"{plan.script}.json").read_text())["commands"]
    outreg = None  # what absorb_output_registers did, after the yosys step
    netlist = placer = None  # Yosys' cell count and the placer it decides, after that step
    tries = kept = None  # nextpnr's runs, one per seed tried, and the one kept
    for tool, *args in commands:
        step, log_suffix = _STEPS[tool]
        argv = [env[tool.upper().replace("-", "_")], *args]
        progress(step, None)
        console = out / f"{name}_{step}.out"
        if step == "nextpnr":
            argv += ["--placer", placer]
            code, seconds[step], tries, kept = _place_and_route_seeds(
                argv, out, env, console, name, seeds, board.clk_freq / 1e6)
        else:
            code, seconds[step] = _run_step(argv, out, env, console)
        if code != 0:
            log = out / f"{name}{log_suffix}" if log_suffix else None
            raise _failure(step, code, log, console, board)
        progress(step, seconds[step])
        if step == "yosys":
            outreg = absorb_output_registers(out / f"{name}.json")
            netlist = count_netlist_cells(out / f"{name}.json")
            placer = choose_placer(netlist[0], DEVICES[board.device].lut4)
    seconds["total"] = sum(seconds.values())
    report = _report(board, name, out, seconds, outreg, netlist)
    report["placer"] = placer
    # The seed of the kept run (None: nextpnr's default), whether its routing kept the
    # timing-driven rip-up or gave it up (TMG_RIPUP_MAX_ITER), and every run tried.
    report["seed"], report["tmg_ripup"] = kept["seed"], kept["tmg_ripup"]
    report["seed_tries"] = tries
    return report


#: Packages whose source locations the RTLIL's ``src`` attributes carry, named by
#: :func:`portable_sources` from their import name instead of the folder they live in.
SOURCE_PACKAGES = ("bnnflow", "bnnflow.hw", "bnnflow.sim", "bnnflow.boards", "amaranth",
                   "amaranth_boards")

_SOURCE_PATH = re.compile(r"/[^\s\"|:]+\.py(?=:)")


def portable_sources(text: str) -> str:
    """``text`` (RTLIL or Verilog) with every absolute ``FILE.py`` of a ``src`` location named
    from its package if it is in one of :data:`SOURCE_PACKAGES` (``bnnflow/hw/mvtu.py:949``),
    else by its file name alone (``contextlib.py:137``).

    Yosys and nextpnr order their work by hashes of names and attributes, so one design built
    from two clones (or from an editable checkout and an installed wheel) placed and routed
    differently: CNV at 10,368 cycles per frame reached 125.88 MHz from one folder and 111.96
    MHz, seed for seed, from another. With the locations named this way, a build depends on
    the design, the tools and the seed only.
    """
    roots = []
    for name in SOURCE_PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        roots.append((str(Path(module.__file__).parent) + "/", name.replace(".", "/") + "/"))
    roots.sort(key=lambda root: -len(root[0]))  # bnnflow/hw inside bnnflow when installed

    def name(match: re.Match) -> str:
        path = match.group(0)
        for folder, package in roots:
            if path.startswith(folder):
                return package + path[len(folder):]
        return Path(path).name

    return _SOURCE_PATH.sub(name, text)


#: nextpnr's products of one run, which a seed sweep keeps apart (``NAME_seedS<suffix>``).
_PNR_PRODUCTS = (".tim", "_ripup.tim", "_nextpnr.json", ".config", "_nextpnr.out")


def _place_and_route(argv, out, env, console, name):
    """One nextpnr run: first with the router's timing-driven rip-up, which re-routes the arcs
    that miss the clock (SFC at 64 cycles per frame: 115.8 -> 125.0 MHz, one placement); given
    up after :data:`TMG_RIPUP_MAX_ITER` iterations, then routed again without it. Returns
    ``(exit code, seconds, whether the rip-up was kept)``."""
    log = out / f"{name}.tim"
    (out / f"{name}_ripup.tim").unlink(missing_ok=True)
    code, seconds = _run_step([*argv, "--tmg-ripup"], out, env, console,
                              watch=partial(_ripup_stalled, log))
    # A small design can reach router2's own limit between two looks and fail.
    ripup = code is not None and not (code != 0 and _ripup_stalled(log))
    if not ripup:
        log.replace(out / f"{name}_ripup.tim")  # kept for a look at the attempt
        code, again = _run_step(argv, out, env, console)
        seconds += again
    return code, seconds, ripup


def _place_and_route_seeds(argv, out, env, console, name, seeds, target_mhz):
    """:func:`_place_and_route` once per placement seed in ``seeds`` (``None``: nextpnr's
    default), stopping at the first that meets ``target_mhz``; the products of the fastest are
    left under their usual names. Returns ``(exit code, seconds, runs, the run kept)``, the
    runs as ``{"seed", "fmax_mhz", "tmg_ripup", "seconds"}``, or stops at the first failing
    run (none kept)."""
    tries, total = [], 0.0
    for seed in seeds:
        code, seconds, ripup = _place_and_route(
            [*argv, *([] if seed is None else ["--seed", str(seed)])], out, env, console, name)
        total += seconds
        if code != 0:
            return code, total, tries, None
        log = parse_nextpnr_log((out / f"{name}.tim").read_text(errors="replace"))
        report = parse_nextpnr_report(out / f"{name}_nextpnr.json")
        _, fmax = _sync_clock(report["fmax"] or log["fmax"], target_mhz)
        tries.append({"seed": seed, "fmax_mhz": round(fmax["achieved"], 2),
                      "tmg_ripup": ripup, "seconds": round(seconds, 1)})
        if len(seeds) > 1:
            for suffix in _PNR_PRODUCTS:
                if (out / f"{name}{suffix}").exists():
                    (out / f"{name}{suffix}").replace(out / f"{name}_seed{seed}{suffix}")
        if fmax["achieved"] >= target_mhz:
            break
    kept = max(tries, key=lambda t: t["fmax_mhz"])
    if len(seeds) > 1:
        for suffix in _PNR_PRODUCTS:
            if (out / f"{name}_seed{kept['seed']}{suffix}").exists():
                (out / f"{name}_seed{kept['seed']}{suffix}").replace(out / f"{name}{suffix}")
    return 0, total, tries, kept


#: Share of the device's LUT4 up to which a design is placed by nextpnr's static
#: (electrostatic) placer, and above which by HeAP (:func:`choose_placer`).
STATIC_PLACER_MAX_SHARE = 0.4


def choose_placer(cells: dict[str, int], device_lut4: int) -> str:
    """nextpnr's placer for a netlist of ``cells`` (Yosys' cell counts) on a device of
    ``device_lut4`` LUT4: ``"static"`` for a design of at most :data:`STATIC_PLACER_MAX_SHARE`
    of the device (in :func:`~bnnflow.boards.toolchain.lut4_slots`), else ``"heap"``.

    Measured on the ULX3S-85F at 125 MHz: SFC at 64 cycles per frame (26 % of the LUT4),
    one netlist placed both ways, reached 111.2 MHz with the static placer in 6 minutes and
    100.8 MHz with HeAP in 13, which left a block RAM's read register 51 columns from the
    block; CNV at 8,100 cycles (64 %) reached 108.6 MHz with HeAP and, with register slices
    after its FIFOs added, 83.8 MHz with the static placer, which left a LUT RAM's
    write-address register 33 columns from it.
    """
    return "static" if lut4_slots(cells) <= STATIC_PLACER_MAX_SHARE * device_lut4 else "heap"
