"""Training curves of the ReLU MLP [100, 100, 100, 100] on the digits (SGD lr 0.01, as the
textbook) for weights N(0, 0.01^2), Xavier and He: with std 0.01 the signal vanishes and the net
does not learn; He learns fastest."""
from __future__ import annotations

import numpy as np

from .. import optim
from ..net import MLP
from . import _common, register

INITS = {"std 0.01": 0.01, "Xavier": "xavier", "He": "he"}


@register("init", "training curves for std 0.01, Xavier and He (ReLU net)")
def run(out_dir, quick, seed, progress, dataset):
    epochs = 15 if quick else 100
    xtr, ttr, xte, tte = _common.data(dataset, seed, progress=progress)
    curves, rows = {}, []
    for name, init in INITS.items():
        net = MLP(xtr.shape[1], [100] * 4, 10, activation="relu", weight_init=init, seed=seed)
        hist, steps = _common.train(net, optim.SGD(lr=0.01), xtr, ttr, epochs, 128, seed,
                                    progress, x_val=xte, t_val=tte)
        curves[name] = steps
        rows.append({"init": name, "first loss": float(steps[0]),
                     "final loss (last 10 batches)": float(np.mean(steps[-10:])),
                     "test accuracy": hist.val_accuracy[-1]})
    fig, axes = _common.figure(1, 1, size=(7.0, 4.5))
    ax = axes[0, 0]
    k = max(1, len(next(iter(curves.values()))) // 40)
    for name, s in curves.items():
        ax.plot(np.arange(1, len(s) + 1), _common.smooth(s, k), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"mini-batch loss (moving average of {k})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    png = _common.save(fig, out_dir, "init", "weight initialisation, ReLU MLP [100]*4, SGD")
    return {"title": f"initialisation, ReLU MLP [100]*4, SGD lr 0.01, {epochs} epochs",
            "columns": ["init", "first loss", "final loss (last 10 batches)", "test accuracy"],
            "rows": rows, "png": png, "curves": curves}
