"""The training methods change training the way the literature says, and deploy (or refuse to)
exactly."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from brevitas.nn import QuantIdentity, QuantLinear
from brevitas_examples.bnn_pynq.models.common import CommonActQuant, CommonWeightQuant

from bnnflow import datasets
from bnnflow.ablate import VARIANTS, markdown_table, run_ablation
from bnnflow.frontend import FrontendError, import_qonnx
from bnnflow.models import (
    ABCLinear,
    BinaryMLP,
    ClipSTE,
    Methods,
    ScaledBinary,
    Shift,
    abc_bases,
    build_model,
)
from bnnflow.reference import run
from bnnflow.train import (
    TrainConfig,
    _optimizer,
    _schedule,
    export,
    optimizer_step,
    torch_scores,
    train,
)


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


def bnnflow(*args):
    return subprocess.run([sys.executable, "-m", "bnnflow.cli", *map(str, args)],
                          capture_output=True, text=True)


# -- straight-through estimator with a gradient clip threshold --------------------------------

@pytest.mark.parametrize("t_clip", [0.25, 0.5, 1.0, 1.5])
def test_ste_gradient_passes_only_inside_t_clip(t_clip):
    act = torch.nn.Sequential(ClipSTE(t_clip), QuantIdentity(act_quant=CommonActQuant,
                                                              bit_width=1)).train()
    x = torch.linspace(-2.0, 2.0, 161, requires_grad=True)  # hits +-t_clip exactly
    y = act(x)
    assert torch.equal(y, torch.where(x >= 0, 1.0, -1.0))  # forward is exactly sign()
    y.backward(torch.full_like(x, 3.0))
    inside = x.detach().abs() <= t_clip
    assert torch.equal(x.grad, torch.where(inside, 3.0, 0.0))
    act.eval()
    assert torch.equal(act(x.detach()), torch.where(x >= 0, 1.0, -1.0))


def test_t_clip_changes_hidden_gradients_not_outputs():
    x = torch.rand(64, 64)
    outs, grads = [], []
    for t in (0.5, 1.0):
        torch.manual_seed(0)
        model = BinaryMLP(64, [32, 32], 10, methods=Methods(t_clip=t)).train()
        out = model(x)
        (out * torch.arange(10.0)).sum().backward()
        outs.append(out.detach())
        grads.append(model.features[1].weight.grad)
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(grads[0], grads[1])


# -- weight scaling factor ---------------------------------------------------------------------

def scaled_pair(mode):
    torch.manual_seed(0)
    plain = QuantLinear(16, 4, bias=False, weight_bit_width=1, weight_quant=CommonWeightQuant)
    torch.nn.init.uniform_(plain.weight, -0.5, 0.5)
    scaled = ScaledBinary(QuantLinear(16, 4, bias=False, weight_bit_width=1,
                                      weight_quant=CommonWeightQuant), mode)
    with torch.no_grad():
        scaled.layer.weight.copy_(plain.weight)
    return plain.train(), scaled.train()


def test_weight_scaling_backward_changes_only_the_gradient():
    plain, scaled = scaled_pair("backward")
    x1 = torch.where(torch.rand(8, 16) > 0.5, 1.0, -1.0).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = plain(x1), scaled(x2)
    assert torch.equal(y1, y2)
    g = torch.randn(8, 4)
    y1.backward(g)
    y2.backward(g)
    alpha = plain.weight.detach().abs().mean(1)
    assert torch.allclose(scaled.layer.weight.grad, plain.weight.grad * alpha[:, None])
    assert torch.allclose(x2.grad, (g * alpha) @ torch.sign(plain.weight.detach()))


def test_weight_scaling_forward_scales_each_output_channel():
    plain, scaled = scaled_pair("forward")
    x = torch.where(torch.rand(8, 16) > 0.5, 1.0, -1.0)
    alpha = plain.weight.detach().abs().mean(1)
    assert torch.allclose(scaled(x), plain(x) * alpha)
    assert torch.equal(scaled.alpha(), alpha)


@pytest.mark.parametrize("scaling", ["forward", "backward"])
def test_weight_scaled_model_deploys_exactly(scaling, digits, tmp_path):
    ds = digits
    model = train(ds, TrainConfig(epochs=4, progress=False, weight_scaling=scaling)).model
    assert isinstance(model.features[1], ScaledBinary)
    path = export(model, ds, tmp_path / "m.onnx", "tfc")
    net = import_qonnx(path)
    x = np.concatenate([ds.x_test, np.random.default_rng(0).integers(0, 17, (300, 64))])
    t_scores = torch_scores(model, ds, x)
    ref = run(net, x)
    # The final layer is never scaled: integer scores, identical to PyTorch's.
    assert np.array_equal(ref.scores, t_scores.astype(np.int64))
    assert np.array_equal(ref.classes, t_scores.argmax(1))


# -- BiNealNet: learnable shifts around a PReLU with a slope >= 0 ------------------------------

def test_binealnet_shifts_learn_and_prelu_slope_stays_nonnegative():
    torch.manual_seed(0)
    model = BinaryMLP(16, [8], 4, methods=Methods(binealnet=True)).train()
    shifts = [m for m in model.modules() if isinstance(m, Shift)]
    prelu = next(m for m in model.modules() if isinstance(m, torch.nn.PReLU))
    assert len(shifts) == 2 and all(s.bias.requires_grad for s in shifts)
    params = {id(p) for p in model.parameters()}
    assert all(id(s.bias) in params for s in shifts) and id(prelu.weight) in params
    opt = torch.optim.SGD(model.parameters(), lr=100.0)
    x = torch.rand(32, 16)
    # d(loss)/d(slope) = -sum of the negative PReLU inputs > 0: SGD pushes the slope below 0.
    feats = model.features
    pre = feats[3](feats[2](feats[1](feats[0](2 * x - 1))))
    loss = -prelu(pre.clamp(max=-0.1)).sum() + model(x).sum() * 0
    optimizer_step(model, opt, loss)
    assert prelu.weight.grad.gt(0).all()
    assert torch.equal(prelu.weight.detach(), torch.zeros(8))  # clipped at 0, not negative
    assert any(s.bias.grad is not None and s.bias.grad.abs().sum() > 0 for s in shifts)


def test_binealnet_model_folds_into_thresholds_exactly(digits, tmp_path):
    ds = digits
    model = train(ds, TrainConfig(epochs=4, progress=False, binealnet=True)).model
    shifts = [m.bias for m in model.modules() if isinstance(m, Shift)]
    assert all(s.abs().sum() > 0 for s in shifts), "the shifts were trained"
    with torch.no_grad():  # a slope of exactly 0 on some channels: flat, still monotone
        next(m for m in model.modules() if isinstance(m, torch.nn.PReLU)).weight[:4] = 0.0
    path = export(model, ds, tmp_path / "m.onnx", "tfc")
    net = import_qonnx(path)
    x = np.concatenate([ds.x_test, np.random.default_rng(1).integers(0, 17, (300, 64))])
    t_scores = torch_scores(model, ds, x)
    assert np.array_equal(run(net, x).scores, t_scores.astype(np.int64))


# -- ABC-Net: M binary weight bases ------------------------------------------------------------

def test_abc_bases_approximate_better_as_m_grows():
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    errors = []
    for m in range(1, 6):
        b, a = abc_bases(w, m)
        assert b.shape == (m, 64, 128) and a.shape == (m,)
        assert set(b.unique().tolist()) <= {-1.0, 1.0}
        errors.append(float(((w - torch.tensordot(a, b, dims=1)) ** 2).mean()))
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.3 * errors[0]
    # M = 1: the least-squares coefficient of sign(W - mean) is <W, B> / n.
    b, a = abc_bases(w, 1)
    assert torch.allclose(a[0], (w * b[0]).mean(), rtol=1e-5)


def test_abc_layer_forward_and_straight_through_gradient():
    torch.manual_seed(0)
    layer = ABCLinear(32, 8, 3)
    x = torch.randn(4, 32)
    b, a = abc_bases(layer.weight.detach(), 3)
    y = layer(x)
    assert torch.allclose(y, x @ torch.tensordot(a, b, dims=1).T, atol=1e-5)
    y.sum().backward()
    assert torch.allclose(layer.weight.grad, a.sum() * x.sum(0).expand(8, 32), atol=1e-5)


def test_abc_model_trains_but_compile_refuses_multi_base_layers(digits, tmp_path):
    ds = digits
    result = train(ds, TrainConfig(epochs=3, progress=False, abc_bases=2))
    assert isinstance(result.model.features[1], ABCLinear)
    assert result.test_accuracy > 0.5
    path = export(result.model, ds, tmp_path / "model.onnx", "tfc")
    with pytest.raises(FrontendError, match="multiple bases.* not supported by the hardware"):
        import_qonnx(path)
    proc = bnnflow("-q", "compile", path, "-o", tmp_path / "build")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not supported by the hardware yet" in proc.stderr


def test_abc_and_weight_scaling_do_not_combine():
    with pytest.raises(ValueError, match="own least-squares scales"):
        Methods(abc_bases=2, weight_scaling="forward")


# -- optimizer and schedule --------------------------------------------------------------------

def test_optimizer_and_schedule_knobs():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(_optimizer(TrainConfig(optimizer="sgd"), params), torch.optim.SGD)
    assert isinstance(_optimizer(TrainConfig(), params), torch.optim.Adam)
    cfg = TrainConfig(schedule="step", lr=0.1)
    opt = _optimizer(cfg, params)
    sched = _schedule(cfg, opt, 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[60] == pytest.approx(0.01)
    assert lrs[90] == pytest.approx(0.001)
    assert _schedule(TrainConfig(schedule="none"), opt, 100) is None
    for bad in ({"optimizer": "rmsprop"}, {"schedule": "linear"}, {"t_clip": 0.0},
                {"weight_scaling": "both"}, {"abc_bases": 0}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_train_flags_reach_the_config(tmp_path):
    run_dir = tmp_path / "run"
    proc = bnnflow("-q", "train", "--epochs", "1", "--t-clip", "1.0", "--weight-scaling",
                   "forward", "--binealnet", "--optimizer", "sgd", "--schedule", "step",
                   "--batch-size", "64", "--lr", "0.05", "--seed", "3", "-o", run_dir)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((run_dir / "metrics.json").read_text())["config"]
    assert cfg | {"t_clip": 1.0, "weight_scaling": "forward", "binealnet": True,
                  "optimizer": "sgd", "schedule": "step", "batch_size": 64, "lr": 0.05,
                  "seed": 3, "abc_bases": 1} == cfg
    proc = bnnflow("-q", "train", "--model", "lenet", "--epochs", "1", "-o", run_dir)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bnnflow train: error: a conv net needs (H, W) or (C, H, W) images" in proc.stderr


# -- ablation ----------------------------------------------------------------------------------

def test_ablation_table(digits):
    base = TrainConfig(epochs=2, batch_size=64, progress=False)
    rows = run_ablation(digits, base, ["base", "abc3"])
    assert [r.variant for r in rows] == ["base", "abc3"]
    assert [r.deployable for r in rows] == [True, False]
    table = markdown_table(rows, digits, base)
    assert "| variant | method | test accuracy | epochs | seconds |" in table
    assert table.count("\n| ") == 3 and "2 epochs" in table
    with pytest.raises(ValueError, match="unknown variant"):
        run_ablation(digits, base, ["nope"])
    assert {"base", "t_clip=1.0", "scale-forward", "binealnet", "abc3"} <= set(VARIANTS)


def test_ablate_command(tmp_path):
    out = tmp_path / "table.md"
    proc = bnnflow("-q", "ablate", "--dataset", "digits", "--epochs", "1", "--variants",
                   "base,scale-backward", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == proc.stdout
    assert "| scale-backward |" in proc.stdout and proc.stdout.count("\n| ") == 3


def test_models_build_with_every_method():
    for methods in (Methods(binealnet=True, weight_scaling="forward"), Methods(abc_bases=3)):
        for name, shape in (("tfc", (64,)), ("lenet", (28, 28))):
            model = build_model(name, shape, 10, methods).train()
            assert model(torch.rand(2, *shape)).shape == (2, 10)
