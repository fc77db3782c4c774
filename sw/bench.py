"""Benchmarks of an accelerator: fabric throughput on chip, link throughput through the driver.

Two figures that must never be confused:

* **fabric frames/s** = frames x f_clk / cycles, from REPLAY: the images are stored on chip
  and run back to back ``repeats`` times with the core's output always ready, while a cycle
  counter runs from the first image byte entering the core to the last result leaving it.
  ``f_clk`` is the clock the device reports (or the one given).
* **link frames/s**: INFER requests through the driver, pipelined. Measured by the wall clock;
  for a link of known baud rate also its byte limit (baud / 10 over the wire bytes per image
  in the busier direction) and, for the simulated design, the throughput in simulated time
  (cycles counted by the harness), whose ratio to the limit is the link utilisation.

Every REPLAY repetition is checked without shipping it back: the device reports the CRC-32 of
all measured records, which must equal the CRC of the reference results repeated (or, without
a build, of the final pass's own results repeated, which checks that every repetition agreed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .protocol import results_crc

__all__ = ["BenchResult", "benchmark"]


@dataclass(frozen=True)
class BenchResult:
    """What :func:`benchmark` measured.

    Attributes
    ----------
    images, repeats, frames : int
        Distinct images replayed on chip, repetitions, and results measured (their product).
    cycles, latency_cycles : int
        Cycles of the REPLAY run, and of its first result.
    clk_hz : float
        The clock the cycles are converted with.
    crc, expected_crc : int
        The device's CRC of every measured result, and the host's.
    checked_against : str
        ``"reference"`` (:func:`bnnflow.reference.run` on the build's network) or ``"itself"``
        (the final pass's results, when no network is known).
    mismatches : int
        Results differing from the reference: REPLAY's final pass and the link run together.
    link_images : int
        Images sent through INFER.
    link_seconds : float
        Wall-clock time of the INFER run.
    link_bytes_out, link_bytes_in : int
        Wire bytes of the INFER run, each way (retries included).
    baud : float or None
        The link's baud rate, when known.
    sim_cycles : int or None
        Simulated cycles from the first request bit to the last response bit.
    sim_tx_busy : float or None
        Fraction of time the simulated transmit line carried bits between its first and last.
    """

    images: int
    repeats: int
    frames: int
    cycles: int
    latency_cycles: int
    clk_hz: float
    crc: int
    expected_crc: int
    checked_against: str
    mismatches: int
    link_images: int
    link_seconds: float
    link_bytes_out: int
    link_bytes_in: int
    baud: float | None = None
    sim_cycles: int | None = None
    sim_tx_busy: float | None = None

    @property
    def ok(self) -> bool:
        """Every repetition and every link result matched."""
        return self.crc == self.expected_crc and self.mismatches == 0

    @property
    def fabric_fps(self) -> float:
        """Frames per second on chip: ``frames * clk_hz / cycles`` (pipeline fill included)."""
        return self.frames * self.clk_hz / self.cycles

    @property
    def fabric_cycles_per_frame(self) -> float:
        """Steady-state cycles per frame: the run less the first result's latency."""
        return (self.cycles - self.latency_cycles) / max(1, self.frames - 1)

    @property
    def link_fps(self) -> float:
        """Images per second through the link, by the wall clock."""
        return self.link_images / self.link_seconds

    @property
    def link_limit_fps(self) -> float | None:
        """The byte limit: ``baud / 10`` over the wire bytes per image of the busier line."""
        if not self.baud:
            return None
        per_image = max(self.link_bytes_out, self.link_bytes_in) / self.link_images
        return self.baud / 10 / per_image

    @property
    def sim_link_fps(self) -> float | None:
        """Images per second through the simulated link, in simulated time at ``clk_hz``."""
        return self.link_images * self.clk_hz / self.sim_cycles if self.sim_cycles else None

    @property
    def link_utilisation(self) -> float | None:
        """Simulated link throughput over the byte limit (end to end, pipeline fill
        included)."""
        if self.sim_link_fps is None or not self.link_limit_fps:
            return None
        return self.sim_link_fps / self.link_limit_fps

    def report(self) -> str:
        """A few labelled lines: fabric and link figures kept apart."""
        status = "OK" if self.ok else "MISMATCH"
        lines = [
            f"fabric: {self.fabric_fps:,.0f} frames/s ({self.frames} frames = {self.images} "
            f"images x {self.repeats} on chip, {self.cycles} cycles at "
            f"{self.clk_hz / 1e6:g} MHz; {self.fabric_cycles_per_frame:.2f} cycles/frame "
            f"steady, first result after {self.latency_cycles} cycles)",
            f"check:  {status}: CRC 0x{self.crc:08x} vs 0x{self.expected_crc:08x} "
            f"({self.checked_against}), {self.mismatches} mismatching results",
            f"link:   {self.link_fps:,.0f} frames/s wall clock ({self.link_images} images in "
            f"{self.link_seconds:.2f} s, {self.link_bytes_out} B out, {self.link_bytes_in} B in)",
        ]
        if self.link_limit_fps:
            lines.append(f"link:   byte limit {self.link_limit_fps:,.0f} frames/s at "
                         f"{self.baud:,.0f} baud ({self.baud / 10:,.0f} B/s each way)")
        if self.sim_link_fps:
            per_s = max(self.link_bytes_out, self.link_bytes_in) * self.clk_hz / self.sim_cycles
            lines.append(f"link:   {self.sim_link_fps:,.0f} frames/s in simulated time = "
                         f"{per_s:,.0f} B/s of {self.baud / 10:,.0f} B/s: "
                         f"{self.link_utilisation:.1%} of the byte limit (tx line busy "
                         f"{self.sim_tx_busy:.1%} from its first bit to its last)")
        return "\n".join(lines)


def benchmark(acc, images, repeats: int = 100, *, bits: bool | None = None,
              link_images: int | None = None, clk_hz: float | None = None,
              wait: float | None = None) -> BenchResult:
    """Measure fabric throughput (REPLAY) and link throughput (INFER), and check both.

    Parameters
    ----------
    acc : bnnflow.driver.Accelerator
    images : array_like
        Pixels or bits (see :meth:`~bnnflow.driver.Accelerator.to_inputs`); REPLAY runs the
        first ``info.max_images`` of them.
    repeats : int
        REPLAY repetitions (1..65535).
    link_images : int, optional
        Images to send through INFER, cycling through ``images`` (default: all of them once).
    clk_hz : float, optional
        The fabric clock; by default the one the device reports.
    wait : float, optional
        Seconds to allow for the REPLAY run (default: estimated).

    Returns
    -------
    BenchResult
    """
    info = acc.info
    x = acc.to_inputs(images, bits)
    binary = not acc.takes_pixels
    as_is = True if binary else None  # ``x`` is what the device takes: bits, or pixels
    clk_hz = clk_hz or info.clk_hz
    if not clk_hz:
        raise ValueError("the device does not report its clock: pass clk_hz=")
    replayed = x[:info.max_images]
    summary, classes, scores = acc.replay(replayed, repeats, bits=as_is, wait=wait)
    net = acc.net
    if net is not None:
        from .reference import run

        want = run(net, replayed, bits=binary)
        expected, against = results_crc(want.classes, want.scores, repeats), "reference"
        mismatches = int(np.sum((classes != want.classes) | (scores != want.scores).any(1)))
    else:
        expected, against = results_crc(classes, scores, repeats), "itself"
        mismatches = 0

    link_x = np.resize(x, (link_images or len(x), x.shape[1]))
    transport = acc.transport
    counters = getattr(transport, "counters", None)
    if counters is not None:
        counters()  # opens the window
    before = (acc.stats.bytes_out, acc.stats.bytes_in)
    began = time.perf_counter()
    link_classes, link_scores = acc.predict(link_x, bits=as_is)
    seconds = time.perf_counter() - began
    window = counters() if counters is not None else None
    if net is not None:
        want = run(net, link_x, bits=binary)
        mismatches += int(np.sum((link_classes != want.classes)
                                 | (link_scores != want.scores).any(1)))
    baud = transport.baud
    if baud is None and getattr(transport, "divisor", None):
        baud = clk_hz / transport.divisor
    return BenchResult(
        images=len(replayed), repeats=repeats, frames=summary.frames, cycles=summary.cycles,
        latency_cycles=summary.latency, clk_hz=clk_hz, crc=summary.crc, expected_crc=expected,
        checked_against=against, mismatches=mismatches, link_images=len(link_x),
        link_seconds=seconds, link_bytes_out=acc.stats.bytes_out - before[0],
        link_bytes_in=acc.stats.bytes_in - before[1], baud=baud,
        sim_cycles=window.span if window is not None else None,
        sim_tx_busy=window.busy("tx") if window is not None else None)
