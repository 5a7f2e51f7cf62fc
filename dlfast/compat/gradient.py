"""The book's ``common/gradient.py``: central differences with h = 1e-4.

``grad[i] = (f(x + h e_i) - f(x - h e_i)) / (2h)``; an array x is perturbed in place, ``f(x)``
is called with it, and every element is restored (also when ``f`` raises).
"""
from __future__ import annotations

import numbers
from collections.abc import MutableMapping

import numpy as np

__all__ = ["np", "numerical_gradient", "numerical_gradient_2d"]

_H = 1e-4


def _writable_float(name, x):
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array (it is perturbed by h = 1e-4), "
                        f"got dtype {x.dtype.name}")
    if not x.flags.writeable:
        raise ValueError(f"{name} must be writeable (it is perturbed in place)")


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _array_gradient(f, x, name="x"):
    _writable_float(name, x)
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        saved = x[idx]
        try:
            x[idx] = saved + _H
            fp = f(x)
            x[idx] = saved - _H
            fm = f(x)
        finally:
            x[idx] = saved
        grad[idx] = (fp - fm) / (2 * _H)
    return grad


def _entry_gradient(f, params, key):
    """The gradient of f for ``params[key]``: an array in place, a number through the dict."""
    v = params[key]
    if isinstance(v, np.ndarray):
        return _array_gradient(f, v, f"params[{key!r}]")
    if not _is_number(v):
        raise TypeError(f"params[{key!r}] must be a float array or a number, got {type(v).__name__}")
    try:
        params[key] = v + _H
        fp = f(params[key])
        params[key] = v - _H
        fm = f(params[key])
    finally:
        params[key] = v
    return (fp - fm) / (2 * _H)


def numerical_gradient(f, x):
    """The gradient of ``f`` at x by central differences (h = 1e-4).

    x: a float array of any shape (0-d included), perturbed in place and passed to f; a number
    (f is called with x + h and x - h); or a dict of those (a params dict): a dict of the
    gradients, each entry perturbed in turn (a number entry through the dict)."""
    if isinstance(x, MutableMapping):
        return {k: _entry_gradient(f, x, k) for k in list(x)}
    if isinstance(x, np.ndarray):
        return _array_gradient(f, x)
    if _is_number(x):
        return (f(x + _H) - f(x - _H)) / (2 * _H)
    raise TypeError(f"x must be a float array, a number or a dict of them, got {type(x).__name__}")


def _numerical_gradient_1d(f, x):
    """``numerical_gradient`` of a 1-D array."""
    if not isinstance(x, np.ndarray) or x.ndim != 1:
        raise ValueError(f"x must be a 1-D array, got {type(x).__name__} "
                         f"{getattr(x, 'shape', '')}")
    return _array_gradient(f, x)


def numerical_gradient_2d(f, X):
    """For a 1-D X its gradient; for a 2-D X the gradient of each row, f called with that row."""
    if not isinstance(X, np.ndarray):
        raise TypeError(f"X must be a numpy.ndarray, got {type(X).__name__}")
    if X.ndim == 1:
        return _numerical_gradient_1d(f, X)
    grad = np.zeros_like(X)
    for i, row in enumerate(X):
        grad[i] = _numerical_gradient_1d(f, row)
    return grad
