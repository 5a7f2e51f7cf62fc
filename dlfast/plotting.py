"""Training curves as a PNG (matplotlib, drawn with the Agg canvas; pyplot and the global backend
are never touched, and matplotlib is imported only when a plot is made)."""
from __future__ import annotations

import os

__all__ = ["plot_history"]


def _series(history, key):
    d = history.as_dict() if hasattr(history, "as_dict") else dict(history)
    vals = d.get(key) or []
    return [v for v in vals if v is not None]


def plot_history(history, path, title=None, dpi=100):
    """Write ``path`` (PNG): loss (train and validation) and accuracy (train and validation) per
    epoch, side by side (R^2 instead of accuracy when the history has R^2 and no accuracy: a
    regression). ``history``: a ``dlfast.train.History`` or a dict of lists with keys
    ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy`` (or ``r2``, ``val_r2``; optionally
    ``epoch``). Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    d = history.as_dict() if hasattr(history, "as_dict") else dict(history)
    loss = _series(d, "loss")
    if not loss:
        raise ValueError("history has no epochs to plot (empty 'loss')")
    epochs = d.get("epoch") or list(range(1, len(loss) + 1))
    fig = Figure(figsize=(10, 4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax_l, ax_a = fig.subplots(1, 2)
    metric = ("r2", "R^2") if not (_series(d, "accuracy") or _series(d, "val_accuracy")) and \
        (_series(d, "r2") or _series(d, "val_r2")) else ("accuracy", "accuracy")
    for ax, key, label in ((ax_l, "loss", "loss"), (ax_a, *metric)):
        for prefix, name, style in (("", "train", "-o"), ("val_", "validation", "-s")):
            ys = _series(d, prefix + key)
            if ys:
                ax.plot(epochs[:len(ys)], ys, style, markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    ax_l.set_title("loss")
    ax_a.set_title(metric[1])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, format="png")
    return path
