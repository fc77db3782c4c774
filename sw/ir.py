"""The bnnflow intermediate representation (IR).

The IR declares *what* a binarized network computes; the reference executor
(:mod:`bnnflow.reference`) and the hardware generator (:mod:`bnnflow.hw`) both consume it.
It is frozen (dataclasses with ``frozen=True`` and read-only arrays) and versioned on disk:
``network.json`` holds the structure and ``weights.npz`` the arrays, loaded with
``allow_pickle=False``.

Bit conventions (shared/DESIGN.md): +1 is bit 1, -1 is bit 0, ``sign(0) = +1``. A binary
dense layer with ``n`` inputs computes ``popcount(xnor(x, w))``; its dot product is
``2*popcount - n``. Hidden layers end in per-channel thresholds on the popcount::

    out_bit = (popcount >= t) XOR invert

which covers gamma > 0 (``invert = 0``), gamma < 0 (``invert = 1``) and constant channels
(``t = 0``: always 1 with ``invert = 0``, always 0 with ``invert = 1``).

Layers: :class:`Dense`, :class:`Conv` (k x k, stride, padding with a stated pad value) and
:class:`MaxPool` (on binary activations max is OR). Activations between layers are laid out
channel-first, ``(C, H, W)``, and flattened in that order before a dense layer (PyTorch's
order). The first layer may take *integer* inputs: each pixel maps to an integer level
(:attr:`InputSpec.levels`, e.g. an 8-bit input quantizer) and the accumulator is the signed sum
``sum(level * w)`` with ``w`` in {-1, +1}; its thresholds are then on that sum, not a popcount.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "IRError",
    "InputSpec",
    "Thresholds",
    "Dense",
    "Conv",
    "MaxPool",
    "Network",
]

SCHEMA_VERSION = 1


class IRError(ValueError):
    """An IR that is malformed, inconsistent or of another schema version."""


def _frozen(array, dtype) -> np.ndarray:
    out = np.array(array, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class InputSpec:
    """What the network takes in.

    Parameters
    ----------
    shape
        Shape of one input, ``(features,)`` for an MLP.
    pixel_max
        Input pixels are integers in ``0..pixel_max`` (16 for scikit-learn digits, 255 for
        8-bit images).
    input_scale
        The trained model sees ``pixel * input_scale`` (1/16 for digits, 1/255 for images as
        torchvision's ``ToTensor`` makes them).
    binarize_threshold
        For binary-input networks, a pixel becomes bit 1 (+1) iff ``pixel >= binarize_threshold``.
        Derived by evaluating the model's own input quantizer on every pixel value.
    """

    shape: tuple[int, ...]
    pixel_max: int
    input_scale: float
    binarize_threshold: int | None
    levels: tuple[int, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if not self.shape or any(s <= 0 for s in self.shape):
            raise IRError(f"input: shape {self.shape} must be non-empty and positive")
        if self.pixel_max < 1:
            raise IRError(f"input: pixel_max {self.pixel_max} must be >= 1")
        if (self.binarize_threshold is None) == (self.levels is None):
            raise IRError("input: give exactly one of binarize_threshold (binary input) and "
                          "levels (integer input)")
        if self.levels is not None:
            object.__setattr__(self, "levels", tuple(int(v) for v in self.levels))
            if len(self.levels) != self.pixel_max + 1:
                raise IRError(f"input: {len(self.levels)} levels for pixels 0..{self.pixel_max}")

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def binary(self) -> bool:
        return self.binarize_threshold is not None

    @property
    def max_level(self) -> int:
        """Largest ``|level|`` of an integer input (1 for a binary one)."""
        return max(abs(v) for v in self.levels) if self.levels is not None else 1


@dataclass(frozen=True, eq=False)
class Thresholds:
    """Per-channel thresholds on a popcount: ``out = (popcount >= t) XOR invert``."""

    t: np.ndarray
    invert: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "t", _frozen(self.t, np.int64))
        object.__setattr__(self, "invert", _frozen(self.invert, np.bool_))
        if self.t.ndim != 1 or self.t.shape != self.invert.shape:
            raise IRError(f"thresholds: t {self.t.shape} and invert {self.invert.shape} differ")

    def apply(self, popcount: np.ndarray) -> np.ndarray:
        """Output bits (uint8) for integer popcounts of shape ``(..., channels)``."""
        return ((popcount >= self.t) != self.invert).astype(np.uint8)


def _check_weights(name, w, ndim):
    if w.ndim != ndim or 0 in w.shape:
        raise IRError(f"layer {name}: weights must be a non-empty {ndim}-D array, got {w.shape}")
    if np.any(w > 1):
        raise IRError(f"layer {name}: weights must be bits (0 for -1, 1 for +1)")


def _check_thresholds(layer) -> None:
    t = layer.thresholds
    if t is None:
        return
    if t.t.shape != (layer.out_channels,):
        raise IRError(f"layer {layer.name}: {t.t.shape[0]} thresholds for {layer.out_channels} "
                      "outputs")
    if not layer.integer_input and (np.any(t.t < 0) or np.any(t.t > layer.fan_in + 1)):
        raise IRError(f"layer {layer.name}: thresholds outside 0..{layer.fan_in + 1}")


@dataclass(frozen=True, eq=False)
class Dense:
    """A binary fully connected layer.

    Parameters
    ----------
    name
        Unique layer name.
    weights
        ``(out_features, in_features)`` array of bits, 1 for +1 and 0 for -1.
    thresholds
        Per-output thresholds on the accumulator, or ``None`` for the final layer, which emits
        integer scores ``2*popcount - in_features``.
    integer_input
        The inputs are the integer levels of :class:`InputSpec` (first layer only); the
        accumulator is ``sum(level * w)`` instead of a popcount.
    """

    name: str
    weights: np.ndarray
    thresholds: Thresholds | None
    integer_input: bool = False

    def __post_init__(self):
        object.__setattr__(self, "weights", _frozen(self.weights, np.uint8))
        _check_weights(self.name, self.weights, 2)
        _check_thresholds(self)

    @property
    def out_features(self) -> int:
        return int(self.weights.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.weights.shape[1])

    out_channels = out_features
    fan_in = in_features

    @property
    def is_scores(self) -> bool:
        return self.thresholds is None

    def out_shape(self, in_shape) -> tuple[int, ...]:
        if int(np.prod(in_shape)) != self.in_features:
            raise IRError(f"layer {self.name}: takes {self.in_features} inputs but receives "
                          f"{int(np.prod(in_shape))} {tuple(in_shape)}")
        return (self.out_features,)


@dataclass(frozen=True, eq=False)
class Conv:
    """A binary k x k convolution over a ``(C, H, W)`` input.

    Parameters
    ----------
    weights
        ``(out_channels, in_channels, k, k)`` bits.
    in_shape
        ``(C, H, W)`` of the input.
    stride, padding
        As in PyTorch (square).
    pad_value
        The value a padded input position takes: -1 or +1 for binary inputs (bnnflow's models
        pad binary activations explicitly with -1, since zero is not a binary value), 0 for an
        integer-input layer (the integer level 0).
    """

    name: str
    weights: np.ndarray
    thresholds: Thresholds | None
    in_shape: tuple[int, int, int]
    stride: int = 1
    padding: int = 0
    pad_value: int = -1
    integer_input: bool = False

    def __post_init__(self):
        object.__setattr__(self, "weights", _frozen(self.weights, np.uint8))
        object.__setattr__(self, "in_shape", tuple(int(v) for v in self.in_shape))
        _check_weights(self.name, self.weights, 4)
        oc, ic, kh, kw = self.weights.shape
        if kh != kw:
            raise IRError(f"layer {self.name}: only square kernels, got {kh}x{kw}")
        if len(self.in_shape) != 3 or self.in_shape[0] != ic:
            raise IRError(f"layer {self.name}: input {self.in_shape} does not have the weights' "
                          f"{ic} channels")
        allowed = (0,) if self.integer_input else (-1, 1)
        if self.padding and self.pad_value not in allowed:
            raise IRError(f"layer {self.name}: pad_value {self.pad_value} must be one of "
                          f"{allowed}")
        if self.stride < 1 or self.padding < 0 or min(self.out_shape(self.in_shape)[1:]) < 1:
            raise IRError(f"layer {self.name}: kernel {kh}, stride {self.stride}, padding "
                          f"{self.padding} do not fit input {self.in_shape}")
        _check_thresholds(self)

    @property
    def kernel(self) -> int:
        return int(self.weights.shape[2])

    @property
    def out_channels(self) -> int:
        return int(self.weights.shape[0])

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.weights.shape[1:]))

    @property
    def is_scores(self) -> bool:
        return self.thresholds is None

    def out_shape(self, in_shape) -> tuple[int, int, int]:
        if tuple(in_shape) != self.in_shape:
            raise IRError(f"layer {self.name}: expects input {self.in_shape}, receives "
                          f"{tuple(in_shape)}")
        _, h, w = self.in_shape
        k, s, p = self.kernel, self.stride, self.padding
        return (self.out_channels, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)


@dataclass(frozen=True, eq=False)
class MaxPool:
    """Max-pooling of binary activations (max of +/-1 is OR of the bits); no padding."""

    name: str
    in_shape: tuple[int, int, int]
    kernel: int
    stride: int

    def __post_init__(self):
        object.__setattr__(self, "in_shape", tuple(int(v) for v in self.in_shape))
        if len(self.in_shape) != 3 or self.kernel < 1 or self.stride < 1 \
                or min(self.in_shape[1:]) < self.kernel:
            raise IRError(f"layer {self.name}: pool {self.kernel}/{self.stride} does not fit "
                          f"input {self.in_shape}")

    thresholds = None
    is_scores = False
    integer_input = False

    def out_shape(self, in_shape) -> tuple[int, int, int]:
        if tuple(in_shape) != self.in_shape:
            raise IRError(f"layer {self.name}: expects input {self.in_shape}, receives "
                          f"{tuple(in_shape)}")
        c, h, w = self.in_shape
        return (c, (h - self.kernel) // self.stride + 1, (w - self.kernel) // self.stride + 1)


Layer = Dense | Conv | MaxPool
_KINDS = {"dense": Dense, "conv": Conv, "maxpool": MaxPool}


@dataclass(frozen=True, eq=False)
class Network:
    """A whole binarized network: an input spec, hidden layers, and a final scores layer."""

    input: InputSpec
    layers: tuple[Layer, ...]
    name: str = "network"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            raise IRError("network: no layers")
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise IRError(f"network: layer names are not unique: {names}")
        shape = self.input.shape
        for i, layer in enumerate(self.layers):
            shape = layer.out_shape(shape)
            if layer.integer_input != (i == 0 and not self.input.binary):
                raise IRError(f"layer {layer.name}: only the first layer of an integer-input "
                              "network takes integer inputs")
            last = i == len(self.layers) - 1
            if last and not (isinstance(layer, Dense) and layer.is_scores):
                raise IRError(f"layer {layer.name}: the final layer must be a dense layer that "
                              "emits scores")
            if not last and layer.is_scores:
                raise IRError(f"layer {layer.name}: a hidden layer must end in thresholds")

    @property
    def num_classes(self) -> int:
        return self.layers[-1].out_features

    def shapes(self) -> list[tuple[int, ...]]:
        """Input shape of every layer, then the output shape."""
        out = [self.input.shape]
        for layer in self.layers:
            out.append(layer.out_shape(out[-1]))
        return out

    # -- serialization -------------------------------------------------------------------

    def to_json(self) -> dict:
        layers = []
        for layer in self.layers:
            kind = {Dense: "dense", Conv: "conv", MaxPool: "maxpool"}[type(layer)]
            doc = {"kind": kind, "name": layer.name}
            if kind == "dense":
                doc.update(in_features=layer.in_features, out_features=layer.out_features)
            if kind in ("conv", "maxpool"):
                doc["in_shape"] = list(layer.in_shape)
            if kind == "conv":
                doc.update(out_channels=layer.out_channels, kernel=layer.kernel,
                           stride=layer.stride, padding=layer.padding, pad_value=layer.pad_value)
            if kind == "maxpool":
                doc.update(kernel=layer.kernel, stride=layer.stride)
            else:
                doc["output"] = "scores" if layer.is_scores else "thresholds"
                doc["integer_input"] = layer.integer_input
            layers.append(doc)
        spec = self.input
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "input": {
                "shape": list(spec.shape),
                "pixel_max": spec.pixel_max,
                "input_scale": spec.input_scale,
                "binarize_threshold": spec.binarize_threshold,
                "levels": None if spec.levels is None else list(spec.levels),
            },
            "layers": layers,
            "metadata": self.metadata,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, MaxPool):
                continue
            out[f"{i}.weights"] = np.asarray(layer.weights)
            if layer.thresholds is not None:
                out[f"{i}.t"] = np.asarray(layer.thresholds.t)
                out[f"{i}.invert"] = np.asarray(layer.thresholds.invert)
        return out

    def save(self, directory: str | Path) -> None:
        """Write ``network.json`` and ``weights.npz`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "network.json").write_text(json.dumps(self.to_json(), indent=2) + "\n")
        np.savez(directory / "weights.npz", **self.arrays())

    @classmethod
    def load(cls, directory: str | Path) -> Network:
        """Read a network saved by :meth:`save`; any inconsistency raises :class:`IRError`."""
        directory = Path(directory)
        jpath, wpath = directory / "network.json", directory / "weights.npz"
        for p in (jpath, wpath):
            if not p.is_file():
                raise IRError(f"{p}: no such file (expected a compiled bnnflow build)")
        try:
            doc = json.loads(jpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IRError(f"{jpath}: not valid JSON ({e})") from None
        version = doc.get("schema_version") if isinstance(doc, dict) else None
        if version != SCHEMA_VERSION:
            raise IRError(f"{jpath}: schema_version {version!r}, this bnnflow reads "
                          f"{SCHEMA_VERSION}")
        try:
            with np.load(wpath, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except Exception as e:  # zipfile, pickle and format errors all mean "corrupt"
            raise IRError(f"{wpath}: cannot read weights ({e})") from None
        try:
            spec = doc["input"]
            inp = InputSpec(tuple(spec["shape"]), int(spec["pixel_max"]),
                            float(spec["input_scale"]), spec["binarize_threshold"],
                            spec.get("levels"))
            layers = [_load_layer(i, ldoc, arrays, jpath, wpath)
                      for i, ldoc in enumerate(doc["layers"])]
            return cls(inp, tuple(layers), doc.get("name", "network"), doc.get("metadata", {}))
        except KeyError as e:
            raise IRError(f"{directory}: missing field or array {e}") from None
        except IRError as e:
            raise IRError(f"{directory}: {e}") from None


def _load_layer(i, ldoc, arrays, jpath, wpath):
    kind = ldoc["kind"]
    if kind not in _KINDS:
        raise IRError(f"{jpath}: layer {i} has unknown kind {kind!r}")
    if kind == "maxpool":
        return MaxPool(ldoc["name"], tuple(ldoc["in_shape"]), ldoc["kernel"], ldoc["stride"])
    w = arrays[f"{i}.weights"]
    if kind == "dense":
        expected = (ldoc["out_features"], ldoc["in_features"])
    else:
        k = ldoc["kernel"]
        expected = (ldoc["out_channels"], ldoc["in_shape"][0], k, k)
    if w.shape != tuple(expected):
        raise IRError(f"{wpath}: layer {ldoc['name']} weights are {w.shape}, {jpath} says "
                      f"{tuple(expected)}")
    th = None
    if ldoc["output"] == "thresholds":
        th = Thresholds(arrays[f"{i}.t"], arrays[f"{i}.invert"])
    integer = bool(ldoc.get("integer_input", False))
    if kind == "dense":
        return Dense(ldoc["name"], w, th, integer)
    return Conv(ldoc["name"], w, th, tuple(ldoc["in_shape"]), ldoc["stride"], ldoc["padding"],
                ldoc["pad_value"], integer)
