"""dlfast.compat.nets (the book's chapter 5, 7 and 8 nets) and the book attributes of
MultiLayerNet(Extend): structure, draws, gradients against central differences, learning,
float32, save/load of params, NaN runs."""
import warnings

import numpy as np
import pytest

from dlfast import compat
from dlfast.compat import (Adam, DeepConvNet, MultiLayerNet, MultiLayerNetExtend, SimpleConvNet,
                           TwoLayerNet, Trainer)
from dlfast.compat.layers import Affine, Convolution, Dropout, Pooling, Relu, SoftmaxWithLoss
from dlfast import layers as L
from dlfast.datasets import load_digits, to_one_hot
from dlfast.gradcheck import hold_rng


@pytest.fixture(scope="module")
def digits():
    return load_digits(dtype=np.float32)


def rel_err(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-6)))


def sampled_gradient(loss, params, grads, n=6, h=1e-5):
    """Central differences of ``loss()`` at n entries of each parameter against ``grads``."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for k, p in params.items():
        for flat in rng.choice(p.size, min(n, p.size), replace=False):
            idx = np.unravel_index(flat, p.shape)
            saved = p[idx]
            p[idx] = saved + h
            fp = loss()
            p[idx] = saved - h
            fm = loss()
            p[idx] = saved
            num = (fp - fm) / (2 * h)
            worst = max(worst, abs(num - grads[k][idx]) / max(abs(num) + abs(grads[k][idx]), 1e-4))
    return worst


# ============================================================================ chapter 5
def test_two_layer_net_structure_and_draws():
    np.random.seed(0)
    net = TwoLayerNet(input_size=6, hidden_size=4, output_size=3)
    np.random.seed(0)
    W1, W2 = 0.01 * np.random.randn(6, 4), 0.01 * np.random.randn(4, 3)
    np.testing.assert_array_equal(net.params["W1"], W1)
    np.testing.assert_array_equal(net.params["W2"], W2)
    assert list(net.params) == ["W1", "b1", "W2", "b2"]
    assert list(net.layers) == ["Affine1", "Relu1", "Affine2"]
    assert isinstance(net.lastLayer, SoftmaxWithLoss) and net.last_layer is net.lastLayer
    assert net.layers["Affine1"].W is net.params["W1"] and net.layers["Affine2"].b is net.params["b2"]
    assert net.params["W1"].dtype == np.float64
    # the layers (dlfast layers the engine runs) take the book's calls and have its attributes
    x = np.random.rand(5, 6).astype(np.float32)
    t = np.array([0, 1, 2, 0, 1])
    h = x
    for layer in net.layers.values():
        h = layer.forward(h)
    np.testing.assert_allclose(h, net.predict(x), rtol=1e-12)
    grads = net.gradient(x, t)
    relu, a1 = net.layers["Relu1"], net.layers["Affine1"]
    np.testing.assert_array_equal(relu.mask, a1.out <= 0)
    np.testing.assert_array_equal(a1.dW, grads["W1"])
    assert a1.x.shape == (5, 6) and grads["W1"] is a1.dW     # as the book's TwoLayerNet
    first = grads["W1"].copy()
    loss, bufs = net.loss_and_gradient(x, t)                             # the layers' buffers
    assert a1.dW is not grads["W1"] and a1.dW is bufs["W1"]
    grads2 = net.gradient(x[::-1].copy(), t[::-1].copy())               # new arrays again
    assert grads2["W1"] is a1.dW and grads2["W1"] is not grads["W1"]
    np.testing.assert_array_equal(grads["W1"], first)                    # the old ones kept
    a1.forward(x)
    a1.backward(np.ones((5, 4)))                                         # a layer's own step
    assert a1.dW is a1.grads["W"] and a1.dW is not grads2["W1"]
    W1 = net.params["W1"]
    compat.SGD(lr=1.0).update(net.params, grads)
    assert net.layers["Affine1"].W is W1                                 # updated in place


def test_two_layer_net_gradient_check_and_learning(digits):
    """ch05/gradient_check.py and train_neuralnet.py, on digits."""
    x, t = digits
    t1 = to_one_hot(t, 10)
    np.random.seed(1)
    net = TwoLayerNet(64, 20, 10, weight_init_std=0.3)
    num = net.numerical_gradient(x[:3], t1[:3])
    grad = net.gradient(x[:3], t1[:3])
    for k in num:
        assert np.average(np.abs(grad[k] - num[k])) < 1e-6, k
    for _ in range(300):
        m = np.random.choice(1500, 100)
        g = net.gradient(x[m], t1[m])
        for key in ("W1", "b1", "W2", "b2"):
            net.params[key] -= 0.5 * g[key]
    assert net.accuracy(x[1500:], t1[1500:]) > 0.85
    assert net.accuracy(x[1500:], t[1500:]) == net.accuracy(x[1500:], t1[1500:])


# ============================================================================ chapter 7
def test_simple_convnet_structure():
    np.random.seed(2)
    net = SimpleConvNet()
    shapes = {k: v.shape for k, v in net.params.items()}
    assert shapes == {"W1": (30, 1, 5, 5), "b1": (30,), "W2": (4320, 100), "b2": (100,),
                      "W3": (100, 10), "b3": (10,)}
    assert list(net.layers) == ["Conv1", "Relu1", "Pool1", "Affine1", "Relu2", "Affine2"]
    assert net.layers["Conv1"].W is net.params["W1"]
    assert (net.layers["Pool1"].pool_h, net.layers["Pool1"].stride) == (2, (2, 2))
    assert net.layers["Conv1"].pad == 0 and net.layers["Affine1"].W is net.params["W2"]
    np.random.seed(2)
    np.testing.assert_array_equal(net.params["W1"], 0.01 * np.random.randn(30, 1, 5, 5))
    np.testing.assert_array_equal(net.params["W2"], 0.01 * np.random.randn(4320, 100))


def test_simple_convnet_gradient_check_as_ch07():
    """ch07/gradient_check.py: a 10x10 input, T of shape (1, 1)."""
    np.random.seed(3)
    net = SimpleConvNet(input_dim=(1, 10, 10),
                        conv_param={"filter_num": 10, "filter_size": 3, "pad": 0, "stride": 1},
                        hidden_size=10, output_size=10, weight_init_std=0.01)
    X = np.random.rand(100).reshape((1, 1, 10, 10))
    T = np.array([1]).reshape((1, 1))
    grad_num = net.numerical_gradient(X, T)
    grad = net.gradient(X, T)
    for key in grad_num:
        assert np.abs(grad_num[key] - grad[key]).mean() < 1e-5, key      # (ReLU kinks within h)
    # larger weights (no ReLU kinks within h): relative agreement
    np.random.seed(4)
    net = SimpleConvNet(input_dim=(2, 9, 8),
                        conv_param={"filter_num": 4, "filter_size": 3, "pad": 1, "stride": 2},
                        hidden_size=7, output_size=5, weight_init_std=0.5)
    X, T = np.random.rand(3, 2, 9, 8), np.array([0, 4, 2])
    assert net.params["W2"].shape == (4 * 2 * 2, 7)
    grad = net.gradient(X, T)
    assert sampled_gradient(lambda: net.loss(X, T), net.params, grad) < 1e-4


def test_simple_convnet_learns_and_accuracy_counts_every_row(digits):
    x, t = digits
    x = x.reshape(-1, 1, 8, 8)
    np.random.seed(5)
    net = SimpleConvNet(input_dim=(1, 8, 8),
                        conv_param={"filter_num": 8, "filter_size": 3, "pad": 1, "stride": 1},
                        hidden_size=30, output_size=10, weight_init_std=0.1)
    tr = Trainer(net, x[:1500], t[:1500], x[1500:], t[1500:], epochs=4, mini_batch_size=50,
                 optimizer="Adam", optimizer_param={"lr": 0.01}, evaluate_sample_num_per_epoch=150,
                 verbose=False)
    acc = tr.train()
    assert acc > 0.85
    y = np.argmax(net.predict(x[1500:]), axis=1)
    assert net.accuracy(x[1500:], t[1500:], batch_size=100) == pytest.approx(np.mean(y == t[1500:]))
    # fewer rows than a batch: every row counts (the book's loop would give 0 here)
    y7 = np.argmax(net.predict(x[:7]), axis=1)
    assert net.accuracy(x[:7], t[:7]) == pytest.approx(np.mean(y7 == t[:7]))


# ============================================================================ chapter 8
def test_deep_convnet_structure_and_he_draws():
    np.random.seed(6)
    net = DeepConvNet()
    kinds = [type(layer).__mro__[2].__name__ for layer in net.layers]     # the dlfast layers
    assert kinds == ["Conv2D", "Activation", "Conv2D", "Activation", "MaxPool2D"] * 3 + [
        "Dense", "Activation", "Dropout", "Dense", "Dropout"]
    assert net.layers[17].dropout_ratio == 0.5 and not net.layers[17].inverted
    for i, j in enumerate((0, 2, 5, 7, 10, 12, 15, 18), 1):
        assert net.layers[j].W is net.params[f"W{i}"]
    assert net.params["W4"].shape == (32, 32, 3, 3) and net.layers[7].pad == 2
    assert net.params["W7"].shape == (64 * 4 * 4, 50) and net.params["W8"].shape == (50, 10)
    fan_in = [9, 144, 144, 288, 288, 576, 1024, 50]
    np.random.seed(6)
    for i, n in enumerate(fan_in, 1):
        shape = net.params[f"W{i}"].shape
        np.testing.assert_array_equal(net.params[f"W{i}"], np.sqrt(2.0 / n) * np.random.randn(*shape))


def test_deep_convnet_gradient_and_dropout():
    np.random.seed(7)
    net = DeepConvNet()
    x, t = np.random.rand(2, 1, 28, 28), np.array([3, 8])
    drops = [layer for layer in net.layers if type(layer).__mro__[2] is L.Dropout]
    assert len(drops) == 2
    with hold_rng(net.net):       # the same masks at every call
        grad = net.gradient(x, t)
        # the exact cross-entropy (the book's + 1e-7 differs by ~1e-7/p where p is small)
        assert sampled_gradient(lambda: net.net.loss(x, t, True), net.params, grad, n=4,
                                h=1e-6) < 1e-4            # (b1 has a ReLU kink within 1e-5)
        assert net.loss(x, t) == pytest.approx(net.net.loss(x, t, True), rel=1e-4)
    # predict: dropout off scales by 1/2, on draws a mask
    y_eval = net.predict(x).copy()
    assert np.all(np.isfinite(y_eval))
    for d in drops:
        d.dropout_ratio = 0.0
    np.testing.assert_allclose(net.predict(x, train_flg=True), 4 * y_eval, rtol=1e-10)


def test_conv_nets_float32(digits):
    np.random.seed(8)
    net = SimpleConvNet(input_dim=(1, 8, 8), hidden_size=10,
                        conv_param={"filter_num": 3, "filter_size": 3, "pad": 0, "stride": 1},
                        dtype=np.float32)
    x = digits[0][:10].reshape(-1, 1, 8, 8)
    g = net.gradient(x, digits[1][:10])
    assert all(v.dtype == np.float32 for v in (*net.params.values(), *g.values()))
    opt = Adam()
    opt.update(net.params, g)
    assert net.predict(x.astype(np.float16)).dtype == np.float32


def test_save_and_load_params(tmp_path):
    np.random.seed(9)
    a = SimpleConvNet(input_dim=(1, 6, 6), hidden_size=5,
                      conv_param={"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1})
    a.save_params(str(tmp_path / "params.pkl"))
    b = SimpleConvNet(input_dim=(1, 6, 6), hidden_size=5,
                      conv_param={"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1})
    b.load_params(str(tmp_path / "params.pkl"))
    x = np.random.rand(3, 1, 6, 6)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))
    assert b.layers["Affine1"].W is b.params["W2"]
    # the book's half-float script: params rounded in place, float16 input
    for p in b.params.values():
        p[...] = p.astype(np.float16)
    assert np.all(np.isfinite(b.predict(x.astype(np.float16))))
    d = DeepConvNet()
    d.save_params(tmp_path / "deep.pkl")
    e = DeepConvNet(dtype=np.float32)
    e.load_params(tmp_path / "deep.pkl")
    assert e.params["W8"].dtype == np.float32 and e.layers[18].W is e.params["W8"]
    np.testing.assert_allclose(e.params["W8"], d.params["W8"], rtol=1e-6)
    with pytest.raises(ValueError, match="'W1' has shape"):
        a.load_params(tmp_path / "deep.pkl")


# ============================================================================ MultiLayerNet(Extend)
def test_multilayer_net_book_attributes(digits):
    x, t = digits
    np.random.seed(10)
    net = MultiLayerNetExtend(64, [12, 10], 10, use_batchnorm=True, use_dropout=True,
                              dropout_ration=0.2)
    assert list(net.layers) == ["Affine1", "BatchNorm1", "Activation_function1", "Dropout1",
                                "Affine2", "BatchNorm2", "Activation_function2", "Dropout2",
                                "Affine3"]
    a1, bn1, act1, d1 = (net.layers[k] for k in ("Affine1", "BatchNorm1",
                                                 "Activation_function1", "Dropout1"))
    assert a1.W is net.params["W1"] and a1.b is net.params["b1"]
    assert bn1.gamma is net.params["gamma1"] and bn1.beta is net.params["beta1"]
    assert bn1.momentum == 0.9 and d1.dropout_ratio == 0.2
    assert isinstance(net.last_layer, SoftmaxWithLoss)
    grads = net.gradient(x[:20], t[:20])
    np.testing.assert_array_equal(a1.dW, grads["W1"])
    np.testing.assert_array_equal(bn1.dgamma, grads["gamma1"])
    assert a1.x.shape == (20, 64) and d1.mask.dtype == np.bool_ and act1.mask.dtype == np.bool_
    assert bn1.xn.shape == (20, 12) and bn1.std.shape == (12,)
    assert a1.config()["type"] == "Dense"
    loss = net.loss(x[:20], t[:20])
    assert net.last_layer.loss + net.net.penalty() == loss


def test_multilayer_net_one_row_batchnorm_as_the_book():
    """batch_norm_gradient_check.py uses x_train[:1]."""
    np.random.seed(11)
    net = MultiLayerNetExtend(5, [4, 3], 2, use_batchnorm=True)
    x, t = np.random.rand(1, 5), np.array([[0.0, 1.0]])
    net.params["beta2"][:] = [0.5, -0.5, 1.0]              # out = beta: off the ReLU's kink
    grads = net.gradient(x, t)
    np.testing.assert_array_equal(grads["W1"], 0.0)        # var 0: nothing flows below BN
    np.testing.assert_array_equal(grads["gamma2"], 0.0)
    assert grads["beta2"][1] == 0 and np.all(grads["beta2"][[0, 2]] != 0)
    num = net.numerical_gradient(x, t)
    for k in ("W3", "b3", "beta2", "W1", "gamma1"):
        np.testing.assert_allclose(num[k], grads[k], rtol=1e-4, atol=1e-6)
    bn = net.layers["BatchNorm1"]
    assert np.all(bn.running_var == 0.0)


def test_nan_runs_go_on_with_one_warning():
    """A run whose weights blow up: the book goes on with NaN (its plots show it)."""
    np.random.seed(12)
    net = MultiLayerNet(4, [5], 3, weight_init_std=1e200)
    x, t = np.random.rand(6, 4), np.array([0, 1, 2, 0, 1, 2])
    opt = compat.SGD(lr=1e200)
    with pytest.warns(compat.NonFiniteWarning) as rec:
        for _ in range(3):
            opt.update(net.params, net.gradient(x, t))
            net.loss(x, t)
    texts = [str(w.message) for w in rec if issubclass(w.category, compat.NonFiniteWarning)]
    assert len(texts) == len(set(texts)) == 2                      # once per object and kind
    assert any("loss of MultiLayerNet" in m for m in texts)
    assert any("gradient (NaN or inf) reached SGD" in m for m in texts)
    assert not np.all(np.isfinite(net.params["W1"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", compat.NonFiniteWarning)
        net.gradient(x, t)
        assert np.isnan(net.accuracy(x, t)) or 0 <= net.accuracy(x, t) <= 1
    ext = MultiLayerNetExtend(4, [5], 3, use_batchnorm=True, use_dropout=True)
    with pytest.warns(compat.NonFiniteWarning) as rec:
        g = ext.gradient(np.full((6, 4), np.nan), t)              # the engine refuses NaN x
    assert np.all(np.isnan(g["W2"]))
    assert [str(w.message).split(" ")[1] for w in rec] == ["non-finite", "loss"]
    assert all("MultiLayerNetExtend" in str(w.message) for w in rec)
    conv = SimpleConvNet(input_dim=(1, 6, 6), hidden_size=3,
                         conv_param={"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1})
    with pytest.warns(compat.NonFiniteWarning) as rec:
        g = conv.gradient(np.full((2, 1, 6, 6), np.nan), np.array([0, 1]))
    assert sorted(str(w.message)[:30] for w in rec) == [
        "a non-finite value (NaN or inf", "the loss of SimpleConvNet is n"]
    assert np.all(np.isnan(g["W1"]))


def test_layer_classes_in_a_net_of_ones_own():
    """Users' own nets on the compat layers (as the book's chapter files build theirs)."""
    rng = np.random.default_rng(13)
    params = {"W1": rng.normal(size=(4, 2, 3, 3)) * 0.3, "b1": rng.normal(size=4),
              "W2": rng.normal(size=(4 * 3 * 3, 3)) * 0.1, "b2": np.zeros(3)}
    layers = [Convolution(params["W1"], params["b1"], 1, 1), Relu(), Pooling(2, 2, stride=2),
              Affine(params["W2"], params["b2"])]
    last = SoftmaxWithLoss()
    x, t = rng.normal(size=(3, 2, 6, 7)), np.array([0, 2, 1])

    def loss():
        h = x
        for layer in layers:
            h = layer.forward(h)
        return last.forward(h, t)
    loss()
    d = last.backward()
    for layer in reversed(layers):
        d = layer.backward(d)
    assert d.shape == x.shape
    grads = {"W1": layers[0].dW, "b1": layers[0].db, "W2": layers[3].dW, "b2": layers[3].db}
    assert sampled_gradient(loss, params, grads) < 1e-4
