"""Softmax cross-entropy loss."""
from __future__ import annotations

from .. import kernels
from .._validation import finite_array, float_array, labels_to_indices, real
from ._base import Layer

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
