"""Random search of the learning rate and weight decay (log scale) with ``dlfast.tune``: an MLP
[100]*5 ReLU (SGD, batch 100) trained on 500 digits, scored by the accuracy on a validation split
held out of those 500 (the test digits are never looked at). The best five are listed, the space
is narrowed to the range of the best five and searched again (the textbook's
hyperparameter_optimization, two rounds). A diverged run is a failed trial (score NaN)."""
from __future__ import annotations

import math
import os

from .. import tune
from ..datasets import train_val_split
from . import _common, register

SPACE = {"lr": tune.LogUniform(1e-6, 1e-1), "weight_decay": tune.LogUniform(1e-8, 1e-3)}


def make_objective(xtr, ttr, xva, tva, epochs):
    """The picklable ``tune.Objective``: ``objective(params, seed) -> {"score": validation
    accuracy, "curve", "train_accuracy", ...}``."""
    return tune.make_objective(
        tune.MLPBuilder(xtr.shape[1], [100] * 5, 10, activation="relu", weight_init="he"),
        tune.OptimizerBuilder("sgd"), xtr, ttr, x_val=xva, t_val=tva, epochs=epochs,
        batch_size=100)


@register("hyperparams", "random search of lr and weight decay, best five, narrowed and again")
def run(out_dir, quick, seed, progress, dataset):
    n_trials, epochs = (8, 10) if quick else (50, 50)
    x, t, _, _ = _common.data(dataset, seed, n_train=500, progress=progress)
    xtr, ttr, xva, tva = train_val_split(x, t, 0.2, seed=seed, stratify=True)
    fn = make_objective(xtr, ttr, xva, tva, epochs)
    first = tune.random_search(fn, SPACE, n_trials, seed=seed)
    narrowed = tune.narrow(SPACE, first, 5)
    second = tune.random_search(fn, narrowed, n_trials, seed=seed + 1)
    rows = []
    for rnd, trials in (("1", first), ("2", second)):
        for rank, tr in enumerate(trials[:5], 1):
            rows.append({"round": rnd, "rank": rank, "lr": tr.params["lr"],
                         "weight decay": tr.params["weight_decay"], "val acc": tr.score,
                         "train acc": tr.info.get("train_accuracy", math.nan)})
    png = tune.plot([first, second], os.path.join(out_dir, "hyperparams.png"), k=5)
    return {"title": f"random search, {n_trials} trials per round, {epochs} epochs, best five "
                     f"of each round (round 2 in the range of round 1's best five)",
            "columns": ["round", "rank", "lr", "weight decay", "val acc", "train acc"],
            "rows": rows, "png": png, "first": first, "second": second, "narrowed": narrowed,
            "tables": [tune.format_table(first, 5), tune.format_table(second, 5)]}
