"""Regularisers: penalty values and gradients (numerically checked on every backend), weight-only
application, max-norm, and their use inside nets."""
import numpy as np
import pytest

from dlfast import layers as L
from dlfast import regularizers as R
from dlfast.gradcheck import gradient_check, numerical_gradient, relative_error
from dlfast.net import MLP, Sequential

F64 = np.float64


def _w(shape=(6, 4), seed=0, dtype=F64):
    w = np.random.default_rng(seed).standard_normal(shape)
    w[np.abs(w) < 0.05] += 0.2                  # keep away from the L1 kink at 0
    return w.astype(dtype)


REGS = {"l2": lambda: R.L2(0.3), "l1": lambda: R.L1(0.2), "elastic": lambda: R.ElasticNet(0.2, 0.3)}


def test_penalty_values(backend, dtype):
    w = _w(dtype=dtype)
    w64 = w.astype(F64)
    rel = 1e-6 if dtype == np.float32 else 1e-12
    assert R.L2(0.3).loss(w) == pytest.approx(0.15 * np.sum(w64 ** 2), rel=rel)
    assert R.L1(0.2).loss(w) == pytest.approx(0.2 * np.sum(np.abs(w64)), rel=rel)
    assert R.ElasticNet(0.2, 0.3).loss(w) == pytest.approx(
        0.15 * np.sum(w64 ** 2) + 0.2 * np.sum(np.abs(w64)), rel=rel)
    assert R.L2(0.0).loss(w) == 0.0


def test_penalty_gradients_in_place(backend, dtype):
    w = _w(dtype=dtype)
    g = np.ones_like(w)
    R.ElasticNet(0.2, 0.3).grad(w, g)
    assert g.dtype == dtype
    np.testing.assert_allclose(g, 1 + 0.3 * w + 0.2 * np.sign(w), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(REGS))
def test_penalty_gradient_check(backend, name):
    reg = REGS[name]()
    w = _w()
    g = np.zeros_like(w)
    reg.grad(w, g)
    num = numerical_gradient(lambda v: reg.loss(v), w)
    assert relative_error(g, num) < 1e-6


def test_only_weight_matrices():
    assert R.is_weight("W") and R.is_weight("W3") and R.is_weight("0.W") and R.is_weight("trunk.2.W")
    assert not any(R.is_weight(k) for k in ["b", "b1", "gamma1", "beta2", "0.b", "1.slope", "a.W.b"])
    params = {"W1": _w(seed=1), "b1": np.ones(4), "gamma1": np.ones(4) * 3, "1.slope": np.ones(1)}
    reg = R.L2(0.5)
    assert reg.penalty(params) == pytest.approx(reg.loss(params["W1"]))
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    reg.add_grads(params, grads)
    np.testing.assert_allclose(grads["W1"], 0.5 * params["W1"])
    assert all((grads[k] == 0).all() for k in ["b1", "gamma1", "1.slope"])


def test_keras_l2_equivalence():
    w = _w()
    k = 0.01                                     # Keras: k * sum w^2
    assert R.L2(2 * k).loss(w) == pytest.approx(k * np.sum(w ** 2))


def test_max_norm(backend, dtype):
    W = np.zeros((3, 4), dtype)
    W[:, 0] = [3, 4, 0]                          # norm 5 -> 2
    W[:, 1] = [1, 0, 0]                          # norm 1 stays
    W[:, 2] = [0, 0, -10]                        # norm 10 -> 2
    before = W.copy()
    R.MaxNorm(2.0).apply(W)
    np.testing.assert_allclose(np.linalg.norm(W.astype(F64), axis=0), [2, 1, 2, 0], rtol=1e-6)
    np.testing.assert_allclose(W[:, 0], [1.2, 1.6, 0], rtol=1e-6)
    np.testing.assert_array_equal(W[:, 1], before[:, 1])
    params = {"W1": np.full((5, 3), 10.0, dtype), "b1": np.full(3, 10.0, dtype)}
    R.MaxNorm(1.0).apply_all(params)
    assert np.allclose(np.linalg.norm(params["W1"], axis=0), 1.0)
    assert (params["b1"] == 10).all()           # biases are not constrained


def test_config_round_trip_and_get():
    for reg in [R.L2(0.1), R.L1(0.2), R.ElasticNet(0.1, 0.2), R.MaxNorm(3.0)]:
        clone = R.from_config(reg.config())
        assert type(clone) is type(reg) and clone.config() == reg.config()
    assert R.get(None) is None
    assert isinstance(R.get({"type": "L1", "lam": 0.5}), R.L1)
    with pytest.raises(TypeError, match="regularizer must be"):
        R.get("l2")
    with pytest.raises(TypeError, match="regularizer must be L2, L1 or ElasticNet"):
        R.get({"type": "MaxNorm", "c": 1.0})


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"lam must lie in \[0.0, inf\]"):
        R.L2(-0.1)
    with pytest.raises(ValueError, match="l1 must lie in"):
        R.ElasticNet(-1, 0)
    with pytest.raises(ValueError, match="c must lie in"):
        R.MaxNorm(0)
    with pytest.raises(TypeError, match="lam must be a real number"):
        R.L1("0.1")
    with pytest.raises(ValueError, match="'type' in"):
        R.from_config({"type": "L3"})


# ============================================================================ inside nets
def _data(n=12, d=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, c, n)


@pytest.mark.parametrize("name", sorted(REGS))
def test_regularised_net_gradient_check(backend, name):
    x, t = _data()
    net = MLP(5, [6, 4], 3, regularizer=REGS[name](), seed=0, dtype=F64)
    errors = gradient_check(net, x, t)
    assert max(errors.values()) < 1e-6, errors


def test_net_loss_includes_penalty_on_weights_only(backend):
    x, t = _data()
    plain = MLP(5, [6], 3, batchnorm=True, seed=1, dtype=F64)
    reg = MLP(5, [6], 3, batchnorm=True, weight_decay=0.2, seed=1, dtype=F64)
    for p in reg.params.values():
        p += 0.1                                  # non-zero biases, gamma != 1, beta != 0
    plain.load_state_dict(reg.state_dict())
    expected = 0.1 * sum(np.sum(reg.params[k] ** 2) for k in ["W1", "W2"])
    assert reg.loss(x, t) == pytest.approx(plain.loss(x, t) + expected, rel=1e-12)
    g_plain = plain.gradient(x, t)
    g_reg = reg.gradient(x, t)
    for k in g_plain:
        extra = 0.2 * reg.params[k] if k.startswith("W") else 0
        np.testing.assert_allclose(g_reg[k], g_plain[k] + extra, rtol=1e-12, atol=1e-14)


def test_weight_decay_is_l2_shorthand():
    net = MLP(5, [6], 3, weight_decay=0.3, seed=0)
    assert isinstance(net.regularizer, R.L2) and net.regularizer.lam == 0.3
    with pytest.raises(ValueError, match="weight_decay or regularizer, not both"):
        MLP(5, [6], 3, weight_decay=0.3, regularizer=R.L1(0.1))


def test_apply_constraints(backend):
    layers = [L.Dense(5, 8, "relu", seed=0), L.Dense(8, 3, seed=1)]
    net = Sequential(layers, max_norm=0.5)
    for p in net.params.values():
        p += 5
    net.apply_constraints()
    for k in ["0.W", "1.W"]:
        np.testing.assert_allclose(np.linalg.norm(net.params[k].astype(F64), axis=0), 0.5,
                                   rtol=1e-6)
    assert (net.params["0.b"] == 5).all()            # biases are not constrained
    net.freeze(upto=1)
    net.params["0.W"][...] = 7
    net.apply_constraints()
    assert (net.params["0.W"] == 7).all()            # frozen layers are left alone
