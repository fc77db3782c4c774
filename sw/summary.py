"""The main job: train, compile, verify, simulate (and optionally build), then one table.

Every stage runs through the same ``bnnflow`` commands a user would type, so the main job
exercises exactly the CLI the README documents.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["run_flow", "summary_table"]


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def summary_table(run_dir: Path) -> str:
    """A plain-text table of a run folder's figures (missing stages show as '-')."""
    build = run_dir / "build"
    metrics, verify = _load(run_dir / "metrics.json"), _load(build / "verify.json")
    results, report = _load(build / "results.json"), _load(build / "report.json")

    def pct(x):
        return f"{100 * x:.2f} %" if isinstance(x, (int, float)) else "-"

    cpf = results.get("cycles_per_frame")
    fmax = report.get("fmax_mhz")
    fps = f"{fmax * 1e6 / cpf:,.0f}" if fmax and cpf else "- (no bitstream built yet)"
    rows = [
        ("test accuracy: PyTorch", pct(metrics.get("test_accuracy"))),
        ("test accuracy: IR reference", pct(verify.get("reference_accuracy"))),
        ("test accuracy: RTL (cocotb + Verilator)", pct(results.get("accuracy"))),
        ("mismatches: reference vs PyTorch (class or score)",
         f"{verify.get('mismatches_torch', '-')} / {verify.get('frames', '-')}"),
        ("mismatches: reference vs qonnx execute_onnx",
         f"{verify.get('mismatches_qonnx', '-')} / {verify.get('frames', '-')}"),
        ("mismatches: RTL vs reference (free-running + stalled)",
         f"{results.get('mismatches', '-')} / {2 * results.get('frames', 0) or '-'}"),
        ("cycles per frame: predicted", str(report.get("cycles_per_frame", "-"))),
        ("cycles per frame: measured in simulation", f"{cpf:.2f}" if cpf else "-"),
        ("Fmax of the last build", f"{fmax:.1f} MHz ({report.get('board')})" if fmax else "-"),
        ("fabric frames/s (Fmax / cycles per frame)", fps),
    ]
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 22)
    body = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    return f"{line}\nbnnflow summary: {run_dir}\n{line}\n{body}\n{line}"


def run_flow(out: Path, *, dataset: str = "digits", epochs: int = 100, board: str | None = None,
             seed: int = 0) -> None:
    """The whole flow into ``out`` (``out/build`` holds the build). Raises SystemExit on error."""
    from .cli import main

    build = out / "build"
    steps = [
        ["train", "--model", "tfc", "--dataset", dataset, "--epochs", str(epochs),
         "--seed", str(seed), "-o", str(out)],
        ["compile", str(out / "model.onnx"), "-o", str(build)],
        ["verify", str(out), str(build), "--dataset", dataset],
        ["simulate", str(build), "--dataset", dataset],
    ]
    if board:
        steps.append(["build", str(build), "--board", board])
    for argv in steps:
        print(f"\n$ bnnflow {' '.join(argv)}", flush=True)
        code = main(argv)
        if code:
            raise SystemExit(code)
    print()
    print(summary_table(out))
