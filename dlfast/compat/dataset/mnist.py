"""The book's ``dataset/mnist.py`` on ``dlfast.datasets``: MNIST downloaded once (checked against
its published MD5 sums, from the first mirror that answers) into ``dataset_dir`` =
``dlfast.datasets.dataset_folder("mnist")`` (``$DLFAST_DATA`` honoured, read when used).

    download_mnist()   the four IDX files into dataset_dir (files already there are kept)
    init_mnist()       download_mnist(), then save_file = dataset_dir/mnist.pkl: the book's dict
                       {'train_img': uint8 (60000, 784), 'train_label': uint8 (60000,),
                        'test_img': uint8 (10000, 784), 'test_label': uint8 (10000,)}
    load_mnist(...)    the arrays, read from the IDX files (it neither needs nor writes the pickle)

``python -m dlfast.compat.dataset.mnist`` runs ``init_mnist()``, as the book's script does."""
from __future__ import annotations

import gzip  # noqa: F401  (the book's module provides these names to a star import)
import os
import pickle
import urllib.request  # noqa: F401

import numpy as np

from ... import datasets

__all__ = ["download_mnist", "gzip", "img_dim", "img_size", "init_mnist", "key_file",
           "load_mnist", "np", "os", "pickle", "test_num", "train_num", "url_base", "urllib",
           "dataset_dir", "save_file"]

url_base = datasets._SOURCES["mnist"][2][0]     # the first default mirror (the book's own)
key_file = {"train_img": "train-images-idx3-ubyte.gz",
            "train_label": "train-labels-idx1-ubyte.gz",
            "test_img": "t10k-images-idx3-ubyte.gz",
            "test_label": "t10k-labels-idx1-ubyte.gz"}
train_num = 60000
test_num = 10000
img_dim = (1, 28, 28)
img_size = 784


def _save_file():
    return os.path.join(datasets.dataset_folder("mnist"), "mnist.pkl")


def __getattr__(name):
    """``dataset_dir`` and ``save_file``, from ``$DLFAST_DATA`` as it is when read."""
    if name == "dataset_dir":
        return datasets.dataset_folder("mnist")
    if name == "save_file":
        return _save_file()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _flag(name, v):
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(v).__name__}")
    return bool(v)


def download_mnist():
    """The four files of ``key_file`` into ``dataset_dir`` (``dlfast.datasets.fetch``: mirrors,
    retries, checksums; ``DownloadError`` naming every URL tried when none answers)."""
    datasets.fetch("mnist", datasets.dataset_folder("mnist"))


def init_mnist():
    """``download_mnist()``, then the book's pickle at ``save_file`` (written to a temporary file
    first, then renamed: never a partial file)."""
    download_mnist()
    (xtr, ttr), (xte, tte) = load_mnist(normalize=False)       # uint8 (N, 784) and (N,)
    data = {"train_img": xtr, "train_label": ttr, "test_img": xte, "test_label": tte}
    path = _save_file()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            pickle.dump(data, f, -1)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_mnist(normalize=True, flatten=True, one_hot_label=False):
    """``(x_train, t_train), (x_test, t_test)`` as the book's: images float32 in [0, 1] when
    ``normalize``, else uint8 0..255; (N, 784) when ``flatten``, else (N, 1, 28, 28); labels
    uint8 (N,), or float64 one-hot rows (N, 10) when ``one_hot_label``."""
    normalize, flatten = _flag("normalize", normalize), _flag("flatten", flatten)
    one_hot_label = _flag("one_hot_label", one_hot_label)
    out = []
    for kind in ("train", "t10k"):
        x, t = datasets.load_mnist(kind=kind, normalize=False, flatten=True, dtype=np.float32,
                                   download=True)
        if normalize:
            x /= np.float32(255.0)
        else:
            x = x.astype(np.uint8)
        if not flatten:
            x = x.reshape(-1, 1, 28, 28)
        t = datasets.to_one_hot(t, 10, dtype=np.float64) if one_hot_label else t.astype(np.uint8)
        out.append((x, t))
    return tuple(out)


if __name__ == "__main__":
    init_mnist()
