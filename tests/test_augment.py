"""dlfast.augment.Augment: formulas against per-image scipy references, seeding, errors, and the
Trainer transform (fresh copy per epoch, validation never augmented)."""
import numpy as np
import pytest
from scipy.ndimage import affine_transform

from dlfast import optim
from dlfast.augment import Augment
from dlfast.net import MLP
from dlfast.train import Trainer


def _imgs(n=6, h=9, w=7, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).random((n, h, w)).astype(dtype)


def test_off_is_a_copy(dtype):
    x = _imgs(dtype=dtype)
    y = Augment(seed=0)(x)
    assert y is not x and y.dtype == dtype
    np.testing.assert_array_equal(y, x)


def test_shift_moves_centre_of_mass_by_d():
    x = np.zeros((4, 11, 11), np.float64)
    x[:, 5, 4] = 1.0
    y = Augment(shift=2.0, seed=7)(x)
    d = np.random.default_rng(7).uniform(-2.0, 2.0, (4, 2))
    rr, cc = np.mgrid[:11, :11]
    com = np.stack([(y * rr).sum((1, 2)), (y * cc).sum((1, 2))], 1) / y.sum((1, 2))[:, None]
    np.testing.assert_allclose(com, np.array([5.0, 4.0]) + d, atol=1e-12)
    np.testing.assert_allclose(y.sum((1, 2)), 1.0, atol=1e-12)


@pytest.mark.parametrize("h,w", [(8, 8), (9, 6)])
def test_affine_matches_scipy_per_image(dtype, h, w):
    x = _imgs(5, h, w, dtype)
    aug = Augment(shift=1.5, rotate=20, scale=0.2, seed=3)
    y = aug(x)
    rng = np.random.default_rng(3)
    d = rng.uniform(-1.5, 1.5, (5, 2))
    a = np.deg2rad(rng.uniform(-20, 20, 5))
    s = rng.uniform(0.8, 1.2, 5)
    c = np.array([(h - 1) / 2, (w - 1) / 2])
    for i in range(5):
        M = np.array([[np.cos(a[i]), np.sin(a[i])], [-np.sin(a[i]), np.cos(a[i])]]) / s[i]
        ref = affine_transform(x[i].astype(np.float64), M, offset=c - M @ (c + d[i]), order=1,
                               mode="constant", cval=0.0)
        np.testing.assert_allclose(y[i], ref, atol=1e-5 if dtype == np.float32 else 1e-12)
    assert y.dtype == dtype


def test_noise_and_clip():
    x = np.full((50, 8, 8), 0.5, np.float32)
    y = Augment(noise=0.1, seed=1)(x)
    assert y.dtype == np.float32
    assert abs(float(np.mean(y - 0.5))) < 0.005 and abs(float(np.std(y - 0.5)) - 0.1) < 0.005
    z = Augment(noise=2.0, clip=(0.0, 1.0), seed=1)(x)
    assert z.min() == 0.0 and z.max() == 1.0


def test_fresh_per_call_and_seeded():
    x = _imgs()
    a, b = Augment(shift=1, rotate=10, noise=0.05, seed=5), Augment(shift=1, rotate=10, noise=0.05, seed=5)
    y1, y2 = a(x), a(x)
    assert not np.array_equal(y1, y2)
    np.testing.assert_array_equal(b(x), y1)
    np.testing.assert_array_equal(b(x), y2)


def test_flattened_with_shape():
    x = _imgs(4, 8, 8)
    flat = x.reshape(4, 64)
    y = Augment(shape=(8, 8), shift=1, seed=2)(flat)
    assert y.shape == (4, 64)
    np.testing.assert_array_equal(y.reshape(4, 8, 8), Augment(shift=1, seed=2)(x))


def test_one_channel_images():
    x = _imgs(4, 8, 8)
    y = Augment(shift=1, seed=2)(x.reshape(4, 1, 8, 8))
    assert y.shape == (4, 1, 8, 8)
    np.testing.assert_array_equal(y[:, 0], Augment(shift=1, seed=2)(x))


def test_errors():
    with pytest.raises(ValueError, match="no image shape"):
        Augment(shift=1)(np.zeros((3, 64), np.float32))
    with pytest.raises(ValueError, match="63 features"):
        Augment(shape=(8, 8))(np.zeros((3, 63), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\) images.*got shape \(2, 3, 3, 3\)"):
        Augment()(np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(TypeError, match="float32/float64"):
        Augment()(np.zeros((2, 3, 3), np.int64))
    with pytest.raises(ValueError, match="finite"):
        Augment()(np.full((2, 3, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="shape must be"):
        Augment(shape=8)
    with pytest.raises(ValueError, match="rotate"):
        Augment(rotate=200)
    with pytest.raises(ValueError, match="shift"):
        Augment(shift=-1)
    with pytest.raises(ValueError, match="clip"):
        Augment(clip=(1, 0))


def test_trainer_transform_fresh_per_epoch_validation_untouched(backend):
    rng = np.random.default_rng(0)
    x, t = rng.random((60, 16), dtype=np.float32), rng.integers(0, 3, 60)
    xv, tv = rng.random((20, 16), dtype=np.float32), rng.integers(0, 3, 20)
    seen = []
    aug = Augment(shape=(4, 4), shift=1, noise=0.05, seed=0)

    def spy(a):
        seen.append(a.copy())
        out = aug(a)
        seen.append(out.copy())
        return out

    net = MLP(16, [8], 3, seed=0)
    tr = Trainer(net, optim.SGD(lr=0.1), epochs=3, batch_size=16, seed=0, progress=False,
                 transform=spy)
    hist = tr.fit(x, t, xv, tv)
    assert len(seen) == 6
    for k in range(3):
        np.testing.assert_array_equal(seen[2 * k], x)          # always the raw training set
    assert not np.array_equal(seen[1], seen[3]) and not np.array_equal(seen[3], seen[5])
    # the logged validation loss is that of the raw validation set
    np.testing.assert_allclose(hist["val_loss"][-1], tr.evaluate(xv, tv)[0], rtol=1e-6)
    np.testing.assert_allclose(hist["loss"][-1], tr.evaluate(x, t)[0], rtol=1e-6)
    with pytest.raises(ValueError, match="transform must return"):
        Trainer(net, optim.SGD(lr=0.1), epochs=1, progress=False,
                transform=lambda a: a[:, :8]).fit(x, t)
    with pytest.raises(TypeError, match="transform must be callable"):
        Trainer(net, optim.SGD(lr=0.1), transform=3)


def test_experiment_augment_quick(tmp_path):
    from dlfast import experiments as E
    r = E.run("augment", tmp_path, quick=True, seed=0, verbose=False)
    assert [row["training data"] for row in r["rows"]] == ["none", "noise 0.05", "all (--augment)"]
    for row in r["rows"]:
        assert 0.5 < row["val acc"] <= row["best val acc"] <= 1.0
    assert len(r["curves"]["none"][1]) == 30
    assert (tmp_path / "augment.png").stat().st_size > 5000
    assert "augment" in E.names()


def test_cli_augment(tmp_path, capsys):
    from dlfast import cli
    from dlfast.augment import DIGITS_DEFAULTS, IMAGE_DEFAULTS, for_images, image_shape
    rc = cli.main(["train", "--epochs", "2", "--hidden", "16", "--augment", "--no-progress",
                   "--out", str(tmp_path)])
    assert rc == 0
    assert "test" in capsys.readouterr().out
    a = for_images(64, seed=0)
    assert a.shape == (8, 8) and a.shift == DIGITS_DEFAULTS["shift"]
    b = for_images(784, seed=0)
    assert b.shape == (28, 28) and b.shift == IMAGE_DEFAULTS["shift"]
    with pytest.raises(ValueError, match="not a square"):
        image_shape(63)
