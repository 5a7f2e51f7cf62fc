"""Dropout (inverted or textbook) on the counter-based generator."""
from __future__ import annotations

import numpy as np

from .. import kernels
from .._validation import real, seed_value
from ._base import chain_op, Layer

__all__ = ["Dropout"]

_U64 = 1 << 64


def _as_mask(mask, shape, name="mask"):
    """A 0/1 mask of ``shape`` as contiguous uint8 (bool, int or float 0/1 accepted)."""
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of 0/1 values, got {type(mask).__name__}")
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be bool, integer or float 0/1 values, got {mask.dtype.name}")
    if mask.shape != shape:
        raise ValueError(f"{name} must have the shape of x {shape}, got {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and not np.all((mask == 0) | (mask == 1)):
            raise ValueError(f"{name} values must be 0 or 1")
        mask = mask.astype(np.uint8)
    elif mask.size and mask.max() > 1:
        raise ValueError(f"{name} values must be 0 or 1")
    return np.ascontiguousarray(mask)


class Dropout(Layer):
    """Dropout with drop probability p in [0, 1); mask ~ Bernoulli(1 - p) (``kernels.dropout_mask``).

    inverted (default): train ``y = x * mask / (1 - p)``, eval ``y = x``.
    textbook (``inverted=False``): train ``y = x * mask``, eval ``y = x * (1 - p)``.
    A given mask (``forward(x, mask=...)`` or the ``fixed_mask`` attribute) replaces the draw.
    """

    stochastic = True

    def __init__(self, p=0.5, inverted=True, seed=None, dtype=None):
        super().__init__(dtype)
        self.p = real("p", p, 0.0, 1.0, hi_open=True)
        self.inverted = bool(inverted)
        self.seed = seed_value(seed)
        self.counter = 0
        self.hold_rng = False
        self.fixed_mask = None

    # Kernel calls skip their checks when trusted (Layer._untrusted; dropout_mask also needs a
    # counter that is an int in [0, 2**64)).
    def forward(self, x, train=True, mask=None):
        x = self._check_x(x, ndim=None)
        out = self._buf("out", x.shape)
        if not train:
            scale = 1.0 if self.inverted else 1.0 - self.p
            self._apply("fwd", x, None, scale, out)
            self._fwd = {"out": out, "mask": None, "scale": scale}
            return out
        if mask is None:
            mask = self.fixed_mask
        if mask is not None:
            mask = _as_mask(mask, x.shape)
        else:
            mask = self._buf("mask", x.shape, np.uint8)
            c = self.counter
            new = self._untrusted("mask", (), (mask,), (), (self.p, self.seed))
            trusted = new is None and type(c) is int and 0 <= c < _U64
            kernels.dropout_mask(mask, self.p, self.seed, c, check=not trusted)
            self._validated("mask", new)
            if not self.hold_rng:
                self.counter += mask.size
        scale = 1.0 / (1.0 - self.p) if self.inverted else 1.0
        self._apply("fwd", x, mask, scale, out)
        self._fwd = {"out": out, "mask": mask, "scale": scale}
        return out

    def _apply(self, slot, x, mask, scale, out):
        new = self._untrusted(slot, (x, mask), (out,), (), (scale,))
        kernels.dropout_apply(x, mask, scale, out, check=new is not None)
        self._validated(slot, new)
        return out

    @property
    def mask(self):
        """The mask of the last training forward (uint8), or None."""
        return None if self._fwd is None else self._fwd["mask"]

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        if not compute_dx:
            return None
        f = self._fwd
        return self._apply("bwd", dout, f["mask"], f["scale"], self._buf("dx", dout.shape))

    def _bind_key(self):
        return (self.p, self.inverted, self.seed, id(self.fixed_mask))

    def _bind_train(self, impl, need_dx):
        out, scale = self._fwd["out"], self._fwd["scale"]
        if self.fixed_mask is not None or self._fwd["mask"] is None:
            return None
        mask = self._buf("mask", out.shape, np.uint8)       # (the last mask may be a caller's)
        rec = {"out": out, "mask": mask, "scale": scale}
        dx = self._buf("dx", out.shape) if need_dx else None
        p, seed, size = float(self.p), self.seed, mask.size
        mk, ak = impl.dropout_mask, impl.dropout_apply

        def fwd(x):
            mk(mask, p, seed, self._take_counter(size))
            ak(x, mask, scale, out)
            self._fwd = rec
            return out

        def bwd(dout):
            if dx is not None:
                ak(dout, mask, scale, dx)
            return dx
        op = chain_op(impl, "dropout", out, mask, dx, p, seed, scale)
        return fwd, bwd, (out, mask, dx), (op, rec)

    def _take_counter(self, size):
        """The counter of a bound step's mask (an int in [0, 2**64), checked as
        ``dropout_mask`` checks it); the layer's counter advances by ``size`` unless hold_rng."""
        c = self.counter
        k = c if type(c) is int and 0 <= c < _U64 else kernels._u64("counter", c)
        if not self.hold_rng:
            self.counter = c + size
        return k

    def _buffers(self):
        return {"seed": np.uint64(self.seed), "counter": np.uint64(self.counter)}

    def _load_buffer(self, key, own, src):
        setattr(self, key, int(src))

    def _config(self):
        return {"p": self.p, "inverted": self.inverted, "seed": self.seed}
