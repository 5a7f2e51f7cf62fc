"""dlfast.compat against the textbook ("Deep Learning from Scratch", common/*.py): a textbook-style
script learns, and a plain-NumPy re-implementation of the textbook formulas (below, written here
from the book's equations) agrees step by step for batch norm, dropout and every optimiser."""
import io
import contextlib
import math

import numpy as np
import pytest

from dlfast.gradcheck import hold_rng

from dlfast.compat import *          # noqa: F401,F403  (the textbook's import pattern)
from dlfast import compat
from dlfast.datasets import load_digits, to_one_hot


# ============================================================================ textbook reference
def ref_init(sizes, weight_init_std):
    """The textbook's __init_weight with the global np.random."""
    params = {}
    for idx in range(1, len(sizes)):
        scale = weight_init_std
        if str(weight_init_std).lower() in ("relu", "he"):
            scale = np.sqrt(2.0 / sizes[idx - 1])
        elif str(weight_init_std).lower() in ("sigmoid", "xavier"):
            scale = np.sqrt(1.0 / sizes[idx - 1])
        params["W" + str(idx)] = scale * np.random.randn(sizes[idx - 1], sizes[idx])
        params["b" + str(idx)] = np.zeros(sizes[idx])
    return params


class RefNet:
    """Textbook MultiLayerNetExtend (ReLU) with a given dropout mask per layer."""

    def __init__(self, params, n_hidden, lam, use_bn, ratio):
        self.p = {k: v.copy() for k, v in params.items()}
        self.n_hidden, self.lam, self.use_bn, self.ratio = n_hidden, lam, use_bn, ratio
        self.running = {}

    def forward(self, x, train, masks=None):
        cache = []
        h = x
        for k in range(1, self.n_hidden + 1):
            a = h @ self.p[f"W{k}"] + self.p[f"b{k}"]
            c = {"in": h}
            if self.use_bn:
                if f"rm{k}" not in self.running:
                    self.running[f"rm{k}"] = np.zeros(a.shape[1])
                    self.running[f"rv{k}"] = np.zeros(a.shape[1])
                if train:
                    mu = a.mean(axis=0)
                    xc = a - mu
                    var = np.mean(xc ** 2, axis=0)
                    std = np.sqrt(var + 10e-7)
                    xn = xc / std
                    self.running[f"rm{k}"] = 0.9 * self.running[f"rm{k}"] + 0.1 * mu
                    self.running[f"rv{k}"] = 0.9 * self.running[f"rv{k}"] + 0.1 * var
                    c.update(xc=xc, std=std, xn=xn)
                else:
                    xn = (a - self.running[f"rm{k}"]) / np.sqrt(self.running[f"rv{k}"] + 10e-7)
                a = self.p[f"gamma{k}"] * xn + self.p[f"beta{k}"]
            h = np.maximum(a, 0)
            c["relu"] = a > 0
            if self.ratio is not None:
                if train:
                    h = h * masks[k]
                else:
                    h = h * (1.0 - self.ratio)
            cache.append(c)
        k = self.n_hidden + 1
        return h @ self.p[f"W{k}"] + self.p[f"b{k}"], cache, h

    def loss_grad(self, x, t, masks):
        y, cache, h_last = self.forward(x, True, masks)
        y = y - y.max(axis=1, keepdims=True)
        p = np.exp(y) / np.exp(y).sum(axis=1, keepdims=True)
        n = x.shape[0]
        loss = -np.sum(np.log(p[np.arange(n), t] + 1e-7)) / n      # the textbook's loss
        loss += sum(0.5 * self.lam * np.sum(self.p[f"W{k}"] ** 2) for k in range(1, self.n_hidden + 2))
        d = p.copy()
        d[np.arange(n), t] -= 1
        d /= n
        g = {}
        k = self.n_hidden + 1
        g[f"W{k}"] = h_last.T @ d + self.lam * self.p[f"W{k}"]
        g[f"b{k}"] = d.sum(axis=0)
        d = d @ self.p[f"W{k}"].T
        for k in range(self.n_hidden, 0, -1):
            c = cache[k - 1]
            if self.ratio is not None:
                d = d * masks[k]
            d = d * c["relu"]
            if self.use_bn:
                g[f"beta{k}"] = d.sum(axis=0)
                g[f"gamma{k}"] = np.sum(c["xn"] * d, axis=0)
                dxn = self.p[f"gamma{k}"] * d
                dxc = dxn / c["std"]
                dstd = -np.sum((dxn * c["xc"]) / (c["std"] * c["std"]), axis=0)
                dvar = 0.5 * dstd / c["std"]
                m = d.shape[0]
                dxc += (2.0 / m) * c["xc"] * dvar
                dmu = np.sum(dxc, axis=0)
                d = dxc - dmu / m
            g[f"W{k}"] = c["in"].T @ d + self.lam * self.p[f"W{k}"]
            g[f"b{k}"] = d.sum(axis=0)
            d = d @ self.p[f"W{k}"].T
        return loss, g


class RefOpt:
    """The textbook's common/optimizer.py, verbatim in arithmetic."""

    def __init__(self, kind, lr, **kw):
        self.kind, self.lr, self.kw = kind, lr, kw
        self.s, self.s2, self.iter = None, None, 0

    def update(self, params, grads):
        if self.s is None:
            self.s = {k: np.zeros_like(v) for k, v in params.items()}
            self.s2 = {k: np.zeros_like(v) for k, v in params.items()}
        kind, lr = self.kind, self.lr
        if kind == "adam":
            b1, b2 = self.kw.get("beta1", 0.9), self.kw.get("beta2", 0.999)
            self.iter += 1
            lr_t = lr * np.sqrt(1.0 - b2 ** self.iter) / (1.0 - b1 ** self.iter)
        for k in params:
            g = grads[k]
            if kind == "sgd":
                params[k] -= lr * g
            elif kind == "momentum":
                self.s[k] = self.kw.get("momentum", 0.9) * self.s[k] - lr * g
                params[k] += self.s[k]
            elif kind == "nesterov":       # the book's form since its "Fix Nesterov" commit
                mu = self.kw.get("momentum", 0.9)
                params[k] += mu * mu * self.s[k]
                params[k] -= (1 + mu) * lr * g
                self.s[k] *= mu
                self.s[k] -= lr * g
            elif kind == "adagrad":
                self.s[k] += g * g
                params[k] -= lr * g / (np.sqrt(self.s[k]) + 1e-7)
            elif kind == "rmsprop":
                dr = self.kw.get("decay_rate", 0.99)
                self.s[k] *= dr
                self.s[k] += (1 - dr) * g * g
                params[k] -= lr * g / (np.sqrt(self.s[k]) + 1e-7)
            elif kind == "adam":
                self.s[k] += (1 - b1) * (g - self.s[k])
                self.s2[k] += (1 - b2) * (g ** 2 - self.s2[k])
                params[k] -= lr_t * self.s[k] / (np.sqrt(self.s2[k]) + 1e-7)


OPTS = [("sgd", SGD, {"lr": 0.1}), ("momentum", Momentum, {"lr": 0.05, "momentum": 0.8}),
        ("nesterov", Nesterov, {"lr": 0.05, "momentum": 0.9}), ("adagrad", AdaGrad, {"lr": 0.1}),
        ("rmsprop", RMSprop, {"lr": 0.01, "decay_rate": 0.9}),
        ("adam", Adam, {"lr": 0.01, "beta1": 0.8, "beta2": 0.99})]


@pytest.fixture(scope="module")
def digits():
    x, t = load_digits()
    return x, t


# ============================================================================ a textbook script
def test_textbook_script_learns(digits):
    x, t = digits
    x_train, t_train, x_test, t_test = x[:1500], t[:1500], x[1500:], t[1500:]
    np.random.seed(1)
    network = MultiLayerNetExtend(input_size=64, hidden_size_list=[100, 100], output_size=10,
                                  use_batchnorm=True, use_dropout=True, dropout_ration=0.1,
                                  weight_decay_lambda=1e-4)
    optimizer = Adam(lr=0.01)
    train_loss_list = []
    for i in range(150):
        batch_mask = np.random.choice(x_train.shape[0], 100)
        x_batch, t_batch = x_train[batch_mask], t_train[batch_mask]
        grads = network.gradient(x_batch, t_batch)
        optimizer.update(network.params, grads)
        train_loss_list.append(network.loss(x_batch, t_batch, train_flg=True))
    assert np.mean(train_loss_list[-10:]) < 0.5 * np.mean(train_loss_list[:5])
    assert network.accuracy(x_test, t_test) > 0.85
    # one-hot labels as the textbook's load_mnist(one_hot_label=True) gives them
    assert network.accuracy(x_test, to_one_hot(t_test, 10)) == network.accuracy(x_test, t_test)


@pytest.mark.parametrize("opt", ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam"])
def test_textbook_trainer_learns(digits, opt):
    x, t = digits
    np.random.seed(0)
    network = MultiLayerNet(input_size=64, hidden_size_list=[50, 50], output_size=10,
                            weight_init_std="he")
    lr = {"SGD": 0.1, "Momentum": 0.05, "Nesterov": 0.05, "AdaGrad": 0.05, "RMSprop": 0.005,
          "Adam": 0.005}[opt]
    trainer = Trainer(network, x[:1200], t[:1200], x[1200:], t[1200:], epochs=4,
                      mini_batch_size=100, optimizer=opt, optimizer_param={"lr": lr},
                      evaluate_sample_num_per_epoch=300, verbose=False)
    trainer.train()
    assert len(trainer.train_loss_list) == trainer.max_iter == 48
    # accuracies every iter_per_epoch (= 12) steps, from step 0: 0, 12, 24, 36
    assert len(trainer.train_acc_list) == len(trainer.test_acc_list) == 4
    assert trainer.test_acc_list[-1] > 0.8
    assert np.mean(trainer.train_loss_list[-5:]) < np.mean(trainer.train_loss_list[:5])


def test_trainer_verbose_prints_and_fractional_epochs(digits):
    x, t = digits
    np.random.seed(0)
    net = MultiLayerNet(64, [20], 10)
    tr = Trainer(net, x[:250], t[:250], x[250:300], t[250:300], epochs=2, mini_batch_size=100,
                 optimizer="rmsprpo", optimizer_param={"lr": 0.01})   # the textbook's typo key
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        acc = tr.train()
    out = buf.getvalue()
    assert tr.iter_per_epoch == 2.5 and tr.max_iter == 5
    assert out.count("train loss:") == 5 and "Final Test Accuracy" in out
    assert len(tr.train_acc_list) == 1         # only iteration 0 is a multiple of 2.5 below 5
    assert 0.0 <= acc <= 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="weight_init_std"):
        MultiLayerNet(4, [3], 2, weight_init_std="glorious")
    with pytest.raises(ValueError, match="weight_init_std"):
        MultiLayerNet(4, [3], 2, weight_init_std=-1.0)
    net = MultiLayerNet(4, [3], 2)
    x = np.zeros((2, 4))
    with pytest.raises(ValueError, match="unknown optimizer"):
        Trainer(net, x, np.zeros(2, int), x, np.zeros(2, int), optimizer="lbfgs")
    with pytest.warns(compat.NonFiniteWarning, match="input of MultiLayerNet"):
        y = net.predict(np.full((2, 4), np.nan))        # NaN propagates, as in NumPy
    assert np.all(np.isnan(y))
    with pytest.raises(ValueError, match="decay_rate"):
        RMSprop(decay_rate=1.5)


# ============================================================================ initialisation
@pytest.mark.parametrize("std", ["relu", "he", "sigmoid", "xavier", 0.05])
def test_weights_are_the_textbooks_draws(std):
    np.random.seed(123)
    ref = ref_init([6, 5, 4, 3], std)
    np.random.seed(123)
    net = MultiLayerNet(6, [5, 4], 3, weight_init_std=std, dtype=np.float64)
    assert sorted(net.params) == sorted(ref)
    for k in ref:
        np.testing.assert_array_equal(net.params[k], ref[k])
    assert net.params["W1"].dtype == np.float64
    assert MultiLayerNet(6, [5, 4], 3).params["W1"].dtype == np.float64      # the book's default
    net32 = MultiLayerNet(6, [5, 4], 3, dtype=np.float32)
    assert net32.params["W1"].dtype == np.float32


def test_seed_reproduces_dropout_runs(digits):
    x, t = digits
    xb, tb = x[:50], t[:50]

    def run():
        np.random.seed(7)
        net = MultiLayerNetExtend(64, [30, 30], 10, use_dropout=True, dropout_ration=0.3)
        opt = SGD(lr=0.1)
        for _ in range(3):
            opt.update(net.params, net.gradient(xb, tb))
        return net.params["W1"].copy()

    np.testing.assert_array_equal(run(), run())


# ============================================================================ step by step
@pytest.mark.parametrize("use_bn", [False, True])
@pytest.mark.parametrize("use_dropout", [False, True])
def test_net_matches_textbook_formulas_step_by_step(digits, use_bn, use_dropout, backend):
    x, t = digits
    x = x.astype(np.float64)
    np.random.seed(5)
    net = MultiLayerNetExtend(64, [16, 12], 10, weight_init_std=0.3, weight_decay_lambda=0.01,
                              use_dropout=use_dropout, dropout_ration=0.25,
                              use_batchnorm=use_bn, dtype=np.float64)
    params0 = {k: v.copy() for k, v in net.params.items()}
    ref = RefNet(params0, 2, 0.01, use_bn, 0.25 if use_dropout else None)
    opt, ref_opt = Adam(lr=0.01), RefOpt("adam", 0.01)
    rng = np.random.default_rng(0)
    for step in range(4):
        idx = rng.choice(len(x), 32)
        xb, tb = x[idx], t[idx]
        before = net.state_dict()
        grads = net.gradient(xb, tb)
        after = net.state_dict()
        masks = None
        if use_dropout:
            masks = {k: net.layers[f"Dropout{k}"].mask.astype(np.float64) for k in (1, 2)}
            for m in masks.values():
                assert 0.5 < m.mean() < 0.95          # keep probability 1 - 0.25
        loss_ref, g_ref = ref.loss_grad(xb, tb, masks)
        assert sorted(grads) == sorted(g_ref)
        for k in g_ref:
            # a bias feeding batch norm has a true gradient of 0: its value is rounding noise of
            # the sum over the batch (|g| ~ 1e-13 here), compared to within that noise
            noise = use_bn and k in ("b1", "b2")
            np.testing.assert_allclose(grads[k], g_ref[k], rtol=1e-9,
                                       atol=1e-11 if noise else 1e-12, err_msg=k)
        # the train-mode loss with the same masks (streams rewound and held) and statistics
        net.load_state_dict(before)
        with hold_rng(net.net):
            assert net.loss(xb, tb, train_flg=True) == pytest.approx(loss_ref, rel=1e-10)
        net.load_state_dict(after)
        opt.update(net.params, grads)
        ref_opt.update(ref.p, g_ref)
        for k in ref.p:
            noise = use_bn and k in ("b1", "b2")     # moved by rounding noise only (above)
            np.testing.assert_allclose(net.params[k], ref.p[k], rtol=1e-9,
                                       atol=1e-11 if noise else 1e-12, err_msg=k)
    if use_bn:
        for k in (1, 2):
            bn = net.layers[f"BatchNorm{k}"]
            np.testing.assert_allclose(bn.running_mean, ref.running[f"rm{k}"], rtol=1e-9, atol=1e-13)
            np.testing.assert_allclose(bn.running_var, ref.running[f"rv{k}"], rtol=1e-9, atol=1e-13)
    # eval mode: running statistics, dropout scaled by 1 - ratio
    y_ref = ref.forward(x[:40], False)[0]
    np.testing.assert_allclose(net.predict(x[:40]), y_ref, rtol=1e-9, atol=1e-9)
    loss_eval = net.loss(x[:40], t[:40])
    p = compat.softmax(y_ref)
    want = -np.mean(np.log(p[np.arange(40), t[:40]] + 1e-7)) + sum(
        0.5 * 0.01 * np.sum(ref.p[f"W{k}"] ** 2) for k in (1, 2, 3))
    assert loss_eval == pytest.approx(want, rel=1e-9)


def test_batchnorm_running_var_starts_at_zero():
    np.random.seed(0)
    net = MultiLayerNetExtend(5, [4], 3, use_batchnorm=True, dtype=np.float64)
    bn = net.layers["BatchNorm1"]
    np.testing.assert_array_equal(bn.running_var, 0.0)
    np.testing.assert_array_equal(bn.running_mean, 0.0)
    assert bn.eps == 1e-6 and bn.momentum == 0.9
    # eval before any training: (x - 0) / sqrt(0 + 1e-6)
    x = np.random.randn(3, 5)
    a = x @ net.params["W1"]
    h = np.maximum(a / np.sqrt(1e-6), 0)
    np.testing.assert_allclose(net.predict(x), h @ net.params["W2"], rtol=1e-9)


def test_dropout_textbook_form():
    np.random.seed(0)
    net = MultiLayerNetExtend(50, [400], 3, use_dropout=True, dropout_ration=0.3,
                              dtype=np.float64)
    d = net.layers["Dropout1"]
    h = np.abs(np.random.randn(200, 400)) + 0.1
    out = d.forward(h, train=True).copy()
    mask = d.mask
    np.testing.assert_array_equal(out, h * mask)           # no 1/(1-p) scaling
    assert abs(mask.mean() - 0.7) < 0.01
    np.testing.assert_allclose(d.forward(h, train=False), h * 0.7)


@pytest.mark.parametrize("kind,cls,kw", OPTS, ids=[o[0] for o in OPTS])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_optimizers_match_textbook(kind, cls, kw, dtype, backend):
    rng = np.random.default_rng(3)
    params = {"W1": rng.standard_normal((4, 3)).astype(dtype),
              "b1": rng.standard_normal(3).astype(dtype)}
    ref_params = {k: v.astype(np.float64) for k, v in params.items()}
    opt, ref = cls(**kw), RefOpt(kind, **kw)
    for _ in range(6):
        grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
        opt.update(params, grads)
        ref.update(ref_params, {k: g.astype(np.float64) for k, g in grads.items()})
        for k in params:
            assert params[k].dtype == dtype
            tol = 1e-12 if dtype == np.float64 else 2e-5
            np.testing.assert_allclose(params[k], ref_params[k], rtol=tol, atol=tol, err_msg=k)
    if kind == "nesterov":
        for k in params:
            np.testing.assert_allclose(opt.v[k], ref.s[k], rtol=1e-5, atol=1e-6)


def test_optimizer_defaults():
    assert SGD().lr == 0.01 and Momentum().lr == 0.01 and Momentum().momentum == 0.9
    assert Nesterov().lr == 0.01 and Nesterov().momentum == 0.9
    assert AdaGrad().lr == 0.01 and AdaGrad().eps == 1e-7
    r = RMSprop()
    assert (r.lr, r.decay_rate, r.eps) == (0.01, 0.99, 1e-7)
    a = Adam()
    assert (a.lr, a.beta1, a.beta2, a.eps, a.eps_hat) == (0.001, 0.9, 0.999, 1e-7, True)
    # no weight decay inside the optimiser
    assert a.weight_decay == 0.0


# ============================================================================ gradients
def test_gradient_matches_numerical_gradient(digits):
    x, t = digits
    np.random.seed(2)
    net = MultiLayerNetExtend(64, [8, 6], 10, weight_init_std="xavier", activation="sigmoid",
                              weight_decay_lambda=0.1, use_batchnorm=True, use_dropout=True,
                              dropout_ration=0.2, dtype=np.float64)
    xb, tb = x[:12].astype(np.float64), t[:12]
    running = net.layers["BatchNorm1"].running_mean.copy()
    num = net.numerical_gradient(xb, tb)
    np.testing.assert_array_equal(net.layers["BatchNorm1"].running_mean, running)  # restored
    with hold_rng(net.net):
        grad = net.gradient(xb, tb)
    for k in grad:
        err = np.max(np.abs(grad[k] - num[k])) / max(np.max(np.abs(grad[k]) + np.abs(num[k])), 1e-3)
        assert err < 1e-6, (k, err)


def test_works_with_dlfast_trainer_and_gradcheck(digits):
    from dlfast.optim import Adam as DAdam
    from dlfast.train import Trainer as DTrainer
    x, t = digits
    np.random.seed(0)
    net = MultiLayerNet(64, [40], 10, dtype=np.float32)     # dlfast's Trainer wants x's dtype
    tr = DTrainer(net, DAdam(lr=0.01), epochs=3, batch_size=64, progress=False, seed=0)
    h = tr.fit(x[:1000], t[:1000], x[1000:], t[1000:])
    assert h.val_accuracy[-1] > 0.85


# ============================================================================ functions
def test_functions():
    x = np.array([0.3, 2.9, 4.0])
    e = np.exp(x - x.max())
    np.testing.assert_allclose(softmax(x), e / e.sum())
    b = np.array([[1010.0, 1000.0, 990.0], [0.0, 0.0, 0.0]])
    sb = softmax(b)
    np.testing.assert_allclose(sb.sum(axis=1), 1.0)
    assert np.all(np.isfinite(sb))
    np.testing.assert_allclose(sigmoid(np.array([-1.0, 0.0, 2.0])),
                               1 / (1 + np.exp(-np.array([-1.0, 0.0, 2.0]))))
    assert sigmoid(np.array([0], dtype=np.int64))[0] == 0.5
    np.testing.assert_array_equal(relu(np.array([-1.0, 0.5])), [0.0, 0.5])
    np.testing.assert_array_equal(step_function(np.array([-1.0, 2.0])), [0, 1])
    y = np.array([[0.1, 0.6, 0.3], [0.8, 0.1, 0.1]])
    want = -(np.log(0.6 + 1e-7) + np.log(0.8 + 1e-7)) / 2
    assert cross_entropy_error(y, np.array([1, 0])) == pytest.approx(want)
    assert cross_entropy_error(y, np.array([[0, 1, 0], [1, 0, 0]])) == pytest.approx(want)
    assert cross_entropy_error(y[0], np.array([0, 1, 0])) == pytest.approx(-np.log(0.6 + 1e-7))
    assert mean_squared_error(np.array([1.0, 2.0]), np.array([0.0, 0.0])) == 2.5
    np.testing.assert_allclose(sigmoid_grad(np.array([0.0])), [0.25])


def test_numerical_gradient_function():
    def f(x):
        return np.sum(x ** 2) + x[0] * x[1]
    x = np.array([3.0, 4.0])
    g = numerical_gradient(f, x)
    np.testing.assert_allclose(g, [2 * 3 + 4, 2 * 4 + 3], rtol=1e-7)
    np.testing.assert_array_equal(x, [3.0, 4.0])      # restored
    with pytest.raises(TypeError, match="float"):
        numerical_gradient(f, np.array([3, 4]))
