import json

import numpy as np
import pytest
from netutil import random_net

from bnnflow.ir import Dense, InputSpec, IRError, Network, Thresholds


def test_save_load_roundtrip(tmp_path):
    net = random_net()
    net.save(tmp_path)
    back = Network.load(tmp_path)
    assert back.to_json() == net.to_json()
    for a, b in zip(net.layers, back.layers, strict=True):
        assert np.array_equal(a.weights, b.weights)
        if a.thresholds is not None:
            assert np.array_equal(a.thresholds.t, b.thresholds.t)
            assert np.array_equal(a.thresholds.invert, b.thresholds.invert)


def test_arrays_are_frozen():
    net = random_net()
    with pytest.raises(ValueError):
        net.layers[0].weights[0, 0] = 1


def test_other_schema_version_is_rejected(tmp_path):
    random_net().save(tmp_path)
    doc = json.loads((tmp_path / "network.json").read_text())
    doc["schema_version"] = 99
    (tmp_path / "network.json").write_text(json.dumps(doc))
    with pytest.raises(IRError, match="schema_version 99"):
        Network.load(tmp_path)


def test_inconsistent_shapes_are_rejected(tmp_path):
    random_net().save(tmp_path)
    doc = json.loads((tmp_path / "network.json").read_text())
    doc["layers"][1]["out_features"] = 31
    (tmp_path / "network.json").write_text(json.dumps(doc))
    with pytest.raises(IRError, match="fc1 weights are"):
        Network.load(tmp_path)


def test_corrupt_weights_file(tmp_path):
    random_net().save(tmp_path)
    (tmp_path / "weights.npz").write_bytes(b"not a zip")
    with pytest.raises(IRError, match="weights.npz: cannot read weights"):
        Network.load(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(IRError, match="network.json: no such file"):
        Network.load(tmp_path)


def test_layer_chain_is_checked():
    spec = InputSpec((8,), 16, 1 / 16, 8)
    a = Dense("a", np.ones((4, 8)), Thresholds(np.zeros(4), np.zeros(4)))
    b = Dense("b", np.ones((3, 5)), None)
    with pytest.raises(IRError, match="layer b: takes 5 inputs but receives 4"):
        Network(spec, [a, b])
    with pytest.raises(IRError, match="final layer must be a dense layer that emits scores"):
        Network(spec, [a])


def test_threshold_range_is_checked():
    with pytest.raises(IRError, match="thresholds outside 0..9"):
        Dense("x", np.ones((2, 8)), Thresholds([0, 10], [False, False]))
