"""The kernel interface: every numeric primitive that layers and optimisers call, in one place.

Layers, nets and optimisers do no arithmetic of their own for these primitives; they call the
functions below, which validate their arguments and dispatch to the active backend
(``dlfast._backends.numpy_kernels`` — the oracle — or the compiled ``cython_kernels``).

Conventions shared by every primitive
-------------------------------------
* Float arrays of one call share one dtype, float32 or float64 (no silent casting).
* Outputs are passed in preallocated (named ``out``, ``dx``, ``dW`` ...): exact shape and dtype,
  C-contiguous, writeable, and not overlapping any input. Outputs that may be ``None`` are
  skipped (no work is done for them). Inputs may be non-contiguous or read-only.
* In-place arrays (optimiser parameters and state, running statistics) are both read and written.
* Reductions (sums over the batch, norms, losses) accumulate in float64 and in a fixed order, so
  results do not depend on the thread count.
* Random numbers are counter-based: element i of a call with (seed, counter) has the index
  ``j = counter + i + 1`` (mod 2**64) and uses, identically on both backends and any thread count,
  ``u_i = (mix64(mix64(seed) + j * G) >> 11) * 2**-53`` (uniform, bernoulli; 53 bits) or, for
  dropout masks, the 32 bits ``v_i = hash32(j mod 2**32, mix64(mix64(seed) + (j >> 32) * G))``
  (G = 0x9E3779B97F4A7C15, ``mix64`` = SplitMix64's finaliser, ``hash32`` =
  ``numpy_kernels._hash32``: vectorises in 32-bit lanes). A caller advances its counter by the
  number of elements drawn.
* Stateful primitives: ``bind_update`` binds an optimiser's K tensors once (validated then)
  and returns an object whose ``sumsq()`` and ``update(lr, ...)`` are the K single-tensor kernels
  fused into two backend calls, with the same results (the arrays are referenced, not copied);
  ``make_op`` and ``Program`` (the end of this module) bind a training step's layer kernels.

Activation codes (``activation=``; derivatives written from the output y = act(z))
------------------------------------------------------------------------------------
=========== ================================= ==================================
identity    y = z                             1
relu        y = max(z, 0)                     [y > 0]
leaky_relu  y = z if z > 0 else alpha*z       1 if y > 0 else alpha   (alpha >= 0)
elu         y = z if z > 0 else alpha*(e^z-1) 1 if y > 0 else y+alpha (alpha > 0)
sigmoid     y = 1/(1+e^-z)                    y(1-y)
tanh        y = tanh z                        1-y^2
=========== ================================= ==================================
"""
from __future__ import annotations

import math
import operator

import numpy as np

from . import _config

__all__ = [
    "KERNELS", "ACTIVATIONS",
    "dense_forward", "dense_backward", "activation_forward", "activation_backward",
    "prelu_forward", "prelu_backward", "maxout_forward", "maxout_backward",
    "softmax_forward", "softmax_backward", "softmax_xent_forward", "softmax_xent_backward",
    "batchnorm_stats", "batchnorm_forward_train", "batchnorm_forward_eval", "batchnorm_backward",
    "dropout_mask", "dropout_apply", "random_uniform", "bernoulli_sample",
    "sumsq", "all_finite", "penalty", "penalty_grad", "max_norm",
    "sgd_update", "momentum_update", "nesterov_update", "adagrad_update", "rmsprop_update",
    "adam_update", "bind_update", "rbm_cd_update",
    "conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward",
    "mse_forward", "mse_backward", "mae_forward", "mae_backward", "huber_forward",
    "huber_backward", "sigmoid_bce_forward", "sigmoid_bce_backward",
]

ACTIVATIONS = ("identity", "relu", "leaky_relu", "elu", "sigmoid", "tanh")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_F32, _F64 = FLOAT_DTYPES
_ndarray = np.ndarray
_U64 = 1 << 64

# Every primitive a backend must provide (checked when a backend loads).
KERNELS = tuple(n for n in __all__ if n not in ("KERNELS", "ACTIVATIONS"))


# ============================================================================ validation helpers
def _dtype_name(a):
    return a.dtype.name if isinstance(a, np.ndarray) else type(a).__name__


def _float_in(name, a, ndim=None, dtype=None):
    """A float input: float32/float64 ndarray, given ndim, matching dtype; returned C-contiguous."""
    if type(a) is _ndarray:                        # the common case, in a few attribute reads
        d = a.dtype
        if ((d is dtype) if dtype is not None else (d is _F32 or d is _F64)) and \
                (ndim is None or a.ndim == ndim) and a.flags.c_contiguous:
            return a
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype.name}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype.name} but the other arrays are {dtype.name} "
                        f"(mixed dtypes; cast explicitly)")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a


def _shape_is(name, a, shape):
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")


def _out(name, a, shape, dtype, optional=False):
    """An output: exact shape and dtype, C-contiguous, writeable."""
    if type(a) is _ndarray and a.dtype is dtype and a.shape == shape:
        f = a.flags
        if f.c_contiguous and f.writeable:
            return a
    if a is None:
        if optional:
            return None
        raise TypeError(f"{name} is required (an output array of shape {tuple(shape)})")
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype.name}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (it is written in place)")
    if not a.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return a


def _disjoint(outs, ins):
    """No output overlaps another output or any input. Two distinct arrays that both own their
    memory (``base is None``) cannot overlap; other pairs go to ``np.may_share_memory``."""
    every = outs + ins
    if len(outs) > 1:       # many pairs: first, in one pass, the common case where every array
        seen = set()        # owns its memory and no output is another argument
        for _, a in every:
            if a is not None:
                if a.base is not None or id(a) in seen:
                    break
                if len(seen) < len(outs):
                    seen.add(id(a))
        else:
            return
    for i, (on, oa) in enumerate(outs):
        if oa is None:
            continue
        own = oa.base is None
        for j in range(i + 1, len(every)):
            n, a = every[j]
            if a is not None and (a is oa or not (own and a.base is None) and _may_share(oa, a)):
                raise ValueError(f"output {on} overlaps {n}; outputs must not alias other arguments")


_may_share = np.may_share_memory


def _activation(activation, alpha):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    alpha = float(alpha)
    if activation == "leaky_relu" and not alpha >= 0.0:
        raise ValueError(f"alpha must be >= 0 for leaky_relu, got {alpha}")
    if activation == "elu" and not alpha > 0.0:
        raise ValueError(f"alpha must be > 0 for elu, got {alpha}")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha}")
    return alpha


def _labels(labels, n, c):
    """Class indices: integer array of shape (n,), each in [0, c); returned as C-contiguous int64."""
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy.ndarray of class indices, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array of class indices, got dtype {labels.dtype.name}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the batch, got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must lie in [0, {c}), got values in [{labels.min()}, {labels.max()}]")
    return np.ascontiguousarray(labels, dtype=np.int64)


def _real(name, v, lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False):
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}") from None
    if math.isnan(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name} must lie in {lb}{lo}, {hi}{rb}, got {v}")
    return v


def _u64(name, v):
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}") from None
    if not 0 <= v < _U64:
        raise ValueError(f"{name} must lie in [0, 2**64), got {v}")
    return v


def _impl():
    return _config.active()


# ============================================================================ dense layer
def dense_forward(x, W, b, out, activation="identity", alpha=0.0):
    """``out = act(x @ W + b)``; x (N, I), W (I, O), b (O,) or None, out (N, O)."""
    x = _float_in("x", x, 2)
    W = _float_in("W", W, 2, x.dtype)
    n, i = x.shape
    if W.shape[0] != i:
        raise ValueError(f"W must have shape ({i}, out_features) to match x {x.shape}, got {W.shape}")
    o = W.shape[1]
    if b is not None:
        b = _float_in("b", b, 1, x.dtype)
        _shape_is("b", b, (o,))
    out = _out("out", out, (n, o), x.dtype)
    alpha = _activation(activation, alpha)
    _disjoint([("out", out)], [("x", x), ("W", W), ("b", b)])
    _impl().dense_forward(x, W, b, out, activation, alpha)
    return out


def dense_backward(dout, x, W, out, dz, dx, dW, db, activation="identity", alpha=0.0):
    """From y = act(x @ W + b) (``out``) and dL/dy (``dout``):

    ``dz = dout * act'(y)``, ``dW = x.T @ dz``, ``db = sum_n dz``, ``dx = dz @ W.T``.
    dz (N, O) is a workspace (its content afterwards is unspecified: the compiled backend skips it
    for the identity activation); dx, dW, db may be None to skip them.
    """
    x = _float_in("x", x, 2)
    dt = x.dtype
    W = _float_in("W", W, 2, dt)
    n, i = x.shape
    if W.shape[0] != i:
        raise ValueError(f"W must have shape ({i}, out_features) to match x {x.shape}, got {W.shape}")
    o = W.shape[1]
    dout = _float_in("dout", dout, 2, dt)
    _shape_is("dout", dout, (n, o))
    out = _float_in("out", out, 2, dt)
    _shape_is("out", out, (n, o))
    dz = _out("dz", dz, (n, o), dt)
    dx = _out("dx", dx, (n, i), dt, optional=True)
    dW = _out("dW", dW, (i, o), dt, optional=True)
    db = _out("db", db, (o,), dt, optional=True)
    alpha = _activation(activation, alpha)
    _disjoint([("dz", dz), ("dx", dx), ("dW", dW), ("db", db)],
              [("dout", dout), ("x", x), ("W", W), ("out", out)])
    _impl().dense_backward(dout, x, W, out, dz, dx, dW, db, activation, alpha)


# ============================================================================ activations
def activation_forward(x, out, activation, alpha=0.0):
    """``out = act(x)`` elementwise; any shape. ``out`` may be ``x`` itself (in place)."""
    x = _float_in("x", x)
    alpha = _activation(activation, alpha)
    if out is not x:
        out = _out("out", out, x.shape, x.dtype)
        _disjoint([("out", out)], [("x", x)])
    elif not (out.flags.writeable and out.flags.c_contiguous):
        raise ValueError("out (in place) must be C-contiguous and writeable")
    _impl().activation_forward(x, out, activation, alpha)
    return out


def activation_backward(dout, out, dx, activation, alpha=0.0):
    """``dx = dout * act'(y)`` from the forward output ``out`` = y (see the table above)."""
    out = _float_in("out", out)
    dout = _float_in("dout", dout, None, out.dtype)
    _shape_is("dout", dout, out.shape)
    dx = _out("dx", dx, out.shape, out.dtype)
    alpha = _activation(activation, alpha)
    _disjoint([("dx", dx)], [("dout", dout), ("out", out)])
    _impl().activation_backward(dout, out, dx, activation, alpha)
    return dx


def _slope_shape_ok(slope, x):
    n, f = x.shape
    return slope.shape in ((1,), (f,), (n, f))


def prelu_forward(x, slope, out):
    """``out = x if x > 0 else slope * x``; x (N, F); slope (1,), (F,) or (N, F) (broadcast)."""
    x = _float_in("x", x, 2)
    slope = _float_in("slope", slope, None, x.dtype)
    if not _slope_shape_ok(slope, x):
        raise ValueError(f"slope must have shape (1,), ({x.shape[1]},) or {x.shape}, got {slope.shape}")
    out = _out("out", out, x.shape, x.dtype)
    _disjoint([("out", out)], [("x", x), ("slope", slope)])
    _impl().prelu_forward(x, slope, out)
    return out


def prelu_backward(dout, x, slope, dx, dslope):
    """``dx = dout if x > 0 else slope * dout``; ``dslope = sum (dout * x)[x <= 0]`` reduced to
    the shape of ``slope`` (over all elements for (1,), over the batch for (F,), none for (N, F))."""
    x = _float_in("x", x, 2)
    dout = _float_in("dout", dout, 2, x.dtype)
    _shape_is("dout", dout, x.shape)
    slope = _float_in("slope", slope, None, x.dtype)
    if not _slope_shape_ok(slope, x):
        raise ValueError(f"slope must have shape (1,), ({x.shape[1]},) or {x.shape}, got {slope.shape}")
    dx = _out("dx", dx, x.shape, x.dtype, optional=True)
    dslope = _out("dslope", dslope, slope.shape, x.dtype, optional=True)
    _disjoint([("dx", dx), ("dslope", dslope)], [("dout", dout), ("x", x), ("slope", slope)])
    _impl().prelu_backward(dout, x, slope, dx, dslope)


def maxout_forward(z, out, argmax):
    """z (N, O*k) read as (N, O, k): ``out[n, o] = max_j z[n, o, j]``, ``argmax`` (N, O) int64 =
    the first j attaining it."""
    z = _float_in("z", z, 2)
    if not isinstance(out, np.ndarray) or out.ndim != 2:
        raise ValueError("out must be a 2-D array (N, O)")
    n, o = out.shape
    if o == 0 or z.shape[0] != n or z.shape[1] % o or z.shape[1] == 0:
        raise ValueError(f"z must have shape ({n}, {o}*pieces) to match out {out.shape}, got {z.shape}")
    out = _out("out", out, (n, o), z.dtype)
    argmax = _out("argmax", argmax, (n, o), np.dtype(np.int64))
    _disjoint([("out", out), ("argmax", argmax)], [("z", z)])
    _impl().maxout_forward(z, out, argmax)
    return out


def maxout_backward(dout, argmax, dz):
    """``dz[n, o, j] = dout[n, o] if j == argmax[n, o] else 0``; dz (N, O*k)."""
    dout = _float_in("dout", dout, 2)
    n, o = dout.shape
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int64 or argmax.shape != (n, o):
        raise ValueError(f"argmax must be an int64 array of shape {(n, o)}")
    argmax = np.ascontiguousarray(argmax)
    if not isinstance(dz, np.ndarray) or dz.ndim != 2 or o == 0 or dz.shape[0] != n or dz.shape[1] % o \
            or dz.shape[1] == 0:
        raise ValueError(f"dz must have shape ({n}, {o}*pieces)")
    k = dz.shape[1] // o
    if n * o and (argmax.min() < 0 or argmax.max() >= k):
        raise ValueError(f"argmax values must lie in [0, {k})")
    dz = _out("dz", dz, dz.shape, dout.dtype)
    _disjoint([("dz", dz)], [("dout", dout), ("argmax", argmax)])
    _impl().maxout_backward(dout, argmax, dz)


# ============================================================================ softmax and loss
def softmax_forward(x, out):
    """Row-wise ``out = exp(x - max x) / sum exp(x - max x)``; x (N, C)."""
    x = _float_in("x", x, 2)
    if x.shape[1] == 0:
        raise ValueError("x must have at least one column (class)")
    out = _out("out", out, x.shape, x.dtype)
    _disjoint([("out", out)], [("x", x)])
    _impl().softmax_forward(x, out)
    return out


def softmax_backward(dout, y, dx):
    """``dx = y * (dout - sum_c dout * y)`` row-wise, with y the softmax output."""
    y = _float_in("y", y, 2)
    dout = _float_in("dout", dout, 2, y.dtype)
    _shape_is("dout", dout, y.shape)
    dx = _out("dx", dx, y.shape, y.dtype)
    _disjoint([("dx", dx)], [("dout", dout), ("y", y)])
    _impl().softmax_backward(dout, y, dx)
    return dx


def softmax_xent_forward(logits, labels, probs, w=None):
    """``probs = softmax(logits)``; returns ``L = sum_n w_n l_n / sum_n w_n`` with
    ``l_n = logsumexp(logits_n) - logits[n, labels_n]`` (w None: ``mean_n l_n``) as a Python
    float (float64 accumulation in row order; stable for any finite logits). N >= 1; w: sample
    weights (``_sample_weights``)."""
    logits = _float_in("logits", logits, 2)
    n, c = logits.shape
    if n == 0 or c == 0:
        raise ValueError(f"logits must be non-empty (N >= 1, C >= 1), got shape {logits.shape}")
    labels = _labels(labels, n, c)
    probs = _out("probs", probs, (n, c), logits.dtype)
    w = _sample_weights(w, n)
    _disjoint([("probs", probs)], [("logits", logits), ("labels", labels), ("w", w)])
    return _impl().softmax_xent_forward(logits, labels, probs, w)


def softmax_xent_backward(probs, labels, dlogits, scale=1.0, w=None):
    """``dlogits = k_n * (probs - onehot(labels))`` with ``k_n = scale * w_n / sum_m w_m``
    (w None: ``k = scale / N``), k_n rounded to the dtype first."""
    probs = _float_in("probs", probs, 2)
    n, c = probs.shape
    if n == 0:
        raise ValueError("probs must have at least one row")
    labels = _labels(labels, n, c)
    dlogits = _out("dlogits", dlogits, (n, c), probs.dtype)
    scale = _real("scale", scale)
    w = _sample_weights(w, n)
    _disjoint([("dlogits", dlogits)], [("probs", probs), ("labels", labels), ("w", w)])
    _impl().softmax_xent_backward(probs, labels, dlogits, scale, w)


# ============================================================================ value losses
# y, t (N, M), N, M >= 1, one float dtype; w (N,) float64 sample weights or None. Per element,
# in float64, d = y - t, and per row ``l_n = sum_j e(d_nj) / M`` (sum in j order):
#
#   loss         e(d)                                         g(d) = de/dd
#   mse          d^2            (half=True: l_n = sum_j d^2 / 2)  2d  (half: d, and no / M)
#   mae          |d|                                          sign(d) (0 at 0)
#   huber        d^2/2 if |d| <= delta else delta(|d| - delta/2)   clip(d, -delta, delta)
#   sigmoid_bce  on logits z = y: max(z, 0) - z t + log1p(exp(-|z|))   sigmoid(z) - t
#
# L = sum_n w_n l_n / D (sums in row order) with D = sum_n w_n (w None: w_n = 1, D = N);
# reduction="sum": D = 1. Backward: ``dy_nj = k_n * g(d_nj) / M`` (half: without / M), with
# ``k_n = scale * w_n / D``, computed in float64 and rounded to the dtype (sigmoid_bce:
# ``sigmoid(z) - t = (1 - t) - e/(1 + e)`` for z >= 0, else ``e/(1 + e) - t``, e = exp(-|z|)). ``rows`` (optional
# float64 (N,) output) receives the l_n. t must be finite, and lie in [0, 1] for sigmoid_bce
# (ValueError naming the row; t and w are checked before anything is written).
REDUCTIONS = ("mean", "sum")


def _sample_weights(w, n):
    """None, or sample weights: float64 (N,), finite, >= 0, not all 0 (their sum finite);
    returned C-contiguous. ValueError names the first bad row."""
    if w is None:
        return None
    if not isinstance(w, np.ndarray):
        raise TypeError(f"w must be a numpy.ndarray of sample weights or None, got "
                        f"{type(w).__name__}")
    if w.dtype != np.float64:
        raise TypeError(f"w must be float64 sample weights, got {w.dtype.name}")
    if w.shape != (n,):
        raise ValueError(f"w must have shape ({n},) (one weight per row), got {w.shape}")
    w = np.ascontiguousarray(w)
    bad = np.flatnonzero(~(w >= 0) | ~np.isfinite(w))
    if bad.size:
        r = int(bad[0])
        raise ValueError(f"w (sample weights) must be finite and >= 0, got {w[r]} in row {r}")
    if not w.any():
        raise ValueError("w (sample weights) must not all be zero")
    with np.errstate(over="ignore"):
        total = float(np.sum(w))
    if not math.isfinite(total):
        raise ValueError("w (sample weights) must have a finite sum")
    return w


def _value_args(y, t, w, rows, name="y"):
    """Validated (y, t, w, rows) of a value loss."""
    y = _float_in(name, y, 2)
    n, m = y.shape
    if n == 0 or m == 0:
        raise ValueError(f"{name} must be non-empty (N >= 1, M >= 1), got shape {y.shape}")
    t = _float_in("t", t, None, y.dtype)
    if t.shape != y.shape:
        raise ValueError(f"t must have the shape of {name} {y.shape}, got {t.shape}")
    bad = np.flatnonzero(~np.isfinite(t).all(axis=1))
    if bad.size:
        raise ValueError(f"t must be finite, got {t[bad[0]].tolist()} in row {bad[0]}")
    w = _sample_weights(w, n)
    rows = _out("rows", rows, (n,), np.dtype(np.float64), optional=True)
    _disjoint([("rows", rows)], [(name, y), ("t", t), ("w", w)])
    return y, t, w, rows


def _reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _value_back(y, t, w, dy, scale, name="y"):
    y, t, w, _ = _value_args(y, t, w, None, name)
    dy = _out("dy", dy, y.shape, y.dtype)
    _disjoint([("dy", dy)], [(name, y), ("t", t), ("w", w)])
    return y, t, w, dy, _real("scale", scale)


def _delta(delta):
    return _real("delta", delta, 0.0, math.inf, lo_open=True, hi_open=True)


def mse_forward(y, t, w=None, rows=None, half=False, reduction="mean"):
    """Mean squared error: ``l_n = sum_j (y - t)^2 / M`` (``half``: ``sum_j (y - t)^2 / 2``);
    returns L (see the table above)."""
    y, t, w, rows = _value_args(y, t, w, rows)
    return _impl().mse_forward(y, t, w, rows, bool(half), _reduction(reduction))


def mse_backward(y, t, w, dy, scale=1.0, half=False, reduction="mean"):
    """``dy = k_n * 2 (y - t) / M`` (``half``: ``k_n * (y - t)``)."""
    y, t, w, dy, scale = _value_back(y, t, w, dy, scale)
    _impl().mse_backward(y, t, w, dy, scale, bool(half), _reduction(reduction))


def mae_forward(y, t, w=None, rows=None, reduction="mean"):
    """Mean absolute error: ``l_n = sum_j |y - t| / M``; returns L."""
    y, t, w, rows = _value_args(y, t, w, rows)
    return _impl().mae_forward(y, t, w, rows, _reduction(reduction))


def mae_backward(y, t, w, dy, scale=1.0, reduction="mean"):
    """``dy = k_n * sign(y - t) / M`` (0 where y = t)."""
    y, t, w, dy, scale = _value_back(y, t, w, dy, scale)
    _impl().mae_backward(y, t, w, dy, scale, _reduction(reduction))


def huber_forward(y, t, w=None, rows=None, delta=1.0, reduction="mean"):
    """Huber loss: ``l_n = sum_j h(y - t) / M``, ``h(d) = d^2/2`` for ``|d| <= delta``, else
    ``delta (|d| - delta/2)``; delta > 0. Returns L."""
    y, t, w, rows = _value_args(y, t, w, rows)
    return _impl().huber_forward(y, t, w, rows, _delta(delta), _reduction(reduction))


def huber_backward(y, t, w, dy, scale=1.0, delta=1.0, reduction="mean"):
    """``dy = k_n * clip(y - t, -delta, delta) / M``."""
    y, t, w, dy, scale = _value_back(y, t, w, dy, scale)
    _impl().huber_backward(y, t, w, dy, scale, _delta(delta), _reduction(reduction))


def _unit_targets(t):
    bad = np.flatnonzero(~((t >= 0) & (t <= 1)).all(axis=1))
    if bad.size:
        r = int(bad[0])
        raise ValueError(f"t (sigmoid_bce targets) must lie in [0, 1], got {t[r].tolist()} in "
                         f"row {r}")


def sigmoid_bce_forward(z, t, w=None, rows=None, reduction="mean"):
    """Sigmoid binary cross-entropy on logits z (N, M) (M independent labels), stable form:
    ``l_n = sum_j (max(z, 0) - z t + log1p(exp(-|z|))) / M``, t in [0, 1]; returns L."""
    z, t, w, rows = _value_args(z, t, w, rows, "z")
    _unit_targets(t)
    return _impl().sigmoid_bce_forward(z, t, w, rows, _reduction(reduction))


def sigmoid_bce_backward(z, t, w, dz, scale=1.0, reduction="mean"):
    """``dz = k_n * (sigmoid(z) - t) / M``."""
    z, t, w, dz, scale = _value_back(z, t, w, dz, scale, "z")
    _unit_targets(t)
    _impl().sigmoid_bce_backward(z, t, w, dz, scale, _reduction(reduction))


# ============================================================================ batch normalisation
# x is (N, F), or (N, C, *S) (e.g. NCHW images): statistics per feature / channel j over the
# M = N * prod(S) values x[n, j, *s] (PyTorch's BatchNorm1d/2d). mean ... are (F,) or (C,).
def _bn_vec(name, a, f, dt, out=False, optional=False):
    if out:
        return _out(name, a, (f,), dt, optional=optional)
    a = _float_in(name, a, 1, dt)
    _shape_is(name, a, (f,))
    return a


def _bn_x(name, a, dt=None):
    """x (or dout) as (N, F) or (N, C, *S), C-contiguous; returns (a, N, F, M)."""
    a = _float_in(name, a, None, dt)
    if a.ndim < 2:
        raise ValueError(f"{name} must be (N, F) or (N, C, H, W) (ndim >= 2), got shape {a.shape}")
    return a, a.shape[0], a.shape[1], a.shape[0] * math.prod(a.shape[2:])


def batchnorm_stats(x, mean, var):
    """Per feature j of x (N, F) (per channel of x (N, C, *S)), over its M >= 1 values:
    ``mean = sum x / M``, ``var = sum (x - mean)^2 / M`` (biased; two-pass, float64
    accumulation: no E[x^2] - E[x]^2 cancellation)."""
    x, n, f, m = _bn_x("x", x)
    if m < 1:
        raise ValueError(f"x must have at least one value per feature, got shape {x.shape}")
    mean = _bn_vec("mean", mean, f, x.dtype, out=True)
    var = _bn_vec("var", var, f, x.dtype, out=True)
    _disjoint([("mean", mean), ("var", var)], [("x", x)])
    _impl().batchnorm_stats(x, mean, var)


def batchnorm_forward_train(x, gamma, beta, out, xhat, mean, invstd, running_mean=None,
                            running_var=None, momentum=0.1, eps=1e-5, unbiased=True):
    """Training-mode batch norm of x (N, F) (or (N, C, *S), per channel), M >= 2 values per
    feature (M = N, or N*prod(S))::

        mean, var = batchnorm_stats(x);  invstd = 1 / sqrt(var + eps)
        xhat = (x - mean) * invstd;      out = gamma * xhat + beta
        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var  = (1 - momentum) * running_var  + momentum * var * (M / (M - 1) if unbiased else 1)

    ``xhat``, ``mean``, ``invstd`` are kept for the backward pass; running arrays are updated in
    place (skipped when None).
    """
    x, n, f, m = _bn_x("x", x)
    if m < 2:
        if x.ndim == 2:
            raise ValueError(f"batch norm in training mode needs a batch of at least 2 rows, got "
                             f"{n} (the batch variance is undefined for one row)")
        raise ValueError(f"batch norm in training mode needs at least 2 values per channel "
                         f"(N*H*W >= 2), got x of shape {x.shape}")
    dt = x.dtype
    gamma = _bn_vec("gamma", gamma, f, dt)
    beta = _bn_vec("beta", beta, f, dt)
    out = _out("out", out, x.shape, dt)
    xhat = _out("xhat", xhat, x.shape, dt)
    mean = _bn_vec("mean", mean, f, dt, out=True)
    invstd = _bn_vec("invstd", invstd, f, dt, out=True)
    running_mean = _bn_vec("running_mean", running_mean, f, dt, out=True, optional=True)
    running_var = _bn_vec("running_var", running_var, f, dt, out=True, optional=True)
    momentum = _real("momentum", momentum, 0.0, 1.0)
    eps = _real("eps", eps, 0.0, math.inf, lo_open=True, hi_open=True)
    _disjoint([("out", out), ("xhat", xhat), ("mean", mean), ("invstd", invstd),
               ("running_mean", running_mean), ("running_var", running_var)],
              [("x", x), ("gamma", gamma), ("beta", beta)])
    _impl().batchnorm_forward_train(x, gamma, beta, out, xhat, mean, invstd, running_mean,
                                    running_var, momentum, eps, bool(unbiased))
    return out


def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, out, xhat, invstd):
    """Eval-mode batch norm of x (N, F) (or (N, C, *S), per channel):
    ``invstd = 1/sqrt(running_var + eps)``, ``xhat = (x - running_mean) * invstd``,
    ``out = gamma * xhat + beta``. Any N >= 0."""
    x, n, f, _ = _bn_x("x", x)
    dt = x.dtype
    gamma = _bn_vec("gamma", gamma, f, dt)
    beta = _bn_vec("beta", beta, f, dt)
    running_mean = _bn_vec("running_mean", running_mean, f, dt)
    running_var = _bn_vec("running_var", running_var, f, dt)
    if f and running_var.min() < 0:
        raise ValueError("running_var must be >= 0")
    eps = _real("eps", eps, 0.0, math.inf, lo_open=True, hi_open=True)
    out = _out("out", out, x.shape, dt)
    xhat = _out("xhat", xhat, x.shape, dt)
    invstd = _bn_vec("invstd", invstd, f, dt, out=True)
    _disjoint([("out", out), ("xhat", xhat), ("invstd", invstd)],
              [("x", x), ("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
               ("running_var", running_var)])
    _impl().batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, out, xhat, invstd)
    return out


def batchnorm_backward(dout, xhat, gamma, invstd, dx, dgamma, dbeta, batch_stats=True):
    """Sums over the M values of each feature (channel) j: ``dbeta = sum dout``,
    ``dgamma = sum dout * xhat``; ``dx = gamma * invstd / M * (M * dout - dbeta - xhat * dgamma)``
    when the forward used the batch statistics (``batch_stats=True``), else
    ``dx = gamma * invstd * dout``. dout, xhat, dx (N, F) or (N, C, *S); dx, dgamma, dbeta may
    be None."""
    dout, n, f, _ = _bn_x("dout", dout)
    dt = dout.dtype
    xhat = _float_in("xhat", xhat, None, dt)
    _shape_is("xhat", xhat, dout.shape)
    gamma = _bn_vec("gamma", gamma, f, dt)
    invstd = _bn_vec("invstd", invstd, f, dt)
    dx = _out("dx", dx, dout.shape, dt, optional=True)
    dgamma = _bn_vec("dgamma", dgamma, f, dt, out=True, optional=True)
    dbeta = _bn_vec("dbeta", dbeta, f, dt, out=True, optional=True)
    _disjoint([("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta)],
              [("dout", dout), ("xhat", xhat), ("gamma", gamma), ("invstd", invstd)])
    _impl().batchnorm_backward(dout, xhat, gamma, invstd, dx, dgamma, dbeta, bool(batch_stats))


# ============================================================================ dropout and random
def dropout_mask(mask, p, seed, counter):
    """``mask[i] = 1 if v_i >= ceil(p * 2**32) else 0`` (uint8, any shape; v_i the 32-bit
    dropout stream): keep with probability 1 - p (to 2**-32)."""
    mask = _out("mask", mask, getattr(mask, "shape", ()), np.dtype(np.uint8))
    p = _real("p", p, 0.0, 1.0, hi_open=True)
    _impl().dropout_mask(mask, p, _u64("seed", seed), _u64("counter", counter))
    return mask


def dropout_apply(x, mask, scale, out):
    """``out = x * mask * scale`` (``mask`` uint8 of x's shape, or None for ``out = x * scale``).
    Inverted dropout trains with scale = 1/(1-p); backward calls this with dout."""
    x = _float_in("x", x)
    if mask is not None:
        if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8:
            raise TypeError(f"mask must be a uint8 array, got {_dtype_name(mask)}")
        _shape_is("mask", mask, x.shape)
        if not mask.flags.c_contiguous:     # (np.ascontiguousarray would make a 0-d mask 1-d)
            mask = np.ascontiguousarray(mask)
    scale = _real("scale", scale)
    out = _out("out", out, x.shape, x.dtype)
    _disjoint([("out", out)], [("x", x), ("mask", mask)])
    _impl().dropout_apply(x, mask, scale, out)
    return out


def random_uniform(out, low, high, seed, counter):
    """``out[i] = low + (high - low) * u_i`` (computed in float64, rounded to out's dtype)."""
    out = _out("out", out, getattr(out, "shape", ()), getattr(out, "dtype", None))
    if out.dtype not in FLOAT_DTYPES:
        raise TypeError(f"out must be float32 or float64, got {out.dtype.name}")
    low = _real("low", low)
    high = _real("high", high, low)
    if not math.isfinite(high - low):
        raise ValueError(f"high - low must be finite, got low={low}, high={high}")
    _impl().random_uniform(out, low, high, _u64("seed", seed), _u64("counter", counter))
    return out


def bernoulli_sample(probs, out, seed, counter):
    """``out[i] = 1 if u_i < probs[i] else 0`` (out float, probs' shape and dtype)."""
    probs = _float_in("probs", probs)
    out = _out("out", out, probs.shape, probs.dtype)
    _disjoint([("out", out)], [("probs", probs)])
    _impl().bernoulli_sample(probs, out, _u64("seed", seed), _u64("counter", counter))
    return out


def rbm_cd_update(v0, h0, vk, hk, W, bv, bh, lr, wd=0.0):
    """Contrastive-divergence step of an RBM, in place, from N data rows v0 (N, I) with hidden
    probabilities h0 (N, J) and the chain's k-th reconstruction vk (N, I) with hk (N, J):

    ``W += lr * ((v0.T @ h0 - vk.T @ hk) / N - wd * W)``, ``bv += lr * sum_n (v0 - vk) / N``,
    ``bh += lr * sum_n (h0 - hk) / N`` (sums in float64, fixed order). Returns the summed squared
    reconstruction error ``sum (v0 - vk)^2`` as a Python float."""
    v0 = _float_in("v0", v0, 2)
    dt = v0.dtype
    n, i = v0.shape
    if n == 0:
        raise ValueError("v0 must have at least one row")
    h0 = _float_in("h0", h0, 2, dt)
    if h0.shape[0] != n:
        raise ValueError(f"h0 must have {n} rows to match v0 {v0.shape}, got {h0.shape}")
    j = h0.shape[1]
    vk = _float_in("vk", vk, 2, dt)
    _shape_is("vk", vk, (n, i))
    hk = _float_in("hk", hk, 2, dt)
    _shape_is("hk", hk, (n, j))
    W = _out("W", W, (i, j), dt)
    bv = _out("bv", bv, (i,), dt)
    bh = _out("bh", bh, (j,), dt)
    lr = _real("lr", lr, 0.0, math.inf, hi_open=True)
    wd = _real("wd", wd, 0.0, math.inf, hi_open=True)
    _disjoint([("W", W), ("bv", bv), ("bh", bh)],
              [("v0", v0), ("h0", h0), ("vk", vk), ("hk", hk)])
    return float(_impl().rbm_cd_update(v0, h0, vk, hk, W, bv, bh, lr, wd))


# ============================================================================ norms and penalties
def sumsq(x):
    """``sum x^2`` as a Python float (float64 accumulation, fixed order)."""
    return _impl().sumsq(_float_in("x", x))


def all_finite(x):
    """True when no element of x is NaN or infinite."""
    return _impl().all_finite(_float_in("x", x))


def penalty(w, l1=0.0, l2=0.0):
    """Elastic-net penalty ``(l2/2) * sum w^2 + l1 * sum |w|`` (a Python float)."""
    return _impl().penalty(_float_in("w", w), _real("l1", l1, 0.0), _real("l2", l2, 0.0))


def penalty_grad(w, g, l1=0.0, l2=0.0):
    """In place: ``g += l2 * w + l1 * sign(w)``."""
    w = _float_in("w", w)
    g = _out("g", g, w.shape, w.dtype)
    _disjoint([("g", g)], [("w", w)])
    _impl().penalty_grad(w, g, _real("l1", l1, 0.0), _real("l2", l2, 0.0))


def max_norm(W, c):
    """In place, W (in, out): each column j with ``||W[:, j]|| > c`` is scaled to norm c."""
    if not isinstance(W, np.ndarray) or W.ndim != 2:
        raise ValueError("W must be a 2-D array (in_features, out_features)")
    W = _out("W", W, W.shape, W.dtype)
    if W.dtype not in FLOAT_DTYPES:
        raise TypeError(f"W must be float32 or float64, got {W.dtype.name}")
    _impl().max_norm(W, _real("c", c, 0.0, math.inf, lo_open=True))


# ============================================================================ optimiser updates
# Every update is in place and single pass. With ``g' = clip(grad_scale * g, -clip_value,
# clip_value) + wd * w`` (clip_value = inf: no clipping; coupled L2 weight decay):
def _opt_args(w, g, states, lr, wd, grad_scale, clip_value):
    if not isinstance(w, np.ndarray):
        raise TypeError(f"w must be a numpy.ndarray, got {type(w).__name__}")
    w = _out("w", w, w.shape, w.dtype)
    if w.dtype not in FLOAT_DTYPES:
        raise TypeError(f"w must be float32 or float64, got {w.dtype.name}")
    g = _float_in("g", g, None, w.dtype)
    _shape_is("g", g, w.shape)
    st = [(n, _out(n, a, w.shape, w.dtype)) for n, a in states]
    _disjoint([("w", w)] + st, [("g", g)])
    return (w, g, *[a for _, a in st], _real("lr", lr, 0.0), _real("wd", wd, 0.0),
            _real("grad_scale", grad_scale, 0.0, math.inf, hi_open=True),
            _real("clip_value", clip_value, 0.0, math.inf, lo_open=True))


def sgd_update(w, g, *, lr, wd=0.0, grad_scale=1.0, clip_value=math.inf):
    """``w -= lr * g'``."""
    w, g, lr, wd, gs, cv = _opt_args(w, g, (), lr, wd, grad_scale, clip_value)
    _impl().sgd_update(w, g, lr, wd, gs, cv)


def momentum_update(w, g, v, *, lr, mu=0.9, wd=0.0, grad_scale=1.0, clip_value=math.inf):
    """``v = mu * v - lr * g'``; ``w += v``."""
    w, g, v, lr, wd, gs, cv = _opt_args(w, g, [("v", v)], lr, wd, grad_scale, clip_value)
    _impl().momentum_update(w, g, v, lr, _real("mu", mu, 0.0, 1.0), wd, gs, cv)


def nesterov_update(w, g, v, *, lr, mu=0.9, wd=0.0, grad_scale=1.0, clip_value=math.inf):
    """``v = mu * v - lr * g'``; ``w += mu * v - lr * g'``."""
    w, g, v, lr, wd, gs, cv = _opt_args(w, g, [("v", v)], lr, wd, grad_scale, clip_value)
    _impl().nesterov_update(w, g, v, lr, _real("mu", mu, 0.0, 1.0), wd, gs, cv)


def adagrad_update(w, g, h, *, lr, eps=1e-10, eps_inside=False, wd=0.0, grad_scale=1.0,
                   clip_value=math.inf):
    """``h += g'^2``; ``w -= lr * g' / (sqrt(h) + eps)`` (``eps_inside``: ``/ sqrt(h + eps)``)."""
    w, g, h, lr, wd, gs, cv = _opt_args(w, g, [("h", h)], lr, wd, grad_scale, clip_value)
    _impl().adagrad_update(w, g, h, lr, _real("eps", eps, 0.0, lo_open=True), bool(eps_inside),
                           wd, gs, cv)


def rmsprop_update(w, g, h, *, lr, rho=0.99, eps=1e-8, eps_inside=False, wd=0.0, grad_scale=1.0,
                   clip_value=math.inf):
    """``h = rho * h + (1 - rho) * g'^2``; ``w -= lr * g' / (sqrt(h) + eps)``
    (``eps_inside``: ``/ sqrt(h + eps)``)."""
    w, g, h, lr, wd, gs, cv = _opt_args(w, g, [("h", h)], lr, wd, grad_scale, clip_value)
    _impl().rmsprop_update(w, g, h, lr, _real("rho", rho, 0.0, 1.0, hi_open=True),
                           _real("eps", eps, 0.0, lo_open=True), bool(eps_inside), wd, gs, cv)


def adam_update(w, g, m, v, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, step, eps_hat=False, wd=0.0,
                decoupled_wd=False, grad_scale=1.0, clip_value=math.inf):
    """Step t = ``step`` (>= 1), bc1 = 1 - beta1^t, bc2 = 1 - beta2^t::

        decoupled_wd (AdamW): w *= 1 - lr * wd, and g' has no wd term
        m = beta1 * m + (1 - beta1) * g';   v = beta2 * v + (1 - beta2) * g'^2
        w -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)                 (default)
        w -= (lr * sqrt(bc2) / bc1) * m / (sqrt(v) + eps)                 (eps_hat=True)
    """
    w, g, m, v, lr, wd, gs, cv = _opt_args(w, g, [("m", m), ("v", v)], lr, wd, grad_scale,
                                           clip_value)
    step = operator.index(step)
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    _impl().adam_update(w, g, m, v, lr, _real("beta1", beta1, 0.0, 1.0, hi_open=True),
                        _real("beta2", beta2, 0.0, 1.0, hi_open=True),
                        _real("eps", eps, 0.0, lo_open=True), step, bool(eps_hat), wd,
                        bool(decoupled_wd), gs, cv)


# ============================================================================ bound multi-tensor update
RULES = {"sgd": (), "momentum": ("v",), "nesterov": ("v",), "adagrad": ("h",), "rmsprop": ("h",),
         "adam": ("m", "v")}


class BoundUpdate:
    """K tensors bound for a fused optimiser step (from ``bind_update``)::

        b.sumsq()  == sum_k sumsq(gs[k])           (the same float: same additions, same order)
        b.update(lr, grad_scale=1.0, clip_value=inf, step=1)
                   == for k in 0..K-1: <rule>_update(ws[k], gs[k], *states[k], lr=lr, wd=wds[k],
                                         grad_scale=..., clip_value=..., **hyper)   (same bits)

        b.take(gs2)  -> -1 when every gs2[k] fits (an ndarray of ws[k]'s shape and dtype,
                        C-contiguous, sharing no memory with a bound parameter or state) and every
                        bound parameter and state array is writeable: the next sumsq()/update()
                        read gs2 instead. Else the index of the first that does not (nothing taken).

    Two backend calls per step instead of 2K; the compiled backend runs each as one parallel
    region over all tensors. The bound arrays are referenced, not copied: the gradients are read
    at every call. ``take`` costs O(K log K) (no pairwise overlap test). ``step`` is Adam's t
    (>= 1). One bound update serves one thread at a time (it owns a scratch buffer), like an
    optimiser."""

    __slots__ = ("impl", "rule", "size", "_b")

    def __init__(self, impl, rule, b, size):
        self.impl, self.rule, self._b, self.size = impl, rule, b, size

    def sumsq(self):
        return self._b.sumsq()

    def take(self, gs):
        return self._b.take(list(gs))

    def set_hyper(self, **hyper):
        """Replace the rule's hyperparameters (names and defaults as ``bind_update``)."""
        self._b.set_hyper(_rule_hyper(self.rule, **hyper))

    def update(self, lr, grad_scale=1.0, clip_value=math.inf, step=1):
        step = operator.index(step)
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        self._b.update(_real("lr", lr, 0.0),
                       _real("grad_scale", grad_scale, 0.0, math.inf, hi_open=True),
                       _real("clip_value", clip_value, 0.0, math.inf, lo_open=True), float(step))


def _rule_hyper(rule, mu=0.9, rho=0.99, eps=None, eps_inside=False, beta1=0.9, beta2=0.999,
                eps_hat=False, decoupled_wd=False):
    """The backends' hyperparameter tuple (h1, h2, eps, flag, decoupled) of ``rule``, validated."""
    if eps is None:
        eps = 1e-10 if rule == "adagrad" else 1e-8
    if rule == "sgd":
        return 0.0, 0.0, 0.0, False, False
    if rule in ("momentum", "nesterov"):
        return _real("mu", mu, 0.0, 1.0), 0.0, 0.0, False, False
    eps = _real("eps", eps, 0.0, lo_open=True)
    if rule == "adagrad":
        return 1.0, 0.0, eps, bool(eps_inside), False
    if rule == "rmsprop":
        return _real("rho", rho, 0.0, 1.0, hi_open=True), 0.0, eps, bool(eps_inside), False
    return (_real("beta1", beta1, 0.0, 1.0, hi_open=True),
            _real("beta2", beta2, 0.0, 1.0, hi_open=True), eps, bool(eps_hat), bool(decoupled_wd))


def bind_update(rule, ws, gs, states, wds, *, mu=0.9, rho=0.99, eps=None, eps_inside=False,
                beta1=0.9, beta2=0.999, eps_hat=False, decoupled_wd=False):
    """Bind the parameters ``ws``, gradients ``gs``, per-tensor state tuples ``states`` (``RULES``
    names them: ``()`` for sgd, ``(v,)`` momentum/nesterov, ``(h,)`` adagrad/rmsprop, ``(m, v)``
    adam) and weight decays ``wds`` (K floats) of one ``rule`` for repeated fused updates; the
    rule's hyperparameters (``mu``; ``rho`` (rmsprop), ``eps``, ``eps_inside``; ``beta1``,
    ``beta2``, ``eps``, ``eps_hat``, ``decoupled_wd``; defaults as the single-tensor kernels, eps
    1e-10 for adagrad and 1e-8 otherwise) are fixed here. Returns a ``BoundUpdate``.

    Every array: one float dtype, C-contiguous (gs too: they are read in place at each update);
    ws and states writeable, gs[k] and states[k] of ws[k]'s shape, no array overlapping another."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    names = RULES[rule]
    ws, gs, states, wds = (list(a) if isinstance(a, (list, tuple)) else a
                           for a in (ws, gs, states, wds))
    for n, a in (("ws", ws), ("gs", gs), ("states", states), ("wds", wds)):
        if not isinstance(a, list):
            raise TypeError(f"{n} must be a list or tuple, got {type(a).__name__}")
    if not len(ws) == len(gs) == len(states) == len(wds):
        raise ValueError(f"ws, gs, states and wds must have one entry per tensor, got lengths "
                         f"{len(ws)}, {len(gs)}, {len(states)}, {len(wds)}")
    dt = None
    outs, ins, sts, wdv = [], [], [], []
    for k, (w, g, st) in enumerate(zip(ws, gs, states)):
        if not isinstance(w, np.ndarray):
            raise TypeError(f"ws[{k}] must be a numpy.ndarray, got {type(w).__name__}")
        dt = w.dtype if dt is None else dt
        if w.dtype not in FLOAT_DTYPES:
            raise TypeError(f"ws[{k}] must be float32 or float64, got {w.dtype.name}")
        _out(f"ws[{k}]", w, w.shape, dt)
        _float_in(f"gs[{k}]", g, None, dt)
        _shape_is(f"gs[{k}]", g, w.shape)
        if not g.flags.c_contiguous:
            raise ValueError(f"gs[{k}] must be C-contiguous (it is read in place at every update)")
        if not isinstance(st, (tuple, list)) or len(st) != len(names):
            raise ValueError(f"states[{k}] must be a tuple of {len(names)} arrays {names} for rule "
                             f"{rule!r}, got {st!r:.80}")
        st = tuple(_out(f"states[{k}][{j}] ({s})", a, w.shape, dt) for j, (s, a) in
                   enumerate(zip(names, st)))
        outs += [(f"ws[{k}]", w)] + [(f"states[{k}][{j}]", a) for j, a in enumerate(st)]
        ins.append((f"gs[{k}]", g))
        sts.append(st)
        wdv.append(_real(f"wds[{k}]", wds[k], 0.0))
    _disjoint(outs, ins)
    h = _rule_hyper(rule, mu, rho, eps, eps_inside, beta1, beta2, eps_hat, decoupled_wd)
    impl = _impl()
    return BoundUpdate(impl, rule, impl.bind_update(rule, ws, gs, sts, wdv, h),
                       sum(w.size for w in ws))


# ============================================================================ ops and programs
# An op is one layer's forward and backward kernels bound to fixed arrays, for inputs of a fixed
# shape; a program runs a training step's ops. The training engine (dlfast._engine) makes both
# once per plan; every backend provides ``OPS[kind](*arrays, *settings)`` and ``Program``.
#
# kind          forward(x)                                   backward(x, dout)
# dense         dense_forward(x, W, b, out, act)             dense_backward(dout, x, W, out, dz, dx, dW, db, act)
# activation    activation_forward(x, out, act)              activation_backward(dout, out, dx, act)
# prelu         prelu_forward(x, slope, out)                 prelu_backward(dout, x, slope, dx, dslope)
# rrelu         random_uniform(slopes, lower, upper, seed,   prelu_backward(dout, x, slopes, dx, None)
#               counter); prelu_forward(x, slopes, out)
# maxout        dense_forward(x, W, b, z);                   maxout_backward(dout, argmax, dz);
#               maxout_forward(z, out, argmax)               dense_backward(dz, x, W, z, dz2, dx, dW, db)
# softmax       softmax_forward(x, out)                      softmax_backward(dout, out, dx)
# batchnorm     batchnorm_forward_train(x, gamma, beta, out, batchnorm_backward(dout, xhat, gamma,
#               xhat, mean, invstd, running_mean,             invstd, dx, dgamma, dbeta, True)
#               running_var, momentum, eps, unbiased)        (x (N, F) or (N, C, H, W))
#               then y = act(out) (activation of            dout (dL/dy) first times act'(.) from
#               BATCHNORM_FUSED; y None without: the same    z = gamma * xhat + beta (the same
#               bits as an activation op after it)           bits as the activation op's backward)
# conv2d        conv2d_forward(x, W, b, out, col, stride,    with an activation of CONV_FUSED and
#               pad), then with an activation of              dz: dz = dout * act'(.) from out (the
#               CONV_FUSED: out = act(out) (the same bits     activation op's backward), dout = dz;
#               as an activation op after it)                 dz None: dout is dL/dz already (a
#                                                             max-pool after it applied act');
#                                                             conv2d_backward(dout, x, W, col, dcol,
#                                                             dx, dW, db, stride, pad)
# maxpool2d     maxpool2d_forward(x, out, argmax, kernel,    maxpool2d_backward(dout, argmax, dx,
#               stride, pad)                                  kernel, stride, pad), then with an
#                                                             activation of MAXPOOL_FUSED (the
#                                                             one before the pool; x its output)
#                                                             dx times act'(.) from x: the same
#                                                             bits as that activation op's
#                                                             backward after the pool's
# avgpool2d     avgpool2d_forward(x, out, kernel, stride,    avgpool2d_backward(dout, dx, kernel,
#               pad, count_include_pad)                       stride, pad, count_include_pad)
# flatten       out[...] = x.reshape(N, -1) (a copy)         dx[...] = dout.reshape(x.shape)
# dropout       dropout_mask(mask, p, seed, counter);        dropout_apply(dout, mask, scale, dx)
#               dropout_apply(x, mask, scale, out)
# softmax_xent  L = softmax_xent_forward(x, labels, probs, w) softmax_xent_backward(probs, labels,
#               (a loss: forward returns L)                   dlogits, weight, w)   (backward(x))
# mse           L = mse_forward(x, targets, w, None, half,   mse_backward(x, targets, w, dlogits,
#               reduction)                                    weight, half, reduction)
# mae, huber,   L = <kind>_forward(x, targets, w, None,      <kind>_backward(x, targets, w,
# sigmoid_bce   [delta,] reduction)                           dlogits, weight, [delta,] reduction)
# layer         out = layer.forward(x)  (a layer without     dx = layer.backward(dout)
#               a kernel pair: its own checked calls)
#
# A loss op's targets (``labels`` or ``targets``) and sample weights ``sw`` are buffers the
# program fills before each step; w is ``sw`` on a weighted step, else None.
# A backward with dx None computes no input gradient; the kernels' other optional outputs
# (dW, db, dgamma, dbeta, dslope) likewise; conv2d's dcol (dx's workspace) is None with dx.
# rrelu and dropout take their counter per step (``op.set_counter(c)``, an int in [0, 2**64)).
# The setting ``x_shape`` (conv2d and the pools: their output does not fix H, W) is the input
# shape, filled in by ``make_op``.
OPS = {
    "dense": (("W", "b", "out", "dz", "dx", "dW", "db"), ("activation", "alpha")),
    "activation": (("out", "dx"), ("activation", "alpha")),
    "prelu": (("slope", "out", "dx", "dslope"), ()),
    "rrelu": (("slopes", "out", "dx"), ("lower", "upper", "seed")),
    "maxout": (("W", "b", "z", "out", "argmax", "dz", "dz2", "dx", "dW", "db"), ()),
    "softmax": (("out", "dx"), ()),
    "batchnorm": (("gamma", "beta", "out", "xhat", "mean", "invstd", "running_mean",
                   "running_var", "dx", "dgamma", "dbeta", "y"),
                  ("momentum", "eps", "unbiased", "activation", "alpha")),
    "dropout": (("out", "mask", "dx"), ("p", "seed", "scale")),
    "softmax_xent": (("probs", "labels", "sw", "dlogits"), ("weight",)),
    "mse": (("targets", "sw", "dlogits"), ("weight", "half", "reduction")),
    "mae": (("targets", "sw", "dlogits"), ("weight", "reduction")),
    "huber": (("targets", "sw", "dlogits"), ("weight", "delta", "reduction")),
    "sigmoid_bce": (("targets", "sw", "dlogits"), ("weight", "reduction")),
    "conv2d": (("W", "b", "out", "col", "dcol", "dx", "dW", "db", "dz"),
               ("x_shape", "stride", "pad", "activation", "alpha")),
    "maxpool2d": (("out", "argmax", "dx"), ("x_shape", "kernel", "stride", "pad", "activation",
                                            "alpha")),
    "avgpool2d": (("out", "dx"), ("x_shape", "kernel", "stride", "pad", "count_include_pad")),
    "flatten": (("out", "dx"), ()),
}
BATCHNORM_FUSED = ("identity", "relu", "leaky_relu")   # activations a batchnorm op fuses
MAXPOOL_FUSED = BATCHNORM_FUSED   # activations before it whose derivative a maxpool2d applies
CONV_FUSED = BATCHNORM_FUSED      # activations a conv2d op applies to its output
OP_INPUTS = frozenset({"W", "b", "gamma", "beta", "slope"})     # arrays an op only reads
OP_GRADS = frozenset({"dW", "db", "dgamma", "dbeta", "dslope"})  # its parameter gradients
LOSS_OPS = ("softmax_xent", "mse", "mae", "huber", "sigmoid_bce")  # value losses: all but the first

# Program steps: (code, a, b, c, d)
FWD, BWD, LOSS, LOSS_BWD, COPY, ADD = range(6)
PROGRAM_DOC = """Program(steps, losses, x_shape, dtype, written, hooks):
    (FWD, op, src, None, 0)        op.forward(x if src is None else src)
    (BWD, op, src, dsrc, 0)        op.backward(x if src is None else src, dsrc)
    (LOSS, lop, src, None, j)      values[j] = lop.forward(y); total += lop.weight * values[j]
    (LOSS_BWD, lop, src, None, 0)  lop.backward(y)          (y: x if src is None else src)
    (COPY, dst, src, None, 0)      dst[...] = src
    (ADD, dst, src, None, 0)       dst += src
load_targets(targets, weights=None): per loss op, its targets (int64 (N,) labels in [0, C) for
    softmax_xent; values (N, M) of dtype, or (N,) when M = 1, finite, in [0, 1] for sigmoid_bce;
    any strides) and sample weights (weights None, or per loss None or float64 (N,): finite,
    >= 0, a positive finite sum); every one checked first (ValueError naming the row: nothing
    copied), then copied into the op's ``labels``/``targets`` and ``sw`` buffers; w is ``sw``
    for a loss given weights, else None (unweighted);
run(x, times=None) -> total (x: x_shape, dtype, C-contiguous); ``values``: the losses of the
    last run; ``times``: a float64 array of one entry per step, to which each step's seconds are
    added (for profiles);
readonly() -> index of the first written array that is not writeable, or -1;
accepts(x) -> x shares no memory with any written array;
step(x, targets, weights=None, fresh=None, finite=False) -> total: the whole training step (the
    engine's per-step protocol), or None when x is not an ndarray of x_shape and dtype,
    C-contiguous and finite (the caller then checks x, naming what is wrong); ``finite=True``:
    the caller has just checked that x is finite, and x is not scanned again. With hooks =
    (names, drops, recs, xrecs, loss_recs, convert, convert_w, gslots): x shares no memory with
    a written array (ValueError); targets[j] is used as is when of a form load_targets takes, else
    ``convert(j, t)`` (its errors name t); weights (None, or one entry per loss: None or sample
    weights) likewise, else ``convert_w(j, w)``; then, one thread at a time: every written array
    writeable (ValueError naming names[k]); load_targets (a bad target or weight: ``convert`` or
    ``convert_w`` raises naming it); ``op.set_counter(layer._take_counter(size))`` for (layer,
    op, size) in drops; run(x) — with ``fresh`` (new C-contiguous arrays, one per gslots entry,
    of its gradient's shape and dtype), the ops write those gradients there for this run
    instead (gslots[k] = ``op.slot(name)`` of the op writing gradient k); ``d["_fwd"] = rec``
    for (d, rec) in recs, ``rec["x"] = x`` for rec in xrecs, and for (d, rec, sw) =
    loss_recs[j]: ``rec["sw"] = sw`` (weighted) or None, ``d["_fwd"], d["loss"] = rec,
    values[j]``."""


def _held(name, a, shape, dt, write=False, optional=False, dtype=None):
    """An array an op binds: exact shape and dtype, C-contiguous (it is used in place at every
    step), writeable when ``write``."""
    if a is None and optional:
        return None
    if write:
        return _out(name, a, shape, dt if dtype is None else dtype, optional)
    a2 = _float_in(name, a, None, dt)
    if a2 is not a:
        raise ValueError(f"{name} must be C-contiguous (an op reads it in place at every step)")
    _shape_is(name, a, shape)
    return a


def _op_arrays(kind, xs, dt, a, s):
    """Validated ``(arrays, settings)`` of op ``kind`` for inputs of shape ``xs``."""
    h = _held
    if kind in ("dense", "maxout"):
        n, i = xs
        W = a["W"]
        if not isinstance(W, np.ndarray) or W.ndim != 2 or W.shape[0] != i:
            raise ValueError(f"W must have shape ({i}, out_features) to match x {xs}, got "
                             f"{getattr(W, 'shape', type(W).__name__)}")
        W = h("W", W, W.shape, dt)
        width = W.shape[1]
        b = h("b", a["b"], (width,), dt, optional=True)
        z = "out" if kind == "dense" else "z"
        out = {z: h(z, a[z], (n, width), dt, True)}
        if kind == "maxout":
            o = getattr(a["out"], "shape", (0, 0))[-1]
            if not (isinstance(a["out"], np.ndarray) and a["out"].ndim == 2 and o
                    and width % o == 0):
                raise ValueError(f"out must have shape ({n}, {width} / pieces), got "
                                 f"{getattr(a['out'], 'shape', type(a['out']).__name__)}")
            out["out"] = h("out", a["out"], (n, o), dt, True)
            out["argmax"] = h("argmax", a["argmax"], (n, o), dt, True, dtype=np.dtype(np.int64))
            out["dz2"] = h("dz2", a["dz2"], (n, width), dt, True)
        out["dz"] = h("dz", a["dz"], (n, width), dt, True)
        out["dx"] = h("dx", a["dx"], (n, i), dt, True, True)
        out["dW"] = h("dW", a["dW"], (i, width), dt, True, True)
        out["db"] = h("db", a["db"], (width,), dt, True, True)
        ins = [("W", W), ("b", b)]
        arrays = {"W": W, "b": b, **out}
        if kind == "dense":
            s = dict(s, alpha=_activation(s["activation"], s["alpha"]))
    elif kind in ("activation", "softmax", "prelu", "rrelu", "dropout"):
        if kind in ("softmax", "prelu", "rrelu") and len(xs) != 2:
            raise ValueError(f"a {kind} op needs 2-D inputs (N, F), got shape {xs}")
        arrays = {"out": h("out", a["out"], xs, dt, True), "dx": h("dx", a["dx"], xs, dt, True, True)}
        ins = []
        if kind == "activation":
            s = dict(s, alpha=_activation(s["activation"], s["alpha"]))
        elif kind == "prelu":
            slope = a["slope"]
            if not isinstance(slope, np.ndarray) or slope.shape not in ((1,), (xs[1],)):
                raise ValueError(f"slope must have shape (1,) or ({xs[1]},), got "
                                 f"{getattr(slope, 'shape', type(slope).__name__)}")
            arrays["slope"] = h("slope", slope, slope.shape, dt)
            arrays["dslope"] = h("dslope", a["dslope"], slope.shape, dt, True, True)
            ins = [("slope", slope)]
        elif kind == "rrelu":
            arrays["slopes"] = h("slopes", a["slopes"], xs, dt, True)
            lo = _real("lower", s["lower"], 0.0)
            s = dict(s, lower=lo, upper=_real("upper", s["upper"], lo), seed=_u64("seed", s["seed"]))
        elif kind == "dropout":
            arrays["mask"] = h("mask", a["mask"], xs, dt, True, dtype=np.dtype(np.uint8))
            s = dict(s, p=_real("p", s["p"], 0.0, 1.0, hi_open=True), seed=_u64("seed", s["seed"]),
                     scale=_real("scale", s["scale"]))
    elif kind == "batchnorm":
        if len(xs) < 2 or xs[0] * math.prod(xs[2:]) < 2:
            raise ValueError(f"batch norm in training mode needs inputs (N, F) with N >= 2 rows "
                             f"or (N, C, H, W) with N*H*W >= 2, got shape {xs} (the batch "
                             f"variance is undefined for one value)")
        f = xs[1]
        arrays = {k: h(k, a[k], (f,), dt) for k in ("gamma", "beta")}
        ins = list(arrays.items())
        for k in ("out", "xhat", "dx"):
            arrays[k] = h(k, a[k], xs, dt, True, k == "dx")
        for k in ("mean", "invstd", "running_mean", "running_var", "dgamma", "dbeta"):
            arrays[k] = h(k, a[k], (f,), dt, True, k not in ("mean", "invstd"))
        if s["activation"] not in BATCHNORM_FUSED:
            raise ValueError(f"a batchnorm op fuses an activation of {BATCHNORM_FUSED}, got "
                             f"{s['activation']!r}")
        fuses = s["activation"] != "identity"
        if (a["y"] is not None) != fuses:
            raise ValueError("y (the fused activation's output) is required exactly when "
                             "activation is not 'identity'")
        arrays["y"] = h("y", a["y"], xs, dt, True, not fuses)
        s = dict(s, momentum=_real("momentum", s["momentum"], 0.0, 1.0),
                 eps=_real("eps", s["eps"], 0.0, math.inf, lo_open=True, hi_open=True),
                 unbiased=bool(s["unbiased"]),
                 alpha=_activation(s["activation"], s["alpha"]))
    elif kind in LOSS_OPS:
        if len(xs) != 2 or xs[0] < 1 or xs[1] < 1:
            raise ValueError(f"a {kind} loss needs non-empty 2-D inputs (N >= 1, M >= 1), got "
                             f"shape {xs}")
        if kind == "softmax_xent":
            arrays = {"probs": h("probs", a["probs"], xs, dt, True),
                      "labels": h("labels", a["labels"], xs[:1], dt, True,
                                  dtype=np.dtype(np.int64))}
        else:
            arrays = {"targets": h("targets", a["targets"], xs, dt, True)}
        arrays["sw"] = h("sw", a["sw"], xs[:1], dt, True, dtype=np.dtype(np.float64))
        arrays["dlogits"] = h("dlogits", a["dlogits"], xs, dt, True)
        ins = []
        s = dict(s, weight=_real("weight", s["weight"]))
        if "reduction" in s:
            s["reduction"] = _reduction(s["reduction"])
        if "half" in s:
            s["half"] = bool(s["half"])
        if "delta" in s:
            s["delta"] = _delta(s["delta"])
    elif kind in ("conv2d", "maxpool2d", "avgpool2d"):
        arrays, ins, s = _conv_op_arrays(kind, xs, dt, a, s)
    elif kind == "flatten":
        if len(xs) < 2:
            raise ValueError(f"a flatten op needs inputs (N, ...) of 2 or more axes, got shape {xs}")
        arrays = {"out": h("out", a["out"], (xs[0], math.prod(xs[1:])), dt, True),
                  "dx": h("dx", a["dx"], xs, dt, True, True)}
        ins = []
    else:
        raise ValueError(f"unknown op kind {kind!r}; expected one of {', '.join(OPS)}")
    read = {k for k, _ in ins}
    _disjoint([(k, v) for k, v in arrays.items() if k not in read], ins)
    return arrays, s


def make_op(kind, x_shape, dtype, **kw):
    """Op ``kind`` (``OPS``) of the active backend, its arrays validated for inputs of
    ``x_shape`` and ``dtype`` (shapes, dtypes, C-contiguous, outputs writeable and disjoint).
    ``kw``: the kind's arrays and settings, but ``x_shape``, which is filled in here."""
    names, settings = OPS[kind] if kind in OPS else ((), ())
    own = tuple(k for k in names + settings if k != "x_shape")
    if kind in OPS and set(kw) != set(own):
        raise TypeError(f"op {kind!r} takes {own}, got {sorted(kw)}")
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt.name}")
    x_shape = tuple(x_shape)
    if "x_shape" in settings:
        kw["x_shape"] = x_shape
    arrays, s = _op_arrays(kind, x_shape, dt, kw, {k: kw[k] for k in settings})
    return _impl().OPS[kind](*(arrays[k] for k in names), *(s[k] for k in settings))


# ============================================================================ convolution and pooling
# NCHW (as PyTorch): x (N, C, H, W). kernel (KH, KW), stride (sh, sw), pad (ph, pw): each an int
# (both axes) or a pair (h, w); a conv's kernel is W's (KH, KW).
#   OH = (H + 2*ph - KH) // sh + 1,   OW = (W + 2*pw - KW) // sw + 1
# xp = x zero-padded by ph rows and pw columns on each side; a window that does not fit drops the
# last rows/columns (floor, PyTorch's ceil_mode=False). Convolution is cross-correlation (no flip).
# The helpers below give the shapes a caller allocates once per input shape.
__all__ += ["conv2d_output_shape", "conv2d_workspace_shape", "pool2d_output_shape"]

_I31 = 2 ** 31


def _pair(name, v, lo):
    """An int >= lo or a pair of them (tuple or list) as a tuple (h, w); bools are refused."""
    items = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or a pair (h, w), got {v!r}")
    out = []
    for e in items:
        if isinstance(e, (bool, np.bool_)):
            raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
        try:
            e = operator.index(e)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}") from None
        if not lo <= e < _I31:
            raise ValueError(f"{name} must be {'positive' if lo else 'non-negative'} "
                             f"(in [{lo}, 2**31)), got {v!r}")
        out.append(e)
    return tuple(out)


def _shape4(name, shape):
    try:
        shape = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of 4 ints, got {shape!r}") from None
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(f"{name} must be 4 non-negative ints, got {shape!r}")
    return shape


def _out_hw(h, w, kernel, stride, pad, what):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ValueError(f"{what} ({kh}, {kw}) is larger than the padded input "
                         f"({h + 2 * ph}, {w + 2 * pw}) (H, W = {h}, {w}; pad {pad})")
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _conv_geometry(x_shape, W_shape, stride, pad):
    """((N, C, H, W), (F, KH, KW), stride, pad, (OH, OW)), validated."""
    n, c, h, w = x_shape
    f, wc, kh, kw = W_shape
    if wc != c:
        raise ValueError(f"W must have shape (F, {c}, KH, KW) to match the {c} channels of x "
                         f"{tuple(x_shape)}, got {tuple(W_shape)}")
    if kh < 1 or kw < 1:
        raise ValueError(f"W must have a kernel of at least 1x1, got shape {tuple(W_shape)}")
    stride, pad = _pair("stride", stride, 1), _pair("pad", pad, 0)
    return (n, c, h, w), (f, kh, kw), stride, pad, _out_hw(h, w, (kh, kw), stride, pad,
                                                            "the kernel")


def conv2d_output_shape(x_shape, W_shape, stride=1, pad=0):
    """(N, F, OH, OW): the shape of ``conv2d_forward``'s out (and of ``dout``)."""
    (n, *_), (f, *_), _, _, (oh, ow) = _conv_geometry(_shape4("x_shape", x_shape),
                                                      _shape4("W_shape", W_shape), stride, pad)
    return n, f, oh, ow


def conv2d_workspace_shape(x_shape, W_shape, stride=1, pad=0):
    """(N, C*KH*KW, OH*OW): the shape of ``col`` and ``dcol`` (same dtype as x)."""
    (n, c, _, _), (_, kh, kw), _, _, (oh, ow) = _conv_geometry(
        _shape4("x_shape", x_shape), _shape4("W_shape", W_shape), stride, pad)
    return n, c * kh * kw, oh * ow


def _conv_args(x, W, stride, pad):
    x = _float_in("x", x, 4)
    W = _float_in("W", W, 4, x.dtype)
    (n, c, h, w), (f, kh, kw), stride, pad, (oh, ow) = _conv_geometry(x.shape, W.shape, stride,
                                                                      pad)
    return x, W, stride, pad, (n, f, oh, ow), (n, c * kh * kw, oh * ow)


def conv2d_forward(x, W, b, out, col, stride=1, pad=0):
    """``out[n, f, i, j] = b[f] + sum_{c,kh,kw} W[f, c, kh, kw] * xp[n, c, i*sh + kh, j*sw + kw]``;
    x (N, C, H, W), W (F, C, KH, KW), b (F,) or None, out (N, F, OH, OW).

    ``col`` (workspace, ``conv2d_workspace_shape``): its contents afterwards are unspecified
    (im2col(x) when the kernel went through a GEMM; a direct convolution leaves it alone)."""
    x, W, stride, pad, oshape, wshape = _conv_args(x, W, stride, pad)
    if b is not None:
        b = _float_in("b", b, 1, x.dtype)
        _shape_is("b", b, (W.shape[0],))
    out = _out("out", out, oshape, x.dtype)
    col = _out("col", col, wshape, x.dtype)
    _disjoint([("out", out), ("col", col)], [("x", x), ("W", W), ("b", b)])
    _impl().conv2d_forward(x, W, b, out, col, stride, pad)
    return out


def conv2d_backward(dout, x, W, col, dcol, dx, dW, db, stride=1, pad=0):
    """Gradients of ``conv2d_forward`` from ``dout`` = dL/dout (N, F, OH, OW); W2 = W.reshape(F, -1):

    ``dW = sum_n dout[n] @ col[n].T`` (as (F, C, KH, KW)), ``db = sum_{n,i,j} dout[n, :, i, j]``,
    ``dcol[n] = W2.T @ dout[n]`` and ``dx = col2im(dcol)``: ``dx[n, c, h, w] = sum dcol[n,
    (c*KH + kh)*KW + kw, i*OW + j]`` over ``i*sh + kh - ph = h``, ``j*sw + kw - pw = w``
    (overlapping windows add). dW sums in the dtype (GEMMs, images in order), db in float64.
    dx, dW, db may be None (skipped); the workspaces ``col`` (for im2col(x): ``col[n, (c*KH +
    kh)*KW + kw, i*OW + j] = xp[n, c, i*sh + kh, j*sw + kw]``) and ``dcol``
    (``conv2d_workspace_shape``, contents afterwards unspecified) may be None when dW, resp. dx,
    is. The compiled backend convolves directly where that is faster (stride 1, >= 32 taps, a
    batch of at least one image per core; src/_conv.pyx) and then leaves them alone."""
    x, W, stride, pad, oshape, wshape = _conv_args(x, W, stride, pad)
    dt = x.dtype
    dout = _float_in("dout", dout, 4, dt)
    _shape_is("dout", dout, oshape)
    col = _out("col", col, wshape, dt, optional=dW is None)
    dcol = _out("dcol", dcol, wshape, dt, optional=dx is None)
    dx = _out("dx", dx, x.shape, dt, optional=True)
    dW = _out("dW", dW, W.shape, dt, optional=True)
    db = _out("db", db, (W.shape[0],), dt, optional=True)
    _disjoint([("col", col), ("dcol", dcol), ("dx", dx), ("dW", dW), ("db", db)],
              [("dout", dout), ("x", x), ("W", W)])
    _impl().conv2d_backward(dout, x, W, col, dcol, dx, dW, db, stride, pad)


def pool2d_output_shape(x_shape, kernel, stride=None, pad=0):
    """(N, C, OH, OW): the shape of a pool's out (and of max pooling's argmax)."""
    n, c, h, w = _shape4("x_shape", x_shape)
    kernel, stride, pad = _pool_settings(kernel, stride, pad)
    return (n, c) + _pool_hw(h, w, kernel, stride, pad)


def _pool_settings(kernel, stride, pad):
    kernel = _pair("kernel", kernel, 1)
    stride = kernel if stride is None else _pair("stride", stride, 1)
    pad = _pair("pad", pad, 0)
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(f"pad must be at most half the window (kernel // 2 = "
                         f"{(kernel[0] // 2, kernel[1] // 2)}), got pad {pad} for kernel {kernel}")
    return kernel, stride, pad


def _pool_hw(h, w, kernel, stride, pad):
    if h < 1 or w < 1:
        raise ValueError(f"x must have H >= 1 and W >= 1 for pooling, got H, W = {h}, {w}")
    return _out_hw(h, w, kernel, stride, pad, "the window")


def _pool_args(name, x, kernel, stride, pad, dtype=None):
    """x (or dx) validated as (N, C, H, W); returns (x, settings..., out shape)."""
    kernel, stride, pad = _pool_settings(kernel, stride, pad)
    if name == "dx":                      # the output that carries x's shape
        if not isinstance(x, np.ndarray):
            raise TypeError(f"dx must be a numpy.ndarray, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"dx must be 4-D (N, C, H, W), got shape {x.shape}")
        x = _out("dx", x, x.shape, dtype)
    else:
        x = _float_in(name, x, 4)
    n, c, h, w = x.shape
    return x, kernel, stride, pad, (n, c) + _pool_hw(h, w, kernel, stride, pad)


def maxpool2d_forward(x, out, argmax, kernel, stride=None, pad=0):
    """``out[n, c, i, j] = max`` of x over the window rows ``i*sh - ph + [0, KH)``, columns
    ``j*sw - pw + [0, KW)``, clipped to x (padding never wins); ``argmax`` (int64, out's shape)
    ``= h*W + w``, the flat index in x[n, c] (as PyTorch's) of the first maximum in row-major
    window order, a NaN winning (as np.argmax). stride defaults to the window; pad <= kernel // 2."""
    x, kernel, stride, pad, oshape = _pool_args("x", x, kernel, stride, pad)
    out = _out("out", out, oshape, x.dtype)
    argmax = _out("argmax", argmax, oshape, np.dtype(np.int64))
    _disjoint([("out", out), ("argmax", argmax)], [("x", x)])
    _impl().maxpool2d_forward(x, out, argmax, kernel, stride, pad)
    return out


def maxpool2d_backward(dout, argmax, dx, kernel, stride=None, pad=0):
    """``dx = 0``, then ``dx[n, c].flat[argmax[n, c, i, j]] += dout[n, c, i, j]`` (overlapping
    windows add); dx (N, C, H, W) as x, argmax as ``maxpool2d_forward`` wrote it (in [0, H*W))."""
    dout = _float_in("dout", dout, 4)
    dx, kernel, stride, pad, oshape = _pool_args("dx", dx, kernel, stride, pad, dout.dtype)
    _shape_is("dout", dout, oshape)
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int64:
        raise TypeError(f"argmax must be an int64 array, got {_dtype_name(argmax)}")
    _shape_is("argmax", argmax, oshape)
    argmax = np.ascontiguousarray(argmax)
    hw = dx.shape[2] * dx.shape[3]
    if argmax.size and (argmax.min() < 0 or argmax.max() >= hw):
        raise ValueError(f"argmax values must lie in [0, {hw}) (H*W), got values in "
                         f"[{argmax.min()}, {argmax.max()}]")
    _disjoint([("dx", dx)], [("dout", dout), ("argmax", argmax)])
    _impl().maxpool2d_backward(dout, argmax, dx, kernel, stride, pad)
    return dx


def avgpool2d_forward(x, out, kernel, stride=None, pad=0, count_include_pad=True):
    """``out[n, c, i, j] = (sum of the window's cells inside x) / d`` (sum in float64), with
    ``d = KH*KW`` (padded zeros count), or with ``count_include_pad=False`` the number of the
    window's cells inside x. stride defaults to the window; pad <= kernel // 2."""
    x, kernel, stride, pad, oshape = _pool_args("x", x, kernel, stride, pad)
    out = _out("out", out, oshape, x.dtype)
    _disjoint([("out", out)], [("x", x)])
    _impl().avgpool2d_forward(x, out, kernel, stride, pad, bool(count_include_pad))
    return out


def avgpool2d_backward(dout, dx, kernel, stride=None, pad=0, count_include_pad=True):
    """``dx = 0``, then each window adds ``dout[n, c, i, j] / d(i, j)`` (d as the forward's,
    divided in dout's dtype) to each of its cells inside x, windows in (kh, kw), i, j order."""
    dout = _float_in("dout", dout, 4)
    dx, kernel, stride, pad, oshape = _pool_args("dx", dx, kernel, stride, pad, dout.dtype)
    _shape_is("dout", dout, oshape)
    _disjoint([("dx", dx)], [("dout", dout)])
    _impl().avgpool2d_backward(dout, dx, kernel, stride, pad, bool(count_include_pad))
    return dx


def _conv_op_arrays(kind, xs, dt, a, s):
    """``_op_arrays`` of the conv2d, maxpool2d and avgpool2d ops (see ``make_op``)."""
    h = _held
    if len(xs) != 4:
        raise ValueError(f"a {kind} op needs 4-D inputs (N, C, H, W), got shape {xs}")
    if kind == "conv2d":
        W = a["W"]
        if not isinstance(W, np.ndarray) or W.ndim != 4:
            raise ValueError(f"W must be 4-D (F, C, KH, KW), got "
                             f"{getattr(W, 'shape', type(W).__name__)}")
        _, (f, _, _), stride, pad, (oh, ow) = _conv_geometry(xs, W.shape, s["stride"], s["pad"])
        W = h("W", W, W.shape, dt)
        wshape = (xs[0], xs[1] * W.shape[2] * W.shape[3], oh * ow)
        arrays = {"W": W, "b": h("b", a["b"], (f,), dt, optional=True),
                  "out": h("out", a["out"], (xs[0], f, oh, ow), dt, True),
                  "col": h("col", a["col"], wshape, dt, True),
                  "dcol": h("dcol", a["dcol"], wshape, dt, True, a["dx"] is None),
                  "dx": h("dx", a["dx"], xs, dt, True, True),
                  "dW": h("dW", a["dW"], W.shape, dt, True, True),
                  "db": h("db", a["db"], (f,), dt, True, True),
                  "dz": h("dz", a["dz"], (xs[0], f, oh, ow), dt, True, True)}
        if s["activation"] not in CONV_FUSED:
            raise ValueError(f"a conv2d op applies an activation of {CONV_FUSED}, got "
                             f"{s['activation']!r}")
        if s["activation"] == "identity" and arrays["dz"] is not None:
            raise ValueError("dz is the workspace of an activation's derivative: give it only "
                             "with activation 'relu' or 'leaky_relu'")
        return arrays, [("W", W), ("b", arrays["b"])], dict(
            x_shape=xs, stride=stride, pad=pad, activation=s["activation"],
            alpha=_activation(s["activation"], s["alpha"]))
    kernel, stride, pad = _pool_settings(s["kernel"], s["stride"], s["pad"])
    oshape = xs[:2] + _pool_hw(xs[2], xs[3], kernel, stride, pad)
    arrays = {"out": h("out", a["out"], oshape, dt, True), "dx": h("dx", a["dx"], xs, dt, True, True)}
    out = dict(x_shape=xs, kernel=kernel, stride=stride, pad=pad)
    if kind == "maxpool2d":
        arrays["argmax"] = h("argmax", a["argmax"], oshape, dt, True, dtype=np.dtype(np.int64))
        if s["activation"] not in MAXPOOL_FUSED:
            raise ValueError(f"a maxpool2d op applies the derivative of an activation of "
                             f"{MAXPOOL_FUSED}, got {s['activation']!r}")
        out.update(activation=s["activation"], alpha=_activation(s["activation"], s["alpha"]))
    else:
        out["count_include_pad"] = bool(s["count_include_pad"])
    return arrays, [], out
