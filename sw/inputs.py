"""Reading user input arrays (``X.npy``) into what the network takes.

Accepted layouts: ``(N, *input_shape)`` or ``(N, features)``. Accepted encodings, told apart
by dtype so that no array is ambiguous:

* ``uint8`` (or any unsigned/``int16+`` integer type): pixels in ``0..pixel_max``;
* ``bool``: input bits (True = +1); ``int8``: input bits as 0/1 or -1/+1;
* floating point: values in the exported model's own input domain (``pixel * input_scale``),
  mapped back to pixels and required to be (nearly) integer pixels.

A binary-input network takes bits (:func:`to_bits`); an integer-input one (the first layer
takes :attr:`~bnnflow.ir.InputSpec.levels`) takes the pixels themselves (:func:`to_pixels`);
:func:`to_inputs` gives whichever the network takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .ir import Network
from .reference import binarize

__all__ = ["InputError", "load_array", "to_bits", "to_pixels", "to_inputs"]


class InputError(ValueError):
    """An input array of the wrong shape, encoding or range."""


def load_array(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # ValueError for pickles and bad headers, OSError for truncation
        raise InputError(f"{path}: not a readable .npy array ({e})") from None


def to_bits(net: Network, x: np.ndarray, source: str = "inputs") -> np.ndarray:
    """Input bits ``(N, features)`` uint8 for any accepted encoding of ``x``."""
    if not net.input.binary:
        raise InputError(f"{source}: the network takes integer pixels, not bits (to_pixels)")
    x, is_bits = _decode(net, x, source)
    return x if is_bits else binarize(net, x)


def to_pixels(net: Network, x: np.ndarray, source: str = "inputs") -> np.ndarray:
    """Integer pixels ``(N, features)`` int64 in the IR's flat order, from pixels or floats."""
    x, is_bits = _decode(net, x, source)
    if is_bits:
        raise InputError(f"{source}: the network takes pixels in 0..{net.input.pixel_max}, not "
                         "input bits (bool/int8 arrays)")
    return x


def to_inputs(net: Network, x: np.ndarray, source: str = "inputs") -> np.ndarray:
    """:func:`to_bits` for a binary-input network, :func:`to_pixels` for an integer-input one."""
    return to_bits(net, x, source) if net.input.binary else to_pixels(net, x, source)


def _decode(net: Network, x: np.ndarray, source: str) -> tuple[np.ndarray, bool]:
    """``(N, features)`` bits (``True``) or checked integer pixels (``False``)."""
    spec = net.input
    x = np.asarray(x)
    def squeezed(shape):  # (1, 28, 28) and (28, 28) are the same image layout
        return tuple(d for d in shape if d != 1)

    if x.size == spec.size and squeezed(x.shape) == squeezed(spec.shape):  # a single image
        x = x.reshape((1, *spec.shape))

    if squeezed(x.shape[1:]) != squeezed(spec.shape) and (x.ndim != 2 or x.shape[1] != spec.size):
        raise InputError(f"{source}: shape {x.shape} does not match the network's input: expected "
                         f"(N, {', '.join(map(str, spec.shape))}) or (N, {spec.size})")
    x = x.reshape(len(x), -1)
    if x.dtype == np.bool_:
        return x.astype(np.uint8), True
    if x.dtype == np.int8:
        values = set(np.unique(x).tolist())
        if values <= {0, 1}:
            return x.astype(np.uint8), True
        if values <= {-1, 1}:
            return (x > 0).astype(np.uint8), True
        raise InputError(f"{source}: int8 arrays hold input bits (0/1 or -1/+1), found "
                         f"values {sorted(values)[:6]}")
    if np.issubdtype(x.dtype, np.floating):
        pixels = x.astype(np.float64) / spec.input_scale
        rounded = np.rint(pixels)
        if not np.all(np.abs(pixels - rounded) < 1e-3):
            raise InputError(f"{source}: float inputs must be pixels * {spec.input_scale:g} (the "
                             "model's input domain); these are not on that grid")
        x = rounded.astype(np.int64)
    elif not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"{source}: unsupported dtype {x.dtype}")
    if x.size and (x.min() < 0 or x.max() > spec.pixel_max):
        raise InputError(f"{source}: pixels must lie in 0..{spec.pixel_max}, found "
                         f"{x.min()}..{x.max()}")
    return x.astype(np.int64), False
