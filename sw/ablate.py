"""Ablation of the training methods: every variant trained with one fixed budget, one table.

``bnnflow ablate`` trains the same model on the same data, seed and number of epochs once per
variant of :data:`VARIANTS` (each a set of :class:`~bnnflow.train.TrainConfig` overrides) and
writes a markdown table of test accuracy and training time. Imports torch (through training).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .datasets import Dataset
from .train import TrainConfig, train

__all__ = ["VARIANTS", "AblationRow", "run_ablation", "markdown_table", "write_table"]

#: name -> (what it is, TrainConfig overrides). ``base`` is TrainConfig's defaults (STE with
#: t_clip 0.5, no weight scaling, Adam + cosine).
VARIANTS: dict[str, tuple[str, dict]] = {
    "base": ("STE t_clip 0.5, no scaling (defaults)", {}),
    "t_clip=1.0": ("classic STE, t_clip 1.0 (Hubara et al.)", {"t_clip": 1.0}),
    "scale-backward": ("weight scale mean(abs(W)) in the backward pass only",
                       {"weight_scaling": "backward"}),
    "scale-forward": ("weight scale mean(abs(W)) in forward and backward",
                      {"weight_scaling": "forward"}),
    "binealnet": ("BiNealNet shifts b0/b1 around a PReLU (slope >= 0)", {"binealnet": True}),
    "abc3": ("ABC-Net, 3 weight bases (software only)", {"abc_bases": 3}),
    "sgd-step": ("SGD (Nesterov 0.9), lr x10, step schedule",
                 {"optimizer": "sgd", "schedule": "step", "lr_factor": 10.0}),
}


@dataclass(frozen=True)
class AblationRow:
    """One trained variant."""

    variant: str
    description: str
    test_accuracy: float
    epochs: int
    seconds: float
    deployable: bool


def _config(base: TrainConfig, overrides: dict) -> TrainConfig:
    overrides = dict(overrides)
    factor = overrides.pop("lr_factor", None)
    if factor is not None:
        overrides["lr"] = base.lr * factor
    return dataclasses.replace(base, **overrides)


def run_ablation(ds: Dataset, base: TrainConfig, variants: Sequence[str] | None = None,
                 log: Callable[[str], None] | None = None) -> list[AblationRow]:
    """Train every variant on ``ds`` with the budget of ``base`` (epochs, batch size, seed).

    Parameters
    ----------
    ds : Dataset
        The data; every variant sees the same split and seed.
    base : TrainConfig
        Model, budget and any setting the variants do not override.
    variants : sequence of str, optional
        Keys of :data:`VARIANTS`; all of them by default.
    log : callable, optional
        Called with one line per finished variant.

    Returns
    -------
    list of AblationRow
        In the order of ``variants``.

    Raises
    ------
    ValueError
        For an unknown variant name.
    """
    names = list(VARIANTS) if variants is None else list(variants)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    rows = []
    for name in names:
        description, overrides = VARIANTS[name]
        cfg = _config(base, overrides)
        result = train(ds, cfg)
        rows.append(AblationRow(name, description, result.test_accuracy, result.epochs,
                                result.seconds, cfg.abc_bases == 1))
        if log is not None:
            log(f"{name}: test accuracy {result.test_accuracy:.4f} ({result.seconds:.1f} s)")
    return rows


def markdown_table(rows: Sequence[AblationRow], ds: Dataset, base: TrainConfig) -> str:
    """The rows as a markdown table, headed by the dataset, model and budget."""
    head = (f"Ablation on {ds.name}: model {base.model}, {base.epochs} epochs, batch "
            f"{base.batch_size}, lr {base.lr:g}, seed {base.seed} (test accuracy of the best "
            f"validation checkpoint)\n\n")
    lines = ["| variant | method | test accuracy | epochs | seconds | compiles to hardware |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        cells = [c.replace("|", "\\|") for c in (r.variant, r.description)]
        lines.append(f"| {cells[0]} | {cells[1]} | {100 * r.test_accuracy:.2f} % | "
                     f"{r.epochs} | {r.seconds:.1f} | {'yes' if r.deployable else 'no'} |")
    return head + "\n".join(lines) + "\n"


def write_table(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` (creating its folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
