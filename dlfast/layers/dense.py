"""Affine layers: ``Dense`` (affine + fused activation) and ``Maxout``."""
from __future__ import annotations

import numpy as np

from .. import init as _init
from .. import kernels
from .._validation import make_rng, positive_int
from ._base import _DEFAULT_ALPHA, Layer, Pair, _init_spec, activation_code

__all__ = ["Dense", "Maxout"]


class Dense(Layer):
    """Fused affine + activation: ``out = act(x @ W + b)``, W (in_features, out_features).

    ``activation``: None/"linear"/"identity", "relu", "sigmoid", "tanh", "leaky_relu", "elu"
    (``alpha`` for the last two). ``weight_init``: a name of ``dlfast.init`` ("he", "xavier", ...),
    a float (normal std) or a callable; biases start at 0. ``rng`` (or ``seed``): Generator or int.
    """

    def __init__(self, in_features, out_features, activation=None, weight_init="he", bias=True,
                 dtype=None, rng=None, seed=None, alpha=None, trainable=True):
        super().__init__(dtype, trainable)
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.activation, self.alpha = activation_code(activation, alpha)
        if rng is not None and seed is not None:
            raise ValueError("give rng or seed, not both")
        fn = _init.get(weight_init)
        self.weight_init = _init_spec(weight_init)
        self.params["W"] = np.ascontiguousarray(
            fn((self.in_features, self.out_features), rng=make_rng(seed if rng is None else rng),
               dtype=self.dtype), dtype=self.dtype)
        if self.params["W"].shape != (self.in_features, self.out_features):
            raise ValueError(f"weight_init returned shape {self.params['W'].shape}, expected "
                             f"{(self.in_features, self.out_features)}")
        if bias:
            self.params["b"] = np.zeros(self.out_features, self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x, train=True):
        x = self._check_x(x, self.in_features)
        out = self._buf("out", (x.shape[0], self.out_features))
        kernels.dense_forward(x, self.params["W"], self.params.get("b"), out, self.activation,
                              self.alpha)
        self._fwd = {"x": x, "out": out}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        x, out = self._fwd["x"], self._fwd["out"]
        dx = self._buf("dx", x.shape) if compute_dx else None
        kernels.dense_backward(dout, x, self.params["W"], out, self._buf("dz", out.shape), dx,
                               self._grad("W"), self._grad("b") if "b" in self.params else None,
                               self.activation, self.alpha)
        return dx

    def kernel_pair(self, x_shape, need_dx):
        n, o = x_shape[0], self.out_features
        out = self._buf("out", (n, o))
        return Pair("dense", dict(
            W=self.params["W"], b=self.params.get("b"), out=out, dz=self._buf("dz", (n, o)),
            dx=self._buf("dx", x_shape) if need_dx else None, dW=self._grad("W"),
            db=self._grad("b") if "b" in self.params else None, activation=self.activation,
            alpha=self.alpha), {"x": None, "out": out})

    def _config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "activation": self.activation, "weight_init": self.weight_init,
                "bias": "b" in self.params,
                "alpha": self.alpha if self.activation in _DEFAULT_ALPHA else None,
                "trainable": self.trainable}


class Maxout(Layer):
    """``out[:, o] = max_j (x @ W + b)[:, o*pieces + j]``: max over ``pieces`` affine maps.
    W (in_features, out_features*pieces), b (out_features*pieces,)."""

    def __init__(self, in_features, out_features, pieces=2, weight_init="he", bias=True,
                 dtype=None, rng=None, seed=None, trainable=True):
        super().__init__(dtype, trainable)
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.pieces = positive_int("pieces", pieces)
        if rng is not None and seed is not None:
            raise ValueError("give rng or seed, not both")
        width = self.out_features * self.pieces
        self.weight_init = _init_spec(weight_init)
        self.params["W"] = np.ascontiguousarray(
            _init.get(weight_init)((self.in_features, width),
                                   rng=make_rng(seed if rng is None else rng), dtype=self.dtype),
            dtype=self.dtype)
        if bias:
            self.params["b"] = np.zeros(width, self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x, train=True):
        x = self._check_x(x, self.in_features)
        n = x.shape[0]
        z = self._buf("z", (n, self.out_features * self.pieces))
        kernels.dense_forward(x, self.params["W"], self.params.get("b"), z, "identity")
        out = self._buf("out", (n, self.out_features))
        argmax = self._buf("argmax", (n, self.out_features), np.int64)
        kernels.maxout_forward(z, out, argmax)
        self._fwd = {"x": x, "z": z, "out": out, "argmax": argmax}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        f = self._fwd
        dz = self._buf("dz", f["z"].shape)
        kernels.maxout_backward(dout, f["argmax"], dz)
        dx = self._buf("dx", f["x"].shape) if compute_dx else None
        kernels.dense_backward(dz, f["x"], self.params["W"], f["z"], self._buf("dz2", dz.shape),
                               dx, self._grad("W"),
                               self._grad("b") if "b" in self.params else None, "identity")
        return dx

    def kernel_pair(self, x_shape, need_dx):
        n = x_shape[0]
        width = self.out_features * self.pieces
        rec = {"x": None, "z": self._buf("z", (n, width)),
               "out": self._buf("out", (n, self.out_features)),
               "argmax": self._buf("argmax", (n, self.out_features), np.int64)}
        return Pair("maxout", dict(
            W=self.params["W"], b=self.params.get("b"), z=rec["z"], out=rec["out"],
            argmax=rec["argmax"], dz=self._buf("dz", (n, width)), dz2=self._buf("dz2", (n, width)),
            dx=self._buf("dx", x_shape) if need_dx else None, dW=self._grad("W"),
            db=self._grad("b") if "b" in self.params else None), rec)

    def _config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "pieces": self.pieces, "weight_init": self.weight_init,
                "bias": "b" in self.params, "trainable": self.trainable}
