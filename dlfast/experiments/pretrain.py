"""RBM pre-training of a deep sigmoid net: MLP 64 -> [100] * 4 -> 10, sigmoid, on the digits
(stratified 75/25 split), trained with SGD (lr 0.1, batch 32) from Xavier init, from He init, and
from Xavier init after greedy RBM pre-training of the four hidden layers (``dlfast.pretrain``,
CD-1, lr 0.1, batch 32). Table: final training loss, final and best validation accuracy, and the
reconstruction errors of the RBMs; PNG: training loss per epoch and the RBMs' reconstruction error."""
from __future__ import annotations

import numpy as np

from .. import optim
from ..net import MLP
from ..pretrain import rbm_pretrain
from . import _common, register

INITS = ("xavier", "he", "rbm")


@register("pretrain", "deep sigmoid net: RBM pre-training vs Xavier / He init (training curves)")
def run(out_dir, quick, seed, progress, dataset):
    epochs, rbm_epochs = (5, 4) if quick else (40, 15)
    xtr, ttr, xte, tte = _common.data(dataset, seed, progress=progress)
    rows, curves, recon = [], {}, None
    for init in INITS:
        net = MLP(xtr.shape[1], [100] * 4, 10, activation="sigmoid",
                  weight_init="he" if init == "he" else "xavier", seed=seed)
        note = ""
        if init == "rbm":
            recon = rbm_pretrain(net, xtr, rbm_epochs, k=1, lr=0.1, batch_size=32, seed=seed)
            note = ", ".join(f"{h[0]:.4f}->{h[-1]:.4f}" for h in recon)
        hist, _ = _common.train(net, optim.SGD(lr=0.1), xtr, ttr, epochs, 32, seed, progress,
                                x_val=xte, t_val=tte)
        curves[init] = (np.asarray(hist.loss), np.asarray(hist.val_accuracy))
        rows.append({"init": "Xavier + RBM pre-training" if init == "rbm" else init.capitalize(),
                     "train loss": float(hist.loss[-1]), "val acc": float(hist.val_accuracy[-1]),
                     "best val acc": float(np.max(hist.val_accuracy)),
                     "RBM recon. error (first->last epoch)": note})
    fig, axes = _common.figure(1, 3, size=(4.2, 3.3))
    for init, (loss, acc) in curves.items():
        ep = np.arange(1, len(loss) + 1)
        axes[0, 0].plot(ep, loss, label=init)
        axes[0, 1].plot(ep, acc, label=init)
    axes[0, 0].set_ylabel("training loss")
    axes[0, 1].set_ylabel("validation accuracy")
    for ax in axes[0, :2]:
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend()
    for i, h in enumerate(recon):
        axes[0, 2].plot(np.arange(1, len(h) + 1), h, marker="o", label=f"hidden layer {i + 1}")
    axes[0, 2].set_xlabel("RBM epoch")
    axes[0, 2].set_ylabel("mean (v - v_k)^2")
    axes[0, 2].grid(True, alpha=0.3)
    axes[0, 2].legend()
    png = _common.save(fig, out_dir, "pretrain", "MLP [100]*4 sigmoid, SGD lr 0.1")
    return {"title": f"RBM pre-training, MLP [100]*4 sigmoid on {_common.TITLES[dataset][0]}, SGD lr 0.1, {epochs} "
                     f"epochs (RBMs: CD-1, {rbm_epochs} epochs per layer)",
            "columns": ["init", "train loss", "val acc", "best val acc",
                        "RBM recon. error (first->last epoch)"],
            "rows": rows, "png": png, "curves": curves, "reconstruction": recon}
