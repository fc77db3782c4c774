"""Folding: how many outputs (PE) and inputs (SIMD) of each layer run in parallel.

A dense layer with ``MH`` outputs and ``MW`` inputs folded by ``(pe, simd)`` takes
``(MH/pe) * (MW/simd)`` cycles per input vector; the pipeline's cycles per frame are the
slowest layer's (shared/DESIGN.md, performance model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .ir import Network

__all__ = ["DEFAULT_TARGET_CYCLES", "FoldingError", "LayerFold", "Folding", "default_folding",
           "divisors"]

#: Target cycles per frame of the default folding: every layer folded (neither fully parallel
#: nor fully serial) and the pipeline balanced around this figure.
DEFAULT_TARGET_CYCLES = 16


class FoldingError(ValueError):
    """A folding that does not fit the network."""


@dataclass(frozen=True)
class LayerFold:
    pe: int
    simd: int


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class Folding:
    """Per-layer folding, keyed by layer name."""

    layers: dict[str, LayerFold]

    def __getitem__(self, name: str) -> LayerFold:
        return self.layers[name]

    def validate(self, net: Network, source: str = "folding") -> None:
        names = [layer.name for layer in net.layers]
        extra = set(self.layers) - set(names)
        if extra:
            raise FoldingError(f"{source}: unknown layer(s) {sorted(extra)}; layers are {names}")
        for layer in net.layers:
            if layer.name not in self.layers:
                raise FoldingError(f"{source}: no folding for layer {layer.name}")
            f = self.layers[layer.name]
            if f.pe < 1 or layer.out_features % f.pe:
                raise FoldingError(f"{source}: layer {layer.name}: PE {f.pe} does not divide its "
                                   f"{layer.out_features} outputs")
            if f.simd < 1 or layer.in_features % f.simd:
                raise FoldingError(f"{source}: layer {layer.name}: SIMD {f.simd} does not divide "
                                   f"its {layer.in_features} inputs")

    def layer_cycles(self, net: Network) -> dict[str, int]:
        return {
            layer.name: (layer.out_features // self[layer.name].pe)
            * (layer.in_features // self[layer.name].simd)
            for layer in net.layers
        }

    def cycles_per_frame(self, net: Network) -> int:
        return max(self.layer_cycles(net).values())

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


def default_folding(net: Network, target_cycles: int = DEFAULT_TARGET_CYCLES) -> Folding:
    """The smallest folding of each layer that meets ``target_cycles`` per frame.

    Each layer gets the fewest lanes (``pe*simd``) whose cycle count is at most the target,
    folded in both directions where it can be (``simd < MW`` and ``pe < MH``), then preferring
    wider SIMD, since inputs are cheaper to widen than outputs. A layer is never fully parallel:
    it keeps at least two cycles per vector where it has more than one weight.
    """
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
