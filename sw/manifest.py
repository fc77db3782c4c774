"""The build manifest: what a compiled build is, for the tools and the host driver.

``BUILD/manifest.json`` records the design ID (a hash of the IR, the folding and the generator
version), the input and output geometry, and the files of the build. The driver reads it to
check that the design it talks to is the one it was given, and never imports the generators.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import GENERATOR_VERSION
from .folding import Folding
from .ir import Network

__all__ = ["Manifest", "ManifestError", "design_id"]

DESIGN_ID_BYTES = 8


class ManifestError(ValueError):
    """A build folder without a readable manifest."""


def design_id(net: Network, folding: Folding) -> bytes:
    """Hash of (IR structure and arrays, folding, generator version), 8 bytes."""
    h = hashlib.sha256()
    h.update(json.dumps(net.to_json(), sort_keys=True).encode())
    for key, array in sorted(net.arrays().items()):
        h.update(key.encode())
        h.update(np.ascontiguousarray(array).tobytes())
    h.update(json.dumps(folding.to_json(), sort_keys=True).encode())
    h.update(GENERATOR_VERSION.encode())
    return h.digest()[:DESIGN_ID_BYTES]


@dataclass(frozen=True)
class Manifest:
    design_id: str  # hex
    name: str
    n_inputs: int
    input_shape: tuple[int, ...]
    pixel_max: int
    input_scale: float
    binarize_threshold: int
    num_classes: int
    in_width: int
    sim_divisor: int
    cycles_per_frame: int
    generator_version: str = GENERATOR_VERSION

    def save(self, build: str | Path) -> None:
        doc = asdict(self)
        doc["input_shape"] = list(self.input_shape)
        (Path(build) / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, build: str | Path) -> Manifest:
        path = Path(build) / "manifest.json"
        if not path.is_file():
            raise ManifestError(f"{path}: no such file (is {build} a `bnnflow compile` output?)")
        try:
            doc = json.loads(path.read_text())
            doc["input_shape"] = tuple(doc["input_shape"])
            return cls(**doc)
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise ManifestError(f"{path}: malformed manifest ({e})") from None

    @property
    def design_id_bytes(self) -> bytes:
        return bytes.fromhex(self.design_id)
