"""Random IR networks for tests."""

from __future__ import annotations

import numpy as np

from bnnflow.ir import Dense, InputSpec, Network, Thresholds


def random_net(sizes=(64, 32, 32, 10), seed=0, pixel_max=16) -> Network:
    """A random binary MLP with every kind of threshold channel (normal, inverted, constant)."""
    rng = np.random.default_rng(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = rng.integers(0, 2, (n_out, n_in))
        last = i == len(sizes) - 2
        th = None
        if not last:
            t = rng.integers(n_in // 4, 3 * n_in // 4 + 1, n_out)
            inv = rng.random(n_out) < 0.3
            t[:2] = 0  # two constant channels: always +1 and always -1
            inv[:2] = [False, True]
            th = Thresholds(t, inv)
        layers.append(Dense(f"fc{i}", w, th))
    return Network(InputSpec((sizes[0],), pixel_max, 1 / pixel_max, pixel_max // 2), layers,
                   "random")
