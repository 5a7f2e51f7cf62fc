"""Weight initialisers. W is shaped (fan_in, fan_out).

Every initialiser is called as ``fn(shape, rng=None, dtype=np.float32, **params)`` and returns a new
array. ``rng``: a ``numpy.random.Generator``, an int seed, or None (fresh OS entropy). Samples are
drawn in float64 and rounded to ``dtype``, so one seed gives the same weights in float32 and float64
(up to rounding). Fans: ``shape = (fan_in, fan_out)``; a 1-D shape (n,) has fan_in = fan_out = n;
a convolution's W (F, C, *kernel) (3 axes or more) has fan_in = C*prod(kernel),
fan_out = F*prod(kernel) (as PyTorch).

======================== =========================================================
zeros / ones / constant  all equal to value
normal(std=0.01)         N(0, std^2)
uniform(a=0.05)          U(-a, a)
lecun_normal / _uniform  std = sqrt(1/fan_in)            / bound = sqrt(3/fan_in)
xavier_normal / _uniform std = gain*sqrt(2/(fan_in+fan_out)) / bound = gain*sqrt(6/(fan_in+fan_out))
he_normal / he_uniform   std = sqrt(2/fan)               / bound = sqrt(6/fan)   (fan = fan_in)
orthogonal(gain=1)       gain * Q, Q from the QR of a normal matrix with sign(diag R) fixed:
                         W^T W = gain^2 I if fan_in >= fan_out, else W W^T = gain^2 I
======================== =========================================================

``glorot_*`` = ``xavier_*``, ``kaiming_*`` = ``he_*``. ``gain(name, param)`` gives the recommended
gains (``GAINS``). ``get(spec)`` turns a name, a float (normal std) or a callable into an initialiser.
"""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from ._validation import make_rng, nonneg_int, real, resolve_dtype

__all__ = ["zeros", "ones", "constant", "normal", "uniform", "lecun_normal", "lecun_uniform",
           "xavier_normal", "xavier_uniform", "glorot_normal", "glorot_uniform", "he_normal",
           "he_uniform", "kaiming_normal", "kaiming_uniform", "orthogonal", "GAINS", "gain",
           "fans", "get", "NAMES"]


def _shape(shape):
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(nonneg_int("shape", s) for s in shape)
    except TypeError as exc:
        if "shape" in str(exc):
            raise
        raise TypeError(f"shape must be an int or a tuple of ints, got {shape!r}") from None
    if not shape:
        raise ValueError("shape must have at least one axis")
    return shape


def fans(shape):
    """(fan_in, fan_out) of a weight shape (see the module docstring)."""
    shape = _shape(shape)
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape
    k = math.prod(shape[2:])
    return shape[1] * k, shape[0] * k


def _positive_fan(fan, what, shape):
    if fan < 1:
        raise ValueError(f"{what} of shape {shape} is 0; this initialiser needs a non-empty shape")
    return fan


def _normal(shape, std, rng, dtype):
    dt = resolve_dtype(dtype)
    return (make_rng(rng).standard_normal(shape) * std).astype(dt)


def _uniform(shape, bound, rng, dtype):
    dt = resolve_dtype(dtype)
    return make_rng(rng).uniform(-bound, bound, shape).astype(dt)


# ---------------------------------------------------------------------------- constants
def constant(shape, value=0.0, rng=None, dtype=np.float32):
    """All elements equal ``value``."""
    value = real("value", value)
    return np.full(_shape(shape), value, dtype=resolve_dtype(dtype))


def zeros(shape, rng=None, dtype=np.float32):
    """All zeros."""
    return constant(shape, 0.0, rng, dtype)


def ones(shape, rng=None, dtype=np.float32):
    """All ones."""
    return constant(shape, 1.0, rng, dtype)


# ---------------------------------------------------------------------------- plain random
def normal(shape, std=0.01, rng=None, dtype=np.float32):
    """N(0, std^2) (the textbook's ``weight_init_std * randn``)."""
    std = real("std", std, 0.0)
    return _normal(_shape(shape), std, rng, dtype)


def uniform(shape, a=0.05, rng=None, dtype=np.float32):
    """U(-a, a)."""
    a = real("a", a, 0.0)
    return _uniform(_shape(shape), a, rng, dtype)


# ---------------------------------------------------------------------------- scaled by fans
def lecun_normal(shape, rng=None, dtype=np.float32):
    """N(0, 1/fan_in)."""
    shape = _shape(shape)
    fi = _positive_fan(fans(shape)[0], "fan_in", shape)
    return _normal(shape, math.sqrt(1.0 / fi), rng, dtype)


def lecun_uniform(shape, rng=None, dtype=np.float32):
    """U(-b, b), b = sqrt(3/fan_in)."""
    shape = _shape(shape)
    fi = _positive_fan(fans(shape)[0], "fan_in", shape)
    return _uniform(shape, math.sqrt(3.0 / fi), rng, dtype)


def xavier_normal(shape, gain=1.0, rng=None, dtype=np.float32):
    """N(0, std^2), std = gain * sqrt(2/(fan_in+fan_out)) (Glorot & Bengio 2010)."""
    shape = _shape(shape)
    fi, fo = fans(shape)
    _positive_fan(fi + fo, "fan_in + fan_out", shape)
    return _normal(shape, real("gain", gain, 0.0) * math.sqrt(2.0 / (fi + fo)), rng, dtype)


def xavier_uniform(shape, gain=1.0, rng=None, dtype=np.float32):
    """U(-b, b), b = gain * sqrt(6/(fan_in+fan_out))."""
    shape = _shape(shape)
    fi, fo = fans(shape)
    _positive_fan(fi + fo, "fan_in + fan_out", shape)
    return _uniform(shape, real("gain", gain, 0.0) * math.sqrt(6.0 / (fi + fo)), rng, dtype)


def _he_fan(shape, mode):
    fi, fo = fans(shape)
    if mode == "fan_in":
        return _positive_fan(fi, "fan_in", shape)
    if mode == "fan_out":
        return _positive_fan(fo, "fan_out", shape)
    raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")


def he_normal(shape, rng=None, dtype=np.float32, mode="fan_in"):
    """N(0, 2/fan) with fan = fan_in (default) or fan_out (He et al. 2015, for ReLU)."""
    shape = _shape(shape)
    return _normal(shape, math.sqrt(2.0 / _he_fan(shape, mode)), rng, dtype)


def he_uniform(shape, rng=None, dtype=np.float32, mode="fan_in"):
    """U(-b, b), b = sqrt(6/fan), fan = fan_in (default) or fan_out."""
    shape = _shape(shape)
    return _uniform(shape, math.sqrt(6.0 / _he_fan(shape, mode)), rng, dtype)


glorot_normal = xavier_normal
glorot_uniform = xavier_uniform
kaiming_normal = he_normal
kaiming_uniform = he_uniform


def orthogonal(shape, gain=1.0, rng=None, dtype=np.float32):
    """gain * Q with Q from the QR decomposition of a (max, min) standard-normal matrix, columns
    multiplied by sign(diag R) (Saxe et al. 2014). For shape (r, c): W^T W = gain^2 I when r >= c,
    W W^T = gain^2 I when r < c. A convolution's W (F, C, *kernel): Q of shape (fan_in, F),
    transposed: the F filters (rows of W.reshape(F, -1)) orthonormal (times gain) when
    F <= fan_in."""
    shape = _shape(shape)
    gain = real("gain", gain, 0.0)
    dt = resolve_dtype(dtype)
    if len(shape) < 2:
        raise ValueError(f"orthogonal needs a shape with at least 2 axes, got {shape}")
    r, c = (shape[0], shape[1]) if len(shape) == 2 else (math.prod(shape[1:]), shape[0])
    if r == 0 or c == 0:
        return np.zeros(shape, dt)
    a = make_rng(rng).standard_normal((max(r, c), min(r, c)))
    q, rr = np.linalg.qr(a)
    d = np.sign(np.diag(rr))
    d[d == 0] = 1.0
    q *= d
    if r < c:
        q = q.T
    if len(shape) > 2:                  # (fan_in, F) -> (F, C, *kernel)
        q = q.T
    return (gain * q).reshape(shape).astype(dt)


# ---------------------------------------------------------------------------- gains
GAINS = {
    "linear": 1.0,
    "identity": 1.0,
    "sigmoid": 1.0,
    "tanh": 5.0 / 3.0,
    "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1.0 + 0.01 ** 2)),
}


def gain(name, param=None):
    """Recommended gain: linear/identity/sigmoid 1, tanh 5/3, relu sqrt(2),
    leaky_relu sqrt(2/(1+a^2)) with a = param (default 0.01)."""
    key = str(name).lower().replace("-", "_")
    if key == "leakyrelu":
        key = "leaky_relu"
    if key not in GAINS:
        raise ValueError(f"unknown gain name {name!r}; choose one of {sorted(GAINS)}")
    if key == "leaky_relu":
        a = 0.01 if param is None else real("param", param)
        return math.sqrt(2.0 / (1.0 + a * a))
    return GAINS[key]


# ---------------------------------------------------------------------------- lookup
_TABLE = {
    "zeros": zeros, "zero": zeros, "ones": ones,
    "normal": normal, "uniform": uniform,
    "lecun": lecun_normal, "lecun_normal": lecun_normal, "lecun_uniform": lecun_uniform,
    "xavier": xavier_normal, "xavier_normal": xavier_normal, "xavier_uniform": xavier_uniform,
    "glorot": xavier_normal, "glorot_normal": xavier_normal, "glorot_uniform": xavier_uniform,
    "he": he_normal, "he_normal": he_normal, "he_uniform": he_uniform,
    "kaiming": he_normal, "kaiming_normal": he_normal, "kaiming_uniform": he_uniform,
    "orthogonal": orthogonal,
}
NAMES = tuple(sorted(_TABLE))


def get(spec):
    """An initialiser ``fn(shape, rng=None, dtype=np.float32)`` from a name in ``NAMES``
    (case-insensitive; "he" = he_normal, "xavier"/"glorot" = xavier_normal, "lecun" = lecun_normal,
    "normal" = normal(std=0.01), "uniform" = uniform(a=0.05)), a float (normal with that std, the
    textbook's ``weight_init_std``) or a callable (returned unchanged)."""
    if callable(spec):
        return spec
    if isinstance(spec, str):
        key = spec.lower().replace("-", "_")
        if key not in _TABLE:
            raise ValueError(f"unknown initialiser {spec!r}; choose one of {', '.join(NAMES)}, "
                             f"a float (normal std) or a callable")
        return _TABLE[key]
    if isinstance(spec, numbers.Real) and not isinstance(spec, (bool, np.bool_)):
        std = real("weight_init std", spec, 0.0)
        return functools.partial(normal, std=std)
    raise TypeError(f"weight_init must be a name ({', '.join(NAMES)}), a float std or a callable, "
                    f"got {type(spec).__name__}")
