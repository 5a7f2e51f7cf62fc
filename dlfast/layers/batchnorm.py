"""Batch normalisation."""
from __future__ import annotations

import numpy as np

from .. import kernels
from .._validation import positive_int, real
from ._base import chain_op, Layer

__all__ = ["BatchNorm"]


class BatchNorm(Layer):
    """Batch normalisation over the batch axis of x (N, F): params "gamma" (1) and "beta" (0),
    running statistics ``running_mean`` (0) and ``running_var`` (``running_var_init``, 1).

    train: ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with the biased batch var, and
    ``running = (1 - m) * running + m * stat`` (running var from the unbiased var when
    ``unbiased``). eval: the running statistics. A batch of one row in training is an error.

    ``momentum_convention="pytorch"`` (default): m = momentum (0.1). ``"textbook"`` (also
    ``textbook=True``, which further defaults momentum to 0.9 and ``unbiased`` to False):
    ``running = momentum * running + (1 - momentum) * stat``, i.e. m = 1 - momentum.
    """

    def __init__(self, num_features, momentum=None, eps=1e-5, momentum_convention=None,
                 unbiased=None, running_var_init=1.0, textbook=False, dtype=None, trainable=True):
        super().__init__(dtype, trainable)
        self.num_features = positive_int("num_features", num_features)
        if momentum_convention is None:
            momentum_convention = "textbook" if textbook else "pytorch"
        if momentum_convention not in ("pytorch", "textbook"):
            raise ValueError(f"momentum_convention must be 'pytorch' or 'textbook', "
                             f"got {momentum_convention!r}")
        tb = momentum_convention == "textbook"
        self.momentum_convention = momentum_convention
        self.momentum = real("momentum", (0.9 if tb else 0.1) if momentum is None else momentum,
                             0.0, 1.0)
        self.eps = real("eps", eps, 0.0, lo_open=True, hi_open=True)
        self.unbiased = (not tb) if unbiased is None else bool(unbiased)
        self.running_var_init = real("running_var_init", running_var_init, 0.0)
        f = self.num_features
        self.params["gamma"] = np.ones(f, self.dtype)
        self.params["beta"] = np.zeros(f, self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.running_mean = np.zeros(f, self.dtype)
        self.running_var = np.full(f, self.running_var_init, self.dtype)

    @property
    def kernel_momentum(self):
        """Weight of the new batch statistic in the running average."""
        return self.momentum if self.momentum_convention == "pytorch" else 1.0 - self.momentum

    def forward(self, x, train=True):
        x = self._check_x(x, self.num_features)
        n, f = x.shape
        if train and n < 2:
            raise ValueError(f"BatchNorm in training mode needs a batch of at least 2 rows, got "
                             f"{n} (the batch variance of one row is undefined); use train=False")
        out, xhat = self._buf("out", x.shape), self._buf("xhat", x.shape)
        invstd = self._buf("invstd", (f,))
        g, b = self.params["gamma"], self.params["beta"]
        rm, rv = self.running_mean, self.running_var
        if train:       # trusted calls: see Layer._untrusted
            mean = self._buf("mean", (f,))
            st = (self.kernel_momentum, self.eps, self.unbiased)
            new = self._untrusted("fwd", (x, g, b), (out, xhat, mean, invstd, rm, rv),
                                  (g, b, rm, rv), st)
            kernels.batchnorm_forward_train(x, g, b, out, xhat, mean, invstd, rm, rv, *st,
                                            check=new is not None)
            self._validated("fwd", new)
        else:           # always checked: running_var must be >= 0
            kernels.batchnorm_forward_eval(x, g, b, rm, rv, self.eps, out, xhat, invstd)
        self._fwd = {"out": out, "xhat": xhat, "invstd": invstd, "train": bool(train)}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        f = self._fwd
        dx = self._buf("dx", dout.shape) if compute_dx else None
        g, dg, db = self.params["gamma"], self._grad("gamma"), self._grad("beta")
        new = self._untrusted("bwd", (dout, f["xhat"], g, f["invstd"]), (dx, dg, db), (g, dg, db),
                              (f["train"],))
        kernels.batchnorm_backward(dout, f["xhat"], g, f["invstd"], dx, dg, db, f["train"],
                                   check=new is not None)
        self._validated("bwd", new)
        return dx

    def _bind_key(self):
        p, g = self.params, self.grads
        return (id(p["gamma"]), id(p["beta"]), id(g["gamma"]), id(g["beta"]),
                id(self.running_mean), id(self.running_var), self.kernel_momentum, self.eps,
                self.unbiased, self.trainable)

    def _bind_train(self, impl, need_dx):
        rec = self._fwd
        if not rec["train"]:
            return None
        out, xhat, invstd = rec["out"], rec["xhat"], rec["invstd"]
        mean = self._buf("mean", invstd.shape)
        g, b = self.params["gamma"], self.params["beta"]
        dg, db = self._grad("gamma"), self._grad("beta")
        rm, rv = self.running_mean, self.running_var
        dx = self._buf("dx", out.shape) if need_dx else None
        st = (float(self.kernel_momentum), float(self.eps), bool(self.unbiased))
        fk, bk = impl.batchnorm_forward_train, impl.batchnorm_backward

        def fwd(x):
            fk(x, g, b, out, xhat, mean, invstd, rm, rv, *st)
            self._fwd = rec
            return out

        def bwd(dout):
            bk(dout, xhat, g, invstd, dx, dg, db, True)
            return dx
        op = chain_op(impl, "batchnorm", g, b, out, xhat, mean, invstd, rm, rv, dx, dg, db, *st)
        return fwd, bwd, (out, xhat, mean, invstd, rm, rv, dx, dg, db), (op, rec)

    def _buffers(self):
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def _config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps,
                "momentum_convention": self.momentum_convention, "unbiased": self.unbiased,
                "running_var_init": self.running_var_init, "trainable": self.trainable}
