import numpy as np
from netutil import random_net

from bnnflow.reference import binarize, popcounts, run


def test_popcount_identity():
    """x.w = 2*popcount(xnor(x, w)) - n on random +/-1 vectors."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (20, 37))
    w = rng.integers(0, 2, (5, 37))
    xs, ws = 2 * x - 1, 2 * w - 1
    c = popcounts(x, w)
    xnor = (x[:, None, :] == w[None, :, :]).sum(-1)
    assert np.array_equal(c, xnor)
    assert np.array_equal(2 * c - 37, xs @ ws.T)


def test_run_matches_a_plain_bipolar_model():
    net = random_net(seed=3)
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 17, (50, 64))
    out = run(net, pixels)
    x = np.where(pixels >= 8, 1, -1)
    for layer in net.layers:
        dot = x @ (2 * layer.weights.astype(int) - 1).T
        if layer.thresholds is None:
            assert np.array_equal(out.scores, dot)
            break
        c = (dot + layer.in_features) // 2
        fire = (c >= layer.thresholds.t) != layer.thresholds.invert
        x = np.where(fire, 1, -1)
    assert np.array_equal(out.classes, np.argmax(dot, axis=1))


def test_argmax_takes_first_maximum():
    net = random_net(sizes=(8, 4, 3), seed=0)
    out = run(net, np.zeros((1, 8), np.int64))
    scores = out.scores[0]
    assert out.classes[0] == int(np.flatnonzero(scores == scores.max())[0])


def test_binarize_uses_the_input_threshold():
    net = random_net()
    px = np.arange(17)[None].repeat(64, 0)[:, :17].T.reshape(17, -1)[:, :1].repeat(64, 1)
    bits = binarize(net, px)
    assert np.array_equal(bits[:, 0], (np.arange(17) >= 8).astype(np.uint8))
