"""Shared pieces of the experiments: figures (Agg canvas, no pyplot), the data split, and a
training run that records per-step losses (``dlfast.train.Trainer`` + a step callback)."""
from __future__ import annotations

import os

import numpy as np

from ..datasets import load_digits, load_idx_dataset, train_test_split
from ..train import LambdaCallback, NonFiniteError, Trainer


def figure(nrows, ncols, size=(4.0, 3.0), layout=None, **kw):
    """``(fig, axes)`` with a 2-D axes array, drawn on an Agg canvas (``layout``: matplotlib's
    layout engine, e.g. "constrained"; default: tight layout when saved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=90, layout=layout)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save(fig, out_dir, name, title=None):
    """Write ``<out_dir>/<name>.png``; returns the path."""
    if title:
        fig.suptitle(title)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, format="png")
    return path


#: How titles name each data set, and its samples.
TITLES = {"digits": ("the digits", "digits"), "mnist": ("MNIST", "MNIST images"),
          "fashion-mnist": ("Fashion-MNIST", "Fashion-MNIST images")}


def data(dataset, seed, test_fraction=0.25, n_train=None, progress=False):
    """``(x_train, t_train, x_test, t_test)``, float32 in [0, 1]: the embedded digits split in a
    stratified way fixed by ``seed`` (``test_fraction`` held out), or the train and t10k files of
    "mnist" / "fashion-mnist" (downloaded once, ``progress``: tqdm bars); ``n_train`` keeps a
    stratified subset of the train part."""
    if dataset == "digits":
        x, t = load_digits()
        xtr, ttr, xte, tte = train_test_split(x, t, test_fraction, seed=seed, stratify=True)
    else:
        xtr, ttr = load_idx_dataset(dataset, kind="train", download=True, progress=progress)
        xte, tte = load_idx_dataset(dataset, kind="t10k", download=True, progress=progress)
    if n_train is not None and n_train < len(xtr):
        xtr, ttr, _, _ = train_test_split(xtr, ttr, 1.0 - n_train / len(xtr), seed=seed + 1,
                                          stratify=True)
    return xtr, ttr, xte, tte


def train(model, optimizer, x, t, epochs, batch_size, seed, progress=False, x_val=None,
          t_val=None, allow_divergence=False):
    """Fit with ``Trainer``; returns ``(history, step_losses)`` (train-mode mini-batch losses).
    With ``allow_divergence``, a non-finite loss ends the run instead of raising and
    ``history.diverged`` is the epoch it happened in (0 when it did not)."""
    steps = []
    cb = LambdaCallback(on_step_end=lambda tr, step, logs: steps.append(logs["loss"]))
    trainer = Trainer(model, optimizer, epochs=epochs, batch_size=batch_size, seed=seed,
                      progress=progress, callbacks=[cb], handle_interrupt=False)
    try:
        hist = trainer.fit(x, t, x_val, t_val)
        hist.diverged = 0
    except NonFiniteError as exc:
        if not allow_divergence:
            raise
        hist = trainer.history
        hist.diverged = exc.epoch
    return hist, np.asarray(steps)


def smooth(y, k):
    """Moving average over ``k`` points (shorter at the start)."""
    y = np.asarray(y, dtype=np.float64)
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    for i in range(len(y)):
        lo = max(0, i + 1 - k)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out
