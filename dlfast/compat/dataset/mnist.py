"""The book's ``dataset/mnist.py``: ``load_mnist`` on ``dlfast.datasets`` (MNIST downloaded once
into ``dlfast.datasets.dataset_folder("mnist")``, ``$DLFAST_DATA`` honoured)."""
from __future__ import annotations

import numpy as np

from ... import datasets

__all__ = ["load_mnist"]


def _flag(name, v):
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(v).__name__}")
    return bool(v)


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
