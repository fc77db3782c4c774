"""Datasets as integer pixels: ``(images uint8 (N, *shape), labels int64 (N,))`` splits.

scikit-learn's digits are embedded (no download): 8x8 images with pixels 0..16, split into a
fixed train/test partition of 1,347/450 images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Dataset", "DatasetError", "load", "DATASETS"]


class DatasetError(ValueError):
    """A dataset that cannot be found or read."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of integer images."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    pixel_max: int
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def input_scale(self) -> float:
        """The model sees ``pixel * input_scale`` in [0, 1], like torchvision's ToTensor."""
        return 1.0 / self.pixel_max


def _digits(data_dir=None) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.astype(np.uint8)  # (1797, 64), pixels 0..16
    y = d.target.astype(np.int64)
    # A fixed, stratified split (seeded), so every run and every test sees the same 450 images.
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), bool)
    for k in range(10):
        idx = np.flatnonzero(y == k)
        test[rng.permutation(idx)[: round(450 * len(idx) / len(y))]] = True
    extra = 450 - test.sum()
    if extra:
        candidates = np.flatnonzero(~test) if extra > 0 else np.flatnonzero(test)
        test[rng.permutation(candidates)[: abs(extra)]] = extra > 0
    return Dataset("digits", x[~test], y[~test], x[test], y[test], pixel_max=16, num_classes=10)


DATASETS = {"digits": _digits}


def load(name: str, data_dir: str | None = None) -> Dataset:
    """Load a dataset by name (``digits``)."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}") from None
    return loader(data_dir)
