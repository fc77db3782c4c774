"""The ``bnnflow`` command line.

Every command is a thin wrapper over the library; known bad inputs end with one line naming
the file, node or layer at fault and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]

EXIT_ERROR = 2


def _known_errors() -> tuple[type[BaseException], ...]:
    from .datasets import DatasetError
    from .flow import CompileError
    from .folding import FoldingError
    from .frontend import FrontendError
    from .inputs import InputError
    from .ir import IRError
    from .manifest import ManifestError
    from .thresholds import ThresholdError

    errors: list[type[BaseException]] = [CompileError, DatasetError, FoldingError, FrontendError,
                                         InputError, IRError, ManifestError, ThresholdError]
    for module, name in (("bnnflow.sim.runner", "SimulationError"),
                         ("bnnflow.driver", "DriverError"),
                         ("bnnflow.boards.build", "BuildError"),
                         ("bnnflow.boards.program", "ProgramError"),
                         ("bnnflow.boards.pll", "PLLError"),
                         ("bnnflow.boards.toolchain", "ToolchainError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- train ------------------------------------------------------------------------------------

def _train_config(args):
    from .train import TrainConfig

    return TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
                       progress=not args.quiet, optimizer=args.optimizer,
                       schedule=args.schedule, t_clip=args.t_clip,
                       weight_scaling=args.weight_scaling, binealnet=args.binealnet,
                       abc_bases=args.abc_bases, dropout=args.dropout,
                       input_threshold=args.input_threshold)


def _bad_options(command: str, e: ValueError) -> SystemExit:
    _say(f"bnnflow {command}: error: {e}")
    return SystemExit(EXIT_ERROR)


def cmd_train(args) -> None:
    from . import datasets
    from .train import export, torch_scores, train, write_metrics

    ds = datasets.load(args.dataset, args.data_dir)
    try:
        cfg = _train_config(args)
        result = train(ds, cfg)
    except ValueError as e:  # an unknown model, bad method options, too-small images
        raise _bad_options("train", e) from None
    out = Path(args.output)
    export(result.model, ds, out / "model.onnx", args.model)
    write_metrics(out / "metrics.json", result, cfg, ds)
    # The trained model's own test-set scores, kept so later levels can be checked against it.
    np.savez(out / "torch_test_scores.npz", scores=torch_scores(result.model, ds, ds.x_test),
             labels=ds.y_test)
    print(f"test accuracy {result.test_accuracy:.4f} after {result.epochs} epochs "
          f"({result.seconds:.1f} s, {result.seconds_per_epoch:.2f} s/epoch); "
          f"wrote {out / 'model.onnx'}")
    if cfg.abc_bases > 1:
        _say("note: ABC-Net multi-base layers are trained and evaluated in software only; "
             "`bnnflow compile` refuses them (the hardware has no multi-base layers yet)")


# -- ablate -----------------------------------------------------------------------------------

def cmd_ablate(args) -> None:
    from . import datasets
    from .ablate import markdown_table, run_ablation, write_table

    ds = datasets.load(args.dataset, args.data_dir)
    variants = args.variants.split(",") if args.variants else None
    try:
        base = _train_config(args)
        rows = run_ablation(ds, base, variants, log=None if args.quiet else _say)
    except ValueError as e:
        raise _bad_options("ablate", e) from None
    text = markdown_table(rows, ds, base)
    write_table(args.output, text)
    print(text, end="")


# -- compile ----------------------------------------------------------------------------------

def cmd_compile(args) -> None:
    from .flow import CompileConfig, compile_model

    chosen = [opt for opt, value in (("--folding", args.folding),
                                     ("--target-cycles", args.target_cycles),
                                     ("--target-fps", args.target_fps)) if value is not None]
    if len(chosen) > 1:
        raise _bad_options("compile", ValueError(f"{' and '.join(chosen)} both choose the "
                                                 "folding; give one"))
    if not 8 <= args.in_width <= 56 or args.in_width % 8:
        raise _bad_options("compile", ValueError(f"--in-width {args.in_width}: give a "
                                                 "multiple of 8 from 8 to 56"))
    cfg = CompileConfig(Path(args.model), Path(args.output),
                        Path(args.folding) if args.folding else None,
                        in_width=args.in_width, target_cycles=args.target_cycles,
                        target_fps=args.target_fps, clock_mhz=args.clock_mhz,
                        board=args.board, lut_budget=args.lut_budget,
                        ebr_budget=args.ebr_budget)
    state = compile_model(cfg, progress=None if args.quiet else lambda s: _say(f"[compile] {s}"))
    from bnnflow.hw.core import stream_elems

    cpf = state.folding.cycles_per_frame(state.net, stream_elems(state.net, cfg.in_width))
    folds = ", ".join(f"{n}: PE {f.pe} SIMD {f.simd}" for n, f in state.folding.layers.items())
    est = state.estimate
    fit = f" of {state.budget.lut4:,} / {state.budget.ebr}" if state.budget is not None else ""
    print(f"compiled {len(state.net.layers)} layers ({folds}); predicted {cpf} cycles/frame "
          f"({cfg.clock_mhz * 1e6 / cpf:,.0f} frames/s at {cfg.clock_mhz:g} MHz); estimated "
          f"{est.lut4:,} LUT4 / {est.ebr} EBR{fit}; wrote {cfg.out}")


# -- verify -----------------------------------------------------------------------------------

def cmd_verify(args) -> None:
    from .verify import verify_run

    report = verify_run(Path(args.run), Path(args.build), args.dataset, args.data_dir,
                        args.qonnx_limit)
    print(json.dumps(report, indent=2))
    if report["mismatches_torch"] or report["mismatches_qonnx"]:
        raise SystemExit(1)


# -- simulate ---------------------------------------------------------------------------------

def _inputs_and_labels(args, net):
    from . import datasets
    from .inputs import load_array, to_inputs

    if args.inputs:
        bits = to_inputs(net, load_array(args.inputs), args.inputs)
        labels = None
        if args.labels:
            labels = np.asarray(load_array(args.labels)).reshape(-1).astype(np.int64)
            if len(labels) != len(bits):
                from .inputs import InputError
                raise InputError(f"{args.labels}: {len(labels)} labels for {len(bits)} inputs")
        return bits, labels
    ds = datasets.load(args.dataset or "digits", getattr(args, "data_dir", None))
    return to_inputs(net, ds.x_test, f"dataset {ds.name}"), ds.y_test


def cmd_simulate(args) -> None:
    from bnnflow.sim.runner import simulate_core

    from .flow import load_build, update_report
    from .reference import run

    build = Path(args.build)
    net, folding, manifest = load_build(build)
    bits, labels = _inputs_and_labels(args, net)
    if args.limit:
        bits = bits[: args.limit]
        labels = None if labels is None else labels[: args.limit]
    start = time.perf_counter()
    out = simulate_core(net, build / "core.v", bits, in_width=manifest.in_width,
                        predicted_cycles=manifest.cycles_per_frame, work_dir=build / "sim",
                        p_idle=args.p_idle, p_stall=args.p_stall, seed=args.seed)
    seconds = time.perf_counter() - start
    ref = run(net, bits, bits=net.input.binary)
    preds = np.asarray(out["predictions"])
    results = {
        "frames": out["frames"], "mismatches": out["mismatches"],
        "cycles_per_frame": out["cycles_per_frame"],
        "predicted_cycles_per_frame": manifest.cycles_per_frame,
        "cycle_model_error": out["cycles_per_frame"] / manifest.cycles_per_frame - 1,
        "layers": _layer_stalls(net, folding, manifest, out),
        "first_result_cycles": out["first_result_cycles"],
        "p_idle": args.p_idle, "p_stall": args.p_stall, "seconds": round(seconds, 2),
        "predictions": preds.tolist(),
    }
    if labels is not None:
        results["accuracy"] = float((preds == labels).mean())
        results["reference_accuracy"] = float((ref.classes == labels).mean())
    (build / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    update_report(build, {"measured_cycles_per_frame": out["cycles_per_frame"]})
    stalled = [r["name"] for r in results["layers"]
               if r["bottleneck"] and r["blocked_cycles_per_frame"]]
    if stalled:
        _say(f"note: bottleneck layer(s) {', '.join(stalled)} waited on the next block in "
             "steady state (see results.json)")
    acc = f", accuracy {results['accuracy']:.4f}" if labels is not None else ""
    print(f"simulated {results['frames']} frames twice (free-running, then with "
          f"{args.p_idle:.0%} idle / {args.p_stall:.0%} back-pressure): "
          f"{results['mismatches']} mismatches{acc}; {out['cycles_per_frame']:.2f} cycles/frame "
          f"(predicted {manifest.cycles_per_frame}); wrote {build / 'results.json'}")


def _layer_stalls(net, folding, manifest, out) -> list[dict]:
    """Per layer: predicted cycles per frame and the cycles per frame its output waited on the
    next block in steady state (``blocked``); the slowest layers (``bottleneck``) should show
    none."""
    from bnnflow.hw.core import stream_elems

    cycles = folding.layer_cycles(net, stream_elems(net, manifest.in_width))
    slowest = max(cycles.values())
    watched_frames = max(1, out["steady_cycles_watched"]) / max(out["cycles_per_frame"], 1)
    rows = []
    for index, layer in enumerate(net.layers):
        blocked = out["blocked_cycles"].get(f"layer{index}")
        rows.append({"name": layer.name, "predicted_cycles": cycles[layer.name],
                     "bottleneck": cycles[layer.name] == slowest,
                     "blocked_cycles_per_frame": None if blocked is None
                     else round(blocked / watched_frames, 2)})
    return rows


# -- build ------------------------------------------------------------------------------------

def cmd_build(args) -> None:
    from .bitstream import build_bitstream

    report = build_bitstream(Path(args.build), args.board, baud=args.baud,
                             target_mhz=args.target_mhz, seed=args.seed, seeds=args.seeds,
                             progress=None if args.quiet else _say)
    keys = ("lut4", "ff", "ebr", "dsp", "fmax_mhz", "target_mhz")
    print(" ".join(f"{k}={report.get(k)}" for k in keys) + f"; bitstream {report['bitstream']}")


def cmd_program(args) -> None:
    from .bitstream import program_board

    print(program_board(Path(args.target), args.board, cable=args.cable, flash=args.flash))


def cmd_boards(args) -> None:
    from bnnflow.boards.registry import list_boards

    rows = list_boards()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    cols = ("name", "part", "link", "clock_mhz", "max_baud")
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(width[c]) for c in cols))


# -- infer ------------------------------------------------------------------------------------

def cmd_infer(args) -> None:
    from .inputs import load_array, to_inputs
    from .ir import Network

    device = args.device
    expected = None
    if args.build:
        from .manifest import Manifest
        expected = Manifest.load(args.build).design_id_bytes
    build = Path(args.build or (device[4:] if device.startswith("sim:") else "."))
    net = Network.load(build)
    x = to_inputs(net, load_array(args.inputs), args.inputs)  # bits, or pixels of a conv net
    from .driver import Accelerator

    with Accelerator.open(device, expected_id=expected, build=build) as acc:
        classes, _scores = acc.predict(x, bits=net.input.binary)
    text = "\n".join(str(int(c)) for c in classes)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


def cmd_bench(args) -> None:
    from .driver import Accelerator
    from .ir import Network

    build = Path(args.build or args.device.removeprefix("sim:"))
    net = Network.load(build)
    x, _ = _inputs_and_labels(args, net)
    with Accelerator.open(args.device, build=build) as acc:
        result = acc.benchmark(x, args.repeats, bits=net.input.binary,
                               link_images=args.link_images,
                               clk_hz=args.clk_mhz and args.clk_mhz * 1e6)
    print(result.report())
    if not result.ok:
        raise SystemExit(1)


# -- flow -------------------------------------------------------------------------------------

def cmd_flow(args) -> None:
    from .summary import run_flow

    run_flow(Path(args.output), dataset=args.dataset, epochs=args.epochs,
             board=args.board if args.with_build else None, seed=args.seed)


def cmd_summary(args) -> None:
    from .summary import summary_table

    print(summary_table(Path(args.run)))


def _train_options(p, *, epochs: int, batch_size: int, dataset: str = "digits") -> None:
    p.add_argument("--model", default="tfc", help="tfc, sfc, lfc, cnv or lenet")
    p.add_argument("--dataset", default=dataset)
    p.add_argument("--data-dir")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--schedule", choices=("cosine", "step", "none"), default="cosine")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--input-threshold", type=float, default=0.5,
                   help="MLP input binarization threshold, fraction of full scale (0.5 is "
                        "bnn_pynq's; ~0.1 suits Fashion-MNIST)")
    p.add_argument("--t-clip", type=float, default=0.5,
                   help="STE gradient clip threshold (1.0 classic)")
    p.add_argument("--weight-scaling", choices=("none", "backward", "forward"), default="none",
                   help="per-output-channel scale mean|W| of hidden binary layers")
    p.add_argument("--binealnet", action="store_true",
                   help="learnable shifts around a PReLU before each hidden sign")
    p.add_argument("--abc-bases", type=int, default=1, metavar="M",
                   help="ABC-Net weight bases per hidden layer (M > 1: software only)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bnnflow", description=__doc__.splitlines()[0])
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a 1W1A network with Brevitas and export QONNX")
    _train_options(t, epochs=100, batch_size=32)
    t.add_argument("-o", "--output", required=True, help="run folder")
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("ablate", help="train each training-method variant with one budget; "
                                      "markdown table of test accuracies")
    _train_options(a, epochs=5, batch_size=100, dataset="fashion-mnist")
    a.add_argument("--variants", help="comma-separated subset of: base, t_clip=1.0, "
                                      "scale-backward, scale-forward, binealnet, abc3, sgd-step")
    a.add_argument("-o", "--output", default="runs/ablation.md", help="markdown file")
    a.set_defaults(func=cmd_ablate)

    c = sub.add_parser("compile", help="QONNX model -> IR, folding, Verilog, report")
    c.add_argument("model")
    c.add_argument("-o", "--output", required=True, help="build folder")
    c.add_argument("--folding", help="JSON {layer: {pe, simd}}")
    c.add_argument("--target-cycles", type=int,
                   help="fold every layer to at most this many cycles per frame")
    c.add_argument("--target-fps", type=float,
                   help="the cheapest folding that reaches N frames/s at --clock-mhz")
    c.add_argument("--clock-mhz", type=float, default=125.0,
                   help="fabric clock assumed by --target-fps (default 125)")
    c.add_argument("--board", help="fit this board: with no folding option, the largest "
                   "balanced folding that fits; with one, a check before anything is built")
    c.add_argument("--lut-budget", type=int, help="LUT4 the core may use (caps the board's)")
    c.add_argument("--ebr-budget", type=int, help="EBR the core may use (caps the board's)")
    c.add_argument("--in-width", type=int, default=8,
                   help="bits per input beat of the core (8; 16, 24, 32... for faster input)")
    c.set_defaults(func=cmd_compile)

    v = sub.add_parser("verify", help="check the IR reference against PyTorch and qonnx")
    v.add_argument("run", help="run folder of `bnnflow train`")
    v.add_argument("build", help="build folder of `bnnflow compile`")
    v.add_argument("--dataset", default="digits")
    v.add_argument("--data-dir")
    v.add_argument("--qonnx-limit", type=int, help="check qonnx on the first N test images only "
                                                   "(it executes node by node; default: all)")
    v.set_defaults(func=cmd_verify)

    s = sub.add_parser("simulate", help="cocotb + Verilator simulation against the reference")
    s.add_argument("build")
    s.add_argument("--dataset")
    s.add_argument("--data-dir")
    s.add_argument("--inputs", help=".npy: uint8 pixels, bool/int8 bits, or floats in the "
                                     "model's input domain")
    s.add_argument("--labels", help=".npy of integer labels")
    s.add_argument("--limit", type=int, help="simulate only the first N inputs")
    s.add_argument("--p-idle", type=float, default=0.3)
    s.add_argument("--p-stall", type=float, default=0.3)
    s.add_argument("--seed", type=int, default=1)
    s.set_defaults(func=cmd_simulate)

    b = sub.add_parser("build", help="bitstream with yosys + nextpnr-ecp5 + ecppack")
    b.add_argument("build")
    b.add_argument("--board", default="ulx3s-85f")
    b.add_argument("--target-mhz", type=float, help="fabric clock from the PLL (default: the "
                                                     "board oscillator)")
    b.add_argument("--baud", type=int, help="host link baud rate (default 1 Mbaud, capped at "
                                            "the board's bridge)")
    b.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="try up to N nextpnr placement seeds until one meets the clock; keep "
                        "the fastest (default 1)")
    b.add_argument("--seed", type=int, metavar="S",
                   help="nextpnr placement seed (the first of --seeds; default: nextpnr's own "
                        "with one seed, 1 with more). A build depends only on the design, the "
                        "tools and the seed, so a seed that met the clock once meets it again")
    b.set_defaults(func=cmd_build)

    pr = sub.add_parser("program", help="load a bitstream onto a board with openFPGALoader")
    pr.add_argument("target", help="build folder (uses BUILD/<board>.bit) or a .bit file")
    pr.add_argument("--board", default="ulx3s-85f")
    pr.add_argument("--cable")
    pr.add_argument("--flash", action="store_true", help="write the SPI flash, not SRAM")
    pr.set_defaults(func=cmd_program)

    bl = sub.add_parser("boards", help="list the supported boards")
    bl.add_argument("--json", action="store_true")
    bl.set_defaults(func=cmd_boards)

    i = sub.add_parser("infer", help="run inputs through a board or the simulated board")
    i.add_argument("--device", required=True, help="sim:BUILD or serial:PORT")
    i.add_argument("--build", help="build folder (required for serial:)")
    i.add_argument("--inputs", required=True)
    i.add_argument("-o", "--output")
    i.set_defaults(func=cmd_infer)

    n = sub.add_parser("bench", help="on-chip (REPLAY) and link throughput of a board or the "
                                     "simulated board, checked against the reference")
    n.add_argument("--device", required=True, help="sim:BUILD or serial:PORT[@BAUD]")
    n.add_argument("--build", help="build folder (required for serial:)")
    n.add_argument("--inputs", help=".npy inputs (default: the dataset's test images)")
    n.add_argument("--dataset")
    n.add_argument("--data-dir")
    n.add_argument("--repeats", type=int, default=100, help="REPLAY repetitions")
    n.add_argument("--link-images", type=int, default=2048, help="images sent with INFER")
    n.add_argument("--clk-mhz", type=float, help="fabric clock (default: the device's own)")
    n.set_defaults(func=cmd_bench, labels=None)

    f = sub.add_parser("flow", help="train, compile, verify, simulate (and build) in one go")
    f.add_argument("-o", "--output", default="runs/digits")
    f.add_argument("--dataset", default="digits")
    f.add_argument("--epochs", type=int, default=100)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--with-build", action="store_true")
    f.add_argument("--board", default="ulx3s-85f")
    f.set_defaults(func=cmd_flow)

    m = sub.add_parser("summary", help="print the summary table of a run folder")
    m.add_argument("run", nargs="?", default="runs/digits")
    m.set_defaults(func=cmd_summary)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "command", None) in ("infer", "bench") and \
            args.device.startswith("serial:") and not args.build:
        _parser().error(f"{args.command} --device serial:PORT needs --build BUILD (to check the "
                        f"design)")
    try:
        args.func(args)
    except _known_errors() as e:
        _say(f"bnnflow {args.command}: error: {e}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _say("bnnflow: interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
