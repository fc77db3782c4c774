"""The generator's benchmark: `nox -s bench` (``python -m bnnflow.benchmark``).

For each network of the zoo's shapes (random weights: size and speed do not depend on the
values) it

1. compiles at the largest balanced folding that fits the board (``compile --board``), timed;
2. simulates the core in cocotb + Verilator on random inputs, bit-exact against the reference,
   and measures the steady-state cycles per frame and the cycles each layer waited;
3. builds the bitstream at ``--target-mhz`` behind the host link (Yosys, nextpnr-ecp5,
   ecppack), timed, and reads LUT4, FF, EBR and Fmax from the tools' reports;

then prints the figures and writes them, with the command that regenerates them, into
``docs/benchmark.md``: the headline table, the cycle model (predicted against simulated, also
for LeNet), the resource model (estimated against placed), and, unless skipped, the resource
model's calibration against yosys (:mod:`bnnflow.calibrate`) and the per-lane cost of each
weight storage (:mod:`bnnflow.lanecost`).

Fabric frames/s is Fmax / simulated cycles per frame: the accelerator's own speed. The serial
link's speed is a different figure (``bnnflow bench`` on a device).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["IN_WIDTH", "compile_net", "simulate_net", "build_net", "seed_range", "main"]

#: Input beat width per network: 32 bits carry a 784-bit MLP image in 25 beats; CNV's 24 bits
#: are three 8-bit pixels (one RGB pixel) per beat.
IN_WIDTH = {"tfc": 32, "sfc": 32, "lfc": 32, "cnv": 24, "lenet": 8}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def compile_net(name: str, out: Path, board: str | None, *, target_cycles: int | None = None,
                seed: int = 0) -> dict:
    """Compile the zoo network ``name`` into ``out``; returns the report plus timing."""
    from .flow import CompileConfig, compile_model
    from .synthetic import zoo_net

    net = zoo_net(name, seed)
    start = time.perf_counter()
    cfg = CompileConfig(out / name, out, in_width=IN_WIDTH[name], board=board,
                        target_cycles=target_cycles)
    compile_model(cfg, net=net)
    report = json.loads((out / "report.json").read_text())
    report["compile_wall_seconds"] = round(time.perf_counter() - start, 1)
    return report


def simulate_net(out: Path, frames: int, seed: int = 0) -> dict:
    """Verilator run of the compiled core on ``frames`` random inputs (bit-exact check)."""
    from bnnflow.sim.runner import simulate_core

    from .flow import load_build

    net, _, manifest = load_build(out)
    rng = np.random.default_rng(seed)
    high = 2 if net.input.binary else net.input.pixel_max + 1
    inputs = rng.integers(0, high, (frames, net.input.size))
    start = time.perf_counter()
    result = simulate_core(net, out / "core.v", inputs, in_width=manifest.in_width,
                           predicted_cycles=manifest.cycles_per_frame, work_dir=out / "sim",
                           p_idle=0.3, p_stall=0.3, seed=seed)
    result["seconds"] = round(time.perf_counter() - start, 1)
    (out / "bench_sim.json").write_text(json.dumps(
        {k: v for k, v in result.items() if not k.startswith("predictions")}, indent=1))
    return result


def build_net(out: Path, board: str, target_mhz: float, seeds: int = 1,
              seed: int | None = None) -> dict:
    """Bitstream for ``board`` at ``target_mhz``, trying up to ``seeds`` placement seeds from
    ``seed`` on (:func:`bnnflow.boards.build.build`); timing failures are reported, not
    raised."""
    from .bitstream import build_bitstream

    start = time.perf_counter()
    report = build_bitstream(out, board, target_mhz=target_mhz, allow_timing_fail=True,
                             seed=seed, seeds=seeds, progress=_say)
    report["build_wall_seconds"] = round(time.perf_counter() - start, 1)
    return report


def _pct(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.1f} %"


def _folding_text(report: dict) -> str:
    return ", ".join(f"{layer['pe']}x{layer['simd']}" for layer in report["layers"]
                     if "pe" in layer)


def headline(rows: list[dict], board: str, target_mhz: float) -> str:
    """The benchmark table (markdown)."""
    head = ("| network | PE x SIMD per layer | LUT4 | FF | EBR | target (MHz) | Fmax (MHz) "
            "| cycles/frame | fabric frames/s | frames/s per LUT·MHz | compile | simulate "
            "| build |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        rep, sim, bit = r["report"], r.get("sim"), r.get("build")
        cycles = sim["cycles_per_frame"] if sim else rep["cycles_per_frame"]
        if bit:
            fmax = bit["fmax_mhz"]
            fps = fmax * 1e6 / cycles
            per = fps / (bit["lut4"] * fmax)
            res = (f"{bit['lut4']:,} | {bit['ff']:,} | {bit['ebr']} | {bit['target_mhz']:g} "
                   f"| {fmax:.2f}")
            figures = f"{fps:,.0f} | {per:.3f}"
            build = f"{bit['build_wall_seconds']:.0f} s"
        else:
            res, figures, build = "- | - | - | - | -", "- | -", "-"
        simulated = f"{sim['seconds']:.0f} s" if sim else "-"
        mark = "" if r.get("fitted", True) else " *"
        lines.append(f"| {r['name']}{mark} | {_folding_text(rep)} | {res} | {cycles:,.1f} "
                     f"| {figures} | {rep['compile_wall_seconds']:.1f} s | {simulated} "
                     f"| {build} |")
    return head + "\n".join(lines) + "\n"


def cycle_table(rows: list[dict]) -> str:
    """Predicted against simulated cycles per frame, and the bottleneck's waits."""
    out = ["| network | predicted | simulated | error | frames | bottleneck layer(s) | "
           "their waits (cycles) |", "|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        sim = r.get("sim")
        if not sim:
            continue
        rep = r["report"]
        slowest = max(layer["cycles"] for layer in rep["layers"])
        names = [(i, layer["name"]) for i, layer in enumerate(rep["layers"])
                 if layer["cycles"] == slowest]
        waits = sum(sim["blocked_cycles"].get(f"layer{i}", 0) for i, _ in names)
        out.append(f"| {r['name']} | {rep['cycles_per_frame']:,} | {sim['cycles_per_frame']:,.2f} "
                   f"| {_pct(sim['cycles_per_frame'], rep['cycles_per_frame'])} "
                   f"| {sim['frames']} | {', '.join(n for _, n in names)} | {waits} |")
    return "\n".join(out) + "\n"


def resource_table(rows: list[dict]) -> str:
    """The resource model's core estimate against the placed design (core + host link)."""
    from .autofold import HOST_LINK

    out = ["| network | LUT4 est. (core + link) | LUT4 placed | error | EBR est. | EBR placed |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        bit = r.get("build")
        if not bit:
            continue
        est = r["report"]["estimate"]
        lut = est["lut4"] + HOST_LINK["lut4"]
        out.append(f"| {r['name']} | {lut:,} | {bit['lut4']:,} | {_pct(lut, bit['lut4'])} "
                   f"| {est['ebr']} | {bit['ebr']} |")
    return "\n".join(out) + "\n"


def seed_range(text: str) -> tuple[int | None, int]:
    """``(first seed, seeds)`` for :func:`build_net` from ``--seeds``' ``N`` (no first seed:
    the build tries seeds 1 to N, or nextpnr's own for one) or ``A-B`` (seeds A to B)."""
    first, dash, last = text.partition("-")
    if not dash:
        return None, int(first)
    first, last = int(first), int(last)
    if not 1 <= first <= last:
        raise ValueError(f"seed range {text!r}")
    return first, last - first + 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bnnflow.benchmark", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--board", default="ulx3s-85f")
    p.add_argument("--target-mhz", type=float, default=125.0)
    p.add_argument("--nets", default="tfc,sfc,cnv", help="built at the largest fitting folding")
    p.add_argument("--cycle-nets", default="lenet", help="compiled and simulated only")
    p.add_argument("--frames", type=int, default=100, help="simulated frames per network")
    p.add_argument("--cycles", default="", metavar="NET=N,...",
                   help="fold these networks for N cycles per frame instead of the largest "
                        "folding that fits the board (e.g. sfc=64 for a design that routes "
                        "in minutes)")
    p.add_argument("--no-build", action="store_true", help="skip the bitstreams")
    p.add_argument("--seeds", default="", metavar="NET=N|A-B,...",
                   help="try nextpnr placement seeds 1 to N (or A to B) for these networks "
                        "until one meets the clock (e.g. sfc=3, cnv=4-4); nextpnr's own seed "
                        "otherwise")
    p.add_argument("--mhz", default="", metavar="NET=F,...",
                   help="build these networks for F MHz instead of --target-mhz (e.g. "
                        "sfc=128, the clock SFC's 2 M frames/s needs at 64 cycles per frame)")
    p.add_argument("--no-calibration", action="store_true")
    p.add_argument("--no-lanecost", action="store_true")
    p.add_argument("-o", "--output", default="runs/bench")
    p.add_argument("--docs", default="docs/benchmark.md")
    args = p.parse_args(argv)
    cycles, seeds, mhz = {}, {}, {}
    for flag, text, into, kind in (("--cycles", args.cycles, cycles, int),
                                   ("--seeds", args.seeds, seeds, seed_range),
                                   ("--mhz", args.mhz, mhz, float)):
        try:
            into.update({k.strip(): kind(v) for k, v in (item.split("=") for item in
                                                         text.split(",") if item)})
        except ValueError:
            shape = {int: "N", float: "F"}.get(kind, "N|A-B")
            p.error(f"{flag} {text!r}: expected NET={shape}[,...]")
    root = Path(args.output)
    rows = []
    for name in [n for n in args.nets.split(",") if n]:
        out = root / name
        if name in cycles:
            _say(f"[bench] {name}: compile for {cycles[name]} cycles per frame")
            row = {"name": name, "report": compile_net(name, out, None,
                                                       target_cycles=cycles[name])}
        else:
            _say(f"[bench] {name}: compile for {args.board}")
            row = {"name": name, "report": compile_net(name, out, args.board)}
        row["fitted"] = name not in cycles
        _say(f"[bench] {name}: simulate {args.frames} frames")
        row["sim"] = simulate_net(out, args.frames)
        if not args.no_build:
            clock = mhz.get(name, args.target_mhz)
            _say(f"[bench] {name}: bitstream at {clock:g} MHz")
            first, count = seeds.get(name, (None, 1))
            row["build"] = build_net(out, args.board, clock, count, first)
        rows.append(row)
    for name in [n for n in args.cycle_nets.split(",") if n]:
        out = root / name
        _say(f"[bench] {name}: compile and simulate (cycle model)")
        rows.append({"name": name, "report": compile_net(name, out, None),
                     "sim": simulate_net(out, args.frames)})
    built = [r for r in rows if r["name"] in args.nets.split(",")]
    if argv is None:  # run by `nox -s bench`, its arguments after `--`
        given = " ".join(sys.argv[1:])
        cmd = "python3 -m nox -s bench" + (f" -- {given}" if given else "")
    else:
        cmd = "python -m bnnflow.benchmark " + " ".join(argv)
    text = [f"# Benchmark\n\nRegenerate with `{cmd}` (about an hour on 2 cores; "
            f"`-- --no-build` skips the bitstreams).\n",
            f"## Built for {args.board} at {args.target_mhz:g} MHz"
            + "".join(f", {n} at {f:g} MHz" for n, f in mhz.items()) + "\n",
            "Folding: the largest that fits the board (`compile --board`), except where "
            "`--cycles` named a target (marked *).\n",
            "Random weights (speed and size do not depend on them); fabric frames/s = Fmax / "
            "simulated cycles per frame; frames/s per LUT·MHz = 10^6 / (cycles x LUT4). LUT4 "
            "counts nextpnr's TRELLIS_COMB slots (carry halves included) of the whole board "
            "design: core and UART host link.\n", headline(built, args.board, args.target_mhz),
            "## Cycle model: predicted against simulated (cocotb + Verilator)\n",
            "Steady-state interval between results with input always valid and output always "
            "ready; then every frame again under 30 % idle / 30 % back-pressure, bit-exact. "
            "Waits: cycles the bottleneck layer's output waited on the next block over the "
            "watched frames (0 = the stream buffers keep it busy).\n", cycle_table(rows)]
    if any(r.get("build") for r in rows):
        text += ["## Resource model against the placed designs\n", resource_table(rows)]
    if not args.no_calibration:
        from . import calibrate

        _say("[bench] resource model against yosys synth_ecp5")
        runs = calibrate.collect(calibrate.CASES, log=_say)
        text += ["## Resource model against yosys synth_ecp5 (core only)\n",
                 "`python -m bnnflow.calibrate` prints the same per layer.\n",
                 calibrate.table(runs, per_layer=False)[0] + "\n"]
    if not args.no_lanecost:
        from . import lanecost

        _say("[bench] per-lane cost of each weight storage")
        text += ["## Per-lane cost of each weight storage (yosys synth_ecp5)\n",
                 "`python -m bnnflow.lanecost`\n", lanecost.markdown(lanecost.lane_costs())]
    doc = "\n".join(text)
    print(doc)
    if args.docs:
        Path(args.docs).parent.mkdir(parents=True, exist_ok=True)
        Path(args.docs).write_text(doc)
        _say(f"[bench] wrote {args.docs}")
    (root / "bench.json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
