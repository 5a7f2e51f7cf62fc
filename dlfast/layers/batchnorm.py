"""Batch normalisation."""
from __future__ import annotations

import numpy as np

from .. import kernels
from .._validation import positive_int, real
from ._base import Layer, Pair

__all__ = ["BatchNorm"]


class BatchNorm(Layer):
    """Batch normalisation over the batch axis of x (N, F), or per channel of images
    x (N, C, H, W) over N, H, W (``num_features`` = C, PyTorch's BatchNorm2d): params "gamma" (1)
    and "beta" (0), running statistics ``running_mean`` (0) and ``running_var``
    (``running_var_init``, 1).

    train: ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with the biased batch var, and
    ``running = (1 - m) * running + m * stat`` (running var from the unbiased var when
    ``unbiased``; M/(M-1) with M = N*H*W values per channel). eval: the running statistics.
    Training on one value per feature (a batch of one row) is an error.

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

    def _check_shape(self, shape):
        """x (N, F) or (N, C, H, W) with F (C) = num_features."""
        f = self.num_features
        if len(shape) not in (2, 4):
            raise ValueError(f"x must be 2-D (N, {f}) or 4-D (N, {f}, H, W) for BatchNorm, got "
                             f"shape {tuple(shape)}")
        if shape[1] != f:
            what = "features (columns)" if len(shape) == 2 else "channels (axis 1)"
            raise ValueError(f"x must have {f} {what} for BatchNorm(num_features={f}), got "
                             f"shape {tuple(shape)}")

    def _check_train_shape(self, shape, hint=""):
        if len(shape) == 2 and shape[0] < 2:
            raise ValueError(f"BatchNorm in training mode needs a batch of at least 2 rows, got "
                             f"{shape[0]} (the batch variance of one row is undefined){hint}")
        if len(shape) == 4 and shape[0] * shape[2] * shape[3] < 2:
            raise ValueError(f"BatchNorm in training mode needs at least 2 values per channel "
                             f"(N*H*W >= 2), got x of shape {tuple(shape)}{hint}")

    def forward(self, x, train=True):
        if isinstance(x, np.ndarray) and x.ndim != 2:
            self._check_shape(x.shape)
            x = self._check_x(x, ndim=4)
        else:
            x = self._check_x(x, self.num_features)
        f = self.num_features
        if train:
            self._check_train_shape(x.shape, "; use train=False")
        out, xhat = self._buf("out", x.shape), self._buf("xhat", x.shape)
        invstd = self._buf("invstd", (f,))
        g, b = self.params["gamma"], self.params["beta"]
        if train:
            kernels.batchnorm_forward_train(x, g, b, out, xhat, self._buf("mean", (f,)), invstd,
                                            self.running_mean, self.running_var,
                                            self.kernel_momentum, self.eps, self.unbiased)
        else:
            kernels.batchnorm_forward_eval(x, g, b, self.running_mean, self.running_var, self.eps,
                                           out, xhat, invstd)
        self._fwd = {"out": out, "xhat": xhat, "invstd": invstd, "train": bool(train)}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        f = self._fwd
        dx = self._buf("dx", dout.shape) if compute_dx else None
        kernels.batchnorm_backward(dout, f["xhat"], self.params["gamma"], f["invstd"], dx,
                                   self._grad("gamma"), self._grad("beta"), f["train"])
        return dx

    def kernel_pair(self, x_shape, need_dx):
        self._check_shape(x_shape)
        self._check_train_shape(x_shape)
        f = self.num_features
        rec = {"out": self._buf("out", x_shape), "xhat": self._buf("xhat", x_shape),
               "invstd": self._buf("invstd", (f,)), "train": True}
        return Pair("batchnorm", dict(
            gamma=self.params["gamma"], beta=self.params["beta"], out=rec["out"],
            xhat=rec["xhat"], mean=self._buf("mean", (f,)), invstd=rec["invstd"],
            running_mean=self.running_mean, running_var=self.running_var,
            dx=self._buf("dx", x_shape) if need_dx else None, dgamma=self._grad("gamma"),
            dbeta=self._grad("beta"), momentum=self.kernel_momentum, eps=self.eps,
            unbiased=self.unbiased, y=None, activation="identity", alpha=0.0), rec)

    def _buffers(self):
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def _config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps,
                "momentum_convention": self.momentum_convention, "unbiased": self.unbiased,
                "running_var_init": self.running_var_init, "trainable": self.trainable}
