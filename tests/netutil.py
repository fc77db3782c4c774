"""Random IR networks for tests."""

from __future__ import annotations

import numpy as np

from bnnflow.ir import Conv, Dense, InputSpec, MaxPool, Network, Thresholds


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


def _thresholds(rng, n_out, fan_in, integer, max_level):
    if integer:
        t = np.rint(rng.normal(0, max_level * np.sqrt(fan_in) / 2, n_out)).astype(np.int64)
    else:
        t = np.clip(np.rint(rng.normal(fan_in / 2, np.sqrt(fan_in) / 2, n_out)), 0, fan_in + 1)
    inv = rng.random(n_out) < 0.3
    t[0], inv[0] = (-10 * max_level * fan_in, False) if integer else (0, False)
    return Thresholds(t.astype(np.int64), inv)


def random_conv_net(in_shape, layers, seed=0, levels=None, name="conv") -> Network:
    """A random conv network. ``layers``: ``("conv", oc, k, stride, padding, pad_value)``,
    ``("pool", k, stride)`` or ``("dense", out)``; the last dense layer emits scores.
    ``levels`` (pixel -> level) makes it an integer-input network of 8-bit pixels."""
    rng = np.random.default_rng(seed)
    if levels is None:
        spec = InputSpec(tuple(in_shape), 255, 1 / 255, 128)
    else:
        spec = InputSpec(tuple(in_shape), len(levels) - 1, 1 / 255, None, tuple(levels))
    out, shape = [], tuple(in_shape)
    for i, desc in enumerate(layers):
        integer = i == 0 and levels is not None
        last = i == len(layers) - 1
        if desc[0] == "pool":
            layer = MaxPool(f"pool{i}", shape, desc[1], desc[2])
        elif desc[0] == "conv":
            _, oc, k, s, p, pv = desc
            w = rng.integers(0, 2, (oc, shape[0], k, k))
            th = _thresholds(rng, oc, shape[0] * k * k, integer, spec.max_level)
            layer = Conv(f"conv{i}", w, th, shape, s, p, 0 if integer else pv, integer)
        else:
            n_in = int(np.prod(shape))
            w = rng.integers(0, 2, (desc[1], n_in))
            th = None if last else _thresholds(rng, desc[1], n_in, integer, spec.max_level)
            layer = Dense(f"fc{i}", w, th, integer)
        out.append(layer)
        shape = layer.out_shape(shape)
    return Network(spec, tuple(out), name)
