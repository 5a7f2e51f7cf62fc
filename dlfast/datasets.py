"""Data sets and splitting helpers.

* ``load_digits()`` — the UCI handwritten digits embedded in the package (1,797 8x8 images,
  64 features in 0..16, 10 classes; see ``dlfast/data/README.md`` for source and licence).
* ``load_idx(path)`` / ``load_mnist(folder, kind)`` — MNIST-format IDX files (raw or gzip).
* ``shuffle``, ``train_val_split``, ``train_test_split`` (optionally stratified),
  ``to_one_hot``, ``from_one_hot``.

Labels are int64 class indices unless ``one_hot=True``. Features default to float32.
"""
from __future__ import annotations

import functools
import gzip
import io as _io
import os
import zlib
from importlib import resources

import numpy as np

from ._validation import make_rng, positive_int, real, resolve_dtype

__all__ = ["load_digits", "load_idx", "load_mnist", "shuffle", "train_val_split",
           "train_test_split", "split_indices", "to_one_hot", "from_one_hot", "IDXFileNotFoundError",
           "DIGITS_SHAPE", "IDX_DTYPES"]

DIGITS_SHAPE = (1797, 64)

# IDX type codes -> big-endian numpy dtypes.
IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class IDXFileNotFoundError(FileNotFoundError, ValueError):
    """A data file that does not exist (both a FileNotFoundError and a ValueError)."""


# ============================================================================ digits
@functools.lru_cache(maxsize=1)
def _digits_raw():
    data = resources.files("dlfast").joinpath("data").joinpath("digits.csv.gz").read_bytes()
    arr = np.loadtxt(_io.BytesIO(gzip.decompress(data)), delimiter=",", dtype=np.int64)
    if arr.shape != (DIGITS_SHAPE[0], DIGITS_SHAPE[1] + 1):
        raise ValueError(f"the embedded digits file has shape {arr.shape}, expected "
                         f"({DIGITS_SHAPE[0]}, {DIGITS_SHAPE[1] + 1}); the installation is damaged")
    arr.setflags(write=False)
    return arr


def load_digits(dtype=np.float32, normalize=True, one_hot=False):
    """The UCI digits: ``(x, t)`` with x (1797, 64) of ``dtype`` (pixel / 16 in [0, 1] when
    ``normalize``, else the raw counts 0..16) and t int64 labels 0..9 (or (1797, 10) one-hot rows of
    ``dtype`` when ``one_hot``). Image k is ``x[k].reshape(8, 8)``."""
    dt = resolve_dtype(dtype)
    raw = _digits_raw()
    x = raw[:, :-1].astype(dt)
    if normalize:
        x /= dt.type(16)
    t = raw[:, -1].copy()
    return x, (to_one_hot(t, 10, dtype=dt) if one_hot else t)


# ============================================================================ IDX / MNIST
def _read_bytes(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise IDXFileNotFoundError(f"IDX file {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"IDX file {path!r} is a directory, expected a file")
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":                    # gzip magic, whatever the file is called
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise ValueError(f"IDX file {path!r} is a damaged or truncated gzip file: {exc}") from None
    elif path.endswith(".gz"):
        raise ValueError(f"IDX file {path!r} is named .gz but is not gzip-compressed "
                         f"(first bytes {data[:2]!r}, expected b'\\x1f\\x8b')")
    return path, data


def load_idx(path):
    """Read an IDX file (raw or gzip): magic ``0x00 0x00 <type> <ndim>``, then ndim big-endian uint32
    sizes, then the big-endian data. Returns an ndarray of that shape in native byte order
    (uint8, int8, int16, int32, float32 or float64). Bad files raise ``ValueError`` naming the file."""
    path, data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"IDX file {path!r} is truncated: {len(data)} bytes, shorter than the "
                         f"4-byte magic number")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"IDX file {path!r} has a bad magic number {data[:4].hex()}: the first two "
                         f"bytes must be 0 (not an IDX file)")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise ValueError(f"IDX file {path!r} has an unknown data type code 0x{code:02X}; expected one "
                         f"of {', '.join(f'0x{c:02X}' for c in IDX_DTYPES)}")
    if ndim == 0:
        raise ValueError(f"IDX file {path!r} declares 0 dimensions")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise ValueError(f"IDX file {path!r} is truncated: the header of {ndim} dimensions needs "
                         f"{head} bytes, the file has {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dt = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    got = len(data) - head
    if got < expected:
        raise ValueError(f"IDX file {path!r} is truncated: shape {shape} of {dt.name} needs "
                         f"{expected} data bytes, found {got}")
    if got > expected:
        raise ValueError(f"IDX file {path!r} has {got - expected} bytes after the data of shape "
                         f"{shape} (size mismatch; corrupt file?)")
    arr = np.frombuffer(data, dt, offset=head).reshape(shape)
    return arr.astype(dt.newbyteorder("="))


def _find(folder, stem):
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            p = os.path.join(folder, name + suffix)
            if os.path.isfile(p):
                return p
    raise IDXFileNotFoundError(f"no MNIST file {stem!r} (or {stem}.gz, or "
                               f"{stem.replace('-idx', '.idx')}[.gz]) in {folder!r}")


def load_mnist(folder, kind="train", normalize=True, flatten=True, one_hot=False,
               dtype=np.float32):
    """MNIST (or Fashion-MNIST) from ``folder`` holding ``{kind}-images-idx3-ubyte[.gz]`` and
    ``{kind}-labels-idx1-ubyte[.gz]``, kind "train" or "t10k". Returns ``(x, t)``: x (N, rows*cols)
    (``flatten``) or (N, rows, cols) of ``dtype``, pixel / 255 when ``normalize``; t int64 (N,), or
    (N, 10) one-hot rows when ``one_hot``."""
    if kind not in ("train", "t10k"):
        raise ValueError(f"kind must be 'train' or 't10k', got {kind!r}")
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise IDXFileNotFoundError(f"MNIST folder {folder!r} does not exist")
    dt = resolve_dtype(dtype)
    ipath = _find(folder, f"{kind}-images-idx3-ubyte")
    lpath = _find(folder, f"{kind}-labels-idx1-ubyte")
    images, labels = load_idx(ipath), load_idx(lpath)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"MNIST image file {ipath!r} must hold uint8 data of shape (N, rows, cols), "
                         f"got {images.dtype.name} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"MNIST label file {lpath!r} must hold uint8 data of shape (N,), got "
                         f"{labels.dtype.name} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"MNIST files disagree: {ipath!r} has {images.shape[0]} images but "
                         f"{lpath!r} has {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"MNIST label file {lpath!r} holds label {int(labels.max())}, expected 0..9")
    x = images.reshape(images.shape[0], -1) if flatten else images
    x = x.astype(dt)
    if normalize:
        x /= dt.type(255)
    t = labels.astype(np.int64)
    return x, (to_one_hot(t, 10, dtype=dt) if one_hot else t)


# ============================================================================ labels
def to_one_hot(t, num_classes=None, dtype=np.float32):
    """``y[n, t[n]] = 1``, zeros elsewhere; t integer class indices (N,), num_classes default
    ``max(t) + 1``."""
    t = np.asarray(t)
    if t.ndim != 1 or t.dtype.kind not in "iu":
        raise TypeError(f"t must be a 1-D integer array of class indices, got {t.dtype.name} "
                        f"of shape {t.shape}")
    if num_classes is None:
        num_classes = int(t.max()) + 1 if t.size else 0
        if num_classes == 0:
            raise ValueError("num_classes is required when t is empty")
    num_classes = positive_int("num_classes", num_classes)
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"t must lie in [0, {num_classes}), got values in [{t.min()}, {t.max()}]")
    y = np.zeros((t.shape[0], num_classes), dtype=np.dtype(dtype))
    y[np.arange(t.shape[0]), t] = 1
    return y


def from_one_hot(y):
    """Class indices (int64) from one-hot rows y (N, C): ``t[n] = argmax y[n]``. Rows must be
    exactly one 1 and zeros."""
    y = np.asarray(y)
    if y.ndim != 2 or y.dtype.kind not in "iufb":
        raise ValueError(f"y must be a 2-D array of one-hot rows, got {y.dtype.name} of shape {y.shape}")
    ones = y == 1
    if not (np.all(ones | (y == 0)) and np.all(ones.sum(axis=1) == 1)):
        raise ValueError("y rows must be exact one-hot rows (one 1, the rest 0)")
    return np.argmax(ones, axis=1).astype(np.int64)


# ============================================================================ splitting
def _pair(x, t):
    if not isinstance(x, np.ndarray) or x.ndim < 1:
        raise TypeError(f"x must be a numpy.ndarray with a sample axis, got {type(x).__name__}")
    if not isinstance(t, np.ndarray) or t.ndim < 1:
        raise TypeError(f"t must be a numpy.ndarray with a sample axis, got {type(t).__name__}")
    if x.shape[0] != t.shape[0]:
        raise ValueError(f"x and t must have the same number of samples, got {x.shape[0]} and "
                         f"{t.shape[0]}")
    return x, t


def shuffle(x, t, seed=None):
    """``(x[p], t[p])`` for a random permutation p (``seed``: int, Generator or None)."""
    x, t = _pair(x, t)
    p = make_rng(seed).permutation(x.shape[0])
    return x[p], t[p]


def _class_ids(t):
    return from_one_hot(t) if t.ndim == 2 else t


def split_indices(n, fraction, seed=None, labels=None, name="val_fraction"):
    """``(keep, held)`` index arrays (sorted) holding out ``round(fraction * n)`` samples, chosen at
    random; with ``labels`` (stratified) each class c holds out ``round(fraction * n_c)``."""
    fraction = real(name, fraction, 0.0, 1.0, lo_open=True, hi_open=True)
    rng = make_rng(seed)
    if labels is None:
        k = int(round(fraction * n))
        held = rng.permutation(n)[:k]
    else:
        labels = np.asarray(labels)
        held = []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            k = int(round(fraction * idx.size))
            held.append(rng.permutation(idx)[:k])
        held = np.concatenate(held) if held else np.zeros(0, np.int64)
    if held.size == 0 or held.size == n:
        raise ValueError(f"{name}={fraction} of {n} samples leaves an empty split; use a fraction "
                         f"that keeps at least one sample on each side")
    mask = np.zeros(n, bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def train_val_split(x, t, val_fraction, seed=None, stratify=False):
    """``(x_train, t_train, x_val, t_val)``: a random ``val_fraction`` of the samples held out
    (per class when ``stratify``); sample order is kept within each part."""
    x, t = _pair(x, t)
    keep, held = split_indices(x.shape[0], val_fraction, seed,
                               _class_ids(t) if stratify else None, "val_fraction")
    return x[keep], t[keep], x[held], t[held]


def train_test_split(x, t, test_fraction=0.2, seed=None, stratify=False):
    """``(x_train, t_train, x_test, t_test)``: like ``train_val_split`` for a test set."""
    x, t = _pair(x, t)
    keep, held = split_indices(x.shape[0], test_fraction, seed,
                               _class_ids(t) if stratify else None, "test_fraction")
    return x[keep], t[keep], x[held], t[held]
