"""With vs without batch norm (PyTorch-default BN) over a grid of initial weight scales:
MLP [100]*5 ReLU, 1,000 training digits, SGD lr 0.01, batch 100 (the textbook's
batch_norm_test). A run whose loss overflows (large scales without BN) stops there and counts
as chance accuracy (0.1) for the remaining epochs. Small multiples of the training accuracy per epoch, one panel per scale."""
from __future__ import annotations

import numpy as np

from .. import optim
from ..net import MLP
from . import _common, register


@register("batchnorm", "with vs without batch norm over a grid of initial weight scales")
def run(out_dir, quick, seed, progress, dataset):
    scales = np.logspace(0, -4, num=5 if quick else 16)
    epochs = 10 if quick else 20
    xtr, ttr, _, _ = _common.data(dataset, seed, n_train=1000, progress=progress)
    rows, curves = [], {}
    for w in scales:
        accs = {}
        for bn in (True, False):
            net = MLP(xtr.shape[1], [100] * 5, 10, activation="relu", weight_init=float(w), batchnorm=bn,
                      seed=seed)
            hist, _ = _common.train(net, optim.SGD(lr=0.01), xtr, ttr, epochs, 100, seed, progress,
                                    allow_divergence=True)
            # a run whose loss overflowed (large scales without BN) is at chance level from then
            acc = list(hist.accuracy) + [0.1] * (epochs - len(hist.accuracy))
            accs[bn] = acc
            accs[f"diverged {bn}"] = hist.diverged
        curves[float(w)] = accs
        rows.append({"weight std": float(w), "train acc with BN": accs[True][-1],
                     "train acc without BN": accs[False][-1],
                     "BN better": bool(accs[True][-1] > accs[False][-1]),
                     "diverged without BN": bool(accs["diverged False"])})
    n = len(scales)
    ncols = 4
    nrows = -(-n // ncols)
    fig, axes = _common.figure(nrows, ncols, size=(3.0, 2.3))
    for i, (w, accs) in enumerate(curves.items()):
        ax = axes.ravel()[i]
        ep = np.arange(1, epochs + 1)
        ax.plot(ep, accs[True], label="batch norm", color="C0")
        ax.plot(ep, accs[False], "--", label="no batch norm", color="C1")
        ax.set_title(f"W std = {w:.2g}", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    png = _common.save(fig, out_dir, "batchnorm", "training accuracy per epoch")
    return {"title": f"batch norm vs none, MLP [100]*5 ReLU, 1000 {_common.TITLES[dataset][1]}, SGD lr 0.01, "
                     f"{epochs} epochs",
            "columns": ["weight std", "train acc with BN", "train acc without BN", "BN better",
                        "diverged without BN"],
            "rows": rows, "png": png, "curves": curves}
