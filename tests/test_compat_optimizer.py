"""dlfast.compat.optimizer with what the book's scripts hand it: Python numbers and 0-d arrays as
parameters (the optimiser-path script), extra gradient keys, other gradient dtypes, one optimiser
for several nets, and gradients that turn NaN (one warning, no exception)."""
import math
import warnings

import numpy as np
import pytest

from dlfast import compat
from dlfast.compat.optimizer import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop


def ref_scalar_path(kind, lr, steps=30, x0=(-7.0, 2.0)):
    """The book's update formulas on two Python numbers, f = x^2/20 + y^2 (written here)."""
    p, s, s2, it = list(x0), [0.0, 0.0], [0.0, 0.0], 0
    hist = []
    for _ in range(steps):
        hist.append(tuple(p))
        g = [p[0] / 10.0, 2.0 * p[1]]
        it += 1
        for i in range(2):
            if kind == "SGD":
                p[i] -= lr * g[i]
            elif kind == "Momentum":
                s[i] = 0.9 * s[i] - lr * g[i]
                p[i] += s[i]
            elif kind == "Nesterov":
                p[i] += 0.81 * s[i] - 1.9 * lr * g[i]
                s[i] = 0.9 * s[i] - lr * g[i]
            elif kind == "AdaGrad":
                s[i] += g[i] * g[i]
                p[i] -= lr * g[i] / (math.sqrt(s[i]) + 1e-7)
            elif kind == "RMSprop":
                s[i] = 0.99 * s[i] + 0.01 * g[i] * g[i]
                p[i] -= lr * g[i] / (math.sqrt(s[i]) + 1e-7)
            else:
                s[i] += 0.1 * (g[i] - s[i])
                s2[i] += 0.001 * (g[i] ** 2 - s2[i])
                lr_t = lr * math.sqrt(1 - 0.999 ** it) / (1 - 0.9 ** it)
                p[i] -= lr_t * s[i] / (math.sqrt(s2[i]) + 1e-7)
    return np.array(hist)


@pytest.mark.parametrize("kind,lr", [("SGD", 0.95), ("Momentum", 0.1), ("Nesterov", 0.1),
                                     ("AdaGrad", 1.5), ("RMSprop", 0.3), ("Adam", 0.3)])
def test_python_numbers_as_parameters(kind, lr, backend):
    """The optimiser-path script: params = {'x': -7.0, 'y': 2.0}, grads of Python floats (ints at
    first), the dict read back after every update."""
    opt = getattr(compat, kind)(lr=lr)
    params, grads = {}, {}
    params["x"], params["y"] = -7.0, 2.0
    grads["x"], grads["y"] = 0, 0
    hist = []
    for _ in range(30):
        hist.append((params["x"], params["y"]))
        grads["x"], grads["y"] = params["x"] / 10.0, 2.0 * params["y"]
        opt.update(params, grads)
    assert type(params["x"]) is float and type(params["y"]) is float
    np.testing.assert_allclose(np.array(hist), ref_scalar_path(kind, lr), rtol=1e-12, atol=1e-14)


def test_zero_d_arrays_and_numpy_scalars():
    w = np.array(3.0)
    params = {"w": w, "s": np.float32(1.5), "i": 4}
    opt = Momentum(lr=0.5)
    opt.update(params, {"w": 2.0, "s": np.float32(1.0), "i": 1})
    assert params["w"] is w and w == 3.0 - 1.0                 # 0-d array: updated in place
    assert type(params["s"]) is np.float32 and params["s"] == np.float32(1.0)
    assert type(params["i"]) is float and params["i"] == 3.5   # an int becomes a float
    assert isinstance(opt.v["w"], np.ndarray) and opt.v["w"].shape == ()


def test_book_dict_semantics():
    W = np.ones((2, 3))
    params = {"W": W}
    opt = SGD(lr=0.1)
    # extra gradient keys are ignored and float32 gradients are taken for float64 params
    opt.update(params, {"W": np.ones((2, 3), np.float32), "unused": np.ones(4)})
    np.testing.assert_allclose(W, 0.9)
    opt.update(params, {"W": 1.0})                             # a broadcast gradient
    np.testing.assert_allclose(W, 0.8)
    with pytest.raises(KeyError, match="grads has no entry for params\\['W'\\]"):
        opt.update(params, {})
    with pytest.raises(TypeError, match="params\\['k'\\] must be a float32 or float64 array"):
        opt.update({"k": np.ones(2, int)}, {"k": np.ones(2)})
    with pytest.raises(ValueError, match="grads\\['W'\\] has shape \\(4,\\)"):
        opt.update(params, {"W": np.ones(4)})
    with pytest.raises(TypeError, match="params\\['z'\\] must be a float array or a number"):
        opt.update({"z": "x"}, {"z": 1.0})


def test_state_attributes_have_the_books_names():
    params = {"W": np.ones(3), "b": np.zeros(2)}
    grads = {"W": np.full(3, 0.5), "b": np.ones(2)}
    m, a, ad, r, n = Momentum(), Adam(), AdaGrad(), RMSprop(), Nesterov()
    assert m.v is None and a.m is None and a.v is None and ad.h is None and r.h is None
    for opt in (m, a, ad, r, n):
        opt.update({k: v.copy() for k, v in params.items()}, grads)
    np.testing.assert_allclose(m.v["W"], -0.01 * 0.5)
    np.testing.assert_allclose(ad.h["b"], 1.0)
    np.testing.assert_allclose(r.h["b"], 0.01)
    np.testing.assert_allclose(a.m["W"], 0.05)
    np.testing.assert_allclose(a.v["W"], 0.00025)
    np.testing.assert_allclose(n.v["W"], -0.005)
    assert a.iter == 1
    assert (a.lr, a.beta1, a.beta2) == (0.001, 0.9, 0.999)


def test_one_optimizer_for_several_nets():
    """batch_norm_test.py / weight_init_compare.py: one SGD updates several nets in turn."""
    rng = np.random.default_rng(0)
    nets = [{"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2)} for _ in range(3)]
    ref = [{k: v.copy() for k, v in p.items()} for p in nets]
    opt = SGD(lr=0.1)
    for step in range(4):
        for p, r in zip(nets, ref):
            g = {k: np.sin(v + step) for k, v in p.items()}
            opt.update(p, g)
            for k in r:
                r[k] -= 0.1 * g[k]
    for p, r in zip(nets, ref):
        for k in r:
            np.testing.assert_allclose(p[k], r[k], rtol=1e-14)


@pytest.mark.parametrize("kind", ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam"])
def test_nonfinite_gradients_propagate_with_one_warning(kind, backend):
    opt = getattr(compat, kind)(lr=0.1)
    params = {"W": np.ones(4), "b": np.zeros(2), "s": 1.0}
    good = {"W": np.ones(4), "b": np.ones(2), "s": 1.0}
    opt.update(params, good)
    bad = {"W": np.array([np.nan, 1.0, np.inf, 1.0]), "b": np.ones(2), "s": float("inf")}
    with pytest.warns(compat.NonFiniteWarning, match=f"reached {kind}") as rec:
        opt.update(params, bad)
    assert len(rec) == 1
    assert np.isnan(params["W"][0]) and not np.isfinite(params["W"][2])
    assert np.all(np.isfinite(params["W"][[1, 3]])) and not math.isfinite(params["s"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # no second warning, no exception
        opt.update(params, bad)
        opt.update(params, good)
