"""Levels 1-3 of the verification ladder: PyTorch, qonnx execution, and the IR reference.

``verify_run`` checks, on a dataset's whole test set, that the IR reference executor gives the
same class and the same integer scores as the trained PyTorch model (scores saved by
``bnnflow train``) and as qonnx's ``execute_onnx`` on the exported file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import datasets
from .ir import Network
from .reference import run

__all__ = ["qonnx_scores", "verify_run"]


def qonnx_scores(model_path: str | Path, x: np.ndarray) -> np.ndarray:
    """Outputs of qonnx's ``execute_onnx`` for model inputs ``x`` (float32, model domain)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    model = ModelWrapper(str(model_path)).transform(InferShapes())
    iname = model.graph.input[0].name
    oname = model.graph.output[0].name
    shape = model.get_tensor_shape(iname)
    out = []
    for row in x:
        res = execute_onnx(model, {iname: row.reshape(shape).astype(np.float32)})
        out.append(np.asarray(res[oname]).reshape(-1))
    return np.stack(out)


def verify_run(run_dir: Path, build: Path, dataset: str = "digits", data_dir=None,
               qonnx_limit: int | None = None) -> dict:
    """Compare reference, PyTorch and qonnx on the test set; writes ``BUILD/verify.json``.

    PyTorch's scores (saved by ``bnnflow train``) are compared on the whole test set; qonnx,
    which executes node by node in Python, on the first ``qonnx_limit`` images (all if None).
    """
    net = Network.load(build)
    ds = datasets.load(dataset, data_dir)
    ref = run(net, ds.x_test)
    report = {"frames": len(ds.x_test),
              "reference_accuracy": float((ref.classes == ds.y_test).mean())}

    saved = np.load(run_dir / "torch_test_scores.npz", allow_pickle=False)
    t_scores = saved["scores"]
    report["torch_accuracy"] = float((t_scores.argmax(1) == ds.y_test).mean())
    report["mismatches_torch"] = int(np.sum(
        (t_scores.argmax(1) != ref.classes) | np.any(t_scores != ref.scores, axis=1)))

    k = len(ds.x_test) if qonnx_limit is None else min(qonnx_limit, len(ds.x_test))
    x = ds.x_test[:k].astype(np.float32) * np.float32(net.input.input_scale)
    q_scores = qonnx_scores(run_dir / "model.onnx", x)
    report["qonnx_frames"] = k
    report["qonnx_accuracy"] = float((q_scores.argmax(1) == ds.y_test[:k]).mean())
    report["mismatches_qonnx"] = int(np.sum(
        (q_scores.argmax(1) != ref.classes[:k]) | np.any(q_scores != ref.scores[:k], axis=1)))
    (build / "verify.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
