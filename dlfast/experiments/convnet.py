"""The textbook's SimpleConvNet: conv (30 filters 5x5) -> ReLU -> max pool 2x2 -> dense 100 ->
ReLU -> dense 10, softmax cross-entropy, Adam lr 0.001, batch 100. On the 8x8 digits the
convolution pads by 2 (8x8 -> 8x8 -> pool 4x4, 480 features); on MNIST-sized images it pads by
0, as the book (28x28 -> 24x24 -> pool 12x12). Table: the accuracies per epoch; PNG: the training
and test accuracy curves and the first layer's 30 filters before and after training."""
from __future__ import annotations

import numpy as np

from .. import layers as L
from .. import optim
from ..net import Sequential
from . import _common, register


def simple_convnet(side, seed, filters=30, kernel=5, hidden=100, classes=10):
    """SimpleConvNet for 1-channel side x side images (padding 2 when side < 2 * kernel)."""
    pad = kernel // 2 if side < 2 * kernel else 0
    conv = (side + 2 * pad - kernel) + 1
    rng = np.random.default_rng(seed)
    return Sequential([L.Conv2D(1, filters, kernel, padding=pad, rng=rng), L.ReLU(),
                       L.MaxPool2D(2), L.Flatten(),
                       L.Dense(filters * (conv // 2) ** 2, hidden, "relu", rng=rng),
                       L.Dense(hidden, classes, rng=rng)], seed=seed), pad


def _mosaic(W, cols=10):
    """Filters W (F, 1, KH, KW) tiled into one image, each scaled to [0, 1], NaN gaps."""
    f, _, kh, kw = W.shape
    rows = -(-f // cols)
    img = np.full((rows * (kh + 1) - 1, cols * (kw + 1) - 1), np.nan)
    for i in range(f):
        w = W[i, 0].astype(np.float64)
        span = w.max() - w.min()
        r, c = divmod(i, cols)
        img[r * (kh + 1):r * (kh + 1) + kh, c * (kw + 1):c * (kw + 1) + kw] = \
            (w - w.min()) / span if span > 0 else 0.5
    return img


@register("convnet", "SimpleConvNet (conv 30x5x5, pool, dense 100): accuracy and filters")
def run(out_dir, quick, seed, progress, dataset):
    xtr, ttr, xte, tte = _common.data(dataset, seed, n_train=3000 if quick and
                                      dataset != "digits" else None, progress=progress)
    side = int(round(np.sqrt(xtr.shape[1])))
    xtr, xte = (a.reshape(len(a), 1, side, side) for a in (xtr, xte))
    epochs = 3 if quick else 20
    net, pad = simple_convnet(side, seed)
    before = net.layers[0].params["W"].copy()
    hist, _ = _common.train(net, optim.Adam(lr=0.001), xtr, ttr, epochs, 100, seed, progress,
                            x_val=xte, t_val=tte)
    after = net.layers[0].params["W"].copy()
    rows = [{"epoch": e + 1, "train loss": hist.loss[e], "train accuracy": hist.accuracy[e],
             "test accuracy": hist.val_accuracy[e]} for e in range(len(hist.loss))]
    fig, axes = _common.figure(1, 3, size=(4.2, 3.4))
    ep = np.arange(1, len(rows) + 1)
    ax = axes[0, 0]
    ax.plot(ep, hist.accuracy, "o-", label="train")
    ax.plot(ep, hist.val_accuracy, "s--", label="test")
    ax.set_xticks(ep[::max(1, len(ep) // 10)])
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend()
    for ax, W, name in ((axes[0, 1], before, "before"), (axes[0, 2], after, "after")):
        ax.imshow(_mosaic(W), cmap="gray", interpolation="nearest")
        ax.set_title(f"conv filters {name} training", fontsize=10)
        ax.axis("off")
    what = _common.TITLES[dataset][0]
    png = _common.save(fig, out_dir, "convnet", f"SimpleConvNet on {what}")
    return {"title": f"SimpleConvNet on {what} ({side}x{side}, conv padding {pad}), Adam lr "
                     f"0.001, batch 100, {epochs} epochs",
            "columns": ["epoch", "train loss", "train accuracy", "test accuracy"],
            "rows": rows, "png": png, "filters_before": before, "filters_after": after,
            "padding": pad}
