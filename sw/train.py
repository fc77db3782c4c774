"""Training a 1W1A network with Brevitas and exporting it to QONNX.

Imports torch: only ``bnnflow train`` (and the nox sessions that train) import this module.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm import tqdm

from .datasets import Dataset
from .frontend import METADATA_PREFIX
from .models import build_model

__all__ = ["TrainConfig", "TrainResult", "train", "export", "torch_scores"]


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs. Defaults train the digits TFC to ~90 % in well under a minute."""

    model: str = "tfc"
    epochs: int = 100
    batch_size: int = 32
    val_fraction: float = 0.15
    lr: float = 0.01
    weight_decay: float = 0.0
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True)
class TrainResult:
    model: torch.nn.Module
    test_accuracy: float
    epochs: int
    seconds: float


def _inputs(ds: Dataset, x: np.ndarray) -> torch.Tensor:
    # The model's input domain: pixel * input_scale, computed in float32 like the importer.
    return torch.from_numpy(x.astype(np.float32) * np.float32(ds.input_scale))


@torch.no_grad()
def torch_scores(model: torch.nn.Module, ds: Dataset, x: np.ndarray) -> np.ndarray:
    """The trained model's own output scores for integer pixels ``x``."""
    model.eval()
    return model(_inputs(ds, x)).numpy()


def train(ds: Dataset, cfg: TrainConfig = TrainConfig()) -> TrainResult:
    """Train ``cfg.model`` on ``ds`` with Adam and a cosine schedule, fixed seed."""
    # One thread and deterministic kernels: the same seed gives the same model on any machine
    # (float reductions split across threads round differently). The MLPs are small enough.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    in_features = int(np.prod(ds.input_shape))
    model = build_model(cfg.model, in_features, ds.num_classes)
    # The scores are integer dot products in [-n, n]; a learnable temperature (training only,
    # not exported, argmax-neutral) scales them into a range softmax cross-entropy likes.
    log_temp = torch.nn.Parameter(torch.tensor(math.log(4.0 / math.sqrt(64))))
    opt = torch.optim.Adam(list(model.parameters()) + [log_temp], lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(ds.x_train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * steps_per_epoch)
    # Binary training is noisy from epoch to epoch: keep the checkpoint that does best on a
    # held-out slice of the training set (never the test set).
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(ds.x_train), generator=gen).numpy()
    n_val = int(round(cfg.val_fraction * len(order)))
    val, fit = order[:n_val], order[n_val:]
    x_train, y_train = _inputs(ds, ds.x_train[fit]), torch.from_numpy(ds.y_train[fit])
    best = (-1.0, None)
    start = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"train {cfg.model}/{ds.name}", disable=not cfg.progress,
               unit="epoch")
    acc = 0.0
    for _epoch in bar:
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            logits = model(x_train[idx]) * log_temp.exp()
            loss = torch.nn.functional.cross_entropy(logits, y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            model.clip_weights(1.0)
            total += float(loss.detach()) * len(idx)
        val_acc = accuracy(model, ds, ds.x_train[val], ds.y_train[val]) if n_val else 0.0
        if n_val == 0 or val_acc >= best[0]:
            best = (val_acc, copy.deepcopy(model.state_dict()))
        bar.set_postfix(loss=f"{total / len(perm):.3f}", val_acc=f"{val_acc:.3f}")
    model.load_state_dict(best[1])
    seconds = time.perf_counter() - start
    acc = accuracy(model, ds, ds.x_test, ds.y_test)
    return TrainResult(model.eval(), acc, cfg.epochs, seconds)


def accuracy(model: torch.nn.Module, ds: Dataset, x: np.ndarray, y: np.ndarray) -> float:
    pred = torch_scores(model, ds, x).argmax(axis=1)
    return float((pred == y).mean())


def export(model: torch.nn.Module, ds: Dataset, path: str | Path, name: str) -> Path:
    """Export to QONNX with the input domain recorded in the file's metadata."""
    from brevitas.export import export_qonnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = _inputs(ds, ds.x_test[:1])
    export_qonnx(model, example, str(path), dynamo=False)
    proto = onnx.load(str(path))
    meta = {"pixel_max": str(ds.pixel_max), "input_scale": repr(float(np.float32(ds.input_scale))),
            "dataset": ds.name, "model": name}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value
    onnx.save(proto, str(path))
    return path


def write_metrics(path: str | Path, result: TrainResult, cfg: TrainConfig, ds: Dataset) -> None:
    doc = {"test_accuracy": result.test_accuracy, "epochs": result.epochs,
           "seconds": round(result.seconds, 2), "dataset": ds.name, "config": asdict(cfg)}
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")
