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

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if not self.shape or any(s <= 0 for s in self.shape):
            raise IRError(f"input: shape {self.shape} must be non-empty and positive")
        if self.pixel_max < 1:
            raise IRError(f"input: pixel_max {self.pixel_max} must be >= 1")
        if self.binarize_threshold is None:
            raise IRError("input: integer-input first layers are not supported by this IR version")

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def binary(self) -> bool:
        return self.binarize_threshold is not None


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


@dataclass(frozen=True, eq=False)
class Dense:
    """A binary fully connected layer.

    Parameters
    ----------
    name
        Unique layer name (the ONNX node it came from, where known).
    weights
        ``(out_features, in_features)`` array of bits, 1 for +1 and 0 for -1.
    thresholds
        Per-output thresholds on the popcount, or ``None`` for the final layer, which emits
        integer scores ``2*popcount - in_features``.
    """

    name: str
    weights: np.ndarray
    thresholds: Thresholds | None

    def __post_init__(self):
        object.__setattr__(self, "weights", _frozen(self.weights, np.uint8))
        w = self.weights
        if w.ndim != 2 or 0 in w.shape:
            raise IRError(f"layer {self.name}: weights must be a non-empty 2-D array, "
                          f"got {w.shape}")
        if np.any(w > 1):
            raise IRError(f"layer {self.name}: weights must be bits (0 for -1, 1 for +1)")
        if self.thresholds is not None:
            t = self.thresholds
            if t.t.shape != (self.out_features,):
                raise IRError(
                    f"layer {self.name}: {t.t.shape[0]} thresholds for {self.out_features} outputs"
                )
            if np.any(t.t < 0) or np.any(t.t > self.in_features + 1):
                raise IRError(f"layer {self.name}: thresholds outside 0..{self.in_features + 1}")

    @property
    def out_features(self) -> int:
        return int(self.weights.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.weights.shape[1])

    @property
    def is_scores(self) -> bool:
        return self.thresholds is None


Layer = Dense


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
        width = self.input.size
        for i, layer in enumerate(self.layers):
            if layer.in_features != width:
                raise IRError(
                    f"layer {layer.name}: takes {layer.in_features} inputs but receives {width}"
                )
            last = i == len(self.layers) - 1
            if layer.is_scores != last:
                what = "must end in thresholds" if not last else "must emit scores"
                raise IRError(f"layer {layer.name}: {'the final' if last else 'a hidden'} layer "
                              f"{what}")
            width = layer.out_features

    @property
    def num_classes(self) -> int:
        return self.layers[-1].out_features

    # -- serialization -------------------------------------------------------------------

    def to_json(self) -> dict:
        layers = []
        for layer in self.layers:
            layers.append({
                "kind": "dense",
                "name": layer.name,
                "in_features": layer.in_features,
                "out_features": layer.out_features,
                "output": "scores" if layer.is_scores else "thresholds",
            })
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "input": {
                "shape": list(self.input.shape),
                "pixel_max": self.input.pixel_max,
                "input_scale": self.input.input_scale,
                "binarize_threshold": self.input.binarize_threshold,
            },
            "layers": layers,
            "metadata": self.metadata,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for i, layer in enumerate(self.layers):
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
                            float(spec["input_scale"]), spec["binarize_threshold"])
            layers = []
            for i, ldoc in enumerate(doc["layers"]):
                if ldoc["kind"] != "dense":
                    raise IRError(f"{jpath}: layer {i} has unknown kind {ldoc['kind']!r}")
                w = arrays[f"{i}.weights"]
                if w.shape != (ldoc["out_features"], ldoc["in_features"]):
                    raise IRError(f"{wpath}: layer {ldoc['name']} weights are {w.shape}, "
                                  f"{jpath} says ({ldoc['out_features']}, {ldoc['in_features']})")
                th = None
                if ldoc["output"] == "thresholds":
                    th = Thresholds(arrays[f"{i}.t"], arrays[f"{i}.invert"])
                layers.append(Dense(ldoc["name"], w, th))
            return cls(inp, tuple(layers), doc.get("name", "network"), doc.get("metadata", {}))
        except KeyError as e:
            raise IRError(f"{directory}: missing field or array {e}") from None
        except IRError as e:
            raise IRError(f"{directory}: {e}") from None
