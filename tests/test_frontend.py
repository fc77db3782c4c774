"""QONNX import: our exports (with gamma < 0, gamma == 0 and exact ties forced in) and errors."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from bnnflow import datasets
from bnnflow.frontend import FrontendError, import_qonnx
from bnnflow.reference import run
from bnnflow.train import TrainConfig, export, torch_scores, train
from bnnflow.verify import qonnx_scores


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A briefly trained digits TFC with awkward BatchNorm channels, exported to QONNX."""
    ds = datasets.load("digits")
    model = train(ds, TrainConfig(epochs=3, progress=False)).model
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    with torch.no_grad():
        bn = bns[0]
        bn.weight[0:4] = torch.tensor([-1.5, -0.3, 0.0, 0.0])  # gamma < 0, gamma == 0
        bn.bias[2:4] = torch.tensor([0.0, -0.25])  # sign(0) = +1, and constant -1
        bn.running_mean[4:8] = torch.tensor([0.0, 2.0, -4.0, 10.0])  # reachable: exact ties
        bn.bias[4:8] = 0.0
        bn.weight[4:8] = torch.tensor([1.0, -1.0, 1.5, -0.7])
    path = tmp_path_factory.mktemp("qonnx") / "model.onnx"
    export(model, ds, path, "tfc")
    return ds, model, path


def test_import_is_bit_exact_with_torch_and_qonnx(exported):
    ds, model, path = exported
    net = import_qonnx(path)
    assert net.input.binarize_threshold == 8 and net.input.pixel_max == 16
    assert [layer.weights.shape for layer in net.layers] == [(64, 64)] * 3 + [(10, 64)]
    th = net.layers[0].thresholds
    assert th.invert[0] and th.invert[1] and not th.invert[4]
    assert (th.t[2], th.invert[2]) == (0, False) and (th.t[3], th.invert[3]) == (0, True)
    # Random pixels too, so hidden popcounts spread over many values, ties included.
    x = np.concatenate([ds.x_test, np.random.default_rng(0).integers(0, 17, (300, 64))])
    ref = run(net, x)
    t_scores = torch_scores(model, ds, x)
    assert np.array_equal(ref.scores, t_scores.astype(np.int64))
    assert np.array_equal(ref.classes, t_scores.argmax(1))
    q = qonnx_scores(path, x[:120].astype(np.float32) / np.float32(16))
    assert np.array_equal(ref.scores[:120], q.astype(np.int64))


def test_exact_ties_reached_in_hidden_layer(exported):
    """Channel 4 ties at dot == 0: inputs that hit it must give +1, as PyTorch does."""
    ds, model, path = exported
    net = import_qonnx(path)
    layer = net.layers[0]
    bits = (ds.x_test >= 8).astype(np.int64)
    dots = (2 * bits - 1) @ (2 * layer.weights[4].astype(np.int64) - 1)
    c = (dots + 64) // 2
    assert (dots == 0).any(), "the data should reach the tie"
    out = (c >= layer.thresholds.t[4]) != layer.thresholds.invert[4]
    assert np.all(out[dots == 0] == 1)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FrontendError, match="nope.onnx: no such file"):
        import_qonnx(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(FrontendError, match="bad.onnx: not a readable ONNX model"):
        import_qonnx(bad)


def test_unsupported_op_names_the_node(tmp_path, exported):
    _, _, path = exported
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    relu = helper.make_node("Relu", [node.output[0]], [node.output[0] + "_relu"], name="MyRelu")
    for other in model.graph.node:
        for i, name in enumerate(other.input):
            if name == node.output[0]:
                other.input[i] = relu.output[0]
    model.graph.node.insert(list(model.graph.node).index(node) + 1, relu)
    bad = tmp_path / "relu.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(FrontendError, match=r"relu.onnx: node 'MyRelu' \(Relu\): unsupported op"):
        import_qonnx(bad)


def test_float_weights_are_rejected(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], [0.1, -0.3, 0.5, 1, 1, 1, -1, 2])
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("BipolarQuant", ["x", "s"], ["b"], domain="qonnx.custom_op.general"),
             helper.make_node("MatMul", ["b", "w"], ["y"], name="fc")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w, s]))
    path = tmp_path / "float.onnx"
    onnx.save(model, str(path))
    with pytest.raises(FrontendError, match=r"node 'fc' \(MatMul\): weights are not binary"):
        import_qonnx(path)
