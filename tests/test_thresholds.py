"""Threshold folding against the float model's own BatchNorm + sign, at every reachable value."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnflow.chain import Chain as _Chain
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
def test_thresholds_match_torch_batchnorm_everywhere(n, gamma, beta, mean, var):
    """Random BN parameters, integer means (exact ties), gamma < 0 and gamma == 0."""
    check(n, [gamma], [beta], [mean], [var])
