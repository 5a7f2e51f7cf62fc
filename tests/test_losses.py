"""The loss layers (dlfast.layers.loss) and nets with them: float64 gradient checks of every loss
(sample weights, reductions, half mse, Huber's delta), nets' gradients with each loss and sample
weights, targets and their errors, accuracy / r2 / score, configs and saved models."""
import numpy as np
import pytest

import dlfast
from dlfast import io
from dlfast import layers as L
from dlfast.gradcheck import numerical_gradient, relative_error
from dlfast.net import MLP, MultiTaskNet, Sequential, r2_score

F64 = np.float64
LOSSES = [L.SoftmaxCrossEntropy(), L.MSELoss(), L.MSELoss(half=True), L.MSELoss(reduction="sum"),
          L.MAELoss(), L.HuberLoss(), L.HuberLoss(delta=0.3, reduction="sum"), L.SigmoidBCELoss(),
          L.SigmoidBCELoss(reduction="sum")]
IDS = ["xent", "mse", "mse-half", "mse-sum", "mae", "huber", "huber-0.3-sum", "bce", "bce-sum"]


def _targets(loss, rng, n, m, dtype=F64):
    if loss.TARGETS == "labels":
        return rng.integers(0, m, n)
    if isinstance(loss, L.SigmoidBCELoss):
        return rng.choice([0.0, 1.0, 0.3], size=(n, m)).astype(dtype)
    return rng.standard_normal((n, m)).astype(dtype)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
def test_loss_gradient_check(backend, loss, weighted):
    """dL/dy of backward(dout) against central differences of forward (float64)."""
    rng = np.random.default_rng(0)
    y = rng.standard_normal((7, 4)) * 2
    t = _targets(loss, rng, 7, 4)
    if not isinstance(loss, L.SoftmaxCrossEntropy):
        y += 0.01 * np.sign(y - t)           # mae, huber: keep away from the kinks
    w = rng.random(7) + 0.1 if weighted else None
    loss = L.from_config(loss.config())                 # a fresh one, of y's dtype
    loss.forward(y, t, w)
    analytic = loss.backward(0.7).copy()
    numeric = numerical_gradient(lambda v: 0.7 * loss.forward(v, t, w), y.copy())
    assert relative_error(analytic, numeric) < 1e-7


@pytest.mark.parametrize("name", ["softmax_xent", "mse", "mae", "huber", "sigmoid_bce"])
def test_net_gradients_with_each_loss_and_weights(backend, name):
    """An MLP (batch norm, tanh) with each loss and sample weights: ``gradient(x, t, w)``
    against central differences of ``loss(x, t, train=True, sample_weight=w)``."""
    rng = np.random.default_rng(1)
    out = 3
    net = MLP(5, [6], out, activation="tanh", batchnorm=True, seed=0, dtype=F64, loss=name,
              weight_decay=1e-3)
    x = rng.standard_normal((9, 5))
    t = _targets(net.loss_layer, rng, 9, out)
    w = rng.random(9) * 2
    g = net.gradient(x, t, w)
    for k in ("W1", "b2", "gamma1"):
        p = net.params[k]
        num = numerical_gradient(lambda _: net.loss(x, t, train=True, sample_weight=w), p)
        assert relative_error(g[k], num, tiny=1e-8) < 1e-6, k


def test_weights_of_ones_and_none_agree_and_zero_weights_drop_rows(backend):
    rng = np.random.default_rng(2)
    for loss in (L.MSELoss(), L.SigmoidBCELoss(), L.SoftmaxCrossEntropy(), L.HuberLoss()):
        y = rng.standard_normal((6, 3))
        t = _targets(loss, rng, 6, 3)
        a = loss.forward(y, t)
        da = loss.backward().copy()
        assert loss.forward(y, t, np.ones(6)) == a
        np.testing.assert_array_equal(loss.backward(), da)
        w = np.array([1.0, 0, 2, 0, 1, 1])
        keep = w > 0
        sub = loss.forward(y[keep], t[keep], w[keep])
        assert loss.forward(y, t, w) == pytest.approx(sub, rel=1e-12)
        dw = loss.backward().copy()
        np.testing.assert_array_equal(dw[~keep], 0.0)


def test_formulas_and_reductions():
    y = np.array([[1.0, -2.0], [0.5, 3.0]])
    t = np.array([[0.0, 0.0], [1.0, 1.0]])
    d = y - t
    assert L.MSELoss().forward(y, t) == pytest.approx(np.mean(d ** 2))
    assert L.MSELoss(half=True).forward(y, t) == pytest.approx(np.mean(0.5 * np.sum(d ** 2, 1)))
    assert L.MSELoss(reduction="sum").forward(y, t) == pytest.approx(np.sum(np.mean(d ** 2, 1)))
    assert L.MAELoss().forward(y, t) == pytest.approx(np.mean(np.abs(d)))
    h = np.where(np.abs(d) <= 1, 0.5 * d ** 2, np.abs(d) - 0.5)
    assert L.HuberLoss().forward(y, t) == pytest.approx(np.mean(h))
    tb = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = 1 / (1 + np.exp(-y))
    want = np.mean(-(tb * np.log(p) + (1 - tb) * np.log(1 - p)))
    assert L.SigmoidBCELoss().forward(y, tb) == pytest.approx(want, rel=1e-12)
    w = np.array([3.0, 1.0])
    assert L.MAELoss().forward(y, t, w) == pytest.approx(np.sum(w * np.abs(d).mean(1)) / 4)


def test_targets_and_errors():
    mse, bce = L.MSELoss(), L.SigmoidBCELoss()
    y = np.zeros((4, 1), np.float32)
    mse.forward(y, np.arange(4))                                  # ints, (N,) for one output
    assert mse._fwd["targets"].dtype == np.float32 and mse._fwd["targets"].shape == (4, 1)
    bce.forward(y, np.array([True, False, True, True]))
    with pytest.raises(ValueError, match=r"t must have shape \(4, 1\) or \(4,\) to match"):
        mse.forward(y, np.zeros(3))
    with pytest.raises(ValueError, match=r"t must have shape \(4, 2\) to match"):
        mse.forward(np.zeros((4, 2), np.float32), np.zeros(4))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\].*got \[-1.0\] in row 2"):
        bce.forward(y, np.array([0.0, 1.0, -1.0, 0.5]))
    with pytest.raises(ValueError, match=r"t must be finite, got \[inf\] in row 1"):
        mse.forward(y, np.array([0.0, np.inf, 0, 0]))
    with pytest.raises(ValueError, match=r"too large for float32"):
        mse.forward(y, np.array([0.0, 1e300, 0, 0]))
    with pytest.raises(TypeError, match="real numbers"):
        mse.forward(y, np.array(["a", "b", "c", "d"]))
    with pytest.raises(ValueError, match=r"sample_weight must be finite and >= 0, got -1.0 in "
                                         r"row 0"):
        mse.forward(y, np.zeros(4), np.array([-1.0, 1, 1, 1]))
    with pytest.raises(ValueError, match="sample_weight must not all be zero"):
        bce.forward(y, np.zeros(4), np.zeros(4))
    with pytest.raises(RuntimeError, match="before forward"):
        L.HuberLoss().backward()
    with pytest.raises(ValueError, match="delta"):
        L.HuberLoss(delta=-1)
    with pytest.raises(ValueError, match="reduction"):
        L.MAELoss(reduction="median")
    with pytest.raises(ValueError, match="loss must be"):
        L.loss.get("hinge")


def test_get_config_and_saved_models(tmp_path, backend):
    for name, cls in (("mse", L.MSELoss), ("mae", L.MAELoss), ("huber", L.HuberLoss),
                      ("sigmoid_bce", L.SigmoidBCELoss), ("bce", L.SigmoidBCELoss),
                      ("softmax_xent", L.SoftmaxCrossEntropy), ("cross-entropy",
                                                                L.SoftmaxCrossEntropy)):
        assert type(L.loss.get(name)) is cls
    h = L.HuberLoss(0.25, reduction="sum")
    h2 = L.from_config(h.config())
    assert (h2.delta, h2.reduction) == (0.25, "sum")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    for loss in ("mse", h, {"type": "SigmoidBCELoss", "reduction": "mean"}):
        net = MLP(4, [3], 2, loss=loss, seed=1)
        path = io.save_model(net, tmp_path / "m.npz")
        back = io.load_model(path)
        assert type(back.loss_layer) is type(net.loss_layer)
        assert back.loss_layer.config() == net.loss_layer.config()
        np.testing.assert_array_equal(back.predict(x), net.predict(x))
    seq = Sequential([L.Dense(4, 2, seed=0)], loss=L.MAELoss())
    back = io.load_model(io.save_model(seq, tmp_path / "s.npz"))
    assert type(back.loss_layer) is L.MAELoss
    with pytest.raises(TypeError, match="not a loss"):
        Sequential([L.Dense(4, 2, seed=0), L.MSELoss()])
    with pytest.raises(ValueError, match="loss: loss must be"):
        Sequential([L.Dense(4, 2, seed=0)], loss="nope")
    with pytest.raises(TypeError, match="float64"):
        MLP(4, [3], 2, loss=L.MSELoss(dtype=np.float64))


def test_accuracy_r2_and_score(backend):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    reg = MLP(4, [8], 2, loss="huber", seed=0)
    t = rng.standard_normal((50, 2)).astype(np.float32)
    y = reg.predict(x).astype(np.float64)
    w = rng.random(50)
    assert reg.r2(x, t) == pytest.approx(r2_score(y, t), rel=1e-12) == reg.score(x, t)
    assert reg.r2(x, t, w) == pytest.approx(r2_score(y, t, w), rel=1e-12)
    with pytest.raises(TypeError, match="accuracy applies to classification losses"):
        reg.accuracy(x, t)
    bce = MLP(4, [8], 3, loss="sigmoid_bce", seed=0)
    tb = (rng.random((50, 3)) < 0.5).astype(np.int64)
    z = bce.predict(x)
    want = np.mean(np.all((z > 0) == (tb > 0.5), axis=1))
    assert bce.accuracy(x, tb) == bce.score(x, tb) == pytest.approx(want)
    assert bce.accuracy(x, tb, w) == pytest.approx(np.sum(w * np.all((z > 0) == tb, 1)) / w.sum())
    with pytest.raises(TypeError, match="r2 applies to regression losses"):
        bce.r2(x, tb)
    one = MLP(4, [8], 1, loss="sigmoid_bce", seed=0)
    t1 = rng.integers(0, 2, 50)
    assert one.accuracy(x, t1) == pytest.approx(np.mean((one.predict(x)[:, 0] > 0) == t1))


def test_r2_score_matches_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    t = rng.standard_normal((30, 3))
    y = t + 0.5 * rng.standard_normal((30, 3))
    w = rng.random(30)
    assert r2_score(y, t) == pytest.approx(sk.r2_score(t, y), rel=1e-12)
    assert r2_score(y, t, w) == pytest.approx(sk.r2_score(t, y, sample_weight=w), rel=1e-12)
    t[:, 1] = 2.0                                                  # a constant output
    assert r2_score(y, t) == pytest.approx(sk.r2_score(t, y), rel=1e-12)
    y[:, 1] = 2.0
    assert r2_score(y, t) == pytest.approx(sk.r2_score(t, y), rel=1e-12)


def test_multitask_with_mixed_losses_metrics_and_config(backend):
    rng = np.random.default_rng(6)
    net = MultiTaskNet([L.Dense(4, 5, "relu", seed=0)],
                       {"c": [L.Dense(5, 3, seed=1)], "r": [L.Dense(5, 2, seed=2)],
                        "b": [L.Dense(5, 1, seed=3)]},
                       losses={"r": "mse", "b": L.SigmoidBCELoss()})
    x = rng.standard_normal((8, 4)).astype(np.float32)
    t = {"c": rng.integers(0, 3, 8), "r": rng.standard_normal((8, 2)),
         "b": rng.integers(0, 2, 8)}
    assert set(net.accuracy(x, t)) == {"c", "b"} and set(net.r2(x, t)) == {"r"}
    assert set(net.score(x, t)) == {"c", "b", "r"}
    loss, grads = net.loss_and_gradient(x, t, {"r": np.arange(8.0)})
    assert np.isfinite(loss)
    assert net.config()["losses"]["r"]["type"] == "MSELoss"
    again = MultiTaskNet(**net.config())
    assert type(again.loss_layers["b"]) is L.SigmoidBCELoss
    with pytest.raises(KeyError, match="unknown heads"):
        MultiTaskNet([L.Dense(4, 5, seed=0)], {"c": [L.Dense(5, 3, seed=1)]}, losses={"x": "mse"})
    with pytest.raises(KeyError, match="sample_weight has unknown heads"):
        net.loss_and_gradient(x, t, {"q": np.ones(8)})
