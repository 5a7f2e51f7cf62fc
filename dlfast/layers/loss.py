"""Losses: softmax cross-entropy, mean squared / absolute error, Huber, sigmoid binary
cross-entropy (``dlfast.kernels`` gives each formula).

A loss takes a head's output y (N, M) and targets t: ``forward(y, t, sample_weight=None)``
returns ``L = sum_n w_n l_n / sum_n w_n`` (unweighted: ``mean_n l_n``; ``reduction="sum"``:
``sum_n w_n l_n``), ``backward(dout=1.0)`` returns ``dout * dL/dy``. ``TARGETS`` says what t is:
"labels" (class indices, any int dtype, or exact one-hot rows) or "values" (numbers of y's shape,
or (N,) when M = 1, any real dtype, converted to y's; finite; in [0, 1] for sigmoid BCE).
``TASK``: "classify" or "regress" (what a net's ``accuracy`` / ``r2`` apply to).
Sample weights: (N,) of any real dtype, finite, >= 0, not all 0.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from .._validation import (finite_array, float_array, labels_to_indices, real, sample_weights,
                           target_values)
from ._base import Layer, Pair

__all__ = ["Loss", "SoftmaxCrossEntropy", "MSELoss", "MAELoss", "HuberLoss", "SigmoidBCELoss",
           "get"]


class Loss(Layer):
    """Base of the losses (see the module docstring). Subclasses set ``KIND`` (an op kind of
    ``dlfast.kernels.OPS``), ``TARGETS``, ``TASK``, and the kernels."""

    KIND = None
    TARGETS = "values"
    TASK = "regress"
    loss = None

    def targets(self, t, n, m, name="t"):
        """t as the kernels take it for an output of shape (n, m): int64 (n,) labels, or a
        C-contiguous (n, m) array of the loss's dtype (errors name ``name``)."""
        if self.TARGETS == "labels":
            return labels_to_indices(t, n, m, name=name)
        return target_values(t, n, m, self.dtype, unit=self.KIND == "sigmoid_bce", name=name)

    def correct(self, y, t, name="t"):
        """Classification losses: a bool (N,) array, row n predicted right (see the subclass)."""
        raise TypeError(f"{type(self).__name__} is a regression loss: accuracy does not apply "
                        f"(use r2)")

    def _settings(self):
        """The op's settings other than ``weight``."""
        return {}

    def _check_y(self, y, name):
        self._adopt(y)
        y = float_array(name, y, self.dtype, ndim=2, min_rows=1)
        if y.shape[1] < 1:
            raise ValueError(f"{name} must have at least one column, got shape {y.shape}")
        if self.check_finite:
            finite_array(name, y)
        return y

    def _rec(self, name):
        if self._fwd is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._fwd


class SoftmaxCrossEntropy(Loss):
    """Softmax + cross-entropy, averaged over the batch.

    ``forward(logits, t, sample_weight=None)`` returns ``L = sum_n w_n l_n / sum_n w_n``,
    ``l_n = logsumexp(logits_n) - logits[n, t_n]`` (unweighted: the mean); t: class indices (any
    int dtype) or exact one-hot rows. ``backward(dout=1.0)`` returns
    ``dL/dlogits = dout * w_n / sum w * (softmax(logits) - onehot(t))`` (unweighted: ``/ N``).
    ``probs``: the last softmax.
    """

    KIND = "softmax_xent"
    TARGETS = "labels"
    TASK = "classify"

    def forward(self, logits, t, sample_weight=None):
        logits = self._check_y(logits, "logits")
        n, c = logits.shape
        labels = labels_to_indices(t, n, c)
        w = sample_weights(sample_weight, n)
        probs = self._buf("probs", logits.shape)
        loss = kernels.softmax_xent_forward(logits, labels, probs, w)
        self._fwd = {"out": probs, "labels": labels, "sw": w}
        self.loss = loss
        return loss

    def kernel_pair(self, x_shape, weight):
        """The loss op for logits of ``x_shape``; its backward is ``weight * dL/dlogits``."""
        rec = {"out": self._buf("probs", x_shape), "labels": self._buf("labels", x_shape[:1],
                                                                       np.int64), "sw": None}
        return Pair("softmax_xent", dict(probs=rec["out"], labels=rec["labels"],
                                         sw=self._buf("sw", x_shape[:1], np.float64),
                                         dlogits=self._buf("dx", x_shape), weight=weight), rec)

    @property
    def probs(self):
        return None if self._fwd is None else self._fwd["out"]

    def correct(self, y, t, name="t"):
        """``argmax_j y_nj == t_n``."""
        labels = labels_to_indices(t, y.shape[0], y.shape[1], name=name)
        return np.argmax(y, axis=1) == labels

    def backward(self, dout=1.0, compute_dx=True):
        rec = self._rec("logits")
        dout = real("dout", dout)
        probs = rec["out"]
        dlogits = self._buf("dx", probs.shape)
        kernels.softmax_xent_backward(probs, rec["labels"], dlogits, dout, rec.get("sw"))
        return dlogits


class _ValueLoss(Loss):
    """A loss of values (``dlfast.kernels``' value losses); ``reduction``: "mean" or "sum"."""

    _NAME = "y"

    def __init__(self, reduction="mean", dtype=None):
        super().__init__(dtype)
        self.reduction = kernels._reduction(reduction)

    def _settings(self):
        return {"reduction": self.reduction}

    def _config(self):
        return {"reduction": self.reduction}

    def _kernels(self):
        return (getattr(kernels, f"{self.KIND}_forward"), getattr(kernels, f"{self.KIND}_backward"))

    def forward(self, y, t, sample_weight=None):
        y = self._check_y(y, self._NAME)
        n, m = y.shape
        tv = self.targets(t, n, m)
        w = sample_weights(sample_weight, n)
        fwd, _ = self._kernels()
        loss = fwd(y, tv, w, None, **self._settings())
        self._fwd = {"x": y, "targets": tv, "sw": w}
        self.loss = loss
        return loss

    def backward(self, dout=1.0, compute_dx=True):
        rec = self._rec(self._NAME)
        dout = real("dout", dout)
        y = rec["x"]
        dy = self._buf("dx", y.shape)
        _, bwd = self._kernels()
        bwd(y, rec["targets"], rec["sw"], dy, dout, **self._settings())
        return dy

    def kernel_pair(self, x_shape, weight):
        """The loss op for outputs of ``x_shape``; its backward is ``weight * dL/dy``."""
        rec = {"x": None, "targets": self._buf("targets", x_shape), "sw": None}
        return Pair(self.KIND, dict(targets=rec["targets"],
                                    sw=self._buf("sw", x_shape[:1], np.float64),
                                    dlogits=self._buf("dx", x_shape), weight=weight,
                                    **self._settings()), rec)


class MSELoss(_ValueLoss):
    """Mean squared error: ``l_n = mean_j (y_nj - t_nj)^2`` (PyTorch's MSELoss);
    ``half=True``: the textbook's ``E = 1/2 sum_j (y - t)^2`` (gradient ``y - t``)."""

    KIND = "mse"

    def __init__(self, half=False, reduction="mean", dtype=None):
        super().__init__(reduction, dtype)
        self.half = bool(half)

    def _settings(self):
        return {"half": self.half, "reduction": self.reduction}

    def _config(self):
        return {"half": self.half, "reduction": self.reduction}


class MAELoss(_ValueLoss):
    """Mean absolute error: ``l_n = mean_j |y_nj - t_nj|`` (gradient ``sign(y - t) / M``)."""

    KIND = "mae"


class HuberLoss(_ValueLoss):
    """Huber loss: ``l_n = mean_j h(y - t)``, ``h(d) = d^2/2`` for ``|d| <= delta``, else
    ``delta (|d| - delta/2)`` (gradient ``clip(y - t, -delta, delta) / M``)."""

    KIND = "huber"

    def __init__(self, delta=1.0, reduction="mean", dtype=None):
        super().__init__(reduction, dtype)
        self.delta = kernels._delta(delta)

    def _settings(self):
        return {"delta": self.delta, "reduction": self.reduction}

    def _config(self):
        return {"delta": self.delta, "reduction": self.reduction}


class SigmoidBCELoss(_ValueLoss):
    """Sigmoid binary cross-entropy on logits z (N, M), M independent labels (binary: M = 1,
    t (N,) or (N, 1); multi-label: t (N, M) of 0/1), stable form
    ``l_n = mean_j max(z, 0) - z t + log(1 + exp(-|z|))``; gradient ``(sigmoid(z) - t) / M``.
    A row counts as correct (``accuracy``) when every label's ``z > 0`` equals ``t > 1/2``
    (scikit-learn's exact-match accuracy for multi-label rows)."""

    KIND = "sigmoid_bce"
    TASK = "classify"
    _NAME = "z"

    def correct(self, y, t, name="t"):
        tv = self.targets(t, y.shape[0], y.shape[1], name=name)
        return np.all((y > 0) == (tv > 0.5), axis=1)


_NAMES = {"softmax_xent": SoftmaxCrossEntropy, "cross_entropy": SoftmaxCrossEntropy,
          "mse": MSELoss, "mae": MAELoss, "huber": HuberLoss, "sigmoid_bce": SigmoidBCELoss,
          "bce": SigmoidBCELoss}
NAMES = ("softmax_xent", "mse", "mae", "huber", "sigmoid_bce")


def get(loss, dtype=None):
    """A loss from a ``Loss``, a name (softmax_xent / cross_entropy, mse, mae, huber,
    sigmoid_bce / bce) or a ``config()`` dict; None gives ``SoftmaxCrossEntropy``."""
    if loss is None:
        return SoftmaxCrossEntropy(dtype=dtype)
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, dict):
        from . import from_config
        out = from_config(loss)
        if not isinstance(out, Loss):
            raise TypeError(f"loss config must describe a loss, got {loss.get('type')!r}")
        return out
    if isinstance(loss, str) and loss.lower().replace("-", "_") in _NAMES:
        return _NAMES[loss.lower().replace("-", "_")](dtype=dtype)
    raise (ValueError if isinstance(loss, str) else TypeError)(
        f"loss must be a dlfast Loss, a config dict or one of {NAMES}, got {loss!r}")
