"""Softmax cross-entropy loss."""
from __future__ import annotations

import numpy as np

from .. import kernels
from .._validation import finite_array, float_array, labels_to_indices, real
from ._base import chain_op, Layer

__all__ = ["SoftmaxCrossEntropy"]


class SoftmaxCrossEntropy(Layer):
    """Softmax + cross-entropy, averaged over the batch.

    ``forward(logits, t)`` returns ``L = mean_n (logsumexp(logits_n) - logits[n, t_n])`` (float);
    t: class indices (any int dtype) or exact one-hot rows. ``backward(dout=1.0)`` returns
    ``dL/dlogits = dout * (softmax(logits) - onehot(t)) / N``. ``probs``: the last softmax.
    """

    def forward(self, logits, t):
        return self._forward(logits, t)

    def _forward(self, logits, t, copy_labels=False):
        """``forward``; ``copy_labels``: work on a copy of int64 index labels, so that ``backward``
        may trust them (for nets, which call ``backward`` before t can change)."""
        self._adopt(logits)
        logits = float_array("logits", logits, self.dtype, ndim=2, min_rows=1)
        if self.check_finite:
            finite_array("logits", logits)
        n, c = logits.shape
        labels = labels_to_indices(t, n, c)
        if copy_labels and labels is t:
            labels = labels.copy()
        probs = self._buf("probs", logits.shape)
        # Trusted calls (Layer._untrusted): labels_to_indices checked the labels just now; the
        # backward trusts only labels of its own (not t, which the caller may change meanwhile).
        new = self._untrusted("fwd", (logits, labels), (probs,))
        loss = kernels.softmax_xent_forward(logits, labels, probs, check=new is not None)
        self._validated("fwd", new)
        self._fwd = {"out": probs, "labels": labels, "own": labels is not t}
        self.loss = loss
        return loss

    def _bind_loss(self, impl):
        """``(fwd, bwd, (op, rec, own))`` replaying the last validated ``_forward`` /
        ``backward(1.0)`` pair of a net step with the kernels of ``impl`` unchecked:
        ``fwd(logits, t) -> loss`` (t is checked: int64 indices of shape (N,) are copied into a
        label buffer of the layer's own, ``own``, whose range the loss kernel checks; other
        labels go through ``labels_to_indices``), ``bwd() -> dlogits``; ``op``: the same as a
        compiled loss op (``chain_op``, None on a backend without them), ``rec``: the record
        the step leaves in ``_fwd``."""
        rec = self._fwd
        probs = rec["out"]
        n, c = probs.shape
        dl = self._buf("dx", probs.shape)
        own = self._buf("labels", (n,), np.int64)
        shape, i64 = (n,), np.dtype(np.int64)
        fk, bk = impl.softmax_xent_forward, impl.softmax_xent_backward

        def fwd(logits, t):
            if type(t) is np.ndarray and t.dtype == i64 and t.shape == shape:
                own[...] = t
                labels = own
            else:
                labels = labels_to_indices(t, n, c)
                if labels is t:
                    labels = labels.copy()
            try:
                loss = fk(logits, labels, probs)
            except ValueError:
                labels_to_indices(t, n, c)      # the checked path's message (names t)
                raise
            rec["labels"], rec["own"] = labels, True
            self._fwd = rec
            self.loss = loss
            return loss

        def bwd():
            bk(probs, rec["labels"], dl, 1.0)
            return dl
        return fwd, bwd, (chain_op(impl, "softmax_xent", probs, own, dl), rec, own)

    @property
    def probs(self):
        return None if self._fwd is None else self._fwd["out"]

    def backward(self, dout=1.0, compute_dx=True):
        if self._fwd is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        dout = real("dout", dout)
        probs, labels = self._fwd["out"], self._fwd["labels"]
        dlogits = self._buf("dx", probs.shape)
        new = self._untrusted("bwd", (probs, labels), (dlogits,), (), (dout,))
        trusted = new is None and self._fwd["own"]
        kernels.softmax_xent_backward(probs, labels, dlogits, dout, check=not trusted)
        self._validated("bwd", new)
        return dlogits
