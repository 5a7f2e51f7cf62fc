"""Initialisers: distribution statistics, orthogonality, gains, dtypes, seeds, name lookup."""
import functools
import math

import numpy as np
import pytest

from dlfast import init

SHAPE = (400, 250)                  # 100,000 samples: the sample std is within ~0.5% of the truth
FAN_IN, FAN_OUT = SHAPE

NORMAL_STD = {
    "normal": (init.normal, 0.01),
    "normal-std1": (functools.partial(init.normal, std=1.0), 1.0),
    "lecun_normal": (init.lecun_normal, math.sqrt(1 / FAN_IN)),
    "xavier_normal": (init.xavier_normal, math.sqrt(2 / (FAN_IN + FAN_OUT))),
    "xavier_normal-gain": (functools.partial(init.xavier_normal, gain=5 / 3),
                           5 / 3 * math.sqrt(2 / (FAN_IN + FAN_OUT))),
    "glorot_normal": (init.glorot_normal, math.sqrt(2 / (FAN_IN + FAN_OUT))),
    "he_normal": (init.he_normal, math.sqrt(2 / FAN_IN)),
    "kaiming_normal": (init.kaiming_normal, math.sqrt(2 / FAN_IN)),
    "he_normal-fan_out": (functools.partial(init.he_normal, mode="fan_out"), math.sqrt(2 / FAN_OUT)),
}
UNIFORM_BOUND = {
    "uniform": (init.uniform, 0.05),
    "uniform-a0.3": (functools.partial(init.uniform, a=0.3), 0.3),
    "lecun_uniform": (init.lecun_uniform, math.sqrt(3 / FAN_IN)),
    "xavier_uniform": (init.xavier_uniform, math.sqrt(6 / (FAN_IN + FAN_OUT))),
    "glorot_uniform": (init.glorot_uniform, math.sqrt(6 / (FAN_IN + FAN_OUT))),
    "he_uniform": (init.he_uniform, math.sqrt(6 / FAN_IN)),
    "kaiming_uniform": (init.kaiming_uniform, math.sqrt(6 / FAN_IN)),
}


@pytest.mark.parametrize("name", sorted(NORMAL_STD))
def test_normal_initialisers_std(name, dtype):
    fn, std = NORMAL_STD[name]
    w = fn(SHAPE, rng=0, dtype=dtype)
    assert w.shape == SHAPE and w.dtype == dtype
    n = w.size
    assert abs(w.std() / std - 1) < 5 / math.sqrt(2 * n)          # 5 standard errors
    assert abs(w.mean()) < 5 * std / math.sqrt(n)
    assert abs(np.mean(np.abs(w)) / std - math.sqrt(2 / math.pi)) < 0.01   # normal, not uniform


@pytest.mark.parametrize("name", sorted(UNIFORM_BOUND))
def test_uniform_initialisers_bound(name, dtype):
    fn, bound = UNIFORM_BOUND[name]
    w = fn(SHAPE, rng=1, dtype=dtype)
    assert w.shape == SHAPE and w.dtype == dtype
    assert np.abs(w).max() <= bound * (1 + 1e-6)
    assert np.abs(w).max() > 0.999 * bound
    assert abs(w.std() / (bound / math.sqrt(3)) - 1) < 0.01
    assert abs(w.mean()) < 5 * bound / math.sqrt(3 * w.size)
    hist, _ = np.histogram(w, bins=10, range=(-bound, bound))
    assert hist.min() > 0.95 * w.size / 10                           # flat


def test_constants(dtype):
    assert (init.zeros((3, 4), dtype=dtype) == 0).all()
    assert (init.ones(5, dtype=dtype) == 1).all()
    c = init.constant((2, 3), 0.7, dtype=dtype)
    assert c.dtype == dtype and np.allclose(c, 0.7)


@pytest.mark.parametrize("shape", [(50, 20), (20, 50), (30, 30)])
@pytest.mark.parametrize("g", [1.0, math.sqrt(2)])
def test_orthogonal(shape, g):
    w = init.orthogonal(shape, gain=g, rng=3, dtype=np.float64)
    r, c = shape
    if r >= c:
        np.testing.assert_allclose(w.T @ w, g * g * np.eye(c), atol=1e-12)
    if r <= c:
        np.testing.assert_allclose(w @ w.T, g * g * np.eye(r), atol=1e-12)


def test_orthogonal_float32_and_sign_fix():
    w = init.orthogonal((64, 16), rng=0)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w.T @ w, np.eye(16), atol=1e-5)
    # sign-fixed QR: the same seed always gives the same matrix
    np.testing.assert_array_equal(w, init.orthogonal((64, 16), rng=0))


def test_gains_table():
    assert init.gain("linear") == init.gain("sigmoid") == init.gain("identity") == 1.0
    assert init.gain("tanh") == pytest.approx(5 / 3)
    assert init.gain("relu") == pytest.approx(math.sqrt(2))
    assert init.gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    assert init.gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.GAINS["tanh"] == pytest.approx(5 / 3)
    assert init.GAINS["relu"] == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="unknown gain name 'swish'"):
        init.gain("swish")


def test_fans():
    assert init.fans((3, 5)) == (3, 5)
    assert init.fans(7) == (7, 7)
    assert init.fans((2, 3, 4, 5)) == (3 * 4 * 5, 2 * 4 * 5)     # conv W (F, C, KH, KW)
    assert init.fans((6, 2, 3)) == (2 * 3, 6 * 3)


def test_conv_weights_scale_with_their_fans():
    """A conv W (F, C, KH, KW): He std sqrt(2 / (C*KH*KW)), Xavier sqrt(2 / ((C + F)*KH*KW))."""
    w = init.he_normal((64, 8, 5, 5), rng=0, dtype=np.float64)
    assert w.std() == pytest.approx(math.sqrt(2 / 200), rel=0.03)
    w = init.xavier_uniform((64, 8, 5, 5), rng=0, dtype=np.float64)
    assert np.abs(w).max() <= math.sqrt(6 / (72 * 25))
    assert np.abs(w).max() > 0.95 * math.sqrt(6 / (72 * 25))


@pytest.mark.parametrize("shape", [(6, 2, 3, 3), (30, 1, 5, 5)])
def test_orthogonal_conv_filters(shape):
    w = init.orthogonal(shape, rng=1, dtype=np.float64).reshape(shape[0], -1)
    f, k = w.shape
    if f <= k:
        np.testing.assert_allclose(w @ w.T, np.eye(f), atol=1e-12)
    else:
        np.testing.assert_allclose(w.T @ w, np.eye(k), atol=1e-12)


def test_seeds_and_generators():
    a = init.he_normal((20, 10), rng=5)
    np.testing.assert_array_equal(a, init.he_normal((20, 10), rng=5))
    np.testing.assert_array_equal(a, init.he_normal((20, 10), rng=np.random.default_rng(5)))
    assert not np.array_equal(a, init.he_normal((20, 10), rng=6))
    assert not np.array_equal(init.he_normal((20, 10)), init.he_normal((20, 10)))
    # one seed, both dtypes: the same weights up to rounding
    b = init.he_normal((20, 10), rng=5, dtype=np.float64)
    np.testing.assert_array_equal(a, b.astype(np.float32))


def test_get():
    assert init.get("he") is init.he_normal
    assert init.get("Kaiming") is init.he_normal
    assert init.get("xavier") is init.xavier_normal
    assert init.get("glorot_uniform") is init.xavier_uniform
    assert init.get("lecun") is init.lecun_normal
    assert init.get("orthogonal") is init.orthogonal
    assert init.get("zeros") is init.zeros
    assert init.get(init.he_uniform) is init.he_uniform
    w = init.get(0.5)((300, 300), rng=0, dtype=np.float64)
    assert abs(w.std() - 0.5) < 0.01
    assert init.get("normal")((300, 300), rng=0).std() == pytest.approx(0.01, rel=0.02)
    with pytest.raises(ValueError, match="unknown initialiser 'bogus'.*he_normal"):
        init.get("bogus")
    with pytest.raises(TypeError, match="weight_init must be"):
        init.get(True)
    with pytest.raises(ValueError, match="std must lie in"):
        init.get(-0.1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape must be >= 0"):
        init.he_normal((3, -1))
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int64"):
        init.he_normal((3, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="fan_in of shape"):
        init.he_normal((0, 3))
    with pytest.raises(ValueError, match="mode must be"):
        init.he_normal((3, 3), mode="fan_avg")
    with pytest.raises(ValueError, match="std must lie in"):
        init.normal((3, 3), std=-1)
    with pytest.raises(ValueError, match="at least 2 axes"):
        init.orthogonal(5)
    with pytest.raises(TypeError, match="rng must be an integer"):
        init.he_normal((3, 3), rng="seed")
