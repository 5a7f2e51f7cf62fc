"""The book's ``common/functions.py``: activations, softmax and losses of NumPy arrays.

Inputs of an integer or other non-float dtype (and Python numbers) compute in float64, as the
book's NumPy expressions do; float32 stays float32. A 0-d input gives a NumPy scalar.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from .._validation import FLOAT_DTYPES

__all__ = ["np", "identity_function", "step_function", "sigmoid", "sigmoid_grad", "relu",
           "relu_grad", "softmax", "sum_squared_error", "cross_entropy_error", "softmax_loss"]


def _as_float(x):
    """x as a float32/float64 ndarray (other dtypes become float64)."""
    x = np.asarray(x)
    return x if x.dtype in FLOAT_DTYPES else x.astype(np.float64)


def _activation(x, code):
    x = _as_float(x)
    out = np.empty(x.shape, x.dtype)
    kernels.activation_forward(x, out, code)
    return out[()] if out.ndim == 0 else out


def identity_function(x):
    """``x`` itself."""
    return x


def step_function(x):
    """``1`` where ``x > 0``, else ``0`` (an int array)."""
    return np.array(np.asarray(x) > 0, dtype=int)


def sigmoid(x):
    """``1 / (1 + exp(-x))`` (``kernels.activation_forward``, overflow-free)."""
    return _activation(x, "sigmoid")


def sigmoid_grad(x):
    """``(1 - sigmoid(x)) * sigmoid(x)``."""
    y = sigmoid(x)
    return (1.0 - y) * y


def relu(x):
    """``max(0, x)`` (``kernels.activation_forward``; NaN stays NaN)."""
    return _activation(x, "relu")


def relu_grad(x):
    """``1`` where ``x >= 0``, else ``0``, in x's dtype (the book's choice at 0)."""
    x = np.asarray(x)
    return (x >= 0).astype(x.dtype)


def softmax(x):
    """``exp(x - max) / sum(exp(x - max))`` along the last axis (``kernels.softmax_forward``)."""
    x = _as_float(x)
    if x.ndim == 0:
        raise ValueError("x must have at least one axis (the classes), got a 0-d value")
    rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    out = np.empty(rows.shape, x.dtype)
    kernels.softmax_forward(rows, out)
    return out.reshape(x.shape)


def sum_squared_error(y, t):
    """``0.5 * sum((y - t)**2)``."""
    return 0.5 * np.sum((np.asarray(y) - np.asarray(t)) ** 2)


def _label_indices(t, n, name="t"):
    """Class indices (n,) from t: one-hot rows are reduced with argmax by the caller."""
    t = np.asarray(t)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices (or one-hot rows), "
                        f"got dtype {t.dtype.name}")
    t = t.reshape(-1)
    if t.shape[0] != n:
        raise ValueError(f"{name} must have {n} labels (or one-hot rows) to match the batch, "
                         f"got {t.shape[0]}")
    return t


def cross_entropy_error(y, t):
    """``-sum_n log(y[n, t_n] + 1e-7) / N`` for probabilities y (N, C); t class indices or
    one-hot rows (``t.size == y.size``: argmax). A 1-D y is a batch of one."""
    y = np.asarray(y)
    t = np.asarray(t)
    if y.ndim == 1:
        y = y.reshape(1, y.size)
        t = t.reshape(1, t.size)
    if y.ndim != 2:
        raise ValueError(f"y must be 1-D or 2-D (N, C), got shape {y.shape}")
    if t.size == y.size:
        t = t.reshape(y.shape).argmax(axis=1)
    n = y.shape[0]
    t = _label_indices(t, n)
    return -np.sum(np.log(y[np.arange(n), t] + 1e-7)) / n


def softmax_loss(X, t):
    """``cross_entropy_error(softmax(X), t)``."""
    return cross_entropy_error(softmax(X), t)
