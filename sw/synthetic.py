"""Random-weight networks of the model zoo's shapes, straight in the IR.

For benchmarks and tests that need a network's *shape*, not a trained one: hardware size and
speed do not depend on the weight values, and bit-exactness is checked on random weights and
inputs just as well (every threshold kind is exercised: normal, inverted, constant).

:data:`ARCHITECTURES` describes the zoo's networks (the bnn_pynq MLPs TFC/SFC/LFC on 28x28
binary inputs, CNV on 3x32x32 8-bit inputs, a LeNet-like net on 28x28 8-bit inputs);
:func:`zoo_net` builds one with random weights.
"""

from __future__ import annotations

import numpy as np

from .ir import Conv, Dense, InputSpec, MaxPool, Network, Thresholds

__all__ = ["LEVELS", "ARCHITECTURES", "random_net", "random_conv_net", "zoo_net"]

#: An 8-bit input quantizer's levels: pixel p -> round((p - 127.5) / 2), in -64..64.
LEVELS = tuple(int(v) for v in np.rint((np.arange(256) - 127.5) / 2))

#: The zoo's shapes: MLP layer sizes, or ``(input shape, random_conv_net layers)``.
ARCHITECTURES = {
    "tfc": (784, 64, 64, 64, 10),
    "sfc": (784, 256, 256, 256, 10),
    "lfc": (784, 1024, 1024, 1024, 10),
    "cnv": ((3, 32, 32), [("conv", 64, 3, 1, 0, 0), ("conv", 64, 3, 1, 0, -1), ("pool", 2, 2),
                          ("conv", 128, 3, 1, 0, -1), ("conv", 128, 3, 1, 0, -1),
                          ("pool", 2, 2), ("conv", 256, 3, 1, 0, -1),
                          ("conv", 256, 3, 1, 0, -1), ("dense", 512), ("dense", 512),
                          ("dense", 10)]),
    # LeNet-like: integer-input conv with zero padding, -1 and +1 padded convs, a stride-2
    # conv, two pools, two dense layers.
    "lenet": ((1, 28, 28), [("conv", 16, 3, 1, 1, 0), ("pool", 2, 2), ("conv", 32, 3, 1, 1, -1),
                            ("pool", 2, 2), ("conv", 32, 3, 2, 1, 1), ("dense", 64),
                            ("dense", 10)]),
}


def zoo_net(name: str, seed: int = 0) -> Network:
    """The zoo network ``name`` (a key of :data:`ARCHITECTURES`) with random weights."""
    try:
        arch = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; choose from "
                         f"{', '.join(ARCHITECTURES)}") from None
    if isinstance(arch[0], int):
        return random_net(arch, seed=seed, name=name)
    shape, layers = arch
    return random_conv_net(shape, layers, seed=seed, levels=LEVELS, name=name)



def random_net(sizes=(64, 32, 32, 10), seed=0, pixel_max=16,
               name="random") -> Network:
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
                   name)


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
