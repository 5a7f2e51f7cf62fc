"""Bound training steps: a validated ``Sequential.loss_and_gradient`` replayed without checks.

The first step for a given key runs the ordinary path: every layer validates its input and
calls the checked kernels. Afterwards each layer binds its kernel calls to the arrays that step
used (``Layer._bind_train``), and the next steps with the same key run only those calls::

    key = (backend, x.shape, x.dtype, the loss layer and its class,
           (layer, its class, layer._bind_key()) for every layer)

A layer's key holds the ids of the arrays its calls use (params, gradients, running statistics;
the bound calls hold the arrays, so the ids stay theirs) and the settings they baked in
(activation, p, momentum, trainable ...). Changing any of them, the input's shape or dtype, or
the backend makes the next step take the checked path and bind again. Per step the net still
checks x (dtype, 2-D, finite) and the labels; an x that is, or shares memory with, an output
of the first layer takes the checked path (whose checks reject it).

The net returns the gradient dict of a bound step from the (name, array) items it recorded at
bind time: the key fixes them too (the gradient arrays' ids, the layers' ``trainable``).

Nets with a layer that has no bound form (or a subclass overriding forward/backward) always take
the checked path. The two paths run the same kernels on the same arrays: results are identical.

On a backend with compiled chains (``CHAIN_OPS``, ``Chain``: the compiled one) every layer and the
loss also bind their calls into compiled ops, and a step is one ``Chain.run`` call: no Python
between the kernels, the GIL released once (batch 1 SGD: 44.6 -> 37.6 us per step; batch 100
BN + dropout + Adam: 291 -> 272 us). Python still does what the calls did around the kernels:
the dropout counters (before), the layers' records and the loss value (after). The bound calls
remain the path when a layer has no op, the labels are not int64 indices after conversion, or
the chain is running in another thread.
"""
from __future__ import annotations

import numpy as np

from ._validation import labels_to_indices

__all__ = ["BoundStep", "step_key", "bind"]

_I64 = np.dtype(np.int64)


def step_key(impl, x, layers, loss_layer):
    return (impl.__name__, x.shape, x.dtype, loss_layer, type(loss_layer),
            *[(l, type(l), l._bind_key()) for l in layers])


class BoundStep:
    """``run(x, t) -> data loss``: forward, loss, backward of the bound calls (``runnable``), or
    a record that this key has no bound form (``runnable`` false: the net takes the checked path)."""

    __slots__ = ("key", "runnable", "_fwd", "_bwd", "_loss_fwd", "_loss_bwd", "_first_outs",
                 "grads", "_chain", "_n", "_classes")

    def __init__(self, key, fwd=(), bwd=(), loss=(None, None), first_outs=(), chain=None):
        self.key = key
        self.runnable = loss[0] is not None
        self._fwd, self._bwd = tuple(fwd), tuple(bwd)
        self._loss_fwd, self._loss_bwd = loss[:2]
        self._first_outs = tuple(first_outs)     # (bind drops the None entries)
        self.grads = ()     # the net's (name, gradient array) items, which the key also fixes
        self._chain = chain
        if chain is not None:
            self._n, self._classes = chain[4]["out"].shape

    def accepts(self, x):
        """x may be read by the bound calls: it is none of the first layer's outputs and shares
        no memory with them (only a view can)."""
        if self._chain is not None:
            return self._chain[0].accepts(x)
        if x.base is None:
            return not any(x is a for a in self._first_outs)
        return not any(np.may_share_memory(x, a) for a in self._first_outs)

    def run(self, x, t):
        if self._chain is not None:
            loss = self._chain_run(x, t)
            if loss is not None:
                return loss
        for f in self._fwd:
            x = f(x)
        loss = self._loss_fwd(x, t)
        d = self._loss_bwd()
        for b in self._bwd:
            d = b(d)
        return loss

    def _chain_run(self, x, t):
        """The step as one compiled chain (same kernels, same arrays, same records left in the
        layers), or None: labels to convert, or the chain busy in another thread (then the
        calls above run it, with the checks and side effects of their order)."""
        (chain, recs, xrec, loss_layer, loss_rec, own), n = self._chain, self._n
        labels = t
        if not (type(t) is np.ndarray and t.dtype == _I64 and t.shape == (n,)):
            try:
                labels = labels_to_indices(t, n, self._classes)
            except (TypeError, ValueError):
                return None     # the calls raise it, after the forward, as the checked path
        try:
            loss = chain.run(x, labels)
        except ValueError:
            labels_to_indices(t, n, self._classes)  # the checked path's message (names t)
            raise
        finally:
            for layer, rec in recs:
                layer._fwd = rec
            if xrec is not None:
                xrec["x"] = x
        if loss is not None:
            loss_rec["labels"], loss_rec["own"] = own, True
            loss_layer._fwd = loss_rec
            loss_layer.loss = loss
        return loss


def bind(impl, key, layers, loss_layer, first):
    """The ``BoundStep`` of the checked step just run with key ``key`` on backend ``impl``;
    ``first``: the index where that step's backward stopped (the first trainable parametrised
    layer, None when there is none)."""
    if not (all(l._bindable() for l in layers)
            and loss_layer._bindable("_bind_loss", ("_forward", "backward"))):
        return BoundStep(key)
    fwd, bwd, first_outs, links = [], [], (), []
    for i, layer in enumerate(layers):
        bound = layer._bind_train(impl, first is not None and i > first)
        if bound is None:
            return BoundStep(key)
        fwd.append(bound[0])
        if first is not None and i >= first:
            bwd.append(bound[1])
        if i == 0:
            first_outs = bound[2]
        links.append(bound[3] if len(bound) > 3 else (None, None))
    loss = loss_layer._bind_loss(impl)
    first_outs = tuple(a for a in first_outs if a is not None)
    return BoundStep(key, fwd, reversed(bwd), loss, first_outs,
                     _chain(impl, key, layers, links, loss_layer, loss, first, first_outs))


def _chain(impl, key, layers, links, loss_layer, loss, first, first_outs):
    """``(chain, layer records, the first layer's record if it keeps "x", loss layer, its record,
    its label buffer)`` when every layer and the loss have a compiled op, else None."""
    (lop, loss_rec, own) = loss[2]
    if lop is None or not layers or any(op is None for op, _ in links):
        return None
    recs = tuple((layer, rec) for layer, (_, rec) in zip(layers, links))
    for i in range(1, len(layers)):               # inputs after the first are fixed arrays
        if "x" in links[i][1]:
            links[i][1]["x"] = links[i - 1][1]["out"]
    drops = tuple((layer, op, rec["mask"].size) for layer, (op, rec) in zip(layers, links)
                  if "mask" in rec)
    xrec = links[0][1] if "x" in links[0][1] else None
    chain = impl.Chain([op for op, _ in links], lop, len(layers) if first is None else first,
                       key[1], key[2], drops, first_outs)
    return chain, recs, xrec, loss_layer, loss_rec, own
