"""Layers: forward values against plain-NumPy formulas, float64 gradient checks of every layer in
every configuration on every backend, dtype preservation, workspaces, state and config."""
import numpy as np
import pytest

from kernel_helpers import assert_backends_agree
from dlfast import kernels as K
from dlfast import layers as L
from dlfast.gradcheck import layer_gradient_check

F64 = np.float64
TOL = 1e-6


def _x(shape=(7, 5), seed=0, dtype=F64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _ref_act(z, code, alpha):
    if code == "identity":
        return z
    if code == "relu":
        return np.maximum(z, 0)
    if code == "leaky_relu":
        return np.where(z > 0, z, alpha * z)
    if code == "elu":
        return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0)))
    if code == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if code == "tanh":
        return np.tanh(z)
    raise AssertionError(code)


# ============================================================================ gradient checks
def _fixed_mask(shape=(7, 5), seed=9):
    return (np.random.default_rng(seed).random(shape) > 0.4).astype(np.uint8)


LAYER_CASES = {
    **{f"dense-{a}": (lambda a=a: L.Dense(5, 4, a, dtype=F64, seed=1))
       for a in ["linear", "relu", "sigmoid", "tanh", "leaky_relu", "elu"]},
    "dense-leaky-alpha0.2": lambda: L.Dense(5, 4, "leakyrelu", alpha=0.2, dtype=F64, seed=1),
    "dense-elu-alpha0.5": lambda: L.Dense(5, 4, "elu", alpha=0.5, dtype=F64, seed=1),
    "dense-nobias": lambda: L.Dense(5, 4, "tanh", bias=False, dtype=F64, seed=1),
    **{f"act-{c.__name__}": (lambda c=c: c(dtype=F64))
       for c in [L.ReLU, L.Sigmoid, L.Tanh, L.LeakyReLU, L.ELU, L.Identity]},
    "leaky-0.3": lambda: L.LeakyReLU(0.3, dtype=F64),
    "elu-2": lambda: L.ELU(2.0, dtype=F64),
    "prelu-shared": lambda: L.PReLU(dtype=F64),
    "prelu-per-feature": lambda: L.PReLU(5, init=0.1, dtype=F64),
    "rrelu": lambda: L.RReLU(seed=4, dtype=F64),
    "rrelu-fixed-slopes": lambda: _with(L.RReLU(dtype=F64), fixed_slopes=_x((7, 5), 3) ** 2 / 4),
    "maxout-2": lambda: L.Maxout(5, 3, dtype=F64, seed=2),
    "maxout-4": lambda: L.Maxout(5, 3, pieces=4, dtype=F64, seed=2),
    "softmax": lambda: L.Softmax(dtype=F64),
    "batchnorm": lambda: L.BatchNorm(5, dtype=F64),
    "batchnorm-textbook": lambda: L.BatchNorm(5, textbook=True, eps=1e-6, dtype=F64),
    "dropout-inverted": lambda: L.Dropout(0.4, seed=5, dtype=F64),
    "dropout-textbook": lambda: L.Dropout(0.4, inverted=False, seed=5, dtype=F64),
    "dropout-fixed-inverted": lambda: _with(L.Dropout(0.4, dtype=F64), fixed_mask=_fixed_mask()),
    "dropout-fixed-textbook": lambda: _with(L.Dropout(0.4, inverted=False, dtype=F64),
                                            fixed_mask=_fixed_mask()),
}


def _with(layer, **attrs):
    for k, v in attrs.items():
        setattr(layer, k, v)
    return layer


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_gradient_check(backend, case, train):
    layer = LAYER_CASES[case]()
    if isinstance(layer, L.BatchNorm) and not train:
        layer.running_mean[...] = np.linspace(-0.5, 0.5, 5)
        layer.running_var[...] = np.linspace(0.5, 2.0, 5)
    errors = layer_gradient_check(layer, _x(), train=train)
    assert set(errors) == {"x", *layer.params}
    assert max(errors.values()) < TOL, errors


def test_prelu_per_feature_slope_gradient_has_feature_shape(backend):
    layer = L.PReLU(5, dtype=F64)
    x = _x()
    layer.forward(x)
    dout = _x(seed=1)
    layer.backward(dout)
    expected = np.where(x > 0, 0, dout * x).sum(axis=0)
    np.testing.assert_allclose(layer.grads["slope"], expected, rtol=1e-12, atol=1e-14)


# ============================================================================ forward values
@pytest.mark.parametrize("act", ["linear", "relu", "sigmoid", "tanh", "leaky_relu", "elu"])
def test_dense_forward_matches_formula(backend, dtype, act):
    layer = L.Dense(5, 4, act, dtype=dtype, seed=3)
    layer.params["b"][...] = np.arange(4) * 0.1
    x = _x(dtype=dtype)
    out = layer.forward(x)
    code, alpha = L.activation_code(act)
    ref = _ref_act(x.astype(F64) @ layer.params["W"].astype(F64) + layer.params["b"], code, alpha)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_activation_names_and_defaults():
    assert L.activation_code(None) == ("identity", 0.0)
    assert L.activation_code("Linear") == ("identity", 0.0)
    assert L.activation_code("LeakyReLU") == ("leaky_relu", 0.01)
    assert L.activation_code("leaky-relu", 0.2) == ("leaky_relu", 0.2)
    assert L.activation_code("elu") == ("elu", 1.0)
    assert L.Dense(2, 2, "leakyrelu").alpha == 0.01
    assert L.LeakyReLU().alpha == 0.01 and L.ELU().alpha == 1.0


def test_prelu_forward(backend):
    x = _x()
    shared = L.PReLU(dtype=F64)
    np.testing.assert_array_equal(shared.forward(x), np.where(x > 0, x, 0.25 * x))
    per = L.PReLU(5, dtype=F64)
    per.params["slope"][...] = np.arange(5) / 10
    np.testing.assert_allclose(per.forward(x), np.where(x > 0, x, np.arange(5) / 10 * x))


def test_rrelu_slopes_in_range_and_eval_mean(backend):
    layer = L.RReLU(0.1, 0.3, seed=11, dtype=F64)
    x = -np.abs(_x((200, 50))) - 0.1
    out = layer.forward(x)
    slopes = out / x
    assert slopes.min() >= 0.1 and slopes.max() <= 0.3
    assert abs(slopes.mean() - 0.2) < 0.005 and slopes.std() > 0.05
    assert layer.counter == x.size
    ref = np.empty_like(x)
    K.random_uniform(ref, 0.1, 0.3, 11, 0)
    np.testing.assert_allclose(slopes, ref, rtol=1e-12)
    np.testing.assert_allclose(layer.forward(x, train=False), 0.2 * x, rtol=1e-15)
    assert layer.counter == x.size                      # eval draws nothing


def test_rrelu_hold_rng_repeats_slopes(backend):
    layer = L.RReLU(seed=2, dtype=F64)
    x = -np.abs(_x())
    a = layer.forward(x).copy()
    b = layer.forward(x).copy()
    assert not np.array_equal(a, b)                     # a fresh draw each call
    layer.hold_rng = True
    c = layer.forward(x).copy()
    np.testing.assert_array_equal(layer.forward(x), c)  # held: the same numbers again


def test_maxout_forward_matches_formula(backend, dtype):
    layer = L.Maxout(5, 3, pieces=4, dtype=dtype, seed=0)
    layer.params["b"][...] = np.linspace(-1, 1, 12)
    x = _x(dtype=dtype)
    z = x.astype(F64) @ layer.params["W"].astype(F64) + layer.params["b"]
    ref = z.reshape(7, 3, 4).max(axis=2)
    out = layer.forward(x)
    assert out.dtype == dtype and out.shape == (7, 3)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_softmax_rows_sum_to_one(backend, dtype):
    out = L.Softmax(dtype=dtype).forward(_x(dtype=dtype) * 30)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-5)


# ============================================================================ batch norm
def test_batchnorm_train_pytorch_convention(backend, dtype):
    bn = L.BatchNorm(5, dtype=dtype)
    x = (_x((16, 5), 1) * 3 + 2).astype(dtype)
    out = bn.forward(x)
    x64 = x.astype(F64)
    ref = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(bn.running_mean, 0.1 * x64.mean(0), rtol=tol)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * x64.var(0, ddof=1), rtol=tol)
    assert out.dtype == bn.running_mean.dtype == dtype


def test_batchnorm_textbook_convention(backend):
    bn = L.BatchNorm(5, textbook=True, running_var_init=0.0, eps=1e-6, dtype=F64)
    assert (bn.momentum, bn.unbiased, bn.momentum_convention) == (0.9, False, "textbook")
    x = _x((16, 5), 1)
    bn.forward(x)
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.1 * x.var(0), rtol=1e-12)
    bn2 = L.BatchNorm(5, momentum=0.8, momentum_convention="textbook", unbiased=True, dtype=F64)
    bn2.forward(x)
    np.testing.assert_allclose(bn2.running_var, 0.8 + 0.2 * x.var(0, ddof=1), rtol=1e-12)


def test_batchnorm_eval_uses_running_stats(backend):
    bn = L.BatchNorm(5, dtype=F64)
    bn.params["gamma"][...] = 2.0
    bn.params["beta"][...] = -1.0
    bn.running_mean[...] = 0.5
    bn.running_var[...] = 4.0
    x = _x((1, 5))                                       # one row is fine in eval
    np.testing.assert_allclose(bn.forward(x, train=False),
                               2 * (x - 0.5) / np.sqrt(4 + 1e-5) - 1, rtol=1e-12)
    before = bn.running_mean.copy()
    bn.forward(_x((3, 5)), train=False)
    np.testing.assert_array_equal(bn.running_mean, before)


def test_batchnorm_batch_of_one_in_training_is_an_error():
    with pytest.raises(ValueError, match="at least 2 rows"):
        L.BatchNorm(5).forward(np.ones((1, 5), np.float32))


# ============================================================================ dropout
def test_dropout_masks_from_kernel_and_counter(backend, dtype):
    d = L.Dropout(0.3, seed=42, dtype=dtype)
    x = np.ones((100, 40), dtype)
    out = d.forward(x)
    ref = np.empty((100, 40), np.uint8)
    K.dropout_mask(ref, 0.3, 42, 0)
    np.testing.assert_array_equal(d.mask, ref)
    assert d.counter == 4000
    np.testing.assert_allclose(out, ref / 0.7, rtol=1e-6)
    assert out.dtype == dtype
    assert abs(ref.mean() - 0.7) < 0.03
    d.forward(x)
    K.dropout_mask(ref, 0.3, 42, 4000)
    np.testing.assert_array_equal(d.mask, ref)
    assert d.counter == 8000


def test_dropout_inverted_and_textbook_values(backend):
    x = _x()
    mask = _fixed_mask()
    inv = L.Dropout(0.4, dtype=F64)
    np.testing.assert_allclose(inv.forward(x, mask=mask), x * mask / 0.6, rtol=1e-15)
    np.testing.assert_array_equal(inv.backward(x), x * mask / 0.6)
    np.testing.assert_array_equal(inv.forward(x, train=False), x)
    tb = L.Dropout(0.4, inverted=False, dtype=F64)
    tb.fixed_mask = mask.astype(bool)
    np.testing.assert_array_equal(tb.forward(x), x * mask)
    np.testing.assert_allclose(tb.forward(x, train=False), x * 0.6, rtol=1e-15)
    assert tb.counter == 0                              # a given mask draws nothing


def test_dropout_p_zero_keeps_everything(backend):
    x = _x()
    np.testing.assert_array_equal(L.Dropout(0.0, dtype=F64).forward(x), x)


# ============================================================================ loss
def test_softmax_cross_entropy_values(backend, dtype):
    logits = _x((6, 4), 2, dtype) * 3
    t = np.array([0, 3, 1, 2, 3, 0], np.uint8)
    loss = L.SoftmaxCrossEntropy(dtype=dtype)
    val = loss.forward(logits, t)
    z = logits.astype(F64)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    assert isinstance(val, float)
    assert val == pytest.approx(np.mean(lse - z[np.arange(6), t]), rel=1e-6)
    d = loss.backward(2.0)
    p = np.exp(z - lse[:, None])
    assert d.dtype == dtype
    np.testing.assert_allclose(d, 2.0 * (p - np.eye(4)[t]) / 6, rtol=1e-5, atol=1e-7)
    assert loss.forward(logits, np.eye(4)[t]) == val  # one-hot rows give the same loss
    assert loss.forward(logits, t.astype(np.int16)) == val


# ============================================================================ common behaviour
ALL_FACTORIES = {
    "Dense": lambda dt: L.Dense(5, 4, "relu", dtype=dt, seed=0),
    "Maxout": lambda dt: L.Maxout(5, 4, dtype=dt, seed=0),
    "ReLU": lambda dt: L.ReLU(dtype=dt), "Sigmoid": lambda dt: L.Sigmoid(dtype=dt),
    "Tanh": lambda dt: L.Tanh(dtype=dt), "LeakyReLU": lambda dt: L.LeakyReLU(dtype=dt),
    "ELU": lambda dt: L.ELU(dtype=dt), "PReLU": lambda dt: L.PReLU(5, dtype=dt),
    "RReLU": lambda dt: L.RReLU(seed=1, dtype=dt), "Softmax": lambda dt: L.Softmax(dtype=dt),
    "BatchNorm": lambda dt: L.BatchNorm(5, dtype=dt),
    "Dropout": lambda dt: L.Dropout(0.5, seed=1, dtype=dt),
}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(ALL_FACTORIES))
def test_dtype_is_preserved(backend, dtype, name, train):
    layer = ALL_FACTORIES[name](dtype)
    assert layer.dtype == dtype
    out = layer.forward(_x(dtype=dtype), train=train)
    assert out.dtype == dtype
    dx = layer.backward(np.ones_like(out))
    assert dx.dtype == dtype
    assert all(p.dtype == dtype for p in layer.params.values())
    assert all(g.dtype == dtype for g in layer.grads.values())
    assert np.isfinite(out).all() and np.isfinite(dx).all()


def test_float32_and_float64_layers_agree(backend):
    x = _x()
    for name, make in ALL_FACTORIES.items():
        a, b = make(np.float32), make(F64)
        ya = a.forward(x.astype(np.float32)).copy()
        yb = b.forward(x)
        np.testing.assert_allclose(ya, yb, rtol=2e-5, atol=2e-5, err_msg=name)


def test_parameter_free_layers_follow_input_dtype(backend):
    x64 = _x()
    for layer in [L.ReLU(), L.Softmax(), L.Dropout(0.5, seed=0), L.RReLU(seed=0), L.ELU()]:
        assert layer.dtype == np.float32                # the default
        assert layer.forward(x64).dtype == F64 and layer.dtype == F64
        assert layer.backward(np.ones_like(x64)).dtype == F64
        assert layer.forward(x64.astype(np.float32)).dtype == np.float32
    assert isinstance(L.SoftmaxCrossEntropy().forward(x64, np.arange(7) % 5), float)
    with pytest.raises(TypeError, match="x has dtype float64 but the model is float32"):
        L.ReLU(dtype=np.float32).forward(x64)           # explicit dtype: strict
    with pytest.raises(TypeError, match="x has dtype float64 but the model is float32"):
        L.PReLU().forward(x64)                          # parameters fix the dtype


def test_workspaces_are_reused(backend):
    layer = L.Dense(5, 4, "relu", seed=0)
    x = _x(dtype=np.float32)
    out1 = layer.forward(x)
    dx1 = layer.backward(np.ones_like(out1))
    out2 = layer.forward(x * 2)
    dx2 = layer.backward(np.ones_like(out2))
    assert out1 is out2 and dx1 is dx2                  # no allocation in the steady state
    out3 = layer.forward(x[:3])
    assert out3 is not out1 and out3.shape == (3, 4)
    assert layer.forward(x) is out1                     # the two most recent shapes are kept


def test_backward_without_dx_and_frozen_layer(backend):
    layer = L.Dense(5, 4, "tanh", dtype=F64, seed=0)
    x = _x()
    layer.forward(x)
    assert layer.backward(np.ones((7, 4)), compute_dx=False) is None
    g = layer.grads["W"].copy()
    layer.trainable = False
    layer.grads["W"][...] = 123.0
    dx = layer.backward(np.ones((7, 4)) * 2)
    assert dx.shape == (7, 5)
    assert (layer.grads["W"] == 123.0).all()           # frozen: no weight gradient computed
    layer.trainable = True
    layer.backward(np.ones((7, 4)))
    np.testing.assert_allclose(layer.grads["W"], g)


@pytest.mark.parametrize("name", sorted(ALL_FACTORIES))
def test_state_dict_and_config_round_trip(name):
    layer = ALL_FACTORIES[name](F64)
    x = _x()
    layer.forward(x)                                    # moves BN stats and random counters
    for p in layer.params.values():
        p += 0.5
    clone = L.from_config(layer.config())
    assert type(clone) is type(layer) and clone.dtype == layer.dtype
    clone.load_state_dict(layer.state_dict())
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(clone.state_dict()[k], v)
    np.testing.assert_array_equal(clone.forward(x), layer.forward(x))


def test_cross_backend_layers_agree():
    assert_backends_agree(ALL_FACTORIES, _x((33, 5)))
