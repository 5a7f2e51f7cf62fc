"""Augmentation on a small training set: MLP 64 -> [100, 100] -> 10 (ReLU, He, Adam lr 1e-3,
batch 50) on 200 training digits, validation on the held-out 25% of the digits, without and with
``dlfast.augment.Augment`` settings (each alone, then ``DIGITS_DEFAULTS`` of the CLI's
``--augment``), a fresh augmented copy of the 200 images every epoch (quick: none, noise, all).
Table: final and best validation accuracy, final training accuracy (on the un-augmented images);
PNG: validation curves and augmented samples."""
from __future__ import annotations

import numpy as np

from .. import optim
from ..augment import DIGITS_DEFAULTS, IMAGE_DEFAULTS, Augment, image_shape
from ..net import MLP
from ..train import Trainer
from . import _common, register

SETTINGS = {"none": None, "noise 0.05": dict(noise=0.05, clip=(0.0, 1.0)),
            "shift 0.5 px": dict(shift=0.5), "rotation 8 deg": dict(rotate=8.0),
            "scale 0.08": dict(scale=0.08), "all (--augment)": DIGITS_DEFAULTS}
QUICK = ("none", "noise 0.05", "all (--augment)")


@register("augment", "validation accuracy with vs without augmentation (200 training digits)")
def run(out_dir, quick, seed, progress, dataset):
    epochs = 30 if quick else 150
    n_train = 200
    xtr, ttr, xte, tte = _common.data(dataset, seed, n_train=n_train, progress=progress)
    shape = image_shape(xtr.shape[1])
    settings = dict(SETTINGS)                          # --augment's defaults for the image size
    settings["all (--augment)"] = DIGITS_DEFAULTS if shape[0] <= 8 else IMAGE_DEFAULTS
    samples_of = _common.TITLES[dataset][1]
    rows, curves = [], {}
    for name, kw in settings.items():
        if quick and name not in QUICK:
            continue
        aug = None if kw is None else Augment(shape=shape, seed=seed, **kw)
        net = MLP(xtr.shape[1], [100, 100], 10, activation="relu", weight_init="he", seed=seed)
        tr = Trainer(net, optim.Adam(lr=1e-3), epochs=epochs, batch_size=50, seed=seed,
                     progress=progress, transform=aug, handle_interrupt=False)
        hist = tr.fit(xtr, ttr, xte, tte)
        curves[name] = (np.asarray(hist.accuracy), np.asarray(hist.val_accuracy))
        rows.append({"training data": name, "train acc": float(hist.accuracy[-1]),
                     "val acc": float(hist.val_accuracy[-1]),
                     "best val acc": float(np.max(hist.val_accuracy))})
    samples = Augment(shape=shape, seed=seed + 1, **settings["all (--augment)"])(
        np.repeat(xtr[:1], 5, axis=0))
    fig, axes = _common.figure(1, 2, size=(5.0, 3.6))
    ax = axes[0, 0]
    for name, (tr_acc, va_acc) in curves.items():
        ep = np.arange(1, len(va_acc) + 1)
        ax.plot(ep, va_acc, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0.5, 1.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    ax.imshow(np.hstack([xtr[0].reshape(shape)] + [s.reshape(shape) for s in samples]),
              cmap="gray_r", vmin=0, vmax=1)
    ax.set_title("original, then 5 augmented copies")
    ax.axis("off")
    png = _common.save(fig, out_dir, "augment", f"{n_train} training {samples_of}, MLP [100, 100]")
    return {"title": f"augmentation, {n_train} training {samples_of}, MLP [100, 100], Adam, "
                     f"{epochs} epochs (validation: {len(xte)} held-out {samples_of})",
            "columns": ["training data", "train acc", "val acc", "best val acc"],
            "rows": rows, "png": png, "curves": curves}
