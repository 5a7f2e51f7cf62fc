"""Random search of the learning rate and weight decay (log scale) with ``dlfast.tune``: an MLP
[100]*5 ReLU (SGD, batch 100) trained on 500 digits, scored by the accuracy on a validation split
held out of those 500 (the test digits are never looked at). The best five are listed, the space
is narrowed to the range of the best five and searched again (the textbook's
hyperparameter_optimization, two rounds)."""
from __future__ import annotations

import math

import numpy as np

from .. import optim, tune
from ..datasets import train_val_split
from ..net import MLP
from ..train import NonFiniteError
from . import _common, register

SPACE = {"lr": tune.LogUniform(1e-6, 1e-1), "weight_decay": tune.LogUniform(1e-8, 1e-3)}


def make_train_fn(xtr, ttr, xva, tva, epochs, seed):
    """``train_fn(params) -> {"score": validation accuracy, "train_acc": ...}``; a diverged run
    scores NaN."""

    def train_fn(params):
        net = MLP(64, [100] * 5, 10, activation="relu", weight_init="he",
                  weight_decay=params["weight_decay"], seed=seed)
        try:
            hist, _ = _common.train(net, optim.SGD(lr=params["lr"]), xtr, ttr, epochs, 100, seed,
                                    x_val=xva, t_val=tva)
        except NonFiniteError:
            return {"score": math.nan, "train_acc": math.nan}
        return {"score": hist.val_accuracy[-1], "train_acc": hist.accuracy[-1]}

    return train_fn


@register("hyperparams", "random search of lr and weight decay, best five, narrowed and again")
def run(out_dir, quick, seed, progress):
    n_trials, epochs = (8, 10) if quick else (50, 50)
    x, t, _, _ = _common.digits(seed, n_train=500)
    xtr, ttr, xva, tva = train_val_split(x, t, 0.2, seed=seed, stratify=True)
    fn = make_train_fn(xtr, ttr, xva, tva, epochs, seed)
    first = tune.random_search(fn, SPACE, n_trials, seed=seed)
    narrowed = tune.narrow(SPACE, first, 5)
    second = tune.random_search(fn, narrowed, n_trials, seed=seed + 1)
    rows = []
    for rnd, trials in (("1", first), ("2", second)):
        for rank, tr in enumerate(trials[:5], 1):
            rows.append({"round": rnd, "rank": rank, "lr": tr.params["lr"],
                         "weight decay": tr.params["weight_decay"], "val acc": tr.score,
                         "train acc": tr.info["train_acc"]})
    fig, axes = _common.figure(1, 2, size=(4.5, 3.8), layout="constrained")
    for ax, (name, trials, space) in zip(axes[0], (("round 1", first, SPACE),
                                                  ("round 2 (narrowed)", second, narrowed))):
        lr = [tr.params["lr"] for tr in trials]
        wd = [tr.params["weight_decay"] for tr in trials]
        sc = [0.0 if math.isnan(tr.score) else tr.score for tr in trials]
        s = ax.scatter(lr, wd, c=sc, vmin=0, vmax=1, cmap="viridis", edgecolors="k")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("weight decay")
        ax.set_title(f"{name}: lr in [{space['lr'].low:.1e}, {space['lr'].high:.1e}]", fontsize=9)
    fig.colorbar(s, ax=axes[0].tolist(), label="validation accuracy")
    png = _common.save(fig, out_dir, "hyperparams", None)
    return {"title": f"random search, {n_trials} trials per round, {epochs} epochs, best five "
                     f"of each round (round 2 in the range of round 1's best five)",
            "columns": ["round", "rank", "lr", "weight decay", "val acc", "train acc"],
            "rows": rows, "png": png, "first": first, "second": second, "narrowed": narrowed}
