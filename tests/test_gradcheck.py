"""Gradient checking: the numerical gradient itself, that checks catch wrong gradients, that the
random streams are held and the model's state is restored."""
import numpy as np
import pytest

from dlfast import layers as L
from dlfast.gradcheck import (auto_tiny, gradient_check, hold_rng, layer_gradient_check,
                              numerical_gradient, relative_error)
from dlfast.net import MLP

F64 = np.float64


def test_numerical_gradient_of_known_functions(dtype):
    x = np.array([[1.0, -2.0, 3.0], [0.5, 0.0, -1.5]], dtype)
    x0 = x.copy()
    g = numerical_gradient(lambda v: np.sum(v.astype(F64) ** 2), x,
                           eps=1e-6 if dtype == F64 else 1e-2)
    assert g.dtype == dtype and g.shape == x.shape
    np.testing.assert_allclose(g, 2 * x0, rtol=1e-6 if dtype == F64 else 1e-3, atol=1e-6)
    np.testing.assert_array_equal(x, x0)            # restored exactly
    v = np.array([0.3, 1.2])
    np.testing.assert_allclose(numerical_gradient(lambda u: np.sin(u[0]) * np.exp(u[1]), v),
                               [np.cos(0.3) * np.exp(1.2), np.sin(0.3) * np.exp(1.2)], rtol=1e-8)


def test_numerical_gradient_textbook_call_pattern():
    # the textbook passes f(W) with a closure that ignores its argument
    W = np.array([[0.2, -0.4], [0.7, 0.1]])
    xin = np.array([1.0, 2.0])
    f = lambda _: float(np.sum((xin @ W) ** 3))     # noqa: E731
    np.testing.assert_allclose(numerical_gradient(f, W),
                               np.outer(xin, 3 * (xin @ W) ** 2), rtol=1e-7)


def test_numerical_gradient_restores_on_error():
    x = np.arange(4.0)
    calls = []

    def f(v):
        calls.append(v.copy())
        if len(calls) == 3:
            raise RuntimeError("boom")
        return v.sum()

    with pytest.raises(RuntimeError, match="boom"):
        numerical_gradient(f, x)
    np.testing.assert_array_equal(x, np.arange(4.0))


def test_numerical_gradient_bad_input():
    with pytest.raises(TypeError, match="float32 or float64"):
        numerical_gradient(lambda v: 0.0, np.arange(3))
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        numerical_gradient(lambda v: 0.0, ro)
    with pytest.raises(ValueError, match="eps must lie in"):
        numerical_gradient(lambda v: 0.0, np.zeros(3), eps=0)


def test_relative_error():
    assert relative_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert relative_error([1.0], [3.0]) == pytest.approx(0.5)
    assert relative_error([0.0], [0.0]) == 0.0
    assert relative_error([0.0], [1e-13], tiny=1e-3) == pytest.approx(1e-10)
    assert auto_tiny(1.0, 1e-6) == pytest.approx(1e7 * 2.0 ** -52 / 1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(np.zeros(2), np.zeros(3))


class _BuggyDense(L.Dense):
    """dW off by 1% in one element: a check must notice."""

    def backward(self, dout, compute_dx=True):
        dx = super().backward(dout, compute_dx)
        self.grads["W"][0, 0] *= 1.01
        return dx


class _BuggyDx(L.Dense):
    def backward(self, dout, compute_dx=True):
        dx = super().backward(dout, compute_dx)
        dx[1, 2] += 1e-4
        return dx


def test_checks_catch_wrong_gradients():
    x = np.random.default_rng(0).standard_normal((6, 5))
    errs = layer_gradient_check(_BuggyDense(5, 4, "tanh", dtype=F64, seed=0), x)
    assert errs["W"] > 1e-3 and errs["x"] < 1e-6
    errs = layer_gradient_check(_BuggyDx(5, 4, "tanh", dtype=F64, seed=0), x)
    assert errs["x"] > 1e-6 and errs["W"] < 1e-6
    net = MLP(5, [4], 3, seed=0, dtype=F64)
    good = gradient_check(net, x, np.array([0, 1, 2, 0, 1, 2]))
    assert max(good.values()) < 1e-6
    net.layers[0].__class__ = _BuggyDense
    bad = gradient_check(net, x, np.array([0, 1, 2, 0, 1, 2]))
    assert bad["W1"] > 1e-3 and bad["W2"] < 1e-6


def test_unheld_dropout_would_fail_the_check():
    # without holding the random stream every evaluation draws a new mask: the check must fail
    x = np.random.default_rng(1).standard_normal((8, 5))
    net = MLP(5, [6], 3, dropout=0.5, seed=0, dtype=F64)
    t = np.arange(8) % 3
    analytic = net.gradient(x, t)
    num = numerical_gradient(lambda _: net.loss(x, t, train=True), net.params["W1"])
    assert relative_error(analytic["W1"], num) > 1e-2
    assert max(gradient_check(net, x, t).values()) < 1e-6


def test_gradient_check_restores_state_and_counters():
    x = np.random.default_rng(2).standard_normal((8, 5))
    t = np.arange(8) % 3
    net = MLP(5, [6], 3, batchnorm=True, dropout=0.5, activation="rrelu", seed=0, dtype=F64)
    before = net.state_dict()
    gradient_check(net, x, t, names=["W1", "gamma1"])
    after = net.state_dict()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    assert all(not l.hold_rng for l in net.layers if l.stochastic)
    with pytest.raises(KeyError, match="no gradient for \\['W7'\\]"):
        gradient_check(net, x, t, names=["W7"])


def test_hold_rng():
    d = L.Dropout(0.5, seed=3, dtype=F64)
    x = np.ones((4, 6))
    with hold_rng(d):
        a = d.forward(x).copy()
        np.testing.assert_array_equal(d.forward(x), a)
        assert d.counter == 0
    d.forward(x)
    assert d.counter == 24 and not d.hold_rng


def test_layer_gradient_check_restores_bn_running_stats():
    bn = L.BatchNorm(5, dtype=F64)
    layer_gradient_check(bn, np.random.default_rng(0).standard_normal((6, 5)))
    np.testing.assert_array_equal(bn.running_mean, 0.0)
    np.testing.assert_array_equal(bn.running_var, 1.0)


def test_gradient_check_of_a_convnet(backend):
    """Every parameter of a small convnet (conv, BN on images, pools, dropout, flatten, dense)."""
    from dlfast.net import Sequential
    net = Sequential([L.Conv2D(2, 3, 3, padding=1, dtype=F64, seed=0), L.BatchNorm(3, dtype=F64),
                      L.ReLU(), L.MaxPool2D(2), L.Conv2D(3, 2, 2, dtype=F64, seed=1),
                      L.AvgPool2D(2, stride=1), L.Flatten(), L.Dropout(0.3),
                      L.Dense(2, 3, dtype=F64, seed=2)], seed=4)
    x = np.random.default_rng(3).standard_normal((5, 2, 6, 6))
    errors = gradient_check(net, x, np.array([0, 1, 2, 0, 1]))
    assert set(errors) == set(net.grads) and max(errors.values()) < 1e-6, errors
