"""Shared checks of user input: dtypes, float arrays, labels, scalars, seeds.

Every check raises a ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape,
range or content) whose message names the argument and what was expected. Nothing is cast silently:
a float64 array given to a float32 model is an error (cast it yourself with ``x.astype(...)``).
"""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np

from . import kernels

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_ndarray = np.ndarray
_U64 = 1 << 64

__all__ = ["FLOAT_DTYPES", "resolve_dtype", "float_array", "finite_array", "labels_to_indices",
           "target_values", "sample_weights", "real", "positive_int", "nonneg_int", "seed_value", "make_rng", "derive_seed"]


def resolve_dtype(dtype, name="dtype"):
    """``np.dtype`` of float32 or float64 (names, types and dtypes accepted); anything else errors."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt.name}")
    return dt


def float_array(name, x, dtype, ndim=None, features=None, min_rows=0):
    """Check a float input and return it (as a C-contiguous array; no copy when it already is).

    ``x`` must be a float32/float64 ndarray of exactly ``dtype`` (mixed dtypes are an error), with
    ``ndim`` dimensions (``ndim`` may be a tuple of allowed values) and, for ``features``, that many
    columns (last axis). int, bool, object and complex arrays are rejected.
    """
    if type(x) is _ndarray and x.dtype is dtype and x.ndim and (ndim is None or x.ndim == ndim) \
            and (features is None or x.shape[-1] == features) and x.shape[0] >= min_rows \
            and x.flags.c_contiguous:
        return x                                   # the common case, in a few attribute reads
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of {np.dtype(dtype).name}, "
                        f"got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have a float dtype ({np.dtype(dtype).name}), got {x.dtype.name}")
    if x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype.name} but the model is {np.dtype(dtype).name} "
                        f"(mixed dtypes; cast explicitly, e.g. {name}.astype(np.{np.dtype(dtype).name}))")
    if ndim is not None:
        allowed = ndim if isinstance(ndim, tuple) else (ndim,)
        if x.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must be {want}, got shape {x.shape}")
    if features is not None and (x.ndim == 0 or x.shape[-1] != features):
        raise ValueError(f"{name} must have {features} features (columns), got shape {x.shape}")
    if x.ndim and x.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} row(s), got shape {x.shape}")
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x


def finite_array(name, x):
    """Raise ``ValueError`` if x holds NaN or infinity (checked through ``kernels.all_finite``)."""
    if x.size and not kernels.all_finite(x):
        raise ValueError(f"{name} contains NaN or infinity")
    return x


def labels_to_indices(t, n, num_classes, name="t"):
    """Labels as int64 class indices of shape (n,).

    Accepted: integer class indices of shape (n,) (any int dtype) in [0, num_classes), or one-hot
    rows of shape (n, num_classes) (int, bool or float) whose rows are exactly one 1 and zeros.
    """
    if not isinstance(t, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of class indices or one-hot rows, "
                        f"got {type(t).__name__}")
    kind = t.dtype.kind
    if t.ndim == 1:
        if kind not in "iu":
            raise TypeError(f"{name} must be integer class indices (or one-hot rows of shape "
                            f"({n}, {num_classes})), got a 1-D array of dtype {t.dtype.name}")
        if t.shape[0] != n:
            raise ValueError(f"{name} must have {n} labels to match the batch, got shape {t.shape}")
        if n:
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= num_classes:
                raise ValueError(f"{name} labels must lie in [0, {num_classes}), "
                                 f"got values in [{lo}, {hi}]")
        return t.astype(np.int64, copy=False)
    if t.ndim == 2:
        if kind not in "iufb":
            raise TypeError(f"{name} one-hot rows must be int, bool or float, got {t.dtype.name}")
        if t.shape != (n, num_classes):
            raise ValueError(f"{name} one-hot labels must have shape ({n}, {num_classes}), "
                             f"got {t.shape}")
        if n:
            # the nonzero entries in row-major order: exactly one per row (the k-th in row k),
            # each a 1 (a NaN is nonzero and not 1)
            nz = np.flatnonzero(t)
            if not (nz.size == n and (t.flat[nz] == 1).all()
                    and (nz // num_classes == np.arange(n)).all()):
                raise ValueError(f"{name} 2-D labels must be exact one-hot rows (one 1, the rest 0)")
            return nz % num_classes
        return np.zeros(0, np.int64)
    raise ValueError(f"{name} must be 1-D class indices or 2-D one-hot rows, got shape {t.shape}")


def _first_bad_row(ok):
    """Index of the first row of the bool (n, ...) array ``ok`` with a False, or -1."""
    bad = np.flatnonzero(~ok.reshape(ok.shape[0], -1).all(axis=1))
    return int(bad[0]) if bad.size else -1


def target_values(t, n, m, dtype, unit=False, name="t"):
    """Value targets as a C-contiguous (n, m) array of ``dtype`` (a copy only when needed).

    Accepted: a real (int, bool or float) array of shape (n, m), or (n,) when m == 1, converted
    to ``dtype``; every value finite, and in [0, 1] when ``unit`` (ValueError naming the row).
    """
    if not isinstance(t, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of target values, got "
                        f"{type(t).__name__}")
    if t.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (int, bool or float), got dtype "
                        f"{t.dtype.name}")
    if t.ndim == 1 and m == 1 and t.shape[0] == n:
        t = t.reshape(n, 1)
    elif t.shape != (n, m):
        alt = f" or ({n},)" if m == 1 else ""
        raise ValueError(f"{name} must have shape ({n}, {m}){alt} to match the output, got "
                         f"{t.shape}")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(t, dtype=dtype)
    r = _first_bad_row(np.isfinite(out)) if out.dtype.kind == "f" else -1
    if r >= 0:
        raise ValueError(f"{name} must be finite, got {t[r].tolist()} in row {r}"
                         + (" (too large for " + np.dtype(dtype).name + ")"
                            if np.isfinite(t[r]).all() else ""))
    if unit:
        r = _first_bad_row((out >= 0) & (out <= 1))
        if r >= 0:
            raise ValueError(f"{name} must lie in [0, 1] (binary cross-entropy targets), got "
                             f"{t[r].tolist()} in row {r}")
    return out


def sample_weights(w, n, name="sample_weight"):
    """None, or per-row weights as C-contiguous float64 (n,): a real array of shape (n,), every
    weight finite and >= 0 (ValueError naming the row), not all 0, with a finite sum."""
    if w is None:
        return None
    if not isinstance(w, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of per-row weights or None, got "
                        f"{type(w).__name__}")
    if w.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {w.dtype.name}")
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one weight per row), got {w.shape}")
    out = np.ascontiguousarray(w, dtype=np.float64)
    r = _first_bad_row(np.isfinite(out) & (out >= 0)) if n else -1
    if r >= 0:
        raise ValueError(f"{name} must be finite and >= 0, got {w[r]} in row {r}")
    if n and not out.any():
        raise ValueError(f"{name} must not all be zero")
    with np.errstate(over="ignore"):
        total = float(np.sum(out))
    if not math.isfinite(total):
        raise ValueError(f"{name} must have a finite sum")
    return out


def real(name, v, lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False):
    """A real number (not bool) within the given interval, returned as float."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if math.isnan(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name} must lie in {lb}{lo}, {hi}{rb}, got {v}")
    return v


def _int(name, v):
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}") from None


def positive_int(name, v):
    """An integer >= 1."""
    v = _int(name, v)
    if v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v}")
    return v


def nonneg_int(name, v):
    """An integer >= 0."""
    v = _int(name, v)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def seed_value(seed, name="seed"):
    """A seed for the counter-based generator: int in [0, 2**64); None draws one from OS entropy."""
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    seed = _int(name, seed)
    if not 0 <= seed < _U64:
        raise ValueError(f"{name} must lie in [0, 2**64), got {seed}")
    return seed


def make_rng(rng, name="rng"):
    """A ``numpy.random.Generator`` from None (fresh entropy), an int seed, or a Generator."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    seed = _int(name, rng)
    if seed < 0:
        raise ValueError(f"{name} seed must be >= 0, got {seed}")
    return np.random.default_rng(seed)


def derive_seed(seed, *keys):
    """A deterministic 64-bit seed from ``seed`` and integer ``keys`` (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0])
