"""Folding: how many outputs (PE) and inputs (SIMD) of each layer run in parallel.

A dense layer with ``MH`` outputs and ``MW`` inputs folded by ``(pe, simd)`` takes
``(MH/pe) * (MW/simd)`` cycles per input vector; the pipeline's cycles per frame are the
slowest layer's (shared/DESIGN.md, performance model).

Convolutional networks: a conv layer's MVTU runs once per output pixel, ``OH*OW*(OC/pe)*(C*k*k
/simd)`` cycles per frame, with ``pe | OC`` and ``simd | C*k*k`` (SIMD may span kernel
positions). Its sliding window emits ``k*k*C/e`` beats per output pixel, where ``e`` is the
channels per beat of its input stream (the previous MVTU's PE, or the input elements per
``s_axis`` beat), so a conv layer costs ``OH*OW*max((OC/pe)*(C*k*k/simd), k*k*C/e)``. A max-pool
has no folding of its own (no entry in the folding file): it costs ``OH*OW*k*k*C/e``. A dense
layer after a conv or pool, or first in the network, also waits for its ``MW/e`` input beats
per vector.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .ir import Conv, Dense, MaxPool, Network

__all__ = ["DEFAULT_TARGET_CYCLES", "FoldingError", "LayerFold", "Folding", "default_folding",
           "divisors"]

#: Target cycles per frame of the default folding: every layer folded (neither fully parallel
#: nor fully serial) and the pipeline balanced around this figure.
DEFAULT_TARGET_CYCLES = 16


class FoldingError(ValueError):
    """A folding that does not fit the network."""


@dataclass(frozen=True)
class LayerFold:
    """PE (outputs) and SIMD (inputs) in parallel of one layer."""

    pe: int
    simd: int


def divisors(n: int) -> list[int]:
    """Divisors of ``n`` in increasing order."""
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class Folding:
    """Per-layer folding, keyed by layer name."""

    layers: dict[str, LayerFold]

    def __getitem__(self, name: str) -> LayerFold:
        return self.layers[name]

    def validate(self, net: Network, source: str = "folding") -> None:
        names = [layer.name for layer in net.layers if not isinstance(layer, MaxPool)]
        extra = set(self.layers) - set(names)
        if extra:
            raise FoldingError(f"{source}: unknown or unfoldable layer(s) {sorted(extra)}; "
                               f"foldable layers are {names}")
        for layer in net.layers:
            if isinstance(layer, MaxPool):
                continue
            if layer.name not in self.layers:
                raise FoldingError(f"{source}: no folding for layer {layer.name}")
            f = self.layers[layer.name]
            if f.pe < 1 or layer.out_channels % f.pe:
                raise FoldingError(f"{source}: layer {layer.name}: PE {f.pe} does not divide its "
                                   f"{layer.out_channels} outputs")
            if f.simd < 1 or layer.fan_in % f.simd:
                raise FoldingError(f"{source}: layer {layer.name}: SIMD {f.simd} does not divide "
                                   f"its {layer.fan_in} inputs")

    def layer_cycles(self, net: Network, in_elems: int | None = None) -> dict[str, int]:
        """Cycles per frame of every layer (see the module documentation).

        ``in_elems`` is the input elements (bits or pixels) per ``s_axis`` beat, which bounds a
        first conv layer's window; by default what an 8-bit beat holds.
        """
        elems = _default_in_elems(net) if in_elems is None else in_elems
        out, pixels = {}, True  # the first layer also waits for its input beats
        for layer, shape in zip(net.layers, net.shapes(), strict=False):
            if isinstance(layer, MaxPool):
                out[layer.name] = _window_cycles(layer, elems)
                continue
            f = self[layer.name]
            steps = (layer.out_channels // f.pe) * (layer.fan_in // f.simd)
            if isinstance(layer, Conv):
                _, oh, ow = layer.out_shape(shape)
                out[layer.name] = max(oh * ow * steps, _window_cycles(layer, elems))
                pixels = True
            else:
                out[layer.name] = max(steps, -(-layer.fan_in // elems)) if pixels else steps
                pixels = False
            elems = f.pe
        return out

    def cycles_per_frame(self, net: Network, in_elems: int | None = None) -> int:
        """The slowest layer's cycles: the pipeline's cycles per frame."""
        return max(self.layer_cycles(net, in_elems).values())

    def to_json(self) -> dict:
        return {name: {"pe": f.pe, "simd": f.simd} for name, f in self.layers.items()}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, net: Network) -> Folding:
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise FoldingError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FoldingError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(doc, dict):
            raise FoldingError(f"{path}: expected an object {{layer: {{pe, simd}}}}")
        layers = {}
        for name, f in doc.items():
            try:
                layers[name] = LayerFold(int(f["pe"]), int(f["simd"]))
            except (TypeError, KeyError, ValueError):
                raise FoldingError(f"{path}: layer {name}: expected {{\"pe\": int, \"simd\": int}}"
                                   ) from None
        folding = cls(layers)
        folding.validate(net, str(path))
        return folding


def _default_in_elems(net: Network) -> int:
    """Input elements per 8-bit ``s_axis`` beat: 8 bits, or one 8-bit pixel."""
    return 8 if net.input.binary else max(1, 8 // (8 * -(-net.input.pixel_max.bit_length() // 8)))


def _window_cycles(layer, elems: int) -> int:
    """Beats a sliding window emits per frame with ``elems`` channels per beat."""
    c, _, _ = layer.in_shape
    _, oh, ow = layer.out_shape(layer.in_shape)
    return oh * ow * layer.kernel ** 2 * -(-c // elems)


def default_folding(net: Network, target_cycles: int = DEFAULT_TARGET_CYCLES,
                    in_elems: int | None = None) -> Folding:
    """The smallest folding of each layer that meets ``target_cycles`` per frame.

    Each layer gets the fewest lanes (``pe*simd``) whose cycle count is at most the target,
    folded in both directions where it can be (``simd < MW`` and ``pe < MH``), then preferring
    wider SIMD, since inputs are cheaper to widen than outputs. A layer is never fully parallel:
    it keeps at least two cycles per vector where it has more than one weight.

    A network with conv or pool layers is folded by :func:`_conv_folding` instead, with
    ``in_elems`` input elements per beat (see :meth:`Folding.layer_cycles`).
    """
    elems = _default_in_elems(net) if in_elems is None else in_elems
    if not all(isinstance(layer, Dense) for layer in net.layers):
        return _conv_folding(net, target_cycles, elems)
    # No layer needs to be faster than the input stream can feed the first one.
    target_cycles = max(target_cycles, -(-net.layers[0].in_features // elems))
    layers = {}
    for layer in net.layers:
        mh, mw = layer.out_features, layer.in_features
        best = None
        for pe in divisors(mh):
            for simd in divisors(mw):
                cycles = (mh // pe) * (mw // simd)
                if cycles > target_cycles or (cycles == 1 and mh * mw > 1):
                    continue
                key = (pe * simd, simd == mw, pe == mh, pe, -simd)
                if best is None or key < best[0]:
                    best = (key, LayerFold(pe, simd))
        if best is None:  # the target is below two cycles: take the fastest folded choice
            best = (None, LayerFold(mh, mw // 2) if mw % 2 == 0 else LayerFold(mh // 2, mw))
        layers[layer.name] = best[1]
    return Folding(layers)


def _conv_folding(net: Network, target: int, in_elems: int) -> Folding:
    """Default folding of a conv network, layer by layer in pipeline order.

    The target is raised to what the first layer's input allows (its window at ``in_elems``
    elements per beat). Each layer then takes the fewest lanes whose own cycles, and those of
    the window, pool or dense fill that consume its ``pe``-channel beats, meet the target; where
    nothing meets it, the fastest choice.
    """
    first = net.layers[0]
    if isinstance(first, Conv):
        target = max(target, _window_cycles(first, in_elems))
    shapes = net.shapes()
    layers = {}
    for i, layer in enumerate(net.layers):
        if isinstance(layer, MaxPool):
            continue
        consumers = []
        for nxt in net.layers[i + 1:]:
            consumers.append(nxt)
            if not isinstance(nxt, MaxPool):
                break
        pixels = 1
        if isinstance(layer, Conv):
            _, oh, ow = layer.out_shape(shapes[i])
            pixels = oh * ow
        mh, mw = layer.out_channels, layer.fan_in
        best = None
        for pe in divisors(mh):
            down = 0
            for nxt in consumers:
                if isinstance(nxt, Dense):
                    down = max(down, -(-nxt.fan_in // pe))
                else:
                    down = max(down, _window_cycles(nxt, pe))
            for simd in divisors(mw):
                steps = (mh // pe) * (mw // simd)
                cycles = max(pixels * steps, down)
                ok = cycles <= target and not (steps == 1 and mh * mw > 1)
                key = (not ok, cycles if not ok else 0, pe * simd, simd == mw, pe == mh, pe,
                       -simd)
                if best is None or key < best[0]:
                    best = (key, LayerFold(pe, simd))
        layers[layer.name] = best[1]
    return Folding(layers)
