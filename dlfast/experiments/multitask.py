"""Multi-task learning on the digits: a shared trunk (Dense 64->100 ReLU, 100->100 ReLU) with two
softmax heads, the digit class (10) and "digit >= 5" (2), trained jointly (loss = sum of the two
cross-entropies, ``MultiTaskNet``) against two separate MLPs [100, 100] each trained on one task,
same optimiser (Adam lr 0.001), epochs and batch size. Table: test accuracies; bar chart."""
from __future__ import annotations

import numpy as np

from .. import layers as L
from .. import optim
from ..net import MLP, MultiTaskNet
from . import _common, register


@register("multitask", "shared trunk with digit and digit>=5 heads vs two separate nets")
def run(out_dir, quick, seed, progress, dataset):
    epochs = 10 if quick else 40
    xtr, ttr, xte, tte = _common.data(dataset, seed, progress=progress)
    n_in = xtr.shape[1]
    targets_tr = {"digit": ttr, "ge5": (ttr >= 5).astype(np.int64)}
    targets_te = {"digit": tte, "ge5": (tte >= 5).astype(np.int64)}
    rng = np.random.default_rng(seed)
    trunk = [L.Dense(n_in, 100, "relu", rng=rng), L.Dense(100, 100, "relu", rng=rng)]
    heads = {"digit": [L.Dense(100, 10, rng=rng)], "ge5": [L.Dense(100, 2, rng=rng)]}
    mt = MultiTaskNet(trunk, heads, seed=seed)
    hist, _ = _common.train(mt, optim.Adam(lr=0.001), xtr, targets_tr, epochs, 64, seed, progress)
    acc_mt = mt.accuracy(xte, targets_te)
    acc_sep = {}
    for k, (task, n_out) in enumerate((("digit", 10), ("ge5", 2))):
        net = MLP(n_in, [100, 100], n_out, seed=seed + 1 + k)
        _common.train(net, optim.Adam(lr=0.001), xtr, targets_tr[task], epochs, 64, seed, progress)
        acc_sep[task] = net.accuracy(xte, targets_te[task])
    n_mt = sum(p.size for p in mt.params.values())
    rows = [{"task": task, "multitask acc": acc_mt[task], "separate acc": acc_sep[task]}
            for task in ("digit", "ge5")]
    rows.append({"task": "parameters", "multitask acc": n_mt,
                 "separate acc": (n_in * 100 + 100 + 100 * 100 + 100) * 2 + 100 * 10 + 10 + 100 * 2 + 2})
    fig, axes = _common.figure(1, 1, size=(5.5, 4.0))
    ax = axes[0, 0]
    pos = np.arange(2)
    ax.bar(pos - 0.2, [acc_mt["digit"], acc_mt["ge5"]], 0.4, label="shared trunk, two heads")
    ax.bar(pos + 0.2, [acc_sep["digit"], acc_sep["ge5"]], 0.4, label="two separate nets")
    ax.set_xticks(pos, ["digit (10 classes)", "digit >= 5"])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.legend(loc="lower right")
    png = _common.save(fig, out_dir, "multitask", f"multi-task vs separate nets, {epochs} epochs")
    return {"title": f"multi-task learning on {_common.TITLES[dataset][0]}, {epochs} epochs (test accuracy; last "
                     f"row: number of parameters)",
            "columns": ["task", "multitask acc", "separate acc"], "rows": rows, "png": png,
            "multitask": acc_mt, "separate": acc_sep, "history": hist}
