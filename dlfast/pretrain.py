"""Greedy layer-wise RBM pre-training of a net's hidden Dense layers (contrastive divergence, CD-k).

For hidden Dense layer l (W (I, J), visible input v of I features), an RBM with visible bias bv and
hidden bias bh is trained on the rows of its input, in mini-batches (new order every epoch):

* ``h0 = sigmoid(v0 W + bh)``; hidden states ``h ~ Bernoulli(h0)`` (``kernels.bernoulli_sample``);
* k times: ``vk = act(h W^T + bv)`` (sigmoid for Bernoulli visible units, identity = the mean
  for Gaussian ones with unit variance), ``hk = sigmoid(vk W + bh)``, and ``h ~ Bernoulli(hk)``
  before every step but the last;
* ``kernels.rbm_cd_update``: ``W += lr ((v0^T h0 - vk^T hk)/n - wd W)``, ``bv += lr mean(v0 - vk)``,
  ``bh += lr mean(h0 - hk)`` (probabilities, not samples, in the statistics, as in Hinton's guide).

Bottom-up: layer l+1's data are layer l's hidden probabilities ``sigmoid(v W + bh)`` over the
whole set (Bernoulli visible units). The learned W and bh are written into the layer's ``W`` and
``b``. The RBM starts from ``W ~ N(0, 0.01^2)``, bv = bh = 0. The RBM's hidden units are
sigmoid; the net may use another activation (the weights are still written).
"""
from __future__ import annotations

import numpy as np

from . import kernels
from ._validation import (derive_seed, finite_array, float_array, positive_int, real, seed_value)

__all__ = ["rbm_pretrain"]


def _hidden_dense(net):
    from .layers import Dense
    from .net import MultiTaskNet, Sequential
    if not isinstance(net, Sequential) or isinstance(net, MultiTaskNet):
        raise TypeError(f"net must be a Sequential or MLP, got {type(net).__name__}")
    dense = []
    for i, l in enumerate(net.layers):
        if isinstance(l, Dense):
            dense.append(l)
        elif l.params:
            raise ValueError(f"rbm_pretrain needs a net whose only parametrised layers are Dense; "
                             f"layer {i} is a {type(l).__name__}")
    if len(dense) < 2:
        raise ValueError("rbm_pretrain needs at least one hidden Dense layer below the output layer")
    return dense[:-1]


def rbm_pretrain(net, x, epochs, k=1, lr=0.1, batch_size=32, seed=None, visible="auto", wd=0.0):
    """Pre-train every hidden Dense layer of ``net`` (a Sequential/MLP of Dense layers) as an RBM
    with CD-``k`` on the rows of ``x`` (N, in_features) of the net's dtype, greedily bottom-up
    (see the module docstring). ``visible``: "bernoulli" (x in [0, 1]), "gaussian" (standardised
    x) or "auto" (bernoulli when every value is in [0, 1]); it applies to the first layer, the
    layers above have Bernoulli visible units. ``seed`` fixes the initial weights, batch orders
    and samples. Returns per-layer histories: ``[[mean (v0 - vk)^2 per epoch] per layer]``."""
    layers = _hidden_dense(net)
    dt = net.dtype
    x = float_array("x", x, dt, ndim=2, features=layers[0].in_features, min_rows=1)
    finite_array("x", x)
    epochs = positive_int("epochs", epochs)
    k = positive_int("k", k)
    lr = real("lr", lr, 0.0, lo_open=True)
    wd = real("wd", wd, 0.0)
    batch_size = positive_int("batch_size", batch_size)
    if visible not in ("auto", "bernoulli", "gaussian"):
        raise ValueError(f"visible must be 'auto', 'bernoulli' or 'gaussian', got {visible!r}")
    in01 = bool(np.all((x >= 0) & (x <= 1)))
    if visible == "auto":
        visible = "bernoulli" if in01 else "gaussian"
    elif visible == "bernoulli" and not in01:
        raise ValueError("visible='bernoulli' needs x in [0, 1]; use visible='gaussian' for "
                         "standardised data")
    seed = seed_value(seed)
    rng = np.random.default_rng(derive_seed(seed, 0))
    histories, data = [], x
    for li, layer in enumerate(layers):
        vis_act = "sigmoid" if (li > 0 or visible == "bernoulli") else "identity"
        hist, (W, bh) = _train_rbm(data, layer.out_features, epochs, k, lr, wd, batch_size, rng,
                                   derive_seed(seed, li + 1, 3), vis_act)
        layer.params["W"][...] = W
        if "b" in layer.params:
            layer.params["b"][...] = bh
        histories.append(hist)
        if li + 1 < len(layers):
            nxt = np.empty((data.shape[0], W.shape[1]), dt)
            kernels.dense_forward(data, W, bh, nxt, "sigmoid")
            data = nxt
    return histories


def _train_rbm(data, n_hidden, epochs, k, lr, wd, batch_size, rng, sample_seed, vis_act):
    n, n_vis = data.shape
    dt = data.dtype
    W = (0.01 * rng.standard_normal((n_vis, n_hidden))).astype(dt)
    bv, bh = np.zeros(n_vis, dt), np.zeros(n_hidden, dt)
    counter = 0
    history = []
    for _ in range(epochs):
        order = rng.permutation(n)
        err = 0.0
        for s in range(0, n, batch_size):
            v0 = data[order[s:s + batch_size]]
            m = v0.shape[0]
            h0 = np.empty((m, n_hidden), dt)
            kernels.dense_forward(v0, W, bh, h0, "sigmoid")
            h = np.empty_like(h0)
            kernels.bernoulli_sample(h0, h, sample_seed, counter)
            counter += h.size
            vk, hk = np.empty_like(v0), np.empty_like(h0)
            Wt = np.ascontiguousarray(W.T)
            for step in range(k):
                kernels.dense_forward(h, Wt, bv, vk, vis_act)
                kernels.dense_forward(vk, W, bh, hk, "sigmoid")
                if step + 1 < k:
                    kernels.bernoulli_sample(hk, h, sample_seed, counter)
                    counter += h.size
            err += kernels.rbm_cd_update(v0, h0, vk, hk, W, bv, bh, lr, wd)
        if not np.isfinite(err):
            raise FloatingPointError(f"rbm_pretrain diverged (non-finite reconstruction error); "
                                     f"lower lr (got {lr})")
        history.append(err / (n * n_vis))
    return history, (W, bh)
