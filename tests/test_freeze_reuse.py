"""Freezing skips backward work, reuse of saved nets (io.load_model / net.reuse), shape errors,
and Trainer(cache_frozen=True) equals the uncached path."""
import numpy as np
import pytest

import dlfast.layers as L
from dlfast import kernels, net as N, optim
from dlfast.io import load_model, save_model
from dlfast.train import Trainer


def _data(n=120, f=20, c=4, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, f)).astype(dtype), rng.integers(0, c, n)


def test_frozen_layers_skip_weight_gradients(backend, monkeypatch):
    """A training step's backward stops at the lowest trainable layer, which computes no dx."""
    from dlfast._backends import numpy_kernels as NK
    calls = []
    real = NK.dense_backward

    def spy(dout, x, W, out, dz, dx, dW, db, *a):
        calls.append((W.shape, dx is None, dW is None, db is None))
        return real(dout, x, W, out, dz, dx, dW, db, *a)

    monkeypatch.setattr(NK, "dense_backward", spy)

    def backward_steps():
        return sum(s[0] == kernels.BWD for s in m._plans._plans[0].steps)

    m = N.MLP(20, [16, 12], 4, seed=1)
    x, t = _data()
    m.freeze(upto=1)
    W1_before = m.params["W1"].copy()
    g1_before = m.layers[0].grads["W"].copy()
    m.loss_and_gradient(x, t)
    assert backward_steps() == 2
    if backend == "numpy":
        # layer 1 (frozen, lowest) is never entered; layer 2 computes dW but no dx below it
        assert [c[0] for c in calls] == [(12, 4), (16, 12)]
        assert calls[1] == ((16, 12), True, False, False)
    assert np.array_equal(m.layers[0].grads["W"], g1_before)
    assert "W1" not in m.grads and "W2" in m.grads
    calls.clear()
    m.freeze(upto=2)
    m.loss_and_gradient(x, t)
    assert backward_steps() == 1
    if backend == "numpy":
        assert [c[0] for c in calls] == [(12, 4)] and calls[0][1]   # only the top layer, no dx
    calls.clear()
    m.unfreeze()
    m.loss_and_gradient(x, t)
    assert backward_steps() == 3 and len(calls) == (3 if backend == "numpy" else 0)
    np.testing.assert_array_equal(m.params["W1"], W1_before)


def test_freeze_upto_too_large():
    m = N.MLP(5, [4], 3, seed=0)
    with pytest.raises(ValueError, match="upto=3 exceeds the number of parametrised layers"):
        m.freeze(upto=3)


def test_load_and_reuse(tmp_path):
    m = N.MLP(20, [16, 12], 4, seed=3)
    p = tmp_path / "m.npz"
    save_model(m, p)
    old = load_model(p)
    np.testing.assert_array_equal(old.params["W1"], m.params["W1"])
    lower = N.reuse(old, 2)
    assert [type(l).__name__ for l in lower] == ["Dense", "Dense"]
    assert all(not l.trainable for l in lower)
    new = N.Sequential(lower + [L.Dense(12, 7, seed=0)])
    x, _ = _data()
    h = x
    for l in old.layers[:2]:
        h = l.forward(h, False)
    np.testing.assert_array_equal(new.layers[1].forward(new.layers[0].forward(x, False), False), h)
    # copies: training the new net does not touch the loaded one
    lower[0].params["W"][...] = 0
    assert np.any(old.params["W1"] != 0)
    assert set(new.grads) == {"2.W", "2.b"}
    assert all(l.trainable for l in N.reuse(old, 1, frozen=False))
    # layers of a loaded net directly
    s = N.Sequential(old.layers[:1] + [L.Dense(16, 3, seed=0)])
    assert s.predict(x).shape == (120, 3)


def test_reuse_keeps_following_activation_and_dropout():
    m = N.MLP(6, [5, 4], 3, activation="prelu", dropout=0.5, seed=0)
    lower = N.reuse(m, 2)       # Dense, PReLU(param) -> k counts parametrised layers
    assert [type(l).__name__ for l in lower] == ["Dense", "PReLU", "Dropout"]


def test_shape_mismatch_names_both_layers():
    with pytest.raises(ValueError, match=r"layer 0 \(Dense.*outputs 16 features but layer 2 "
                                         r"\(Dense.*expects 12 inputs"):
        N.Sequential([L.Dense(8, 16), L.ReLU(), L.Dense(12, 3)])
    with pytest.raises(ValueError, match="layer 1 .*BatchNorm"):
        N.Sequential([L.Dense(8, 16), L.BatchNorm(10), L.Dense(10, 3)])


def test_reuse_bad_k():
    m = N.MLP(5, [4], 3, seed=0)
    with pytest.raises(ValueError, match="k=3 exceeds"):
        N.reuse(m, 3)
    with pytest.raises(ValueError):
        N.reuse(m, 0)
    with pytest.raises(TypeError):
        N.reuse([L.Dense(2, 2)], 1)


def _fit(cache, dtype, x, t, xv, tv, epochs=3):
    m = N.MLP(20, [24, 16], 4, seed=5, dtype=dtype, weight_decay=1e-3)
    m.freeze(upto=2)
    opt = optim.Adam(lr=0.01)
    tr = Trainer(m, opt, epochs=epochs, batch_size=16, seed=2, progress=False, cache_frozen=cache)
    h = tr.fit(x, t, xv, tv)
    return m, h


def test_cache_frozen_matches_uncached(backend, dtype):
    x, t = _data(dtype=dtype)
    xv, tv = _data(40, dtype=dtype, seed=1)
    m0, h0 = _fit(False, dtype, x, t, xv, tv)
    m1, h1 = _fit(True, dtype, x, t, xv, tv)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for k in m0.params:
        np.testing.assert_allclose(m1.params[k], m0.params[k], rtol=tol, atol=tol, err_msg=k)
    np.testing.assert_array_equal(m1.params["W1"], N.MLP(20, [24, 16], 4, seed=5,
                                                         dtype=dtype).params["W1"])
    for key in ("loss", "val_loss", "accuracy", "val_accuracy", "batch_loss"):
        np.testing.assert_allclose(h1[key], h0[key], rtol=tol, atol=tol, err_msg=key)


def test_cache_frozen_refusals():
    x, t = _data()
    opt = optim.SGD(lr=0.1)
    m = N.MLP(20, [8], 4, seed=0)
    with pytest.raises(ValueError, match="no frozen lower layers"):
        Trainer(m, opt, epochs=1, progress=False, cache_frozen=True).fit(x, t)
    m.freeze()
    with pytest.raises(ValueError, match="every layer is frozen"):
        Trainer(m, opt, epochs=1, progress=False, cache_frozen=True).fit(x, t)
    md = N.MLP(20, [8, 8], 4, seed=0, dropout=0.3)
    md.freeze(upto=1)
    with pytest.raises(ValueError, match="lower layer 1 \\(Dropout\\) is stochastic"):
        Trainer(md, opt, epochs=1, progress=False, cache_frozen=True).fit(x, t)
    mb = N.MLP(20, [8, 8], 4, seed=0, batchnorm=True)
    mb.freeze(upto=2)
    with pytest.raises(ValueError, match="BatchNorm"):
        Trainer(mb, opt, epochs=1, progress=False, cache_frozen=True).fit(x, t)
    mt = N.MultiTaskNet([L.Dense(20, 8)], {"a": [L.Dense(8, 4)]})
    with pytest.raises(TypeError, match="Sequential"):
        Trainer(mt, opt, epochs=1, progress=False, cache_frozen=True).fit(x, {"a": t})
    with pytest.raises(ValueError, match="transform"):
        Trainer(m, opt, cache_frozen=True, transform=lambda a: a)


def test_cache_frozen_unfreeze_during_fit_raises():
    x, t = _data()
    m = N.MLP(20, [8, 8], 4, seed=0)
    m.freeze(upto=1)

    class Unfreeze:
        def on_epoch_end(self, trainer, epoch, logs):
            trainer.model.unfreeze()

    tr = Trainer(m, optim.SGD(lr=0.1), epochs=2, progress=False, cache_frozen=True,
                 callbacks=[Unfreeze()])
    with pytest.raises(RuntimeError, match="stale"):
        tr.fit(x, t)


def test_cli_freeze_cache_frozen(tmp_path, capsys):
    import json
    from dlfast import cli
    from dlfast.io import load_model
    out = tmp_path / "o"
    rc = cli.main(["train", "--epochs", "2", "--hidden", "12", "8", "--freeze", "2",
                   "--cache-frozen", "--no-progress", "--out", str(out), "--seed", "3"])
    assert rc == 0
    m = load_model(out / "model.npz")
    ref = N.MLP(64, [12, 8], 10, seed=3)
    np.testing.assert_array_equal(m.params["W1"], ref.params["W1"])     # frozen: untouched
    np.testing.assert_array_equal(m.params["W2"], ref.params["W2"])
    assert not np.array_equal(m.params["W3"], ref.params["W3"])
    assert json.loads((out / "history.json").read_text())
    capsys.readouterr()
    assert cli.main(["train", "--epochs", "1", "--cache-frozen", "--no-progress",
                     "--out", str(out)]) != 0
    assert "--cache-frozen needs --freeze K" in capsys.readouterr().err
    assert cli.main(["train", "--epochs", "1", "--freeze", "9", "--no-progress",
                     "--out", str(out)]) != 0
    assert "--freeze 9 exceeds the number of layers with parameters (3)" in capsys.readouterr().err


def test_cli_clip_flags_reach_the_optimizer(tmp_path, capsys):
    import json
    from dlfast import cli
    args = cli.build_parser().parse_args(["train", "--optimizer", "sgd", "--clip-norm", "0.5",
                                          "--clip-value", "0.1"])
    opt = cli._make_optimizer(args)
    assert opt.clip_norm == 0.5 and opt.clip_value == 0.1
    rc = cli.main(["train", "--epochs", "1", "--hidden", "8", "--clip-norm", "0.5",
                   "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    meta = json.loads((tmp_path / "history.json").read_text())
    assert meta["args"]["clip_norm"] == 0.5
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["train", "--clip-norm", "0", "--out", str(tmp_path)])


def test_multitask_shape_mismatch_names_both_layers():
    with pytest.raises(ValueError, match=r"head 'a'.*layer 0 \(Dense.*outputs 6 features but "
                                         r"layer 1 \(Dense.*expects 5 inputs"):
        N.MultiTaskNet([L.Dense(8, 6)], {"a": [L.Dense(5, 2)]})
    with pytest.raises(ValueError, match="trunk: layer 0"):
        N.MultiTaskNet([L.Dense(8, 6), L.Dense(4, 3)], {"a": [L.Dense(3, 2)]})
    N.MultiTaskNet([L.Dense(8, 6), L.ReLU()], {"a": [L.Dense(6, 2)], "b": [L.Dense(6, 3)]})


def test_reused_frozen_layers_survive_save_load(tmp_path):
    from dlfast.io import load_model
    m = N.MLP(20, [16, 12], 4, seed=3)
    s = N.Sequential(N.reuse(m, 2) + [L.Dense(12, 5, seed=0)])
    save_model(s, tmp_path / "s.npz")
    r = load_model(tmp_path / "s.npz")
    assert [l.trainable for l in r.layers] == [False, False, True]
    np.testing.assert_array_equal(r.params["0.W"], m.params["W1"])
