"""The dlfast optimisers (defaults: SGD, Momentum, Nesterov, AdaGrad lr 0.01; RMSProp lr 0.001;
Adam lr 0.001) training the MLP [100, 100, 100, 100] ReLU (He init) on the embedded digits with
the same initial weights and the same batch order: per-step loss curves (smoothed) and a table of
the final mean batch loss and test accuracy."""
from __future__ import annotations

import numpy as np

from .. import optim
from ..net import MLP
from . import _common, register

OPTIMIZERS = {
    "SGD": lambda: optim.SGD(lr=0.01),
    "Momentum": lambda: optim.Momentum(lr=0.01),
    "Nesterov": lambda: optim.Nesterov(lr=0.01),
    "AdaGrad": lambda: optim.AdaGrad(lr=0.01),
    "RMSProp": lambda: optim.RMSProp(lr=0.001),
    "Adam": lambda: optim.Adam(lr=0.001),
}


@register("optimizers", "optimisers training an MLP [100]*4 on the digits: loss curves")
def run(out_dir, quick, seed, progress, dataset):
    epochs = 8 if quick else 60
    xtr, ttr, xte, tte = _common.data(dataset, seed, progress=progress)
    where = _common.TITLES[dataset][0]
    curves, rows = {}, []
    for name, make in OPTIMIZERS.items():
        net = MLP(xtr.shape[1], [100] * 4, 10, activation="relu", weight_init="he", seed=seed)
        hist, steps = _common.train(net, make(), xtr, ttr, epochs, 128, seed, progress,
                                    x_val=xte, t_val=tte)
        curves[name] = steps
        rows.append({"optimizer": name, "steps": len(steps),
                     "final loss (last 10 batches)": float(np.mean(steps[-10:])),
                     "train loss": hist.loss[-1], "test accuracy": hist.val_accuracy[-1]})
    fig, axes = _common.figure(1, 1, size=(7.0, 4.5))
    ax = axes[0, 0]
    k = max(1, len(next(iter(curves.values()))) // 40)
    for name, s in curves.items():
        ax.plot(np.arange(1, len(s) + 1), _common.smooth(s, k), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"mini-batch loss (moving average of {k})")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    png = _common.save(fig, out_dir, "optimizers", f"MLP [100]*4 on {where}")
    return {"title": f"optimisers on {where}, MLP [100]*4 ReLU, {epochs} epochs of batch 128",
            "columns": ["optimizer", "steps", "final loss (last 10 batches)", "train loss",
                        "test accuracy"],
            "rows": rows, "png": png, "curves": curves}
