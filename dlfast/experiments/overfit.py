"""Overfitting on 300 training digits with a deep net (MLP [100]*6 ReLU, SGD lr 0.01, batch 100):
train vs validation accuracy per epoch without regularisation, with weight decay (L2, lambda 0.1)
and with dropout (p 0.2, inverted), as the textbook's overfit_weight_decay / overfit_dropout.
Table: accuracies and gaps (train - validation accuracy; validation - train loss) averaged over
the last 10% of epochs."""
from __future__ import annotations

import numpy as np

from .. import optim
from ..net import MLP
from . import _common, register

SETTINGS = {"none": {}, "weight decay 0.1": {"weight_decay": 0.1}, "dropout 0.2": {"dropout": 0.2}}


@register("overfit", "train vs validation accuracy: none, weight decay, dropout (300 samples)")
def run(out_dir, quick, seed, progress, dataset):
    epochs = 100 if quick else 200
    xtr, ttr, xte, tte = _common.data(dataset, seed, n_train=300, progress=progress)
    rows, curves = [], {}
    for name, kw in SETTINGS.items():
        net = MLP(xtr.shape[1], [100] * 6, 10, activation="relu", weight_init="he", seed=seed, **kw)
        hist, _ = _common.train(net, optim.SGD(lr=0.01), xtr, ttr, epochs, 100, seed, progress,
                                x_val=xte, t_val=tte)
        curves[name] = (hist.accuracy, hist.val_accuracy)
        last = slice(-max(1, epochs // 10), None)       # mean of the last 10% of epochs
        tr, va = float(np.mean(hist.accuracy[last])), float(np.mean(hist.val_accuracy[last]))
        lgap = float(np.mean(hist.val_loss[last]) - np.mean(hist.loss[last]))
        rows.append({"regularisation": name, "train acc": tr, "validation acc": va,
                     "gap": tr - va, "loss gap": lgap})
    fig, axes = _common.figure(1, len(SETTINGS), size=(4.0, 3.2))
    for ax, (name, (tr, va)) in zip(axes[0], curves.items()):
        ep = np.arange(1, len(tr) + 1)
        ax.plot(ep, tr, label="train")
        ax.plot(ep, va, label="validation")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend()
    png = _common.save(fig, out_dir, "overfit", "300 training samples, MLP [100]*6")
    return {"title": f"overfitting, 300 training {_common.TITLES[dataset][1]}, MLP [100]*6, {epochs} epochs "
                     f"(accuracies averaged over the last 10% of epochs)",
            "columns": ["regularisation", "train acc", "validation acc", "gap", "loss gap"],
            "rows": rows, "png": png, "curves": curves}
