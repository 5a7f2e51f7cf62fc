"""Softmax cross-entropy loss."""
from __future__ import annotations

import numpy as np

from .. import kernels
from .._validation import finite_array, float_array, labels_to_indices, real
from ._base import Layer, Pair

__all__ = ["SoftmaxCrossEntropy"]


class SoftmaxCrossEntropy(Layer):
    """Softmax + cross-entropy, averaged over the batch.

    ``forward(logits, t)`` returns ``L = mean_n (logsumexp(logits_n) - logits[n, t_n])`` (float);
    t: class indices (any int dtype) or exact one-hot rows. ``backward(dout=1.0)`` returns
    ``dL/dlogits = dout * (softmax(logits) - onehot(t)) / N``. ``probs``: the last softmax.
    """

    def forward(self, logits, t):
        self._adopt(logits)
        logits = float_array("logits", logits, self.dtype, ndim=2, min_rows=1)
        if self.check_finite:
            finite_array("logits", logits)
        n, c = logits.shape
        labels = labels_to_indices(t, n, c)
        probs = self._buf("probs", logits.shape)
        loss = kernels.softmax_xent_forward(logits, labels, probs)
        self._fwd = {"out": probs, "labels": labels}
        self.loss = loss
        return loss

    def kernel_pair(self, x_shape, weight):
        """The loss op for logits of ``x_shape``; its backward is ``weight * dL/dlogits``."""
        rec = {"out": self._buf("probs", x_shape), "labels": self._buf("labels", x_shape[:1], np.int64)}
        return Pair("softmax_xent", dict(probs=rec["out"], labels=rec["labels"],
                                         dlogits=self._buf("dx", x_shape), weight=weight), rec)

    @property
    def probs(self):
        return None if self._fwd is None else self._fwd["out"]

    def backward(self, dout=1.0, compute_dx=True):
        if self._fwd is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        dout = real("dout", dout)
        probs = self._fwd["out"]
        dlogits = self._buf("dx", probs.shape)
        kernels.softmax_xent_backward(probs, self._fwd["labels"], dlogits, dout)
        return dlogits
