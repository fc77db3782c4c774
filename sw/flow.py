"""The compile flow: QONNX to a build folder, as named steps with an artifact after each.

Each step is a plain function ``step_*(state, cfg)`` listed once in :data:`COMPILE_STEPS`; it
reads what earlier steps left in ``state`` and writes its artifact into the build folder, so a
failed flow leaves everything up to the failing step on disk for inspection.

Build folder::

    network.json, weights.npz   the IR                        (step_import)
    folding.json                PE/SIMD per layer             (step_fold)
    core.v                      the accelerator core (AXI4-Stream ports)    (step_core)
    top.v                       core + host link + UART, for the simulated board (step_top)
    manifest.json, report.json  design ID, geometry; predicted cycles and resources per
                                layer and in total                      (step_report)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import GENERATOR_VERSION
from .folding import DEFAULT_TARGET_CYCLES, Folding, default_folding
from .frontend import import_qonnx
from .ir import MaxPool, Network
from .manifest import Manifest, design_id

__all__ = ["CompileConfig", "CompileError", "COMPILE_STEPS", "compile_model", "load_build",
           "update_report"]

#: UART clocks per bit of the simulated board top: fast to simulate, same bytes as a board.
SIM_DIVISOR = 8


@dataclass(frozen=True)
class CompileConfig:
    model: Path
    out: Path
    folding: Path | None = None
    in_width: int = 8
    sim_divisor: int = SIM_DIVISOR
    target_cycles: int | None = None
    #: Automatic folding: the cheapest folding that reaches ``target_fps`` at ``clock_mhz``,
    #: and/or the fastest that fits ``board`` (capped by ``lut_budget``/``ebr_budget``).
    target_fps: float | None = None
    clock_mhz: float = 125.0
    board: str | None = None
    lut_budget: int | None = None
    ebr_budget: int | None = None


@dataclass
class CompileState:
    net: Network | None = None
    folding: Folding | None = None
    budget: object | None = None  # autofold.Budget when a device or budget was given
    estimate: object | None = None  # resources.Estimate of the chosen folding
    timings: dict = field(default_factory=dict)


def step_import(state: CompileState, cfg: CompileConfig) -> None:
    if state.net is None:  # compile_model() may be handed an IR directly
        state.net = import_qonnx(cfg.model)
    state.net.save(cfg.out)


class CompileError(ValueError):
    """A network the hardware generator cannot build (yet)."""


def step_check(state: CompileState, cfg: CompileConfig) -> None:
    """Stop before folding if the network needs hardware the generator does not have yet."""
    from bnnflow.hw.core import stream_elems

    try:
        stream_elems(state.net, cfg.in_width)
    except ValueError as e:
        raise CompileError(f"{cfg.model}: {e}; the IR in {cfg.out} runs in the reference "
                           "executor") from None


def _in_elems(net: Network, in_width: int) -> int:
    from bnnflow.hw.core import stream_elems

    return stream_elems(net, in_width)


def step_fold(state: CompileState, cfg: CompileConfig) -> None:
    """Choose the folding, in this order of precedence: ``--folding FILE``, ``--target-cycles``,
    ``--target-fps``, the largest that fits ``--board`` (or the budgets), the default (16
    cycles). With a board or budget, any folding is then checked against it before anything
    is generated: :class:`~bnnflow.autofold.FitError` names the layer and the resource."""
    from . import autofold
    from .resources import estimate

    net, elems = state.net, _in_elems(state.net, cfg.in_width)
    if cfg.board is not None:
        state.budget = autofold.board_budget(net, cfg.board, cfg.lut_budget, cfg.ebr_budget)
    elif cfg.lut_budget is not None or cfg.ebr_budget is not None:
        big = 1 << 40
        state.budget = autofold.Budget(
            lut4=cfg.lut_budget if cfg.lut_budget is not None else big, ff=big,
            ebr=cfg.ebr_budget if cfg.ebr_budget is not None else big,
            source=f"--lut-budget {cfg.lut_budget} / --ebr-budget {cfg.ebr_budget}")
    if cfg.folding is not None:
        state.folding, source = Folding.load(cfg.folding, net), str(cfg.folding)
    elif cfg.target_cycles is not None:
        state.folding = default_folding(net, cfg.target_cycles, elems)
        source = f"--target-cycles {cfg.target_cycles}"
    elif cfg.target_fps is not None:
        state.folding = autofold.fold_for_fps(net, cfg.target_fps, cfg.clock_mhz * 1e6, elems)
        source = f"--target-fps {cfg.target_fps:g}"
    elif state.budget is not None:
        state.folding = autofold.fold_for_budget(net, state.budget, elems, cfg.in_width)
        source = "the automatic folding"
    else:
        state.folding = default_folding(net, DEFAULT_TARGET_CYCLES, elems)
        source = "the default folding"
    if state.budget is not None:
        state.estimate = autofold.check_fit(net, state.folding, state.budget, cfg.in_width,
                                            source)
    else:
        state.estimate = estimate(net, state.folding, cfg.in_width)
    state.folding.save(cfg.out / "folding.json")


def step_core(state: CompileState, cfg: CompileConfig) -> None:
    from bnnflow.hw.core import generate_verilog

    generate_verilog(state.net, state.folding, cfg.out / "core.v", in_width=cfg.in_width)


def step_top(state: CompileState, cfg: CompileConfig) -> None:
    from bnnflow.hw.core import BnnCore
    from bnnflow.hw.hostlink import generate_top_verilog

    core = BnnCore(state.net, state.folding, cfg.in_width)
    # The host link buffers at least one image (HostTop's default max_payload).
    generate_top_verilog(core, design_id(state.net, state.folding), cfg.sim_divisor,
                         cfg.out / "top.v")


def step_report(state: CompileState, cfg: CompileConfig) -> None:
    net, folding = state.net, state.folding
    in_elems = _in_elems(net, cfg.in_width)
    cycles = folding.layer_cycles(net, in_elems)
    layers = []
    for layer in net.layers:
        if isinstance(layer, MaxPool):
            layers.append({"name": layer.name, "kind": "maxpool", "cycles": cycles[layer.name]})
            continue
        f = folding[layer.name]
        layers.append({
            "name": layer.name, "kind": type(layer).__name__.lower(),
            "in_features": layer.fan_in, "out_features": layer.out_channels, "pe": f.pe,
            "simd": f.simd, "lanes": f.pe * f.simd, "cycles": cycles[layer.name],
            "weight_bits": layer.fan_in * layer.out_channels,
        })
    est = state.estimate
    by_name = {c.name: c for c in est.layers}
    for entry in layers:
        cost = by_name.get(entry["name"])
        if cost is not None:
            entry["estimate"] = {"lut4": cost.lut4, "ff": cost.ff, "ebr": cost.ebr,
                                 "storage": cost.storage}
    manifest = Manifest(
        design_id=design_id(net, folding).hex(), name=net.name, n_inputs=net.input.size,
        input_shape=net.input.shape, pixel_max=net.input.pixel_max,
        input_scale=net.input.input_scale, binarize_threshold=net.input.binarize_threshold,
        num_classes=net.num_classes, in_width=cfg.in_width, sim_divisor=cfg.sim_divisor,
        cycles_per_frame=folding.cycles_per_frame(net, in_elems))
    manifest.save(cfg.out)
    report = {"design_id": manifest.design_id, "generator_version": GENERATOR_VERSION,
              "cycles_per_frame": manifest.cycles_per_frame, "in_width": cfg.in_width,
              "layers": layers,
              "estimate": {"lut4": est.lut4, "ff": est.ff, "ebr": est.ebr},
              "compile_seconds": state.timings}
    if state.budget is not None:
        b = state.budget
        report["budget"] = {"lut4": b.lut4, "ff": b.ff, "ebr": b.ebr, "source": b.source}
    (cfg.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


COMPILE_STEPS: list[Callable[[CompileState, CompileConfig], None]] = [
    step_import, step_check, step_fold, step_core, step_top, step_report,
]


def compile_model(cfg: CompileConfig, progress: Callable[[str], None] | None = None,
                  net: Network | None = None) -> CompileState:
    """Run :data:`COMPILE_STEPS` in order (on ``net`` instead of ``cfg.model`` if given)."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    state = CompileState(net=net)
    for step in COMPILE_STEPS:
        name = step.__name__.removeprefix("step_")
        if progress:
            progress(name)
        start = time.perf_counter()
        step(state, cfg)
        state.timings[name] = round(time.perf_counter() - start, 3)
    # The report was written before its own step finished timing; add the full picture.
    update_report(cfg.out, {"compile_seconds": state.timings})
    return state


def load_build(build: str | Path) -> tuple[Network, Folding, Manifest]:
    """The IR, folding and manifest of a build folder."""
    build = Path(build)
    net = Network.load(build)
    folding = Folding.load(build / "folding.json", net)
    return net, folding, Manifest.load(build)


def update_report(build: str | Path, fields: dict) -> dict:
    """Merge ``fields`` into ``BUILD/report.json`` and return the result."""
    path = Path(build) / "report.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.update(fields)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report
