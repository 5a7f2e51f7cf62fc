"""Trainer with every loss: History's metric (accuracy for classification, r2/val_r2 for
regression, both for a MultiTaskNet mixing them), early stopping on R^2, evaluation, sample
weights (training loss, metrics, batches of no weight skipped), stratification only for labels."""
import numpy as np
import pytest

from dlfast import optim
from dlfast import layers as L
from dlfast.net import MLP, MultiTaskNet, r2_score
from dlfast.train import EarlyStopping, History, Trainer


def _regression(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    t = np.stack([x[:, 0] - 2 * x[:, 1], np.sin(x[:, 2])], 1).astype(np.float32)
    return x, t


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
def test_regression_logs_r2_and_learns(backend, loss):
    x, t = _regression()
    net = MLP(5, [16], 2, loss=loss, seed=0)
    tr = Trainer(net, optim.Adam(lr=0.01), epochs=15, batch_size=20, val_split=0.2,
                 stratify=True, progress=False, seed=0)
    h = tr.fit(x, t)
    assert len(h.r2) == len(h.val_r2) == 15 and not h.accuracy and not h.val_accuracy
    assert h.r2[-1] > 0.8 and h.r2[-1] > h.r2[0]
    xv, tv = tr.x_val, tr.t_val
    loss_v, r2_v = tr.evaluate(xv, tv)
    assert r2_v == pytest.approx(h.val_r2[-1]) and loss_v == pytest.approx(h.val_loss[-1])
    assert r2_v == pytest.approx(r2_score(net.predict(xv), tv), rel=1e-9)
    assert "r2=" in repr(h) and History.KEYS[-2:] == ("r2", "val_r2")


def test_early_stopping_on_val_r2_and_wrong_monitor(backend):
    x, t = _regression()
    es = EarlyStopping(2, monitor="val_r2")
    assert es.mode == "max"
    net = MLP(5, [16], 2, loss="mse", seed=0)
    tr = Trainer(net, optim.SGD(lr=0.0), epochs=20, batch_size=50, val_split=0.2,
                 early_stopping=es, progress=False, seed=0)
    tr.fit(x, t)
    assert es.stopped_epoch == 3                    # lr 0: nothing improves after epoch 1
    tr = Trainer(MLP(5, [4], 2, loss="mse", seed=0), optim.SGD(lr=0.01), epochs=2,
                 val_split=0.2, early_stopping=EarlyStopping(2, monitor="val_accuracy"),
                 progress=False)
    with pytest.raises(ValueError, match="does not log.*r2 for regression"):
        tr.fit(x, t)


def test_sample_weights_in_fit_and_metrics(backend):
    x, t = _regression(120)
    rng = np.random.default_rng(1)
    w = rng.random(120) * 2
    net = MLP(5, [8], 2, loss="huber", seed=0)
    tr = Trainer(net, optim.Adam(lr=0.01), epochs=2, batch_size=30, progress=False, seed=0,
                 eval_batch_size=17)
    h = tr.fit(x, t, sample_weight=w)
    m = tr.metrics(x, t, sample_weight=w)
    assert m["loss"] == pytest.approx(net.loss(x, t, sample_weight=w), rel=1e-6)
    assert m["r2"] == pytest.approx(r2_score(net.predict(x), t, w), rel=1e-6)
    assert h.loss[-1] == pytest.approx(m["loss"], rel=1e-6)
    # weights of the same value as none: the same training, bit for bit
    a, b = MLP(5, [8], 2, loss="mse", seed=0), MLP(5, [8], 2, loss="mse", seed=0)
    for net_, sw in ((a, None), (b, np.ones(120))):
        Trainer(net_, optim.Adam(lr=0.01), epochs=2, batch_size=30, progress=False,
                seed=3).fit(x, t, sample_weight=sw)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)


def test_batches_without_weight_are_skipped(backend):
    x, t = _regression(60)
    w = np.r_[np.zeros(30), np.ones(30)]
    net = MLP(5, [8], 2, loss="mse", seed=0)
    tr = Trainer(net, optim.SGD(lr=0.1), epochs=1, batch_size=30, shuffle=False,
                 progress=False)
    tr.fit(x, t, sample_weight=w)
    assert tr.step == 1                             # the first batch weighs nothing
    ref = MLP(5, [8], 2, loss="mse", seed=0)
    Trainer(ref, optim.SGD(lr=0.1), epochs=1, batch_size=30, shuffle=False,
            progress=False).fit(x[30:], t[30:])
    for k in ref.params:
        np.testing.assert_allclose(net.params[k], ref.params[k], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="sample_weight must not all be zero"):
        tr.fit(x, t, sample_weight=np.zeros(60))
    with pytest.raises(ValueError, match="sample_weight_val needs x_val"):
        tr.fit(x, t, sample_weight_val=np.ones(60))


def test_binary_and_multilabel_bce_training(backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    yb = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    net = MLP(4, [16], 1, loss="sigmoid_bce", seed=0)
    h = Trainer(net, optim.Adam(lr=0.01), epochs=10, batch_size=30, val_split=0.2,
                stratify=True, progress=False, seed=0).fit(x, yb)
    assert h.accuracy[-1] > 0.9 and h.val_accuracy and not h.r2
    ym = np.stack([yb, x[:, 2] > 0, x[:, 3] < -0.5], 1).astype(np.float32)
    net = MLP(4, [16], 3, loss="sigmoid_bce", seed=0)
    h = Trainer(net, optim.Adam(lr=0.01), epochs=15, batch_size=30, val_split=0.2,
                stratify=True, progress=False, seed=0).fit(x, ym)
    assert h.accuracy[-1] > 0.8                     # every label of a row right


def test_multitask_mixed_heads_log_both_metrics(backend):
    x, t = _regression(90)
    labels = (x[:, 0] > 0).astype(np.int64)
    net = MultiTaskNet([L.Dense(5, 8, "relu", seed=0)],
                       {"c": [L.Dense(8, 2, seed=1)], "r": [L.Dense(8, 2, seed=2)]},
                       losses={"r": "mse"})
    tr = Trainer(net, optim.Adam(lr=0.01), epochs=3, batch_size=30, val_split=0.2,
                 progress=False, seed=0)
    h = tr.fit(x, {"c": labels, "r": t}, sample_weight=np.linspace(0.5, 1.5, 90))
    assert len(h.accuracy) == len(h.r2) == len(h.val_accuracy) == len(h.val_r2) == 3
    m = tr.metrics(x, {"c": labels, "r": t})
    assert m["accuracy"] == pytest.approx(net.accuracy(x, {"c": labels, "r": t})["c"])
    assert m["r2"] == pytest.approx(net.r2(x, {"c": labels, "r": t})["r"])
