"""Bad input to layers and nets raises a clear exception naming what was wrong."""
import numpy as np
import pytest

from dlfast import layers as L
from dlfast import regularizers as R
from dlfast.net import MLP, MultiTaskNet, Sequential

X = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
T = np.array([0, 1, 2, 1])


def _net(**kw):
    return MLP(5, [6], 3, seed=0, **kw)


# ============================================================================ arrays
@pytest.mark.parametrize("bad, exc, msg", [
    (X.astype(np.int64), TypeError, "x must have a float dtype \\(float32\\), got int64"),
    (X > 0, TypeError, "x must have a float dtype \\(float32\\), got bool"),
    (X.astype(object), TypeError, "got object"),
    (X.astype(np.complex64), TypeError, "got complex64"),
    (X.astype(np.float16), TypeError, "got float16"),
    (X.astype(np.float64), TypeError, "x has dtype float64 but the model is float32 \\(mixed"),
    (X.tolist(), TypeError, "x must be a numpy.ndarray of float32, got list"),
    (X[0], ValueError, "x must be 2-D, got shape \\(5,\\)"),
    (X[None], ValueError, "x must be 2-D, got shape \\(1, 4, 5\\)"),
    (X[:, :4], ValueError, "x must have 5 features \\(columns\\), got shape \\(4, 4\\)"),
])
def test_bad_x(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        L.Dense(5, 3).forward(bad)
    with pytest.raises(exc, match=msg):
        _net().predict(bad)


def test_float64_layer_rejects_float32():
    with pytest.raises(TypeError, match="x has dtype float32 but the model is float64"):
        L.BatchNorm(5, dtype=np.float64).forward(X)
    with pytest.raises(TypeError, match="x has dtype float32 but the model is float64"):
        _net(dtype=np.float64).loss(X, T)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_input(value):
    x = X.copy()
    x[1, 2] = value
    with pytest.raises(ValueError, match="x contains NaN or infinity"):
        _net().predict(x)
    with pytest.raises(ValueError, match="x contains NaN or infinity"):
        L.ReLU().forward(x)
    layer = L.Dense(5, 3)
    out = layer.forward(X)
    dout = np.ones_like(out)
    dout[0, 0] = value
    with pytest.raises(ValueError, match="dout contains NaN or infinity"):
        layer.backward(dout)
    logits = np.zeros((2, 3), np.float32)
    logits[0, 1] = value
    with pytest.raises(ValueError, match="logits contains NaN or infinity"):
        L.SoftmaxCrossEntropy().forward(logits, np.array([0, 1]))


def test_layer_specific_shapes():
    with pytest.raises(ValueError, match="x must have 4 features"):
        L.BatchNorm(4).forward(X)
    with pytest.raises(ValueError, match="x must have 3 features for a PReLU with num_parameters=3"):
        L.PReLU(3).forward(X)
    with pytest.raises(ValueError, match="x must have 6 features"):
        L.Maxout(6, 2).forward(X)
    d = L.Dropout(0.5)
    with pytest.raises(ValueError, match="mask must have the shape of x \\(4, 5\\), got \\(4, 4\\)"):
        d.forward(X, mask=np.ones((4, 4), np.uint8))
    with pytest.raises(ValueError, match="mask values must be 0 or 1"):
        d.forward(X, mask=np.full((4, 5), 2.0))
    with pytest.raises(TypeError, match="mask must be bool, integer or float 0/1 values"):
        d.forward(X, mask=np.ones((4, 5), object))
    r = L.RReLU()
    r.fixed_slopes = np.ones((3, 3), np.float32)
    with pytest.raises(ValueError, match="fixed_slopes must have shape"):
        r.forward(X)


def test_backward_errors():
    layer = L.Dense(5, 3)
    with pytest.raises(RuntimeError, match="Dense.backward called before forward"):
        layer.backward(np.ones((4, 3), np.float32))
    layer.forward(X)
    with pytest.raises(ValueError, match="dout must have the shape of the last forward output "
                                         "\\(4, 3\\), got \\(4, 2\\)"):
        layer.backward(np.ones((4, 2), np.float32))
    with pytest.raises(TypeError, match="dout has dtype float64 but the model is float32"):
        layer.backward(np.ones((4, 3)))
    with pytest.raises(RuntimeError, match="SoftmaxCrossEntropy.backward called before forward"):
        L.SoftmaxCrossEntropy().backward()


# ============================================================================ labels
@pytest.mark.parametrize("t, exc, msg", [
    (np.array([0, 1, 3, 1]), ValueError, "labels must lie in \\[0, 3\\), got values in \\[0, 3\\]"),
    (np.array([0, -1, 2, 1]), ValueError, "labels must lie in \\[0, 3\\)"),
    (np.array([0, 1, 2]), ValueError, "t must have 4 labels to match the batch, got shape \\(3,\\)"),
    (np.array([0.0, 1.0, 2.0, 1.0]), TypeError, "t must be integer class indices"),
    (np.array(["a", "b", "c", "d"]), TypeError, "t must be integer class indices"),
    (np.eye(3)[[0, 1, 2, 1]] * 0.9, ValueError, "exact one-hot rows"),
    (np.array([[1, 1, 0]] * 4), ValueError, "exact one-hot rows"),
    (np.eye(4)[[0, 1, 2, 1]], ValueError, "one-hot labels must have shape \\(4, 3\\), got \\(4, 4\\)"),
    (T[:, None], ValueError, "one-hot labels must have shape \\(4, 3\\), got \\(4, 1\\)"),
    (T.reshape(2, 2, 1), ValueError, "t must be 1-D class indices or 2-D one-hot rows"),
    ([0, 1, 2, 1], TypeError, "t must be a numpy.ndarray"),
])
def test_bad_labels(t, exc, msg):
    net = _net()
    for call in (net.loss, net.gradient, net.accuracy):
        with pytest.raises(exc, match=msg):
            call(X, t)


# ============================================================================ constructor arguments
@pytest.mark.parametrize("p", [1.0, 1.5, -0.1, float("nan")])
def test_dropout_p_out_of_range(p):
    with pytest.raises(ValueError, match="p must lie in \\[0.0, 1.0\\)"):
        L.Dropout(p)
    with pytest.raises(ValueError, match="dropout must lie in \\[0.0, 1.0\\)"):
        _net(dropout=p)


def test_bad_layer_arguments():
    with pytest.raises(TypeError, match="p must be a real number, got str"):
        L.Dropout("0.5")
    with pytest.raises(ValueError, match="unknown activation 'swish'; choose one of"):
        L.Dense(5, 3, "swish")
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        L.Activation("gelu")
    with pytest.raises(ValueError, match="alpha only applies to leaky_relu and elu"):
        L.Dense(5, 3, "relu", alpha=0.1)
    with pytest.raises(ValueError, match="alpha must lie in \\(0.0, inf\\]"):
        L.ELU(alpha=0.0)
    with pytest.raises(ValueError, match="alpha must lie in \\[0.0, inf\\]"):
        L.LeakyReLU(alpha=-0.1)
    with pytest.raises(ValueError, match="unknown initialiser 'glorious'"):
        L.Dense(5, 3, weight_init="glorious")
    with pytest.raises(ValueError, match="in_features must be a positive integer, got 0"):
        L.Dense(0, 3)
    with pytest.raises(TypeError, match="out_features must be an integer, got float"):
        L.Dense(5, 3.0)
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int32"):
        L.Dense(5, 3, dtype=np.int32)
    with pytest.raises(ValueError, match="give rng or seed, not both"):
        L.Dense(5, 3, rng=1, seed=1)
    with pytest.raises(ValueError, match="momentum must lie in \\[0.0, 1.0\\]"):
        L.BatchNorm(5, momentum=1.5)
    with pytest.raises(ValueError, match="eps must lie in \\(0.0, inf\\)"):
        L.BatchNorm(5, eps=0)
    with pytest.raises(ValueError, match="momentum_convention must be 'pytorch' or 'textbook'"):
        L.BatchNorm(5, momentum_convention="keras")
    with pytest.raises(ValueError, match="upper must lie in \\[0.5, inf\\]"):
        L.RReLU(0.5, 0.2)
    with pytest.raises(ValueError, match="seed must lie in \\[0, 2\\*\\*64\\)"):
        L.Dropout(0.5, seed=-1)
    with pytest.raises(ValueError, match="pieces must be a positive integer"):
        L.Maxout(5, 3, pieces=0)


def test_batchnorm_batch_of_one():
    with pytest.raises(ValueError, match="BatchNorm in training mode needs a batch of at least 2 rows"):
        L.BatchNorm(5).forward(X[:1])
    net = _net(batchnorm=True)
    with pytest.raises(ValueError, match="at least 2 rows"):
        net.gradient(X[:1], T[:1])
    assert net.predict(X[:1]).shape == (1, 3)          # eval mode is fine


def test_bad_net_arguments():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP(5, [6], 3, activation="swish")
    with pytest.raises(ValueError, match="unknown initialiser 'bogus'"):
        MLP(5, [6], 3, weight_init="bogus")
    with pytest.raises(ValueError, match="hidden_sizes\\[1\\] must be a positive integer, got 0"):
        MLP(5, [6, 0], 3)
    with pytest.raises(ValueError, match="weight_decay must lie in \\[0.0, inf\\]"):
        MLP(5, [6], 3, weight_decay=-1)
    with pytest.raises(ValueError, match="c must lie in"):
        MLP(5, [6], 3, max_norm=-1)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        MLP(5, [6], 3, dtype="int8")
    with pytest.raises(TypeError, match="layers\\[1\\] must be a dlfast layer"):
        Sequential([L.Dense(5, 3), "relu"])
    with pytest.raises(TypeError, match="loss: loss must be a dlfast Loss"):
        Sequential([L.Dense(5, 3)], loss=L.ReLU())
    with pytest.raises(TypeError, match="mixed dtypes: layer 0 \\(Dense\\) float64, "
                                        "layer 1 \\(Dense\\) float32"):
        Sequential([L.Dense(5, 3, dtype=np.float64), L.Dense(3, 2)])
    with pytest.raises(TypeError, match="layer 0 \\(Dense\\) is float32 but the net is float64"):
        Sequential([L.Dense(5, 3), L.Dense(3, 2)], dtype=np.float64)
    with pytest.raises(TypeError, match="layers have mixed dtypes"):
        Sequential([L.Dense(5, 3, dtype=np.float64), L.ReLU(dtype=np.float32)])
    with pytest.raises(ValueError, match="upto=3 exceeds the number of parametrised layers \\(2\\)"):
        _net().freeze(upto=3)


def test_bad_multitask_arguments():
    trunk = [L.Dense(5, 4)]
    with pytest.raises(TypeError, match="heads must be a non-empty dict"):
        MultiTaskNet(trunk, {})
    with pytest.raises(ValueError, match="head names must be non-empty strings without '.'"):
        MultiTaskNet(trunk, {"a.b": [L.Dense(4, 2)]})
    with pytest.raises(KeyError, match="loss_weights has unknown heads \\['c'\\]"):
        MultiTaskNet(trunk, {"a": [L.Dense(4, 2)]}, loss_weights={"c": 1.0})
    net = MultiTaskNet(trunk, {"a": [L.Dense(4, 2)], "b": [L.Dense(4, 3)]})
    with pytest.raises(KeyError, match="missing \\['b'\\], unknown \\['c'\\]"):
        net.loss(X, {"a": T % 2, "c": T})
    with pytest.raises(TypeError, match="targets must be a dict"):
        net.loss(X, T)
    with pytest.raises(ValueError, match="t\\['b'\\] labels must lie in \\[0, 3\\)|labels must lie"):
        net.accuracy(X, {"a": T % 2, "b": T + 1})
