"""bnnflow's sessions. `nox -s simulate` is the main job; `nox -s tests` is what CI runs."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"
nox.options.default_venv_backend = "venv"

PYTHON = "3.11"
RUN = Path("runs/digits")


def _install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite CI runs: everything but the `slow` and `board` markers."""
    _install(session)
    session.run("pytest", "-m", "not slow and not board", *session.posargs)


@nox.session(python=PYTHON)
def slow(session: nox.Session) -> None:
    """The long cases: bigger builds and full-dataset runs."""
    _install(session)
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session(python=PYTHON)
def simulate(session: nox.Session) -> None:
    """The main job: train, compile, verify and simulate the digits TFC, then a summary."""
    _install(session)
    out = session.posargs[0] if session.posargs else str(RUN)
    session.run("bnnflow", "flow", "-o", out)


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Bitstream of the main job's network for ULX3S-85F (runs the main job first if needed)."""
    _install(session)
    board = os.environ.get("BNNFLOW_BOARD", "ulx3s-85f")
    if not (RUN / "build" / "manifest.json").is_file():
        session.run("bnnflow", "flow", "-o", str(RUN))
    session.run("bnnflow", "build", str(RUN / "build"), "--board", board)
    session.run("bnnflow", "summary", str(RUN))


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The generator's benchmark: TFC, SFC and CNV at the largest folding that fits the
    ULX3S-85F, simulated and built at 125 MHz; cycle- and resource-model tables; writes
    docs/benchmark.md. Arguments go to `python -m bnnflow.benchmark` (e.g. `-- --no-build`)."""
    _install(session)
    session.run("python", "-m", "bnnflow.benchmark", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "sw", "hw", "sim", "boards", "tests", "noxfile.py")
