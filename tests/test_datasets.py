"""dlfast.datasets: embedded digits, IDX/MNIST reader on files written here, splits, one-hot."""
import gzip
import os
import struct

import numpy as np
import pytest

from dlfast import datasets as D

CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
         np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(arr, code=None):
    """An IDX file image written independently of dlfast: magic, big-endian dims, big-endian data."""
    arr = np.asarray(arr)
    code = CODES[arr.dtype] if code is None else code
    head = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path, data, gz=False):
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)
    return str(path)


# ============================================================================ digits
def test_digits_shape_classes_and_range():
    x, t = D.load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert t.shape == (1797,) and t.dtype == np.int64
    assert set(np.unique(t)) == set(range(10))
    assert np.all(np.bincount(t) >= 170)              # about 180 images per class
    assert x.min() == 0.0 and x.max() == 1.0
    raw, t2 = D.load_digits(normalize=False)
    np.testing.assert_array_equal(t, t2)
    assert raw.max() == 16 and np.all(raw == np.round(raw))   # integer counts 0..16
    np.testing.assert_allclose(x, raw / 16, rtol=1e-7)


def test_digits_known_first_image_and_dtypes():
    x, t = D.load_digits(dtype=np.float64, normalize=False)
    assert x.dtype == np.float64
    # The first image of the UCI test set is a zero.
    assert t[0] == 0
    np.testing.assert_array_equal(x[0, :8], [0, 0, 5, 13, 9, 1, 0, 0])
    y, oh = D.load_digits(one_hot=True)
    assert oh.shape == (1797, 10) and oh.dtype == np.float32
    np.testing.assert_array_equal(D.from_one_hot(oh), t)


def test_digits_returns_fresh_arrays():
    x, t = D.load_digits()
    x[:] = -1
    t[:] = 99
    x2, t2 = D.load_digits()
    assert x2.min() == 0.0 and t2.max() == 9


def test_digits_rejects_int_dtype():
    with pytest.raises(TypeError, match="dtype"):
        D.load_digits(dtype=np.int32)


# ============================================================================ IDX
@pytest.mark.parametrize("dtype", list(CODES), ids=lambda d: d.name)
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_round_trip(tmp_path, dtype, gz):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    path = write(tmp_path / ("a.idx" + (".gz" if gz else "")), idx_bytes(arr), gz)
    got = D.load_idx(path)
    assert got.dtype == dtype and got.dtype.isnative and got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, arr)


def test_idx_gzip_detected_by_content(tmp_path):
    arr = np.arange(6, dtype=np.uint8)
    path = write(tmp_path / "labels-idx1-ubyte", idx_bytes(arr), gz=True)   # no .gz suffix
    np.testing.assert_array_equal(D.load_idx(path), arr)


def test_idx_one_dim_and_big_values(tmp_path):
    arr = np.array([1, -2, 2 ** 30, -2 ** 31], np.int32)
    np.testing.assert_array_equal(D.load_idx(write(tmp_path / "i", idx_bytes(arr))), arr)


def test_idx_missing_file(tmp_path):
    path = str(tmp_path / "nope-idx1-ubyte")
    with pytest.raises(ValueError, match="does not exist") as ei:
        D.load_idx(path)
    assert isinstance(ei.value, FileNotFoundError) and path in str(ei.value)


@pytest.mark.parametrize("cut", [0, 3, 6, 11, 12 + 59])
def test_idx_truncated(tmp_path, cut):
    data = idx_bytes(np.zeros((6, 10), np.uint8))     # 4 + 8 header bytes + 60 data bytes
    path = write(tmp_path / "t.idx", data[:cut])
    with pytest.raises(ValueError, match="truncated") as ei:
        D.load_idx(path)
    assert path in str(ei.value)


def test_idx_trailing_bytes(tmp_path):
    path = write(tmp_path / "t.idx", idx_bytes(np.zeros((2, 3), np.uint8)) + b"\x00\x01")
    with pytest.raises(ValueError, match="2 bytes after the data"):
        D.load_idx(path)


def test_idx_bad_magic(tmp_path):
    data = bytearray(idx_bytes(np.zeros(4, np.uint8)))
    data[0] = 0x1A
    path = write(tmp_path / "m.idx", bytes(data))
    with pytest.raises(ValueError, match="bad magic") as ei:
        D.load_idx(path)
    assert path in str(ei.value)


def test_idx_bad_dtype_code(tmp_path):
    path = write(tmp_path / "c.idx", idx_bytes(np.zeros(4, np.uint8), code=0x0A))
    with pytest.raises(ValueError, match="unknown data type code 0x0A"):
        D.load_idx(path)


def test_idx_zero_dims(tmp_path):
    path = write(tmp_path / "z.idx", bytes([0, 0, 8, 0]))
    with pytest.raises(ValueError, match="0 dimensions"):
        D.load_idx(path)


def test_idx_truncated_gzip(tmp_path):
    comp = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    path = write(tmp_path / "x.idx.gz", comp[:len(comp) // 2])
    with pytest.raises(ValueError, match="gzip") as ei:
        D.load_idx(path)
    assert path in str(ei.value)


def test_idx_gz_name_but_not_gzip(tmp_path):
    path = write(tmp_path / "x.idx.gz", idx_bytes(np.arange(3, dtype=np.uint8)))
    with pytest.raises(ValueError, match="not gzip"):
        D.load_idx(path)


def test_idx_directory(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        D.load_idx(tmp_path)


# ============================================================================ MNIST folder
def make_mnist(folder, n_train=12, n_test=5, gz=True, rows=4, cols=3, dotted=False):
    rng = np.random.default_rng(1)
    out = {}
    for kind, n in (("train", n_train), ("t10k", n_test)):
        img = rng.integers(0, 256, (n, rows, cols), dtype=np.uint8)
        lab = rng.integers(0, 10, n, dtype=np.uint8)
        sep = "." if dotted else "-"
        write(os.path.join(folder, f"{kind}-images{sep}idx3-ubyte" + (".gz" if gz else "")),
              idx_bytes(img), gz)
        write(os.path.join(folder, f"{kind}-labels{sep}idx1-ubyte" + (".gz" if gz else "")),
              idx_bytes(lab), gz)
        out[kind] = (img, lab)
    return out


@pytest.mark.parametrize("gz,dotted", [(True, False), (False, False), (False, True)])
def test_load_mnist(tmp_path, gz, dotted):
    ref = make_mnist(tmp_path, gz=gz, dotted=dotted)
    x, t = D.load_mnist(tmp_path, "train")
    img, lab = ref["train"]
    assert x.shape == (12, 12) and x.dtype == np.float32 and t.dtype == np.int64
    np.testing.assert_allclose(x, img.reshape(12, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(t, lab)
    x, t = D.load_mnist(tmp_path, "t10k", normalize=False, flatten=False, one_hot=True,
                        dtype=np.float64)
    img, lab = ref["t10k"]
    assert x.shape == (5, 4, 3) and x.dtype == np.float64
    np.testing.assert_array_equal(x, img)
    assert t.shape == (5, 10)
    np.testing.assert_array_equal(D.from_one_hot(t), lab)


def test_load_mnist_errors(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        D.load_mnist(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load_mnist(tmp_path / "absent")
    with pytest.raises(ValueError, match="no MNIST file"):
        D.load_mnist(tmp_path)
    make_mnist(tmp_path, gz=False)
    # labels count differs from images count
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(11, np.uint8)))
    with pytest.raises(ValueError, match="12 images but .* 11 labels"):
        D.load_mnist(tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.full(12, 10, np.uint8)))
    with pytest.raises(ValueError, match="label 10"):
        D.load_mnist(tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(12, np.uint8)))
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((12, 5), np.uint8)))
    with pytest.raises(ValueError, match=r"\(N, rows, cols\)"):
        D.load_mnist(tmp_path)


# ============================================================================ splits
def test_train_val_split_partition():
    x = np.arange(100, dtype=np.float32).reshape(50, 2)
    t = np.arange(50) % 5
    xt, tt, xv, tv = D.train_val_split(x, t, 0.2, seed=3)
    assert len(xv) == 10 and len(xt) == 40
    rows = np.concatenate([xt[:, 0], xv[:, 0]]) / 2
    np.testing.assert_array_equal(np.sort(rows), np.arange(50))          # a partition
    np.testing.assert_array_equal(tt, (xt[:, 0] / 2).astype(int) % 5)     # pairs kept
    again = D.train_val_split(x, t, 0.2, seed=3)
    for a, b in zip((xt, tt, xv, tv), again):
        np.testing.assert_array_equal(a, b)
    other = D.train_val_split(x, t, 0.2, seed=4)
    assert not np.array_equal(xv, other[2])


def test_stratified_split_keeps_class_proportions():
    t = np.repeat(np.arange(4), [40, 20, 20, 20])
    x = np.arange(100, dtype=np.float64)[:, None]
    xt, tt, xv, tv = D.train_test_split(x, t, 0.25, seed=0, stratify=True)
    np.testing.assert_array_equal(np.bincount(tv), [10, 5, 5, 5])
    np.testing.assert_array_equal(np.bincount(tt), [30, 15, 15, 15])
    # one-hot targets stratify the same way
    oh = D.to_one_hot(t, 4)
    _, _, _, tv2 = D.train_test_split(x, oh, 0.25, seed=0, stratify=True)
    np.testing.assert_array_equal(np.bincount(D.from_one_hot(tv2)), [10, 5, 5, 5])


def test_stratified_split_of_classes_too_small_to_round_up():
    """Every class rounds to 0 held out: the split still holds round(fraction * n) (at least 1),
    one from each of as many classes, not an error."""
    t = np.repeat(np.arange(30), 2)                      # 30 classes of 2 rows, 0.2 * 2 = 0.4
    x = np.arange(60, dtype=np.float64)[:, None]
    xt, tt, xv, tv = D.train_test_split(x, t, 0.2, seed=0, stratify=True)
    assert tv.size == 12 and np.unique(tv).size == 12 and tt.size == 48
    _, _, _, tv = D.train_val_split(x[:4], np.array([0, 1, 0, 1]), 0.25, seed=0, stratify=True)
    assert tv.size == 1
    again = D.train_test_split(x, t, 0.2, seed=0, stratify=True)
    np.testing.assert_array_equal(again[3], D.train_test_split(x, t, 0.2, seed=0,
                                                               stratify=True)[3])


def test_split_errors():
    x, t = np.zeros((10, 2)), np.zeros(10, int)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            D.train_val_split(x, t, bad)
    with pytest.raises(ValueError, match="empty split"):
        D.train_val_split(x, t, 0.01)
    with pytest.raises(ValueError, match="same number of samples"):
        D.train_val_split(x, t[:9], 0.5)
    with pytest.raises(TypeError, match="x must be"):
        D.shuffle([1, 2], t)


def test_shuffle_keeps_pairs():
    x = np.arange(20.0)[:, None]
    t = np.arange(20) * 3
    xs, ts = D.shuffle(x, t, seed=0)
    assert not np.array_equal(xs[:, 0], x[:, 0])
    np.testing.assert_array_equal(ts, xs[:, 0].astype(int) * 3)


def test_one_hot_round_trip_and_errors():
    t = np.array([2, 0, 1, 2])
    y = D.to_one_hot(t, 3)
    np.testing.assert_array_equal(y, [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert y.dtype == np.float32
    np.testing.assert_array_equal(D.from_one_hot(y), t)
    assert D.to_one_hot(t).shape == (4, 3)
    assert D.to_one_hot(t, 3, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        D.to_one_hot(t, 2)
    with pytest.raises(TypeError, match="integer"):
        D.to_one_hot(np.array([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="one-hot"):
        D.from_one_hot(np.array([[1, 1, 0]]))
    with pytest.raises(ValueError, match="one-hot"):
        D.from_one_hot(np.array([[0.5, 0.5]]))
