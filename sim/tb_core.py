"""cocotb testbench of the generated accelerator core (``bnn_core``) against the reference.

Run through :func:`bnnflow.sim.runner.simulate_core`, which writes the stimulus, the golden
results and a ``config.json`` into a work directory named by ``BNNFLOW_SIM_DIR``. The test
drives every frame twice:

1. *throughput*: input always valid, output always ready, to measure steady-state cycles per
   frame (the interval between successive results), and, over a few frames of it, the cycles
   each block's output waited on the next block (``blocked_cycles``: a balanced pipeline
   whose stream buffers are deep enough shows none at its slowest layers);
2. *stress*: random idle cycles on ``s_axis`` and random back-pressure on ``m_axis``.

Every result of both passes is compared with the golden model (class and every score); the
test writes ``sim_out.json`` and fails on any mismatch.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

__all__ = ["TB", "core_matches_reference"]


class TB:
    """Driver, monitor and scoreboard around ``bnn_core``."""

    def __init__(self, dut, cfg: dict, frames: np.ndarray):
        self.dut, self.cfg = dut, cfg
        self.frames = frames  # (N, beats) payload words for s_axis
        self.cycle = 0
        self.blocked: dict[str, int] = {}
        self.watched = 0

    async def reset(self):
        dut = self.dut
        dut.s_axis__valid.value = 0
        dut.s_axis__payload.value = 0
        dut.m_axis__ready.value = 0
        dut.rst.value = 1
        for _ in range(3):
            await RisingEdge(dut.clk)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    def decode(self, word: int) -> tuple[int, list[int]]:
        cfg = self.cfg
        cls = (word >> cfg["cls_offset"]) & ((1 << cfg["cls_bits"]) - 1)
        sb, scores = cfg["score_bits"], []
        for k in range(cfg["classes"]):
            v = (word >> (cfg["scores_offset"] + k * sb)) & ((1 << sb) - 1)
            scores.append(v - (1 << sb) if v >> (sb - 1) else v)
        return cls, scores

    def blocks(self) -> list[tuple[str, object, object]]:
        """``(name, o_stream valid, o_stream ready)`` of every block the config names."""
        out = []
        for name in self.cfg.get("blocks", []):
            inst = getattr(self.dut, name)
            out.append((name, inst.o_stream__valid, inst.o_stream__ready))
        return out

    async def run(self, p_idle: float, p_stall: float, rng: random.Random,
                  monitor: tuple[int, int] | None = None):
        """Stream all frames; returns the results and the cycle of each result.

        With ``monitor = (a, b)``, also counts for every block of :meth:`blocks` the cycles
        its output waited (valid, not ready) between results ``a`` and ``b``: in
        :attr:`blocked`, with the cycles watched in :attr:`watched`.
        """
        dut = self.dut
        blocks = self.blocks() if monitor else []
        if monitor:
            self.blocked = {name: 0 for name, _, _ in blocks}
            self.watched = 0
        beats = [int(w) for frame in self.frames for w in frame]
        per_frame = self.frames.shape[1]
        results, times = [], []
        i, n = 0, len(beats)
        start = self.cycle

        def drive_input():
            if i < n and rng.random() >= p_idle:
                last = int((i + 1) % per_frame == 0)
                dut.s_axis__payload.value = beats[i] | (last << self.cfg["in_width"])
                dut.s_axis__valid.value = 1
            else:
                dut.s_axis__valid.value = 0

        drive_input()
        dut.m_axis__ready.value = int(rng.random() >= p_stall)
        limit = start + 1000 + 50 * (len(self.frames) + 1) * self.cfg["predicted_cycles"] \
            * (1 + int(p_idle > 0 or p_stall > 0) * 4)
        while len(results) < len(self.frames):
            await RisingEdge(dut.clk)
            self.cycle += 1
            if self.cycle > limit:
                raise TimeoutError(f"only {len(results)} of {len(self.frames)} results after "
                                   f"{self.cycle - start} cycles")
            # Values read at the edge are the ones the transfer was decided on.
            if dut.s_axis__valid.value and dut.s_axis__ready.value:
                i += 1
                drive_input()
            elif not dut.s_axis__valid.value:
                drive_input()
            if blocks and monitor[0] <= len(results) < monitor[1]:
                self.watched += 1
                for name, valid, ready in blocks:
                    if valid.value and not ready.value:
                        self.blocked[name] += 1
            if dut.m_axis__valid.value and dut.m_axis__ready.value:
                results.append(self.decode(int(dut.m_axis__payload.value)))
                times.append(self.cycle)
            dut.m_axis__ready.value = int(rng.random() >= p_stall)
        dut.s_axis__valid.value = 0
        return results, times


def _score(results, golden_classes, golden_scores):
    mismatches, preds = 0, []
    for k, (cls, scores) in enumerate(results):
        preds.append(cls)
        if cls != golden_classes[k] or scores != list(golden_scores[k]):
            mismatches += 1
    return mismatches, preds


@cocotb.test()
async def core_matches_reference(dut):
    """Every frame, twice (free-running and under random stalls), bit-exact."""
    work = Path(os.environ["BNNFLOW_SIM_DIR"])
    cfg = json.loads((work / "config.json").read_text())
    frames = np.load(work / "frames.npy", allow_pickle=False)
    golden = np.load(work / "golden.npz", allow_pickle=False)
    g_cls, g_scores = golden["classes"].tolist(), golden["scores"].tolist()

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    tb = TB(dut, cfg, frames)
    await tb.reset()
    rng = random.Random(cfg["seed"])

    # Watch the blocks over a few steady-state frames (after the first two results).
    watch = (2, min(len(frames), 2 + cfg.get("watch_frames", 8)))
    results, times = await tb.run(0.0, 0.0, rng, monitor=watch if watch[1] > 2 else None)
    free_mismatch, preds = _score(results, g_cls, g_scores)
    # Steady state: the interval between results once the pipeline is full (skip the first).
    steady = (times[-1] - times[1]) / (len(times) - 2) if len(times) > 2 else float("nan")

    results2, _ = await tb.run(cfg["p_idle"], cfg["p_stall"], rng)
    stress_mismatch, preds2 = _score(results2, g_cls, g_scores)

    out = {
        "frames": len(frames),
        "mismatches": free_mismatch + stress_mismatch,
        "mismatches_free_running": free_mismatch,
        "mismatches_stalled": stress_mismatch,
        "cycles_per_frame": steady,
        "first_result_cycles": times[0],
        "steady_cycles_watched": tb.watched,
        "blocked_cycles": tb.blocked,
        "predictions": preds,
        "predictions_stalled": preds2,
        "p_idle": cfg["p_idle"],
        "p_stall": cfg["p_stall"],
    }
    (work / "sim_out.json").write_text(json.dumps(out))
    assert out["mismatches"] == 0, f"{out['mismatches']} mismatching results"
