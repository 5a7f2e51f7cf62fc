"""What the book's chapter-6 scripts do, recreated here on the digits data (each test names the
script whose pattern it follows); issue 21 found four of the eight failing on dlfast.compat."""
import contextlib
import io
import warnings

import numpy as np
import pytest

from dlfast import compat
from dlfast.datasets import load_digits


@pytest.fixture(scope="module")
def data():
    x, t = load_digits(dtype=np.float32)
    return x[:1500], t[:1500], x[1500:], t[1500:]


def test_optimizer_compare_mnist(data):
    """A star import of the optimizer module provides np; four nets, four optimisers with their
    default hyperparameters, losses smoothed for the plot."""
    ns = {}
    exec("from dlfast.compat.optimizer import *", ns)
    np_, x_train, t_train = ns["np"], data[0], data[1]
    optimizers = {"SGD": ns["SGD"](), "Momentum": ns["Momentum"](), "AdaGrad": ns["AdaGrad"](),
                  "Adam": ns["Adam"]()}
    np_.random.seed(0)
    networks = {k: compat.MultiLayerNet(64, [40, 40], 10) for k in optimizers}
    train_loss = {k: [] for k in optimizers}
    for i in range(150):
        m = np_.random.choice(x_train.shape[0], 64)
        for key in optimizers:
            grads = networks[key].gradient(x_train[m], t_train[m])
            optimizers[key].update(networks[key].params, grads)
            train_loss[key].append(networks[key].loss(x_train[m], t_train[m]))
    for key in optimizers:
        curve = compat.smooth_curve(train_loss[key])
        assert len(curve) == 150 and curve[-1] < curve[0], key
    assert np.mean(train_loss["Adam"][-20:]) < np.mean(train_loss["SGD"][-20:])


def test_weight_init_compare(data):
    """One SGD updates three nets (std 0.01, Xavier, He)."""
    x_train, t_train = data[0], data[1]
    np.random.seed(1)
    types = {"std=0.01": 0.01, "Xavier": "sigmoid", "He": "relu"}
    optimizer = compat.SGD(lr=0.05)
    networks = {k: compat.MultiLayerNet(64, [50, 50, 50, 50], 10, weight_init_std=w)
                for k, w in types.items()}
    losses = {k: [] for k in types}
    for i in range(200):
        m = np.random.choice(x_train.shape[0], 64)
        for key in types:
            optimizer.update(networks[key].params, networks[key].gradient(x_train[m], t_train[m]))
            losses[key].append(networks[key].loss(x_train[m], t_train[m]))
    assert np.mean(losses["He"][-20:]) < 0.6 < np.mean(losses["std=0.01"][-20:])


def test_batch_norm_test(data):
    """Weight scales from np.logspace (NumPy floats); a net with and one without batch norm
    share one SGD; at scale 1 the plain net overflows: NaN goes on, with one warning each."""
    x_train, t_train = data[0][:300], data[1][:300]
    np.random.seed(2)
    results = {}
    for w in np.logspace(0, -4, num=3):
        bn_network = compat.MultiLayerNetExtend(64, [60] * 5, 10, weight_init_std=w * 40,
                                                use_batchnorm=True)
        network = compat.MultiLayerNetExtend(64, [60] * 5, 10, weight_init_std=w * 40)
        optimizer = compat.SGD(lr=0.01)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            acc = []
            for i in range(60):
                m = np.random.choice(300, 100)
                for net in (bn_network, network):
                    optimizer.update(net.params, net.gradient(x_train[m], t_train[m]))
                if i % 3 == 0:
                    acc.append((network.accuracy(x_train, t_train),
                                bn_network.accuracy(x_train, t_train)))
        nonfinite = [str(r.message) for r in rec if issubclass(r.category, compat.NonFiniteWarning)]
        results[float(w)] = (acc, nonfinite, network)
    acc, nonfinite, network = results[1.0]
    assert nonfinite and len(nonfinite) == len(set(nonfinite))           # once per kind
    assert not np.all(np.isfinite(network.params["W1"]))                 # the NaN run went on
    assert acc[-1][1] > 0.5                                              # batch norm copes
    assert results[1e-4][1] == []


def test_overfit_weight_decay_and_dropout(data):
    """A 300-row training set, weight decay 0.1 (loss and gradients), Trainer with dropout and
    verbose output."""
    x_train, t_train, x_test, t_test = data[0][:300], data[1][:300], data[2], data[3]
    np.random.seed(3)
    net = compat.MultiLayerNet(64, [50] * 3, 10, weight_decay_lambda=0.1)
    W = [net.params[f"W{k}"] for k in (1, 2, 3, 4)]
    plain = net.last_layer.forward(net.predict(x_train[:10]), t_train[:10])
    assert net.loss(x_train[:10], t_train[:10]) == pytest.approx(
        plain + sum(0.05 * np.sum(w ** 2) for w in W))
    grads = net.gradient(x_train[:10], t_train[:10])
    g0 = compat.MultiLayerNet(64, [50] * 3, 10)
    for k in net.params:
        g0.params[k][...] = net.params[k]
    np.testing.assert_allclose(grads["W1"] - g0.gradient(x_train[:10], t_train[:10])["W1"],
                               0.1 * net.params["W1"], rtol=1e-9, atol=1e-12)
    network = compat.MultiLayerNetExtend(64, [50] * 3, 10, use_dropout=True, dropout_ration=0.2)
    trainer = compat.Trainer(network, x_train, t_train, x_test, t_test, epochs=3,
                             mini_batch_size=100, optimizer="sgd", optimizer_param={"lr": 0.1},
                             verbose=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        trainer.train()
    text = out.getvalue()
    assert text.count("train loss:") == 9 and text.count("=== epoch:") == 3
    assert "test acc:" in text.splitlines()[-1]


def test_hyperparameter_optimization(data):
    """shuffle_dataset, a validation split, NumPy-float lr and weight decay, 'sgd' by name."""
    x_train, t_train = compat.shuffle_dataset(data[0][:500], data[1][:500])
    x_val, t_val, x_train, t_train = x_train[:100], t_train[:100], x_train[100:], t_train[100:]
    np.random.seed(4)
    best = 0.0
    for _ in range(3):
        weight_decay = 10 ** np.random.uniform(-8, -4)
        lr = 10 ** np.random.uniform(-2, -0.5)
        network = compat.MultiLayerNet(64, [50] * 3, 10, weight_decay_lambda=weight_decay)
        trainer = compat.Trainer(network, x_train, t_train, x_val, t_val, epochs=5,
                                 mini_batch_size=100, optimizer="sgd",
                                 optimizer_param={"lr": lr}, verbose=False)
        trainer.train()
        assert len(trainer.test_acc_list) == 5
        best = max(best, trainer.test_acc_list[-1])
    assert best > 0.3
