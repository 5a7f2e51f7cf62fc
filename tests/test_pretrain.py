"""dlfast.pretrain.rbm_pretrain: reconstruction error falls, weights land in the net, seeded,
both backends agree, clear errors."""
import numpy as np
import pytest

import dlfast
import dlfast.layers as L
from dlfast import kernels
from dlfast.datasets import load_digits
from dlfast.net import MLP, Sequential
from dlfast.pretrain import rbm_pretrain


@pytest.fixture(scope="module")
def digits():
    x, _ = load_digits()
    return x[:600]


def test_reconstruction_error_falls_and_weights_written(backend, digits):
    net = MLP(64, [40, 20], 10, activation="sigmoid", seed=0)
    W3 = net.params["W3"].copy()
    hist = rbm_pretrain(net, digits, epochs=8, k=1, lr=0.2, batch_size=20, seed=1)
    assert len(hist) == 2 and all(len(h) == 8 for h in hist)
    for h in hist:
        assert h[-1] < 0.8 * h[0]
    np.testing.assert_array_equal(net.params["W3"], W3)          # the output layer is untouched
    assert net.params["W1"].dtype == np.float32
    assert float(np.abs(net.params["b1"]).max()) > 0
    # the written layer-1 RBM reconstructs the data about as well as its last epoch says
    h = np.empty((len(digits), 40), np.float32)
    kernels.dense_forward(digits, net.params["W1"], net.params["b1"], h, "sigmoid")
    assert np.all((h > 0) & (h < 1))


def test_seeded_and_backends_agree(digits, dtype):
    x = digits[:200].astype(dtype)
    out = {}
    for b in dlfast.available_backends():
        with dlfast.use_backend(b):
            for rep in range(2):
                net = MLP(64, [16, 8], 10, activation="sigmoid", seed=0, dtype=dtype)
                hist = rbm_pretrain(net, x, epochs=3, k=2, lr=0.1, batch_size=25, seed=7)
                out.setdefault(b, []).append((hist, net.params["W1"].copy(), net.params["W2"].copy()))
        a, c = out[b]
        assert a[0] == c[0]
        np.testing.assert_array_equal(a[1], c[1])
    if len(out) == 2:
        (hn, W1n, W2n), (hc, W1c, W2c) = out["numpy"][0], out["cython"][0]
        tol = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(hc, hn, rtol=tol)
        np.testing.assert_allclose(W1c, W1n, atol=tol)
        np.testing.assert_allclose(W2c, W2n, atol=tol)


def test_gaussian_visible_auto(digits):
    x = ((digits - digits.mean(0)) / (digits.std(0) + 0.1)).astype(np.float32)
    net = MLP(64, [30], 10, seed=0)
    hist = rbm_pretrain(net, x, epochs=6, lr=0.01, batch_size=20, seed=0)
    assert hist[0][-1] < hist[0][0]
    with pytest.raises(ValueError, match="visible='bernoulli' needs x in"):
        rbm_pretrain(net, x, epochs=1, visible="bernoulli")


def test_errors(digits):
    net = MLP(64, [10], 10, seed=0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        rbm_pretrain(net, digits, epochs=1, k=0)
    with pytest.raises(ValueError, match="epochs"):
        rbm_pretrain(net, digits, epochs=0)
    with pytest.raises(ValueError, match="lr"):
        rbm_pretrain(net, digits, epochs=1, lr=0.0)
    with pytest.raises(ValueError, match="visible must be"):
        rbm_pretrain(net, digits, epochs=1, visible="binary")
    with pytest.raises(ValueError, match="features|columns|64"):
        rbm_pretrain(net, digits[:, :10], epochs=1)
    with pytest.raises(TypeError):
        rbm_pretrain(net, digits.astype(np.float64), epochs=1)
    bad = digits.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rbm_pretrain(net, bad, epochs=1)
    with pytest.raises(ValueError, match="only parametrised layers are Dense; layer 1 is a BatchNorm"):
        rbm_pretrain(MLP(64, [10], 10, batchnorm=True, seed=0), digits, epochs=1)
    with pytest.raises(ValueError, match="at least one hidden Dense"):
        rbm_pretrain(Sequential([L.Dense(64, 10)]), digits, epochs=1)
    with pytest.raises(TypeError, match="Sequential or MLP"):
        rbm_pretrain([L.Dense(64, 10)], digits, epochs=1)


def test_experiment_pretrain_quick(tmp_path):
    from dlfast import experiments as E
    r = E.run("pretrain", tmp_path, quick=True, seed=0, verbose=False)
    assert [row["init"] for row in r["rows"]] == ["Xavier", "He", "Xavier + RBM pre-training"]
    assert len(r["reconstruction"]) == 4 and all(len(h) == 4 for h in r["reconstruction"])
    assert r["reconstruction"][0][-1] < r["reconstruction"][0][0]
    for loss, acc in r["curves"].values():
        assert len(loss) == 5 and np.all(np.isfinite(loss))
    assert (tmp_path / "pretrain.png").stat().st_size > 5000


def test_cli_pretrain(tmp_path, capsys):
    from dlfast import cli
    rc = cli.main(["train", "--epochs", "1", "--hidden", "16", "8", "--activation", "sigmoid",
                   "--pretrain", "rbm", "--pretrain-epochs", "2", "--no-progress",
                   "--out", str(tmp_path)])
    assert rc == 0
    assert "RBM pre-training, reconstruction error per layer" in capsys.readouterr().out
    rc = cli.main(["train", "--epochs", "1", "--batchnorm", "--pretrain", "rbm",
                   "--pretrain-epochs", "1", "--no-progress", "--out", str(tmp_path)])
    assert rc != 0
    assert "only parametrised layers are Dense" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # the NumPy oracle warns on overflow
def test_divergence_is_an_error(digits):
    net = MLP(64, [10], 10, seed=0)
    with pytest.raises(FloatingPointError, match="diverged"):
        rbm_pretrain(net, (digits * 3e18).astype(np.float32), epochs=1, lr=1e10, visible="gaussian")
