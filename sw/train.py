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
from .models import Methods, build_model

__all__ = ["TrainConfig", "TrainResult", "train", "export", "torch_scores", "accuracy",
           "optimizer_step", "write_metrics", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "none")


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs. Defaults train the digits TFC to ~90 % in well under a minute.

    Parameters
    ----------
    model : str
        A key of :data:`bnnflow.models.MODELS`.
    epochs, batch_size, lr, weight_decay, seed
        The usual; the learning rate follows ``schedule`` per step.
    val_fraction : float
        Share of the training set held out to pick the best epoch's checkpoint.
    progress : bool
        Show a progress bar.
    optimizer : {"adam", "sgd"}
        Adam, or SGD with Nesterov momentum 0.9.
    schedule : {"cosine", "step", "none"}
        Cosine annealing to 0; x0.1 at 50 % and 75 % of the steps; or a constant rate.
    t_clip, weight_scaling, binealnet, abc_bases
        The training methods, see :class:`bnnflow.models.Methods`.
    dropout : float
        Dropout after hidden dense activations (bnn_pynq uses 0.2).
    input_threshold : float
        The MLPs binarize a pixel to +1 at ``pixel * input_scale >= input_threshold``
        (0.5: bnn_pynq's ``2x - 1``; about 0.1 suits Fashion-MNIST).
    """

    model: str = "tfc"
    epochs: int = 100
    batch_size: int = 32
    val_fraction: float = 0.15
    lr: float = 0.01
    weight_decay: float = 0.0
    seed: int = 0
    progress: bool = True
    optimizer: str = "adam"
    schedule: str = "cosine"
    t_clip: float = 0.5
    weight_scaling: str = "none"
    binealnet: bool = False
    abc_bases: int = 1
    dropout: float = 0.0
    input_threshold: float = 0.5

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs, batch_size and lr must be positive")
        if not 0.0 <= self.val_fraction < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("val_fraction and dropout must be in [0, 1)")
        self.methods  # noqa: B018 -- validates the method options

    @property
    def methods(self) -> Methods:
        """The model's training methods."""
        return Methods(self.t_clip, self.weight_scaling, self.binealnet, self.abc_bases)


@dataclass(frozen=True)
class TrainResult:
    """A trained model (the best validation checkpoint) and its figures."""

    model: torch.nn.Module
    test_accuracy: float
    epochs: int
    seconds: float

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / self.epochs


def _inputs(ds: Dataset, x: np.ndarray) -> torch.Tensor:
    # The model's input domain: pixel * input_scale, computed in float32 like the importer.
    return torch.from_numpy(x.astype(np.float32) * np.float32(ds.input_scale))


@torch.no_grad()
def torch_scores(model: torch.nn.Module, ds: Dataset, x: np.ndarray,
                 batch: int = 2000) -> np.ndarray:
    """The trained model's own output scores for integer pixels ``x``."""
    model.eval()
    return np.concatenate([model(_inputs(ds, x[i:i + batch])).numpy()
                           for i in range(0, len(x), batch)])


def accuracy(model: torch.nn.Module, ds: Dataset, x: np.ndarray, y: np.ndarray) -> float:
    """Share of ``x`` whose argmax score is the label ``y``."""
    pred = torch_scores(model, ds, x).argmax(axis=1)
    return float((pred == y).mean())


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer,
                   loss: torch.Tensor) -> None:
    """One step: gradients of ``loss``, the optimizer's update, then the model's constraints
    (latent weights in [-1, 1], PReLU slopes >= 0)."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.clip_weights(1.0)


def _optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _schedule(cfg: TrainConfig, opt, steps: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, [steps // 2, 3 * steps // 4], 0.1)
    return None


def train(ds: Dataset, cfg: TrainConfig = TrainConfig()) -> TrainResult:
    """Train ``cfg.model`` on ``ds`` with a fixed seed; keep the best validation checkpoint.

    Parameters
    ----------
    ds : Dataset
        Integer images; the model takes ``pixel * ds.input_scale``.
    cfg : TrainConfig
        Model, methods and optimizer knobs.

    Returns
    -------
    TrainResult
        The model in eval mode and its test-set accuracy.
    """
    # One thread and deterministic kernels: the same seed gives the same model on any machine
    # (float reductions split across threads round differently). The MLPs are small enough.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build_model(cfg.model, ds.input_shape, ds.num_classes, cfg.methods, cfg.dropout,
                        cfg.input_threshold)
    # The scores are integer dot products in [-n, n]; a learnable temperature (training only,
    # not exported, argmax-neutral) scales them into a range softmax cross-entropy likes.
    log_temp = torch.nn.Parameter(torch.tensor(math.log(4.0 / math.sqrt(model.score_fan_in))))
    opt = _optimizer(cfg, list(model.parameters()) + [log_temp])
    # Binary training is noisy from epoch to epoch: keep the checkpoint that does best on a
    # held-out slice of the training set (never the test set).
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(ds.x_train), generator=gen).numpy()
    n_val = int(round(cfg.val_fraction * len(order)))
    val, fit = order[:n_val], order[n_val:]
    x_train, y_train = _inputs(ds, ds.x_train[fit]), torch.from_numpy(ds.y_train[fit])
    sched = _schedule(cfg, opt, cfg.epochs * math.ceil(len(fit) / cfg.batch_size))
    best = (-1.0, None)
    start = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"train {cfg.model}/{ds.name}", disable=not cfg.progress,
               unit="epoch")
    for _epoch in bar:
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            logits = model(x_train[idx]) * log_temp.exp()
            loss = torch.nn.functional.cross_entropy(logits, y_train[idx])
            optimizer_step(model, opt, loss)
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(idx)
        val_acc = accuracy(model, ds, ds.x_train[val], ds.y_train[val]) if n_val else 0.0
        if n_val == 0 or val_acc >= best[0]:
            best = (val_acc, copy.deepcopy(model.state_dict()))
        bar.set_postfix(loss=f"{total / len(perm):.3f}", val_acc=f"{val_acc:.3f}")
    model.load_state_dict(best[1])
    seconds = time.perf_counter() - start
    acc = accuracy(model, ds, ds.x_test, ds.y_test)
    return TrainResult(model.eval(), acc, cfg.epochs, seconds)


def export(model: torch.nn.Module, ds: Dataset, path: str | Path, name: str) -> Path:
    """Export to QONNX with the input domain recorded in the file's metadata."""
    from brevitas.export import export_qonnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = _inputs(ds, ds.x_test[:1])
    if hasattr(model, "chw"):  # conv nets: export with the channel axis, (1, C, H, W)
        example = example.reshape(1, *model.chw)
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
    """Write the run's figures and its whole config as JSON."""
    doc = {"test_accuracy": result.test_accuracy, "epochs": result.epochs,
           "seconds": round(result.seconds, 2),
           "seconds_per_epoch": round(result.seconds_per_epoch, 3), "dataset": ds.name,
           "config": asdict(cfg)}
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")
