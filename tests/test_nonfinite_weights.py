"""Model files and checkpoints whose weights hold NaN or inf are refused, naming the array;
``allow_nonfinite=True`` (``--allow-nonfinite`` on the command line) loads them on purpose."""
import json

import numpy as np
import pytest

from dlfast import checkpoint as ck
from dlfast import cli, io
from dlfast.net import MLP
from dlfast.optim import Adam
from dlfast.train import Trainer


def _poison(path, part, key, value=np.nan, index=(0, 0)):
    """Rewrite the checkpoint ``path`` with ``value`` at ``index`` of the array ``part``/``key``
    (e.g. "model", "W1"); returns the path."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    node = json.loads(str(data["__json__"]))["__dict__"][part]["__dict__"]
    for k in key.split("."):
        node = node["__dict__"][k] if "__dict__" in node else node[k]
    ref = node["__array__"]
    arr = data[ref].copy()
    arr[index[:arr.ndim]] = value
    data[ref] = arr
    with open(path, "wb") as f:
        np.savez(f, **data)
    return path


def _model_file(tmp_path, name="W1", value=np.nan, index=(1, 2)):
    net = MLP(5, [4], 3, batchnorm=True, seed=0)
    if name in net.params:
        net.params[name][index[:net.params[name].ndim]] = value
    else:
        state = net.state_dict()
        state[name] = state[name].copy()
        state[name][index[:state[name].ndim]] = value
        net.load_state_dict(state)
    return io.save_model(net, tmp_path / "m.npz"), net


# ============================================================================ model files
@pytest.mark.parametrize("name,value,counts", [("W1", np.nan, "1 NaN and 0 inf"),
                                               ("b2", np.inf, "0 NaN and 1 inf"),
                                               ("running_var1", -np.inf, "0 NaN and 1 inf")])
def test_load_model_refuses_nonfinite_weights_naming_the_array(tmp_path, name, value, counts):
    path, _ = _model_file(tmp_path, name, value)
    with pytest.raises(io.NonFiniteWeightsError) as ei:
        io.load_model(path)
    msg = str(ei.value)
    assert f"array {name!r}" in msg and counts in msg and str(path) in msg
    assert "allow_nonfinite=True" in msg
    assert isinstance(ei.value, io.ModelFileError) and isinstance(ei.value, ValueError)


def test_load_model_allow_nonfinite_loads_it_on_purpose(tmp_path):
    path, net = _model_file(tmp_path, "W1", np.nan)
    back = io.load_model(path, allow_nonfinite=True)
    assert np.isnan(back.params["W1"][1, 2])
    np.testing.assert_array_equal(back.params["W1"], net.params["W1"])
    x = np.ones((2, 5), np.float32)
    assert np.isnan(back.predict(x)).any()          # the reason it is refused by default


def test_load_model_finite_file_and_bad_flag(tmp_path):
    net = MLP(5, [4], 3, seed=0)
    path = io.save_model(net, tmp_path / "ok.npz")
    back = io.load_model(path)
    np.testing.assert_array_equal(back.params["W1"], net.params["W1"])
    with pytest.raises(TypeError, match="allow_nonfinite must be True or False"):
        io.load_model(path, allow_nonfinite="yes")


# ============================================================================ checkpoints
def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def _trainer(epochs=1):
    return Trainer(MLP(6, [8], 2, seed=1), Adam(lr=0.01), epochs=epochs, batch_size=10,
                   progress=False, seed=2)


def _checkpoint(tmp_path):
    tr = _trainer()
    tr.fit(*_data())
    return ck.save_checkpoint(tr, tmp_path / "c.npz")


@pytest.mark.parametrize("part,key", [("model", "W1"), ("optimizer", "state.W2.m")])
def test_restore_checkpoint_refuses_nonfinite_state(tmp_path, part, key):
    path = _checkpoint(tmp_path)
    try:
        _poison(path, part, key)
    except KeyError:
        pytest.skip(f"this optimiser keeps no {key}")
    tr = _trainer()
    before = {k: v.copy() for k, v in tr.model.params.items()}
    with pytest.raises(ck.NonFiniteCheckpointError) as ei:
        tr.resume(path)
    msg = str(ei.value)
    assert f"array '{part}.{key}'" in msg and "1 NaN" in msg and str(path) in msg
    assert isinstance(ei.value, ck.CheckpointError) and isinstance(ei.value, io.NonFiniteWeightsError)
    for k, v in before.items():                     # nothing was loaded
        np.testing.assert_array_equal(tr.model.params[k], v)
    ck.restore_checkpoint(tr, path, allow_nonfinite=True)
    if part == "model":
        assert np.isnan(tr.model.params["W1"][0, 0])


def test_load_checkpoint_model_refuses_nonfinite_weights(tmp_path):
    path = _poison(_checkpoint(tmp_path), "model", "b1", np.inf, (3,))
    with pytest.raises(ck.NonFiniteCheckpointError, match="'model.b1' holds 0 NaN and 1 inf"):
        ck.load_checkpoint_model(path)
    m = ck.load_checkpoint_model(path, allow_nonfinite=True)
    assert np.isinf(m.params["b1"][3])
    with pytest.raises(TypeError, match="allow_nonfinite"):
        ck.load_checkpoint_model(path, allow_nonfinite=1)


# ============================================================================ command line
def test_cli_resume_refuses_nonfinite_checkpoint_unless_allowed(tmp_path, capsys):
    common = ["train", "--hidden", "8", "--epochs", "2", "--no-progress", "--backend", "numpy",
              "--out", str(tmp_path / "o")]
    ckpt = tmp_path / "run.ckpt.npz"
    assert cli.main(common + ["--checkpoint", str(ckpt)]) == 0
    _poison(ckpt, "model", "W2")
    capsys.readouterr()
    assert cli.main(common + ["--resume", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert "'model.W2'" in err and "NaN" in err and "--allow-nonfinite" in err
    # allowed on purpose: the checkpoint loads (its run had ended: the test loss is now NaN)
    rc = cli.main(common + ["--resume", str(ckpt), "--allow-nonfinite"])
    out = capsys.readouterr()
    assert "'model.W2'" not in out.err
    assert (rc == 0 and "nan" in out.out) or (rc == 1 and "non-finite" in out.err), out
    assert cli.main(common + ["--allow-nonfinite"]) == 1
    assert "--allow-nonfinite needs --resume PATH" in capsys.readouterr().err
