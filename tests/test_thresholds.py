"""Threshold folding against the float model's own BatchNorm + sign, at every reachable value."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bnnflow.chain import Chain as _Chain
from bnnflow.chain import batchnorm, fma_f32
from bnnflow.thresholds import ThresholdError, bn_sign_table, derive_thresholds


def torch_bn_sign(n, gamma, beta, mean, var, eps=1e-5):
    """sign(BatchNorm1d(dot)) with PyTorch's own eval-mode BatchNorm, for every popcount."""
    bn = torch.nn.BatchNorm1d(len(gamma), eps=eps).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
        bn.bias.copy_(torch.tensor(beta))
        bn.running_mean.copy_(torch.tensor(mean))
        bn.running_var.copy_(torch.tensor(var))
        dots = torch.arange(-n, n + 1, 2, dtype=torch.float32)[:, None].repeat(1, len(gamma))
        return (bn(dots) >= 0).numpy().astype(np.uint8)


def derive(n, gamma, beta, mean, var, eps=1e-5):
    params = np.stack([np.asarray(v, np.float32) for v in (gamma, beta, mean, var)]
                      + [np.full(len(gamma), eps, np.float32)])
    chain = _Chain().then("BatchNormalization", params)
    return derive_thresholds(bn_sign_table(n, chain))


def check(n, gamma, beta, mean, var):
    th = derive(n, gamma, beta, mean, var)
    expected = torch_bn_sign(n, gamma, beta, mean, var)
    got = th.apply(np.arange(n + 1)[:, None])
    assert np.array_equal(got, expected)
    return th


def test_negative_gamma_inverts():
    th = check(8, [-1.0], [0.0], [0.5], [1.0])
    assert th.invert[0]
    # -(dot - 0.5) >= 0  <=>  dot <= 0.5  <=>  dot <= 0  <=>  popcount <= 4
    assert th.apply(np.arange(9)[:, None])[:, 0].tolist() == [1] * 5 + [0] * 4


@pytest.mark.parametrize("beta,expected", [(0.5, 1), (-0.5, 0), (0.0, 1)])
def test_zero_gamma_is_constant(beta, expected):
    th = check(16, [0.0], [beta], [3.0], [2.0])
    assert th.t[0] == 0 and bool(th.invert[0]) == (expected == 0)


def test_exact_ties_follow_sign_of_zero_is_plus_one():
    # dot == mean is reachable (dot has the parity of n): BN output is exactly 0 -> +1.
    for gamma in (1.0, -1.0, 0.37, -2.5):
        th = check(10, [gamma], [0.0], [2.0], [1.0])
        c_tie = (2 + 10) // 2
        assert th.apply(np.array([[c_tie]]))[0, 0] == 1


def test_unreachable_threshold_saturates():
    th = check(4, [1.0, 1.0], [0.0, 0.0], [100.0, -100.0], [1.0, 1.0])
    assert th.apply(np.arange(5)[:, None]).T.tolist() == [[0] * 5, [1] * 5]


def test_non_monotone_chain_is_reported():
    table = np.array([[0], [1], [0], [1]])
    with pytest.raises(ThresholdError, match="not monotone"):
        derive_thresholds(table, layer="fc7")


floats = st.floats(-4, 4, allow_nan=False, width=32)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 200),
    gamma=st.one_of(st.just(0.0), floats),
    beta=st.one_of(st.just(0.0), floats),
    mean=st.one_of(st.integers(-200, 200).map(float), floats.map(lambda m: m * 50)),
    var=st.floats(0.0625, 50, width=32),
)
# gamma and beta the smallest float32 denormal: beta = bias - mean*alpha is 11.5 ulp before
# rounding; PyTorch's fused multiply-add rounds it once (to 12), two roundings give 11.
@example(n=3, gamma=-1.401298464324817e-45, beta=-1.401298464324817e-45, mean=3.125,
         var=0.0625)
def test_thresholds_match_torch_batchnorm_everywhere(n, gamma, beta, mean, var):
    """Random BN parameters, integer means (exact ties), gamma < 0 and gamma == 0."""
    check(n, [gamma], [beta], [mean], [var])


def test_batchnorm_folds_beta_like_torch_in_every_channel():
    """PyTorch rounds ``bias - mean * alpha`` once (a fused multiply-add); so must we.

    Rounding twice differs from it by one ulp in about a quarter of these channels.
    """
    rng = np.random.default_rng(1)
    n = 20000
    g, b = rng.normal(size=(2, n)).astype(np.float32)
    m = (rng.normal(size=n) * 30).astype(np.float32)
    v = rng.uniform(0.1, 5, n).astype(np.float32)
    eps = np.float32(1e-5)
    bn = torch.nn.BatchNorm1d(n).eval()
    with torch.no_grad():
        for param, value in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var),
                                (g, b, m, v), strict=True):
            param.copy_(torch.tensor(value))
        x = torch.tensor([[0.0] * n, [3.0] * n, [-17.0] * n])
        expected = bn(x).numpy()
    got = batchnorm(x.numpy(), g, b, m, v, eps)
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("a,b,c", [
    (3.0, 1 / 3, -1.0),                      # float64 sum inexact
    (1e-30, 1e-30, 1.0),                     # product far below c's ulp
    (2.0 ** -75, 2.0 ** -75, -2.0 ** -149),  # denormal result
    (1.0 + 2.0 ** -23, 1.0 - 2.0 ** -23, -1.0),
    (16777215.0, 16777215.0, 1.0),
])
def test_fma_f32_rounds_once(a, b, c):
    a32, b32, c32 = np.float32(a), np.float32(b), np.float32(c)
    exact = Fraction(float(a32)) * Fraction(float(b32)) + Fraction(float(c32))
    got = fma_f32(a32, b32, c32)
    # no float32 lies strictly closer to the exact value
    dist = abs(Fraction(float(got)) - exact)
    for nb in (np.nextafter(got, np.float32(-np.inf)), np.nextafter(got, np.float32(np.inf))):
        assert abs(Fraction(float(nb)) - exact) >= dist
