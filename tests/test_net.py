"""Nets: MLP layout and names, full-net gradient checks (BN + dropout + weight decay) on every
backend, the multi-task net (trunk gradient = sum of the heads'), freezing, state, config, seeds,
dtypes, and a small training run."""
import json

import numpy as np
import pytest

import dlfast
from dlfast import layers as L
from dlfast import regularizers as R
from dlfast.gradcheck import gradient_check, hold_rng
from dlfast.net import MLP, MultiTaskNet, Sequential

F64 = np.float64
TOL = 1e-6


def _data(n=10, d=6, c=3, seed=0, dtype=F64):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(dtype), rng.integers(0, c, n)


# ============================================================================ MLP structure
def test_mlp_param_names_and_layout():
    net = MLP(6, [5, 4], 3, batchnorm=True, dropout=0.5, seed=0)
    assert list(net.params) == ["W1", "b1", "gamma1", "beta1", "W2", "b2", "gamma2", "beta2",
                                "W3", "b3"]
    assert [type(l).__name__ for l in net.layers] == [
        "Dense", "BatchNorm", "Activation", "Dropout", "Dense", "BatchNorm", "Activation",
        "Dropout", "Dense"]
    assert net.layers[0].activation == "identity" and net.layers[2].activation == "relu"
    assert net.params["W1"].shape == (6, 5) and net.params["W3"].shape == (4, 3)
    assert net.params["W1"] is net.layers[0].params["W"]       # the layer's own array
    plain = MLP(6, [5], 3, activation="tanh", seed=0)
    assert list(plain.params) == ["W1", "b1", "W2", "b2"]
    assert [type(l).__name__ for l in plain.layers] == ["Dense", "Dense"]
    assert plain.layers[0].activation == "tanh"                # fused when there is no BN
    assert MLP(6, [], 3, seed=0).params["W1"].shape == (6, 3)  # softmax regression
    assert MLP(6, 4, 3, seed=0).params["W1"].shape == (6, 4)


def test_net_params_replace_the_layers_arrays(backend):
    """net.params stays the layers' own arrays: an entry set there replaces the layer's array
    (which then trains), an array replaced in a layer shows there; names are fixed."""
    import pickle
    from dlfast.optim import SGD
    x, t = _data()
    net = MLP(6, [5], 3, seed=0, dtype=F64)
    new = np.random.default_rng(1).standard_normal((6, 5))
    net.params["W1"] = new
    assert net.layers[0].params["W"] is new and net.params["W1"] is new
    before, opt = new.copy(), SGD(lr=0.5)
    for _ in range(3):
        opt.update(net.params, net.gradient(x, t))
    assert not np.array_equal(new, before)                     # the new array trained
    other = np.zeros((5, 3))
    net.layers[1].params["W"] = other
    assert net.params["W2"] is other
    net.params.update(b2=np.ones(3))
    assert (net.layers[1].params["b"] == 1).all()
    with pytest.raises(KeyError, match="'W9' is not a parameter of the net"):
        net.params["W9"] = new
    for bad in (lambda p: p.pop("W1"), lambda p: p.clear(), lambda p: p.__delitem__("W1")):
        with pytest.raises(TypeError, match="not added or removed"):
            bad(net.params)
    copy = pickle.loads(pickle.dumps(net))
    assert copy.params["W1"] is copy.layers[0].params["W"]
    np.testing.assert_array_equal(copy.params["W1"], new)


def test_mlp_weight_init_from_seed():
    a, b = MLP(6, [50], 3, seed=7), MLP(6, [50], 3, seed=7)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert not np.array_equal(a.params["W1"], MLP(6, [50], 3, seed=8).params["W1"])
    assert abs(a.params["W1"].std() - np.sqrt(2 / 6)) < 0.1
    x = MLP(100, [200], 3, weight_init="xavier", seed=0).params["W1"]
    assert abs(x.std() - np.sqrt(2 / 300)) < 0.005
    s = MLP(100, [200], 3, weight_init=0.01, seed=0).params["W1"]
    assert abs(s.std() - 0.01) < 0.001
    # float32 and float64 nets from one seed: the same weights up to rounding
    d = MLP(6, [50], 3, seed=7, dtype=F64)
    np.testing.assert_array_equal(a.params["W2"], d.params["W2"].astype(np.float32))


def test_mlp_textbook_batchnorm_options():
    net = MLP(6, [5], 3, batchnorm=True, bn_momentum_convention="textbook", bn_momentum=0.9,
              bn_eps=1e-6, bn_running_var_init=0.0, dropout=0.5, dropout_inverted=False, seed=0)
    bn, drop = net.layers[1], net.layers[3]
    assert (bn.momentum, bn.eps, bn.unbiased, bn.kernel_momentum) == (0.9, 1e-6, False,
                                                                      pytest.approx(0.1))
    assert (bn.running_var == 0).all() and not drop.inverted
    assert MLP(**net.config()).layers[1].running_var_init == 0.0


def test_dropout_streams_are_derived_from_seed():
    a = MLP(6, [5, 5], 3, dropout=0.5, seed=3)
    b = MLP(6, [5, 5], 3, dropout=0.5, seed=3)
    drops = [l for l in a.layers if isinstance(l, L.Dropout)]
    assert [l.seed for l in drops] == [l.seed for l in b.layers if isinstance(l, L.Dropout)]
    assert drops[0].seed != drops[1].seed
    assert drops[0].seed != MLP(6, [5, 5], 3, dropout=0.5, seed=4).layers[1].seed
    a.set_seed(99)
    assert drops[0].seed != b.layers[1].seed and drops[0].counter == 0


# ============================================================================ gradient checks
MLP_CASES = {
    "relu": dict(),
    "bn-dropout-wd": dict(batchnorm=True, dropout=0.3, weight_decay=0.1),
    "bn-textbook-dropout-textbook": dict(batchnorm=True, dropout=0.3, dropout_inverted=False,
                                         bn_momentum_convention="textbook", bn_eps=1e-6),
    "sigmoid-l1": dict(activation="sigmoid", regularizer=R.L1(0.05)),
    "tanh-bn": dict(activation="tanh", batchnorm=True),
    "leaky": dict(activation="leaky_relu", alpha=0.1, dropout=0.2),
    "elu-bn-elastic": dict(activation="elu", batchnorm=True, regularizer=R.ElasticNet(0.01, 0.1)),
    "prelu-shared": dict(activation="prelu", batchnorm=True),
    "prelu-per-feature": dict(activation="prelu", prelu_per_feature=True, dropout=0.2),
    "rrelu": dict(activation="rrelu", batchnorm=True, dropout=0.2),
    "maxout": dict(activation="maxout", maxout_pieces=3, dropout=0.2),
    "maxout-bn": dict(activation="maxout", batchnorm=True),
    "xavier-identity": dict(activation="identity", weight_init="xavier_uniform"),
}


@pytest.mark.parametrize("case", sorted(MLP_CASES))
def test_mlp_gradient_check(backend, case):
    x, t = _data()
    net = MLP(6, [7, 5], 3, seed=1, dtype=F64, **MLP_CASES[case])
    errors = gradient_check(net, x, t)
    assert set(errors) == set(net.params)
    assert max(errors.values()) < TOL, errors


def test_mlp_gradient_check_one_hot_labels(backend):
    x, t = _data()
    net = MLP(6, [7], 3, batchnorm=True, dropout=0.3, weight_decay=0.1, seed=1, dtype=F64)
    assert max(gradient_check(net, x, np.eye(3)[t]).values()) < TOL


def test_sequential_gradient_check(backend):
    x, t = _data()
    net = Sequential([L.Dense(6, 8, "tanh", dtype=F64, seed=0), L.Dropout(0.25, seed=1),
                      L.PReLU(8, dtype=F64), L.BatchNorm(8, dtype=F64), L.Maxout(8, 4, 3, dtype=F64, seed=2),
                      L.RReLU(seed=3), L.Dense(4, 3, dtype=F64, seed=4)],
                     regularizer=R.L2(0.05))
    assert list(net.params) == ["0.W", "0.b", "2.slope", "3.gamma", "3.beta", "4.W", "4.b",
                                "6.W", "6.b"]
    assert max(gradient_check(net, x, t).values()) < TOL


# ============================================================================ multi-task
def _multitask(dtype=F64, weights=None):
    trunk = [L.Dense(6, 8, "relu", dtype=dtype, seed=0), L.BatchNorm(8, dtype=dtype),
             L.Dropout(0.2, seed=5)]
    heads = {"digit": [L.Dense(8, 4, dtype=dtype, seed=1)],
             "parity": Sequential([L.Dense(8, 5, "tanh", dtype=dtype, seed=2),
                                   L.Dense(5, 2, dtype=dtype, seed=3)])}
    return MultiTaskNet(trunk, heads, loss_weights=weights)


def _mt_targets(n=10):
    rng = np.random.default_rng(4)
    return {"digit": rng.integers(0, 4, n), "parity": rng.integers(0, 2, n)}


def test_multitask_gradient_check(backend):
    x, _ = _data()
    net = _multitask(weights={"digit": 0.7, "parity": 1.3})
    assert list(net.params) == ["trunk.0.W", "trunk.0.b", "trunk.1.gamma", "trunk.1.beta",
                                "digit.0.W", "digit.0.b", "parity.0.W", "parity.0.b",
                                "parity.1.W", "parity.1.b"]
    assert max(gradient_check(net, x, _mt_targets()).values()) < TOL


def test_multitask_trunk_gradient_is_sum_of_heads(backend):
    x, _ = _data()
    t = _mt_targets()
    net = _multitask()
    state = net.state_dict()
    grads = {}
    for name, w in {"both": {"digit": 1, "parity": 1}, "digit": {"digit": 1, "parity": 0},
                    "parity": {"digit": 0, "parity": 1}}.items():
        net.load_state_dict(state)                   # same dropout mask and BN stats each time
        net.loss_weights = w
        grads[name] = net.gradient(x, t)
    for k in grads["both"]:
        if k.startswith("trunk."):
            np.testing.assert_allclose(grads["both"][k], grads["digit"][k] + grads["parity"][k],
                                       rtol=1e-12, atol=1e-14)
        else:
            head = k.split(".")[0]
            np.testing.assert_allclose(grads["both"][k], grads[head][k], rtol=1e-12, atol=1e-15)
    net.load_state_dict(state)
    net.loss_weights = {"digit": 1, "parity": 1}
    with hold_rng(net):
        total = net.loss(x, t, train=True)
        assert total == pytest.approx(net.losses["digit"] + net.losses["parity"])


def test_multitask_predict_accuracy_and_config(dtype):
    x, _ = _data(dtype=dtype)
    t = _mt_targets()
    net = _multitask(dtype)
    out = net.predict(x)
    assert set(out) == {"digit", "parity"} and out["digit"].shape == (10, 4)
    assert out["digit"].dtype == dtype
    acc = net.accuracy(x, t)
    assert acc["digit"] == np.mean(out["digit"].argmax(1) == t["digit"])
    clone = MultiTaskNet(**json.loads(json.dumps(net.config())))
    clone.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(clone.predict(x)["parity"], out["parity"])
    net.freeze(upto=2)
    assert set(net.loss_and_gradient(x, t)[1]) == {"digit.0.W", "digit.0.b", "parity.0.W",
                                                   "parity.0.b", "parity.1.W", "parity.1.b"}


# ============================================================================ net interface
def test_predict_loss_accuracy(backend, dtype):
    x, t = _data(dtype=dtype)
    net = MLP(6, [8], 3, dropout=0.5, seed=2, dtype=dtype)
    y = net.predict(x)
    assert y.dtype == dtype and y.shape == (10, 3)
    assert y is not net.predict(x)                   # predict returns a copy
    np.testing.assert_array_equal(y, net.predict(x))  # eval mode: deterministic
    assert net.accuracy(x, t) == np.mean(y.argmax(1) == t)
    assert net.accuracy(x, np.eye(3)[t]) == net.accuracy(x, t)
    z = y.astype(F64)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    assert net.loss(x, t) == pytest.approx(np.mean(lse - z[np.arange(10), t]), rel=1e-6)
    loss, grads = net.loss_and_gradient(x, t)
    assert isinstance(loss, float)
    assert all(g.dtype == dtype for g in grads.values())
    assert set(grads) == set(net.params)


def test_loss_and_gradient_matches_gradient():
    x, t = _data()
    net = MLP(6, [8, 8], 3, batchnorm=True, weight_decay=0.01, seed=2, dtype=F64)
    g1 = net.gradient(x, t)
    loss, g2 = net.loss_and_gradient(x, t)
    assert loss == pytest.approx(net.loss(x, t, train=True))
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])
        assert g2[k] is net.grads[k]                 # the layers' own buffers, not copies
    assert g1["W1"] is not net.gradient(x, t)["W1"]  # gradient() returns new arrays


def test_first_layer_skips_dx():
    x, t = _data()
    net = MLP(6, [8], 3, seed=0, dtype=F64)
    net.loss_and_gradient(x, t)
    assert "dx" not in net.layers[0]._ws and "dx" in net.layers[1]._ws


def test_freeze_and_unfreeze(backend):
    x, t = _data()
    net = MLP(6, [8, 8], 3, batchnorm=True, seed=0, dtype=F64)
    full = net.gradient(x, t)
    net.freeze(upto=2)                              # Dense1 and BatchNorm1
    assert not net.layers[0].trainable and not net.layers[1].trainable
    net.layers[0].grads["W"][...] = 7.0
    grads = net.gradient(x, t)
    assert set(grads) == {"W2", "b2", "gamma2", "beta2", "W3", "b3"}
    assert (net.layers[0].grads["W"] == 7.0).all()  # not computed
    for k in grads:
        np.testing.assert_allclose(grads[k], full[k], rtol=1e-12, atol=1e-15)
    assert max(gradient_check(net, x, t).values()) < TOL
    net.freeze()
    assert net.gradient(x, t) == {}
    net.unfreeze()
    assert set(net.gradient(x, t)) == set(net.params)
    with pytest.raises(ValueError, match="upto=6 exceeds the number of parametrised layers \\(5\\)"):
        net.freeze(upto=6)


def test_state_dict_round_trip_continues_identically(backend):
    x, t = _data(n=16)
    net = MLP(6, [8, 8], 3, batchnorm=True, dropout=0.3, activation="rrelu", seed=5)
    for _ in range(3):
        _, grads = net.loss_and_gradient(x.astype(np.float32), t)
        for k, g in grads.items():
            net.params[k] -= 0.1 * g
    state = net.state_dict()
    assert {"running_mean1", "running_var2", "dropout1.counter", "rrelu2.seed"} <= set(state)
    assert int(state["dropout1.counter"]) == 3 * 16 * 8
    assert not np.allclose(state["running_var1"], 1.0)
    clone = MLP(**json.loads(json.dumps(net.config())))
    clone.load_state_dict(state)
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(clone.predict(x32), net.predict(x32))
    la, ga = net.loss_and_gradient(x32, t)          # the same dropout masks and RReLU slopes
    lb, gb = clone.loss_and_gradient(x32, t)
    assert la == lb
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k])


def test_load_state_dict_errors():
    net = MLP(6, [8], 3, batchnorm=True, seed=0)
    state = net.state_dict()
    with pytest.raises(KeyError, match="missing \\['W1'\\]"):
        net.load_state_dict({k: v for k, v in state.items() if k != "W1"})
    with pytest.raises(KeyError, match="unknown keys \\['W9'\\]"):
        net.load_state_dict({**state, "W9": np.zeros(1)})
    net.load_state_dict({**state, "W9": np.zeros(1)}, strict=False)
    with pytest.raises(ValueError, match="'W1' must have shape \\(6, 8\\), got \\(8, 6\\)"):
        net.load_state_dict({**state, "W1": state["W1"].T})
    W1 = net.params["W1"].copy()
    with pytest.raises(TypeError, match="'running_var1' must have a float dtype, got int64"):
        net.load_state_dict({**state, "W1": W1 + 1, "running_var1": np.ones(8, np.int64)})
    np.testing.assert_array_equal(net.params["W1"], W1)      # nothing was written
    with pytest.raises(TypeError, match="state must be a dict"):
        net.load_state_dict([1, 2])


def test_load_state_dict_writes_in_place():
    net = MLP(6, [8], 3, seed=0)
    W1 = net.params["W1"]
    other = MLP(6, [8], 3, seed=1)
    net.load_state_dict(other.state_dict())
    assert net.params["W1"] is W1 and net.layers[0].params["W"] is W1
    np.testing.assert_array_equal(W1, other.params["W1"])


def test_config_is_json_and_rebuilds():
    net = MLP(6, [8, 4], 3, activation="leaky_relu", alpha=0.2, batchnorm=True, dropout=0.1,
              regularizer=R.ElasticNet(0.1, 0.2), max_norm=3.0, seed=11, dtype=F64)
    cfg = json.loads(json.dumps(net.config()))
    assert cfg["hidden_sizes"] == [8, 4] and cfg["dtype"] == "float64" and cfg["seed"] == 11
    clone = MLP(**cfg)
    for k in net.params:
        np.testing.assert_array_equal(clone.params[k], net.params[k])
    assert isinstance(clone.regularizer, R.ElasticNet) and clone.max_norm.c == 3.0
    assert isinstance(MLP(6, [8], 3).config()["seed"], int)   # a drawn seed is recorded
    seq = Sequential([L.Dense(6, 4, "relu", seed=0), L.Dropout(0.5), L.Dense(4, 3, seed=1)],
                     regularizer=R.L2(0.1), max_norm=2.0)
    sclone = Sequential(**json.loads(json.dumps(seq.config())))
    sclone.load_state_dict(seq.state_dict())
    x, _ = _data(dtype=np.float32)
    np.testing.assert_array_equal(sclone.predict(x), seq.predict(x))
    assert sclone.layers[1].seed == seq.layers[1].seed


def test_sequential_dtype_adoption():
    seq = Sequential([L.Dense(6, 4, dtype=F64, seed=0), L.ReLU(), L.Dropout(0.2),
                      L.Dense(4, 3, dtype=F64, seed=1)])
    assert seq.dtype == F64 and seq.layers[1].dtype == F64 and seq.loss_layer.dtype == F64
    x, t = _data()
    assert seq.predict(x).dtype == F64


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "prelu", "maxout"])
def test_training_reduces_loss(backend, activation):
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 6)) * 3
    t = rng.integers(0, 3, 300)
    x = (centers[t] + rng.standard_normal((300, 6))).astype(np.float32)
    net = MLP(6, [16], 3, activation=activation, batchnorm=True, dropout=0.1, seed=0)
    start = net.loss(x, t)
    for step in range(150):
        idx = rng.integers(0, 300, 32)
        _, grads = net.loss_and_gradient(x[idx], t[idx])
        for k, g in grads.items():
            net.params[k] -= np.float32(0.1) * g
        net.apply_constraints()
    assert net.loss(x, t) < 0.5 * start
    assert net.accuracy(x, t) > 0.9


def test_cross_backend_mlp_agrees():
    if "cython" not in dlfast.available_backends():
        pytest.skip("compiled backend not built")
    x, t = _data(n=64)
    res = {}
    for be in ("numpy", "cython"):
        net = MLP(6, [32, 32], 3, batchnorm=True, dropout=0.3, weight_decay=0.01, seed=0,
                  dtype=F64)
        with dlfast.use_backend(be):
            loss, grads = net.loss_and_gradient(x, t)
            res[be] = (loss, {k: g.copy() for k, g in grads.items()}, net.predict(x))
    assert res["numpy"][0] == pytest.approx(res["cython"][0], rel=1e-12)
    for k in res["numpy"][1]:
        np.testing.assert_allclose(res["numpy"][1][k], res["cython"][1][k], rtol=1e-10,
                                   atol=1e-13)
    np.testing.assert_allclose(res["numpy"][2], res["cython"][2], rtol=1e-12, atol=1e-12)


# ============================================================================ nets on images
def _convnet(dtype=np.float32, **kw):
    return Sequential([L.Conv2D(1, 4, 3, padding=1, seed=0, dtype=dtype), L.BatchNorm(4, dtype=dtype),
                       L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dropout(0.2),
                       L.Dense(64, 10, "relu", seed=1, dtype=dtype), L.Dense(10, 3, seed=2, dtype=dtype)],
                      seed=3, **kw)


def _images(n=12, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)).astype(dtype), rng.integers(0, 3, n)


def test_convnet_takes_images(backend):
    net = _convnet()
    x, t = _images()
    assert net.predict(x).shape == (12, 3)
    loss, grads = net.loss_and_gradient(x, t)
    assert np.isfinite(loss) and set(grads) == set(net.params)
    assert grads["0.W"].shape == (4, 1, 3, 3)
    assert 0 <= net.accuracy(x, t) <= 1
    assert net.loss(x, t) > 0


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((12, 64), np.float32), r"x must be 4-D, got shape \(12, 64\)"),
    (np.zeros((12, 8, 8), np.float32), r"x must be 4-D, got shape \(12, 8, 8\)"),
    (np.zeros((12, 2, 8, 8), np.float32), r"x must have 1 channels \(axis 1\) for Conv2D"),
    (np.zeros((12, 1, 6, 8), np.float32), r"layer 6 \(Dense\): W must have shape \(48, "),
    (np.zeros((12, 1, 8, 8)), r"x has dtype float64 but the model is float32"),
])
def test_convnet_rejects_bad_images(backend, bad, msg):
    net = _convnet()
    with pytest.raises((ValueError, TypeError), match=msg):
        net.loss_and_gradient(bad, np.zeros(12, np.int64))


def test_input_ndim_follows_the_first_layers():
    x2 = np.zeros((3, 8), np.float32)
    x4 = np.zeros((3, 2, 2, 2), np.float32)
    assert Sequential([L.Flatten(), L.Dense(8, 2)]).predict(x4).shape == (3, 2)
    assert Sequential([L.Flatten(), L.Dense(8, 2)]).predict(x2).shape == (3, 2)
    assert Sequential([L.BatchNorm(2), L.Conv2D(2, 2, 1), L.Flatten(),
                       L.Dense(8, 2)]).predict(x4).shape == (3, 2)
    with pytest.raises(ValueError, match=r"x must be 2-D, got shape \(3, 2, 2, 2\)"):
        Sequential([L.ReLU(), L.Dense(8, 2)]).predict(x4)      # 2-D nets: as before
    with pytest.raises(ValueError, match=r"x must be 2-D, got shape"):
        MLP(8, [4], 2).predict(x4)


@pytest.mark.parametrize("layers, msg", [
    (lambda: [L.Conv2D(1, 6, 3), L.Dense(6, 3)],
     r"layer 0 \(Conv2D.*\) outputs 4-D \(N, C, H, W\) but layer 1 \(Dense.*\) takes 2-D "
     r"\(N, features\) input; put a Flatten\(\) between them"),
    (lambda: [L.Conv2D(1, 6, 3), L.ReLU(), L.Dense(6, 3)], r"layer 0 .* layer 2 \(Dense"),
    (lambda: [L.Dense(4, 6), L.Conv2D(6, 3, 3)], r"outputs 2-D \(N, features\) but layer 1 "
                                                 r"\(Conv2D.*\) takes 4-D"),
    (lambda: [L.Conv2D(1, 6, 3), L.MaxPool2D(2), L.Conv2D(5, 3, 3)],
     r"layer 0 \(Conv2D.*\) outputs 6 channels but layer 2 \(Conv2D.*\) expects 5 channels"),
    (lambda: [L.Conv2D(1, 6, 3), L.BatchNorm(5)], r"outputs 6 channels but layer 1 \(BatchNorm"),
    (lambda: [L.Conv2D(1, 6, 3), L.MaxPool2D(2), L.Flatten(), L.Dense(100, 10)],
     r"layer 2 \(Flatten\(\)\) flattens 6 channels into C\*H\*W features \(a multiple of 6\) but "
     r"layer 3 \(Dense.*\) expects 100 inputs"),
    (lambda: [L.Flatten(), L.Dense(96, 10), L.BatchNorm(9)],
     r"layer 1 \(Dense.*\) outputs 10 features but layer 2 \(BatchNorm.*\) expects 9 inputs"),
    (lambda: [L.Conv2D(1, 6, 3), L.Flatten(), L.PReLU()], None),
    (lambda: [L.Conv2D(1, 6, 3), L.Softmax()], r"layer 1 \(Softmax.*\) takes 2-D"),
])
def test_chains_of_image_layers_are_checked(layers, msg):
    if msg is None:
        Sequential(layers())
        return
    with pytest.raises(ValueError, match=msg):
        Sequential(layers())


def test_convnet_config_save_load_and_reuse(tmp_path, backend):
    from dlfast import io
    net = _convnet()
    x, t = _images()
    net.loss_and_gradient(x, t)
    path = io.save_model(net, tmp_path / "m.npz")
    back = io.load_model(path)
    assert [type(l).__name__ for l in back.layers] == [type(l).__name__ for l in net.layers]
    np.testing.assert_array_equal(back.predict(x), net.predict(x))
    from dlfast.net import reuse
    low = reuse(net, 2)                                     # conv + BN (+ the ReLU, pool ...)
    assert isinstance(low[0], L.Conv2D) and not low[0].trainable
    net2 = Sequential(low + [L.Flatten(), L.Dense(64, 3, seed=5)])
    assert net2.predict(x).shape == (12, 3)


def test_convnet_trains_with_frozen_cached_features(backend):
    from dlfast import optim
    from dlfast.train import Trainer
    net = Sequential([L.Conv2D(1, 4, 3, padding=1, seed=0), L.ReLU(), L.MaxPool2D(2),
                      L.Flatten(), L.Dense(64, 3, seed=1)], seed=3)
    net.freeze(1)
    x, t = _images(60)
    hist = Trainer(net, optim.Adam(lr=0.01), epochs=3, batch_size=20, seed=0, progress=False,
                   cache_frozen=True, val_split=None).fit(x, t)
    assert len(hist.loss) == 3 and hist.loss[-1] < hist.loss[0]
