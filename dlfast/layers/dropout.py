"""Dropout (inverted or textbook) on the counter-based generator."""
from __future__ import annotations

import numpy as np

from .. import kernels
from .._validation import real, seed_value
from ._base import Layer, Pair

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

    def forward(self, x, train=True, mask=None):
        x = self._check_x(x, ndim=None)
        out = self._buf("out", x.shape)
        if not train:
            scale = 1.0 if self.inverted else 1.0 - self.p
            kernels.dropout_apply(x, None, scale, out)
            self._fwd = {"out": out, "mask": None, "scale": scale}
            return out
        if mask is None:
            mask = self.fixed_mask
        if mask is not None:
            mask = _as_mask(mask, x.shape)
        else:
            mask = self._buf("mask", x.shape, np.uint8)
            kernels.dropout_mask(mask, self.p, self.seed, self._take_counter(mask.size))
        scale = self._scale()
        kernels.dropout_apply(x, mask, scale, out)
        self._fwd = {"out": out, "mask": mask, "scale": scale}
        return out

    def _scale(self):
        return 1.0 / (1.0 - self.p) if self.inverted else 1.0

    @property
    def mask(self):
        """The mask of the last training forward (uint8), or None."""
        return None if self._fwd is None else self._fwd["mask"]

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        if not compute_dx:
            return None
        f = self._fwd
        return kernels.dropout_apply(dout, f["mask"], f["scale"], self._buf("dx", dout.shape))

    def kernel_pair(self, x_shape, need_dx):
        if self.fixed_mask is not None:
            return None                 # a given mask: checked per step by forward
        rec = {"out": self._buf("out", x_shape), "mask": self._buf("mask", x_shape, np.uint8),
               "scale": self._scale()}
        return Pair("dropout", dict(out=rec["out"], mask=rec["mask"],
                                    dx=self._buf("dx", x_shape) if need_dx else None, p=self.p,
                                    seed=self.seed, scale=rec["scale"]), rec)

    def _buffers(self):
        return {"seed": np.uint64(self.seed), "counter": np.uint64(self.counter)}

    def _load_buffer(self, key, own, src):
        setattr(self, key, int(src))

    def _config(self):
        return {"p": self.p, "inverted": self.inverted, "seed": self.seed}
