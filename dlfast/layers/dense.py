"""Affine layers: ``Dense`` (affine + fused activation) and ``Maxout``."""
from __future__ import annotations

import numpy as np

from .. import init as _init
from .. import kernels
from .._validation import make_rng, positive_int
from ._base import _DEFAULT_ALPHA, chain_op, Layer, _init_spec, activation_code

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

    # Kernel calls skip their checks when trusted (Layer._untrusted): same W, b, gradients,
    # activation and alpha, shapes as in the last validated call, no overlap.
    def forward(self, x, train=True):
        x = self._check_x(x, self.in_features)
        out = self._buf("out", (x.shape[0], self.out_features))
        W, b = self.params["W"], self.params.get("b")
        act = (self.activation, self.alpha)
        new = self._untrusted("fwd", (x, W, b), (out,), (W, b), act)
        kernels.dense_forward(x, W, b, out, *act, check=new is not None)
        self._validated("fwd", new)
        self._fwd = {"x": x, "out": out}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        x, out = self._fwd["x"], self._fwd["out"]
        dx = self._buf("dx", x.shape) if compute_dx else None
        dz = self._buf("dz", out.shape)
        dW = self._grad("W")
        db = self._grad("b") if "b" in self.params else None
        W = self.params["W"]
        act = (self.activation, self.alpha)
        new = self._untrusted("bwd", (dout, x, W, out), (dz, dx, dW, db), (W, dW, db), act)
        kernels.dense_backward(dout, x, W, out, dz, dx, dW, db, *act, check=new is not None)
        self._validated("bwd", new)
        return dx

    def _bind_key(self):
        p, g = self.params, self.grads
        return (id(p["W"]), id(p.get("b")), id(g["W"]), id(g.get("b")), self.activation,
                self.alpha, self.trainable)

    def _bind_train(self, impl, need_dx):
        rec = self._fwd
        out, W, b = rec["out"], self.params["W"], self.params.get("b")
        dW = self._grad("W")
        db = self._grad("b") if b is not None else None
        dz = self._buf("dz", out.shape)
        dx = self._buf("dx", rec["x"].shape) if need_dx else None
        act, alpha = self.activation, float(self.alpha)
        fk, bk = impl.dense_forward, impl.dense_backward

        def fwd(x):
            fk(x, W, b, out, act, alpha)
            rec["x"] = x
            self._fwd = rec
            return out

        def bwd(dout):
            bk(dout, rec["x"], W, out, dz, dx, dW, db, act, alpha)
            return dx
        op = chain_op(impl, "dense", W, b, out, dz, dx, dW, db, act, alpha)
        return fwd, bwd, (out, dz, dx, dW, db), (op, rec)

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

    def _config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "pieces": self.pieces, "weight_init": self.weight_init,
                "bias": "b" in self.params, "trainable": self.trainable}
