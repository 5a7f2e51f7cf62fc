"""dlfast.io: save/load round trips (identical predictions) and clear errors for bad files."""
import json
import os
import zipfile

import numpy as np
import pytest

from dlfast import io
from dlfast import layers as L
from dlfast import regularizers as R
from dlfast.net import MLP, MultiTaskNet, Sequential


def _x(n, f, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal((n, f)).astype(dtype)


def _train_a_bit(net, x, t, steps=3, lr=0.05):
    """Move params and BN statistics away from their initial values."""
    for _ in range(steps):
        _, grads = net.loss_and_gradient(x, t)
        for k, g in grads.items():
            net.params[k] -= lr * g


def test_mlp_round_trip_predictions_identical(tmp_path, dtype):
    net = MLP(6, [8, 5], 3, batchnorm=True, dropout=0.3, weight_decay=1e-3, max_norm=3.0,
              seed=7, dtype=dtype)
    x, t = _x(16, 6, dtype), np.arange(16) % 3
    _train_a_bit(net, x, t)
    path = io.save_model(net, tmp_path / "m.npz", metadata={"note": "hi", "epochs": 3})
    assert path == str(tmp_path / "m.npz")
    back = io.load_model(path)
    assert type(back) is MLP and back.dtype == dtype
    assert back.config() == net.config()
    np.testing.assert_array_equal(back.predict(x), net.predict(x))
    assert back.loss(x, t) == net.loss(x, t)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)
    # the dropout stream continues identically: train-mode outputs match too
    np.testing.assert_array_equal(back.predict(x, train=True), net.predict(x, train=True))
    assert io.read_metadata(path) == {"note": "hi", "epochs": 3}


@pytest.mark.parametrize("act", ["prelu", "maxout", "elu"])
def test_mlp_round_trip_other_activations(tmp_path, act):
    net = MLP(4, [6], 2, activation=act, seed=1, regularizer=R.L1(1e-3))
    x = _x(5, 4, np.float32)
    back = io.load_model(io.save_model(net, tmp_path / "a.npz"))
    np.testing.assert_array_equal(back.predict(x), net.predict(x))


def test_sequential_round_trip(tmp_path):
    net = Sequential([L.Dense(4, 5, "tanh", seed=0), L.BatchNorm(5), L.ReLU(), L.Dropout(0.2),
                      L.Dense(5, 3, seed=1)], seed=3)
    x, t = _x(10, 4, np.float32), np.arange(10) % 3
    _train_a_bit(net, x, t)
    back = io.load_model(io.save_model(net, tmp_path / "s.npz"))
    assert type(back) is Sequential
    np.testing.assert_array_equal(back.predict(x), net.predict(x))


def test_multitask_round_trip(tmp_path):
    f64 = np.float64
    net = MultiTaskNet([L.Dense(4, 6, "relu", seed=0, dtype=f64)],
                       {"a": [L.Dense(6, 3, seed=1, dtype=f64)], "b": [L.Dense(6, 2, seed=2, dtype=f64)]},
                       loss_weights={"a": 1.0, "b": 0.5})
    x = _x(7, 4, np.float64)
    back = io.load_model(io.save_model(net, tmp_path / "mt.npz"))
    assert type(back) is MultiTaskNet and back.loss_weights == {"a": 1.0, "b": 0.5}
    p, q = net.predict(x), back.predict(x)
    for h in ("a", "b"):
        np.testing.assert_array_equal(p[h], q[h])


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    a = MLP(3, [4], 2, seed=0)
    b = MLP(3, [4], 2, seed=1)
    path = tmp_path / "m.npz"
    io.save_model(a, path)
    io.save_model(b, path)                       # replace an existing file
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]
    x = _x(3, 3, np.float32)
    np.testing.assert_array_equal(io.load_model(path).predict(x), b.predict(x))

    def boom(f, **arrays):                       # a write that dies half way
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(io.np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save_model(a, path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]          # temp file removed
    np.testing.assert_array_equal(io.load_model(path).predict(x), b.predict(x))   # old file intact


def test_file_contents_are_self_describing(tmp_path):
    net = MLP(3, [4], 2, seed=0, dtype=np.float64)
    path = io.save_model(net, tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as z:
        assert str(z["__format__"]) == io.FORMAT
        assert int(z["__version__"]) == io.FORMAT_VERSION
        assert str(z["__class__"]) == "MLP"
        assert json.loads(str(z["__config__"]))["hidden_sizes"] == [4]
        assert z["state.W1"].dtype == np.float64


def _rewrite(src, dst, change):
    with np.load(src, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    change(d)
    np.savez(dst, **d)
    return dst


@pytest.fixture
def saved(tmp_path):
    return io.save_model(MLP(3, [4], 2, batchnorm=True, seed=0), tmp_path / "good.npz")


@pytest.mark.parametrize("frac", [0.0, 0.1, 0.5, 0.99])
def test_truncated_file(tmp_path, saved, frac):
    data = open(saved, "rb").read()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data[:int(len(data) * frac)])
    with pytest.raises(io.ModelFileError, match="truncated or damaged") as ei:
        io.load_model(bad)
    assert str(bad) in str(ei.value)


def test_corrupted_bytes(tmp_path, saved):
    data = bytearray(open(saved, "rb").read())
    with zipfile.ZipFile(saved) as z:
        info = z.getinfo("state.W1.npy")
    off = info.header_offset + 30 + len(info.filename) + 140   # inside W1's data
    data[off] ^= 0xFF
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(io.ModelFileError, match="damaged"):
        io.load_model(bad)


def test_foreign_and_missing_files(tmp_path):
    np.savez(tmp_path / "other.npz", W=np.zeros(3))
    with pytest.raises(io.ModelFileError, match="not a dlfast model file"):
        io.load_model(tmp_path / "other.npz")
    np.save(tmp_path / "arr.npy", np.zeros(3))
    with pytest.raises(io.ModelFileError, match="not a dlfast model file"):
        io.load_model(tmp_path / "arr.npy")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(io.ModelFileError, match="damaged"):
        io.load_model(tmp_path / "text.npz")
    with pytest.raises(io.ModelFileError, match="does not exist"):
        io.load_model(tmp_path / "absent.npz")


def test_wrong_version(tmp_path, saved):
    p = _rewrite(saved, tmp_path / "v.npz", lambda d: d.update(__version__=np.array(99)))
    with pytest.raises(io.ModelFileError, match="format version 99"):
        io.load_model(p)


def test_unknown_class_and_bad_config(tmp_path, saved):
    p = _rewrite(saved, tmp_path / "c.npz", lambda d: d.update(__class__=np.array("ResNet")))
    with pytest.raises(io.ModelFileError, match="unknown model class 'ResNet'"):
        io.load_model(p)
    p = _rewrite(saved, tmp_path / "j.npz", lambda d: d.update(__config__=np.array("{oops")))
    with pytest.raises(io.ModelFileError, match="not valid JSON"):
        io.load_model(p)
    p = _rewrite(saved, tmp_path / "k.npz",
                 lambda d: d.update(__config__=np.array('{"input_size": -3}')))
    with pytest.raises(io.ModelFileError, match="cannot rebuild MLP"):
        io.load_model(p)


def test_state_that_does_not_fit(tmp_path, saved):
    p = _rewrite(saved, tmp_path / "s.npz", lambda d: d.update({"state.W1": np.zeros((3, 5), np.float32)}))
    with pytest.raises(io.ModelFileError, match="does not fit"):
        io.load_model(p)
    p = _rewrite(saved, tmp_path / "m.npz", lambda d: d.pop("state.running_var1"))
    with pytest.raises(io.ModelFileError, match="does not fit"):
        io.load_model(p)


def test_save_errors(tmp_path):
    with pytest.raises(TypeError, match="dlfast net"):
        io.save_model(object(), tmp_path / "x.npz")
    net = MLP(3, [4], 2, seed=0, weight_init=lambda shape, rng=None, dtype=np.float32:
              np.full(shape, 0.1, dtype))
    with pytest.raises(TypeError, match="JSON"):
        io.save_model(net, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="JSON"):
        io.save_model(MLP(3, [4], 2, seed=0), tmp_path / "y.npz", metadata={"f": object()})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.save_model(MLP(3, [4], 2, seed=0), tmp_path / "no" / "dir" / "m.npz")
    assert os.listdir(tmp_path) == []
