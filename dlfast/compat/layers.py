"""The book's ``common/layers.py`` on dlfast's checked kernels.

Each layer has the book's constructor, ``forward``/``backward`` and attribute names (``W``,
``b``, ``dW``, ``db``, ``x``, ``mask``, ``out``, ``running_mean`` ...). Parameters are the
arrays given to the constructor (not copies), so a net's ``params`` dict and its layers share
them, as in the book; they must be float32 or float64 arrays and set the layer's dtype (an input
of another dtype is converted to it). Layers without parameters compute in their input's float
dtype (other dtypes in float64).

Differences from the book:

* ``forward``/``backward`` return the layer's own buffers: the next call with an input of the
  same shape overwrites them (copy a result to keep it); the book allocates new arrays each
  call. ``dW``, ``db``, ``dgamma``, ``dbeta`` are new arrays at each ``backward``, as the book's.
* ``Dropout`` draws its masks with ``kernels.dropout_mask`` from a stream seeded from
  ``np.random`` when the layer is made (``np.random.seed`` reproduces a run; the masks differ
  from ``np.random.rand``'s). ``mask`` is a bool view of the kernel's uint8 mask.
* ``Convolution.col`` is the kernel's workspace (N, C*KH*KW, OH*OW); ``Pooling.arg_max`` is
  computed in the book's layout when read. ``Pooling`` with ``pad > 0`` never takes a padded
  zero as the maximum (the book's code fails on that case).
* ``Relu.backward`` and ``SoftmaxWithLoss`` leave their arguments unchanged.
* NaN and infinity propagate as in NumPy; ``SoftmaxWithLoss`` warns once (``NonFiniteWarning``)
  when its loss is not finite.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import kernels
from .._validation import FLOAT_DTYPES
from ._nonfinite import warn_once
from .functions import *  # noqa: F401,F403  (the book's module re-exports them)
from .functions import __all__ as _functions_all
from .util import col2im, im2col  # noqa: F401  (re-exported, as the book's)

__all__ = list(_functions_all) + ["im2col", "col2im", "Relu", "Sigmoid", "Affine",
                                  "SoftmaxWithLoss", "Dropout", "BatchNormalization",
                                  "Convolution", "Pooling"]

_BN_EPS = 1e-6          # the book writes 10e-7


class _Buffers:
    """Reusable output arrays: the two most recent shapes per name."""

    def _buf(self, name, shape, dtype):
        ws = self.__dict__.setdefault("_ws", {})
        slots = ws.setdefault(name, [])
        for a in slots:
            if a.shape == shape and a.dtype == dtype:
                return a
        a = np.empty(shape, dtype)
        slots.insert(0, a)
        del slots[2:]
        return a


def _float_input(name, x, dtype=None):
    """x as a float ndarray: of ``dtype`` when given, else its own float32/float64 dtype
    (other dtypes become float64)."""
    if not isinstance(x, np.ndarray):
        if isinstance(x, (str, bytes)) or x is None:
            raise TypeError(f"{name} must be an array of numbers, got {type(x).__name__}")
        x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype.name}")
    if dtype is None:
        dtype = x.dtype if x.dtype in FLOAT_DTYPES else np.dtype(np.float64)
    return x if x.dtype == dtype else x.astype(dtype)


def _param(layer, name):
    """The layer's parameter ``name``: a float32/float64 ndarray."""
    a = getattr(layer, name)
    if not isinstance(a, np.ndarray) or a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{type(layer).__name__}.{name} must be a float32 or float64 array, "
                        f"got {getattr(a, 'dtype', type(a).__name__)}")
    return a


def _vector(layer, name, n, dtype):
    """The layer's bias ``name`` as a float (n,) vector of ``dtype``, as the book's ``+ b``
    broadcasts it: the array itself when it is one, else a number or an array that broadcasts to
    (n,) (0-d, (1,), (1, n)...), converted."""
    a = getattr(layer, name)
    if isinstance(a, np.ndarray) and a.dtype == dtype and a.shape == (n,):
        return a
    if not isinstance(a, (np.ndarray, numbers.Real, np.generic, list, tuple)):
        raise TypeError(f"{type(layer).__name__}.{name} must be a number or an array of "
                        f"numbers, got {type(a).__name__}")
    v = np.asarray(a)
    if v.dtype.kind not in "biuf":
        raise TypeError(f"{type(layer).__name__}.{name} must hold real numbers, got dtype "
                        f"{v.dtype.name}")
    if v.ndim <= 2:
        try:
            return np.ascontiguousarray(np.broadcast_to(v, (1, n)).reshape(n), dtype=dtype)
        except ValueError:
            pass
    raise ValueError(f"{type(layer).__name__}.{name} must broadcast to ({n},) (one value per "
                     f"output), got shape {v.shape}")


def _called_forward(layer, what):
    if getattr(layer, what) is None:
        raise RuntimeError(f"{type(layer).__name__}.backward called before forward")


# ============================================================================ activations
class _Elementwise(_Buffers):
    """``out = act(x)`` and ``dx = dout * act'(out)`` on the activation kernels (``_act``)."""

    _act = None

    def __init__(self):
        self.out = None

    def forward(self, x):
        x = _float_input("x", x)
        out = self._buf("out", x.shape, x.dtype)
        kernels.activation_forward(x, out, self._act)
        self.out = out
        return out

    def backward(self, dout):
        _called_forward(self, "out")
        dout = _float_input("dout", dout, self.out.dtype)
        return kernels.activation_backward(dout, self.out, self._buf("dx", self.out.shape,
                                                                     self.out.dtype), self._act)


class Relu(_Elementwise):
    """``out = max(x, 0)``; ``mask`` = ``x <= 0`` of the last forward; backward ``dout`` where
    not ``mask`` (a NaN input passes dout through, as the book's), else 0."""

    _act = "relu"

    def backward(self, dout):
        dx = super().backward(dout)
        if not kernels.all_finite(self.out):
            np.copyto(dx, dout, where=np.isnan(self.out))
        return dx

    @property
    def mask(self):
        """Where the last forward's input was <= 0 (bool array), or None."""
        return None if self.out is None else self.out <= 0


class Sigmoid(_Elementwise):
    """``out = 1 / (1 + exp(-x))``; backward ``dout * out * (1 - out)``."""

    _act = "sigmoid"


# ============================================================================ affine
class Affine(_Buffers):
    """``out = x @ W + b`` with x reshaped to (N, -1); ``backward`` gives dx in x's shape and
    sets ``dW = x.T @ dout``, ``db = sum_n dout``."""

    def __init__(self, W, b):
        self.W = W
        self.b = b
        self.x = None
        self.original_x_shape = None
        self.dW = None
        self.db = None
        self.out = None

    def forward(self, x):
        W = _param(self, "W")
        x = _float_input("x", x, W.dtype)
        if x.ndim < 1:
            raise ValueError("x must have a batch axis, got a 0-d value")
        self.original_x_shape = x.shape
        x = x.reshape(x.shape[0], -1)
        out = self._buf("out", (x.shape[0], W.shape[-1] if W.ndim else 0), W.dtype)
        kernels.dense_forward(x, W, _vector(self, "b", out.shape[1], W.dtype), out)
        self.x, self.out = x, out
        return out

    def backward(self, dout):
        return self._backward(dout, True)

    def _backward(self, dout, need_dx):
        _called_forward(self, "out")
        W, x, out = self.W, self.x, self.out
        dt = out.dtype
        dout = _float_input("dout", dout, dt)
        dx = self._buf("dx", x.shape, dt) if need_dx else None
        dW, db = np.empty(W.shape, dt), np.empty(out.shape[1], dt)
        kernels.dense_backward(dout, x, W, out, self._buf("dz", out.shape, dt), dx, dW, db)
        self.dW, self.db = dW, db
        return None if dx is None else dx.reshape(self.original_x_shape)


# ============================================================================ loss
class SoftmaxWithLoss(_Buffers):
    """Softmax then the book's cross-entropy: ``loss = -sum_n log(y[n, t_n] + 1e-7) / N``.

    t: class indices (N,) (or (N, 1)), or rows of t.size == y.size (one-hot; the loss takes their
    argmax). ``backward(dout=1)`` returns ``(y - onehot(t)) / N`` for indices and
    ``(y - t) / N`` for rows; ``dout`` is ignored, as in the book. ``y``, ``t``, ``loss``: the
    last forward's."""

    def __init__(self):
        self.loss = None
        self.y = None
        self.t = None

    def forward(self, x, t):
        x = _float_input("x", x)
        flat = x.ndim == 1                         # one sample: y, dx of shape (C,), as the book
        if flat:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"x must be 2-D scores (N, C) with N, C >= 1, got shape {x.shape}")
        n, c = x.shape
        t = np.asarray(t)
        y = self._buf("y", x.shape, x.dtype)
        if t.size == x.size:                       # one-hot (or any) rows, as the book
            labels = t.reshape(n, c).argmax(axis=1)
            kernels.softmax_forward(x, y)
        else:
            if t.dtype.kind not in "iu":
                raise TypeError(f"t must be integer class indices or one-hot rows of {c} "
                                f"columns, got dtype {t.dtype.name} of shape {t.shape}")
            labels = t.reshape(-1)
            if labels.shape[0] != n:
                raise ValueError(f"t must have {n} labels (or one-hot rows) to match x {x.shape}, "
                                 f"got shape {t.shape}")
            kernels.softmax_xent_forward(x, labels, y)
        self.y, self.t, self._labels = (y.reshape(c) if flat else y), t, labels
        p = y[np.arange(n), labels]
        self.loss = -np.sum(np.log(p + 1e-7)) / n
        if not math.isfinite(self.loss):
            warn_once(self, "loss")
        return self.loss

    def backward(self, dout=1):
        _called_forward(self, "y")
        t, flat = self.t, self.y.ndim == 1
        y = self.y.reshape(1, -1) if flat else self.y
        dx = self._buf("dx", y.shape, y.dtype)
        if t.size == y.size:                        # the book's (y - t) / t.shape[0]
            np.subtract(y, t.reshape(y.shape), out=dx, casting="unsafe")
            dx /= t.shape[0] if t.ndim else 1
        else:
            kernels.softmax_xent_backward(y, self._labels, dx)
        return dx.reshape(-1) if flat else dx


# ============================================================================ dropout
class Dropout(_Buffers):
    """Train: ``x * mask`` with ``mask = (u > dropout_ratio)`` (keep probability
    1 - dropout_ratio); eval: ``x * (1 - dropout_ratio)`` (``kernels.dropout_*``)."""

    def __init__(self, dropout_ratio=0.5):
        self.dropout_ratio = dropout_ratio
        self._mask = None
        self.seed = int(np.random.randint(0, 2 ** 62, dtype=np.int64))
        self.counter = 0

    @property
    def mask(self):
        """The last training forward's mask (bool array, True = kept), or None."""
        return None if self._mask is None else self._mask.view(np.bool_)

    def _ratio(self):
        r = self.dropout_ratio
        if not isinstance(r, numbers.Real) or isinstance(r, (bool, np.bool_)) or not 0 <= r < 1:
            raise ValueError(f"dropout_ratio must be a number in [0, 1), got {r!r}")
        return float(r)

    def forward(self, x, train_flg=True):
        x = _float_input("x", x)
        r = self._ratio()
        out = self._buf("out", x.shape, x.dtype)
        if not train_flg:
            return kernels.dropout_apply(x, None, 1.0 - r, out)
        mask = self._buf("mask", x.shape, np.uint8)
        kernels.dropout_mask(mask, r, self.seed, self.counter)
        self.counter += mask.size
        self._mask = mask
        return kernels.dropout_apply(x, mask, 1.0, out)

    def backward(self, dout):
        _called_forward(self, "_mask")
        dout = _float_input("dout", dout)
        return kernels.dropout_apply(dout, self._mask, 1.0, self._buf("dx", dout.shape,
                                                                       dout.dtype))


# ============================================================================ batch norm
class BatchNormalization(_Buffers):
    """Batch norm per feature of x (N, D), or of x (N, C, H, W) flattened to (N, C*H*W) as the
    book does. Train: ``xn = (x - mu) / sqrt(var + 1e-6)`` (biased batch var),
    ``out = gamma * xn + beta``, ``running = momentum * running + (1 - momentum) * stat``;
    eval: the running statistics (zeros at first, as the book's). A one-row batch trains as in
    the book: var = 0, so ``out = beta`` and dx = 0."""

    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None):
        self.gamma = gamma
        self.beta = beta
        self.momentum = momentum
        self.input_shape = None
        self.running_mean = running_mean
        self.running_var = running_var
        self.batch_size = None
        self.dgamma = None
        self.dbeta = None
        self._fwd = None

    @property
    def xn(self):
        """The normalised input of the last forward (N, D)."""
        return None if self._fwd is None else self._fwd["xhat"]

    @property
    def std(self):
        """``sqrt(var + eps)`` of the last forward's statistics."""
        return None if self._fwd is None else 1.0 / self._fwd["invstd"]

    @property
    def xc(self):
        """``x - mean`` of the last forward (``xn * std``)."""
        return None if self._fwd is None else self.xn * self.std

    def _momentum(self):
        m = self.momentum
        if not isinstance(m, numbers.Real) or isinstance(m, (bool, np.bool_)) or not 0 <= m <= 1:
            raise ValueError(f"momentum must be a number in [0, 1], got {m!r}")
        return float(m)

    def forward(self, x, train_flg=True):
        gamma = _param(self, "gamma")
        dt = gamma.dtype
        x = _float_input("x", x, dt)
        if x.ndim not in (2, 4):
            raise ValueError(f"x must be 2-D (N, D) or 4-D (N, C, H, W), got shape {x.shape}")
        self.input_shape = x.shape
        x2 = x.reshape(x.shape[0], -1)
        n, d = x2.shape
        if self.running_mean is None:
            self.running_mean = np.zeros(d, dt)
            self.running_var = np.zeros(d, dt)
        beta = _param(self, "beta")
        rm, rv = self._running(d, dt)
        out, xhat = self._buf("out", x2.shape, dt), self._buf("xhat", x2.shape, dt)
        invstd = self._buf("invstd", (d,), dt)
        m = 1.0 - self._momentum()                        # the new statistic's weight
        if train_flg and n >= 2:
            kernels.batchnorm_forward_train(x2, gamma, beta, out, xhat, self._buf("mean", (d,), dt),
                                            invstd, rm, rv, m, _BN_EPS, False)
        elif train_flg and n == 1:                        # var = 0, mean = the row
            mean = np.ascontiguousarray(x2[0])
            kernels.batchnorm_forward_eval(x2, gamma, beta, mean, np.zeros(d, dt), _BN_EPS, out,
                                           xhat, invstd)
            rm[...] = (1.0 - m) * rm + m * mean
            rv[...] = (1.0 - m) * rv
        else:
            kernels.batchnorm_forward_eval(x2, gamma, beta, rm, rv, _BN_EPS, out, xhat, invstd)
        if train_flg:
            self.batch_size = n
        self._fwd = {"xhat": xhat, "invstd": invstd, "train": bool(train_flg)}
        return out.reshape(self.input_shape)

    def _running(self, d, dt):
        for name in ("running_mean", "running_var"):
            a = getattr(self, name)
            if not (isinstance(a, np.ndarray) and a.shape == (d,) and a.dtype == dt
                    and a.flags.c_contiguous and a.flags.writeable):
                if not isinstance(a, np.ndarray) or a.size != d:
                    raise ValueError(f"{name} must be an array of {d} values, got "
                                     f"{getattr(a, 'shape', type(a).__name__)}")
                setattr(self, name, np.array(a, dtype=dt).reshape(d))
        return self.running_mean, self.running_var

    def backward(self, dout):
        _called_forward(self, "_fwd")
        f = self._fwd
        xhat = f["xhat"]
        dt = xhat.dtype
        dout = _float_input("dout", dout, dt).reshape(xhat.shape)
        d = xhat.shape[1]
        dx = self._buf("dx", xhat.shape, dt)
        dgamma, dbeta = np.empty(d, dt), np.empty(d, dt)
        kernels.batchnorm_backward(dout, xhat, self.gamma, f["invstd"], dx, dgamma, dbeta,
                                   f["train"])
        self.dgamma, self.dbeta = dgamma.reshape(np.shape(self.gamma)), dbeta.reshape(
            np.shape(self.beta))
        return dx.reshape(self.input_shape)


# ============================================================================ conv and pooling
class Convolution(_Buffers):
    """Cross-correlation of x (N, C, H, W) with W (FN, C, FH, FW) plus b (FN,), zero padding
    ``pad``, step ``stride`` (``kernels.conv2d_forward``/``conv2d_backward``)."""

    def __init__(self, W, b, stride=1, pad=0):
        self.W = W
        self.b = b
        self.stride = stride
        self.pad = pad
        self.x = None
        self.col = None
        self.dW = None
        self.db = None

    @property
    def col_W(self):
        """``W`` as the book's (C*FH*FW, FN) matrix."""
        return self.W.reshape(self.W.shape[0], -1).T

    def forward(self, x):
        W = _param(self, "W")
        x = _float_input("x", x, W.dtype)
        if x.ndim != 4 or W.ndim != 4:
            raise ValueError(f"x must be 4-D (N, C, H, W) and W 4-D (FN, C, FH, FW), got shapes "
                             f"{x.shape} and {W.shape}")
        shape = kernels.conv2d_output_shape(x.shape, W.shape, self.stride, self.pad)
        out = self._buf("out", shape, W.dtype)
        col = self._buf("col", kernels.conv2d_workspace_shape(x.shape, W.shape, self.stride,
                                                              self.pad), W.dtype)
        kernels.conv2d_forward(x, W, _vector(self, "b", shape[1], W.dtype), out, col, self.stride,
                               self.pad)
        self.x, self.col = x, col
        return out

    def backward(self, dout):
        return self._backward(dout, True)

    def _backward(self, dout, need_dx):
        _called_forward(self, "x")
        x, W, col = self.x, self.W, self.col
        dt = col.dtype
        dout = _float_input("dout", dout, dt)
        dx = self._buf("dx", x.shape, dt) if need_dx else None
        dcol = self._buf("dcol", col.shape, dt) if need_dx else None
        dW, db = np.empty(W.shape, dt), np.empty(W.shape[0], dt)
        kernels.conv2d_backward(dout, x, W, col, dcol, dx, dW, db, self.stride, self.pad)
        self.dW, self.db = dW, db.reshape(np.shape(self.b)) if np.size(self.b) == db.size else db
        return dx


def book_arg_max(argmax, width, pool_w, stride, pad):
    """The book's ``arg_max`` (window positions kh * pool_w + kw, ordered (n, i, j, c)) from
    ``maxpool2d_forward``'s argmax (flat positions h * width + w in each x[n, c])."""
    oh, ow = argmax.shape[2], argmax.shape[3]
    (sh, sw), (ph, pw) = kernels._pair("stride", stride, 1), kernels._pair("pad", pad, 0)
    kh = argmax // width - (np.arange(oh) * sh - ph)[:, None]
    kw = argmax % width - (np.arange(ow) * sw - pw)
    return (kh * pool_w + kw).transpose(0, 2, 3, 1).reshape(-1)


class Pooling(_Buffers):
    """Max pooling over pool_h x pool_w windows, step ``stride`` (default 2, as the book's),
    padding ``pad`` (``kernels.maxpool2d_*``; the first maximum of a window wins, NaN wins)."""

    def __init__(self, pool_h, pool_w, stride=2, pad=0):
        self.pool_h = pool_h
        self.pool_w = pool_w
        self.stride = stride
        self.pad = pad
        self.x = None
        self._argmax = None

    @property
    def arg_max(self):
        """The book's ``arg_max``: per output (n, i, j, c) in that order, the position of the
        maximum inside its window (kh * pool_w + kw)."""
        if self._argmax is None:
            return None
        return book_arg_max(self._argmax, self.x.shape[3], self.pool_w, self.stride, self.pad)

    def forward(self, x):
        x = _float_input("x", x)
        if x.ndim != 4:
            raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
        k = (self.pool_h, self.pool_w)
        shape = kernels.pool2d_output_shape(x.shape, k, self.stride, self.pad)
        out = self._buf("out", shape, x.dtype)
        argmax = self._buf("argmax", shape, np.int64)
        kernels.maxpool2d_forward(x, out, argmax, k, self.stride, self.pad)
        self.x, self._argmax = x, argmax
        return out

    def backward(self, dout):
        _called_forward(self, "x")
        x = self.x
        dout = _float_input("dout", dout, x.dtype)
        dx = self._buf("dx", x.shape, x.dtype)
        return kernels.maxpool2d_backward(dout, self._argmax, dx, (self.pool_h, self.pool_w),
                                          self.stride, self.pad)
