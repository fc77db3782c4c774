"""QONNX from other people's Brevitas models: brevitas_examples.bnn_pynq's own builders."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from brevitas.export import export_qonnx
from brevitas_examples.bnn_pynq.models import model_with_cfg

from bnnflow.flow import CompileConfig, compile_model
from bnnflow.frontend import import_qonnx
from bnnflow.inputs import to_bits
from bnnflow.reference import run
from bnnflow.verify import qonnx_scores


def pynq_export(name, path, seed=0):
    """A bnn_pynq model with random weights and random (trained-looking) BatchNorm statistics."""
    torch.manual_seed(seed)
    model, _ = model_with_cfg(name, pretrained=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                c = m.num_features
                m.running_mean.uniform_(-10, 10)
                m.running_var.uniform_(1, 30)
                m.weight.copy_(torch.randn(c))  # gamma < 0 included
                m.bias.copy_(torch.randn(c) * 2)
    model.eval()
    shape = (1, 1, 28, 28) if "FC" in name else (1, 3, 32, 32)
    export_qonnx(model, torch.rand(shape), str(path), dynamo=False)
    return model


@pytest.mark.parametrize("name", ["TFC_1W1A", "SFC_1W1A", "LFC_1W1A"])
def test_mlp_exports_match_qonnx(name, tmp_path):
    path = tmp_path / f"{name}.onnx"
    model = pynq_export(name, path)
    net = import_qonnx(path)
    assert net.input.pixel_max == 255 and net.input.binarize_threshold == 128
    pixels = np.random.default_rng(1).integers(0, 256, (100, 1, 28, 28))
    x = pixels.astype(np.float32) / np.float32(255)  # torchvision's ToTensor domain
    ref = run(net, to_bits(net, pixels), bits=True)
    q = qonnx_scores(path, x)
    smap = net.metadata["score_map"]  # TensorNorm: one increasing map for every class
    assert np.array_equal(q.argmax(1), ref.classes)
    np.testing.assert_allclose(q, smap["scale"] * ref.scores + smap["offset"], atol=1e-4)
    with torch.no_grad():
        t = model(torch.from_numpy(x)).numpy()
    assert np.array_equal(t.argmax(1), ref.classes)


def test_cnv_export_matches_qonnx(tmp_path):
    """CNV: 8-bit input layer, six binary convs, two max-pools, three dense layers."""
    path = tmp_path / "cnv.onnx"
    model = pynq_export("CNV_1W1A", path)
    net = import_qonnx(path)
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == ["Conv", "Conv", "MaxPool", "Conv", "Conv", "MaxPool", "Conv", "Conv",
                     "Dense", "Dense", "Dense"]
    assert net.layers[0].integer_input and net.input.levels is not None
    pixels = np.random.default_rng(5).integers(0, 256, (100, 3, 32, 32))
    x = pixels.astype(np.float32) / np.float32(255)
    ref = run(net, pixels)
    q = qonnx_scores(path, x)
    smap = net.metadata["score_map"]
    assert np.array_equal(q.argmax(1), ref.classes)
    np.testing.assert_allclose(q, smap["scale"] * ref.scores + smap["offset"], atol=1e-3)
    with torch.no_grad():
        t = model(torch.from_numpy(x)).numpy()
    assert np.array_equal(t.argmax(1), ref.classes)

    proc = subprocess.run([sys.executable, "-m", "bnnflow.cli", "compile", str(path), "-o",
                           str(tmp_path / "build")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    build = tmp_path / "build"
    assert "module bnn_core" in (build / "core.v").read_text()
    report = json.loads((build / "report.json").read_text())
    assert report["cycles_per_frame"] == 24300  # conv0's window: 30*30 pixels * 9 * 3 beats


@pytest.mark.sim
@pytest.mark.parametrize("name", ["TFC_1W1A", "SFC_1W1A"])
def test_mlp_exports_simulate_bit_exact(name, tmp_path):
    from bnnflow.sim.runner import simulate_core

    path = tmp_path / f"{name}.onnx"
    pynq_export(name, path, seed=2)
    build = tmp_path / "build"
    # A deeper folding keeps the Verilator model small; the hardware is the same generator.
    state = compile_model(CompileConfig(path, build, target_cycles=256))
    pixels = np.random.default_rng(3).integers(0, 256, (100, 28, 28))
    manifest = json.loads((build / "manifest.json").read_text())
    out = simulate_core(state.net, build / "core.v", to_bits(state.net, pixels),
                        in_width=manifest["in_width"],
                        predicted_cycles=manifest["cycles_per_frame"], work_dir=build / "sim")
    assert out["mismatches"] == 0 and out["frames"] == 100
    assert out["cycles_per_frame"] == pytest.approx(manifest["cycles_per_frame"], rel=0.02)
