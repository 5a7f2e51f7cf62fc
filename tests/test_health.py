"""Numerical health: extreme inputs stay finite (softmax/xent logits of 1e4, sigmoid/tanh of huge
magnitudes, BN with constant features = variance 0), on both backends and dtypes; NaN/inf in
training stops with NonFiniteError naming epoch, step and parameter, keeping the last good
checkpoint loadable."""
import os

import numpy as np
import pytest

from dlfast import checkpoint as ck
from dlfast import kernels as K
from dlfast.checkpoint import Checkpoint
from dlfast.layers import BatchNorm
from dlfast.net import MLP
from dlfast.optim import SGD, Adam
from dlfast.train import NonFiniteError, Trainer


def _big(dtype):
    return 1e30 if np.dtype(dtype) == np.float32 else 1e300


def test_sigmoid_tanh_extreme_inputs(backend, dtype):
    b = _big(dtype)
    x = np.array([-np.inf, -b, -1e4, -800.0, -88.8, -30.0, -1e-30, 0.0, 1e-30, 30.0, 88.8, 800.0,
                  1e4, b, np.inf], dtype)
    for act, lo, hi in [("sigmoid", 0.0, 1.0), ("tanh", -1.0, 1.0)]:
        y = K.activation_forward(x, np.empty_like(x), act)
        assert y.dtype == dtype and np.all(np.isfinite(y)), act
        assert np.all((y >= lo) & (y <= hi)) and np.all(np.diff(y) >= 0), act
        assert y[0] == lo and y[-1] == hi and y[1] == lo and y[-2] == hi, act
        dx = K.activation_backward(np.ones_like(x), y, np.empty_like(x), act)
        assert np.all(np.isfinite(dx)) and np.all(dx >= 0), act
        assert dx[0] == 0 and dx[-1] == 0, act
    y = K.activation_forward(x, np.empty_like(x), "sigmoid")
    np.testing.assert_allclose(y[5:10], 1 / (1 + np.exp(-x[5:10].astype(np.float64))),
                               rtol=4 * np.finfo(dtype).eps)


def test_softmax_xent_logits_1e4(backend, dtype):
    """logsumexp stays finite: the loss of a label with logit -1e4 vs 1e4 is 2e4, not inf; the
    log of an underflowed probability never appears."""
    logits = np.array([[1e4, -1e4, 0.0], [1e4, 1e4, 1e4], [-1e4, -1e4, -1e4]], dtype)
    labels = np.array([1, 0, 2])
    probs = np.empty_like(logits)
    loss = K.softmax_xent_forward(logits, labels, probs)
    assert np.isfinite(loss)
    expect = (2e4 + np.log(3) + np.log(3)) / 3
    assert loss == pytest.approx(expect, rel=8 * float(np.finfo(dtype).eps))
    assert np.all(np.isfinite(probs)) and np.allclose(probs.sum(1), 1)
    d = np.empty_like(logits)
    K.softmax_xent_backward(probs, labels, d)
    assert np.all(np.isfinite(d)) and np.all(np.abs(d) <= 1)
    y = K.softmax_forward(logits * 1e26 if dtype == np.float64 else logits * 1e34, np.empty_like(logits))
    assert np.all(np.isfinite(y)) and np.allclose(y.sum(1), 1)


@pytest.mark.parametrize("offset", [0.0, 1e4, -3.5])
def test_batchnorm_constant_features(backend, dtype, offset):
    """Variance 0 (a constant column, also at a large offset): out = beta, finite gradients."""
    rng = np.random.default_rng(0)
    n, f = 16, 4
    x = rng.standard_normal((n, f)).astype(dtype)
    x[:, 1] = offset
    x[:, 3] = offset + 1
    bn = BatchNorm(f, dtype=dtype)
    bn.params["beta"][...] = np.arange(f, dtype=dtype)
    out = bn.forward(x, train=True)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[:, 1], dtype.type(1.0))
    np.testing.assert_array_equal(out[:, 3], dtype.type(3.0))
    dout = rng.standard_normal((n, f)).astype(dtype)
    dx = bn.backward(dout)
    assert np.all(np.isfinite(dx)) and all(np.all(np.isfinite(g)) for g in bn.grads.values())
    d = dout[:, 1].astype(np.float64)              # xhat = 0: dx = gamma / sqrt(eps) * (d - mean d)
    np.testing.assert_allclose(dx[:, 1], (d - d.mean()) / np.sqrt(bn.eps),
                               rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-3)
    assert bn.grads["gamma"][1] == 0
    assert np.all(np.isfinite(bn.running_var)) and np.all(bn.running_var >= 0)
    # eval mode with a running variance of exactly 0
    bn.running_var[...] = 0
    ev = bn.forward(x, train=False)
    assert np.all(np.isfinite(ev))
    # a whole-batch constant input through a BN net trains without NaN
    mlp = MLP(f, [8], 3, batchnorm=True, seed=1, dtype=dtype)
    loss, grads = mlp.loss_and_gradient(np.full((n, f), offset, dtype), np.arange(n) % 3)
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())


def _data(n=64, f=6):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, f)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_loss_stops_and_keeps_last_checkpoint(backend, tmp_path):
    """A poisoned row (inf) gives a non-finite loss at a known step: NonFiniteError names epoch
    and step; the last per-step checkpoint is the state before that step, and it loads."""
    x, t = _data()
    tr0 = Trainer(MLP(6, [8], 2, seed=0), Adam(lr=0.01), epochs=3, batch_size=8, progress=False,
                  seed=4, shuffle=False)
    path = tmp_path / "good.ckpt"
    x_bad = x.copy()
    x_bad[42] = 3e38                            # batch 6 of every epoch (no shuffling): overflows
    tr = Trainer(MLP(6, [8], 2, seed=0), Adam(lr=0.01), epochs=3, batch_size=8, progress=False,
                 seed=4, shuffle=False, checkpoint=Checkpoint(path, per="step"))
    with pytest.raises(NonFiniteError, match=r"epoch 1, step 6 \(global step 6\)") as ei:
        tr.fit(x_bad, t)
    assert (ei.value.epoch, ei.value.step, ei.value.global_step, ei.value.what) == (1, 6, 6, "loss")
    assert tr.step == 5
    model = ck.load_checkpoint_model(path)
    for k, v in tr.model.params.items():        # the failing step changed nothing
        assert np.array_equal(model.params[k], v), k
    assert ck.read_checkpoint(path)[2]["step"] == 5
    # and that checkpoint equals 5 clean steps
    tr0.epochs = 1
    tr0._batches = lambda n, _b=tr0._batches: _b(n)[:5]
    tr0.fit(x, t)
    for k, v in tr0.model.params.items():
        assert np.array_equal(model.params[k], v), k


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_overflowing_parameter_is_named_and_checkpoint_kept(backend, tmp_path):
    """An absurd learning rate overflows a parameter to inf: training stops naming the epoch,
    step and parameter, and the previous (finite) checkpoint is kept and loads."""
    x, t = _data()
    x *= 1000                                   # gradients >> 1
    path = tmp_path / "last.ckpt"

    def boost(trainer, step, logs):             # lr jumps to 3e38 after 3 good steps
        if step == 3:
            trainer.optimizer.lr = 3e38

    from dlfast.train import LambdaCallback
    tr = Trainer(MLP(6, [8], 2, seed=0), SGD(lr=1e-6), epochs=2, batch_size=8, progress=False,
                 seed=1, callbacks=[LambdaCallback(on_step_end=boost)],
                 checkpoint=Checkpoint(path, per="step"))
    with pytest.raises(NonFiniteError) as ei:
        tr.fit(x, t)
    e = ei.value
    assert e.param is not None and e.param in tr.model.params
    assert (e.epoch, e.step) == (1, 4)
    assert f"epoch 1, step 4" in str(e) and repr(e.param) in str(e) and str(path) in str(e)
    st = ck.read_checkpoint(path)[2]
    assert st["step"] == 3
    model = ck.load_checkpoint_model(path)
    assert all(np.all(np.isfinite(p)) for p in model.params.values())
    assert [f for f in os.listdir(tmp_path)] == ["last.ckpt"]
