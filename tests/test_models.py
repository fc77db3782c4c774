"""The model zoo: topologies, QONNX export, bit-exact import into the IR, compile's clear
refusal of the conv nets, and the digits TFC's accuracy with the default training config."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear

from bnnflow import datasets
from bnnflow.datasets import Dataset
from bnnflow.frontend import import_qonnx
from bnnflow.models import MODELS, BinaryConvNet, BinaryMLP, Methods, build_model
from bnnflow.reference import run
from bnnflow.train import TrainConfig, export, torch_scores, train


def fake_dataset(shape, n=24, seed=0) -> Dataset:
    """8-bit images of ``shape`` with random labels (enough to export and compare)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape)).astype(np.uint8)
    y = rng.integers(0, 10, n).astype(np.int64)
    return Dataset("fake", x, y, x, y, pixel_max=255, num_classes=10)


def randomize_batchnorm(model, seed=0):
    """Spread the thresholds over the reachable popcounts, as trained statistics would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 4)
                m.running_var.copy_(torch.rand(n, generator=gen) * 20 + 1)
                m.weight.copy_(torch.randn(n, generator=gen))
                m.bias.copy_(torch.randn(n, generator=gen) * 0.5)


def widths(model):
    return [(m.in_features, m.out_features) for m in model.modules()
            if isinstance(m, QuantLinear)]


@pytest.mark.parametrize("name, hidden", [("tfc", 64), ("sfc", 256), ("lfc", 1024)])
def test_mlp_topologies_take_in_features_from_the_dataset(name, hidden):
    assert widths(build_model(name, (28, 28), 10)) == [
        (784, hidden), (hidden, hidden), (hidden, hidden), (hidden, 10)]
    assert widths(build_model(name, (64,), 10))[0] == (64, hidden)
    assert widths(build_model(name, 64, 10))[0] == (64, hidden)


def test_cnv_is_bnn_pynq_cnv():
    model = build_model("cnv", (3, 32, 32), 10)
    convs = [(m.in_channels, m.out_channels, m.kernel_size) for m in model.modules()
             if isinstance(m, QuantConv2d)]
    assert convs == [(3, 64, (3, 3)), (64, 64, (3, 3)), (64, 128, (3, 3)),
                     (128, 128, (3, 3)), (128, 256, (3, 3)), (256, 256, (3, 3))]
    assert widths(model) == [(256, 512), (512, 512), (512, 10)]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 2
    # bnn_pynq's 8-bit (Q1.7) input quantizer, then binary weights on integer levels.
    assert isinstance(model.conv_features[0], QuantIdentity)
    assert model.conv_features[0].act_quant.bit_width() == 8
    assert isinstance(model.conv_features[1], QuantConv2d)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_lenet_shape_and_small_images():
    model = build_model("lenet", (28, 28), 10)
    assert isinstance(model, BinaryConvNet) and model.chw == (1, 28, 28)
    assert widths(model) == [(4 * 4 * 64, 512), (512, 10)]
    assert model(torch.rand(3, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="too small"):
        build_model("lenet", (8, 8), 10)
    with pytest.raises(ValueError, match="input_threshold applies to the MLPs"):
        build_model("lenet", (28, 28), 10, input_threshold=0.1)
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", (28, 28), 10)


def test_binary_mlp_constructor_still_works():
    model = BinaryMLP(64, [32, 16], 10, 0.1)
    assert widths(model) == [(64, 32), (32, 16), (16, 10)]
    assert model.score_fan_in == 16
    assert model(torch.rand(5, 64)).shape == (5, 10)


@pytest.mark.parametrize("name, threshold, pixel", [("tfc", 0.5, 128), ("sfc", 0.5, 128),
                                                    ("lfc", 0.5, 128), ("tfc", 0.1, 26)])
def test_mlps_export_and_import_bit_exactly(name, threshold, pixel, tmp_path):
    ds = fake_dataset((28, 28))
    torch.manual_seed(0)
    model = build_model(name, ds.input_shape, 10, input_threshold=threshold)
    randomize_batchnorm(model)
    path = export(model, ds, tmp_path / "m.onnx", name)
    net = import_qonnx(path)
    assert net.input.pixel_max == 255 and net.input.shape == (28, 28)
    assert net.input.binarize_threshold == pixel  # first pixel >= threshold * 255
    assert [layer.weights.shape[1] for layer in net.layers][0] == 784
    x = np.concatenate([ds.x_test, fake_dataset((28, 28), 40, seed=1).x_test])
    t_scores = torch_scores(model, ds, x)
    assert np.array_equal(t_scores, np.round(t_scores)), "final scores are integers"
    ref = run(net, x)
    assert np.array_equal(ref.scores, t_scores.astype(np.int64))
    assert len(np.unique(ref.classes)) > 1


@pytest.mark.parametrize("name, shape, methods", [
    ("cnv", (3, 32, 32), Methods()), ("lenet", (28, 28), Methods()),
    ("lenet", (28, 28), Methods(binealnet=True, weight_scaling="forward"))])
def test_conv_nets_import_bit_exactly_and_compile(name, shape, methods, tmp_path):
    ds = fake_dataset(shape, n=16)
    torch.manual_seed(0)
    model = build_model(name, shape, 10, methods)
    randomize_batchnorm(model)
    path = export(model, ds, tmp_path / f"{name}.onnx", name)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert {"Quant", "Conv", "MaxPool"} <= set(ops)
    net = import_qonnx(path)
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds[:3] == (["Conv", "Conv", "MaxPool"] if name == "cnv" else
                         ["Conv", "MaxPool", "Conv"])
    assert net.layers[0].integer_input
    t_scores = torch_scores(model, ds, ds.x_test)
    ref = run(net, ds.x_test)
    assert np.array_equal(ref.scores, t_scores.astype(np.int64))
    assert len(np.unique(ref.scores, axis=0)) == len(ds.x_test)  # inputs reach the scores
    if name == "cnv":
        return  # tests/test_bnn_pynq.py compiles a CNV (about a minute); once is enough
    proc = subprocess.run([sys.executable, "-m", "bnnflow.cli", "-q", "compile", str(path), "-o",
                           str(tmp_path / "build")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "build" / "core.v").is_file()


def test_zoo_names():
    assert set(MODELS) == {"tfc", "sfc", "lfc", "cnv", "lenet"}


def test_digits_tfc_default_training_accuracy():
    """The README's digits run: TrainConfig() defaults must keep ~90 % (>= 85 %)."""
    result = train(datasets.load("digits"), TrainConfig(progress=False))
    assert result.test_accuracy >= 0.85
