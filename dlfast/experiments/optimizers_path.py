"""The dlfast optimisers minimising ``f(x, y) = x^2/20 + y^2`` from (-7, 2): the parameters are
a dict of two 1-element float64 arrays updated in place by ``optim.*.update`` with the exact
gradient ``(x/10, 2y)``. Contour plot of f with each path; table of the final point and f."""
from __future__ import annotations

import numpy as np

from .. import optim
from . import _common, register

START = (-7.0, 2.0)
# learning rates as in the textbook's optimizer_compare_naive (Nesterov, RMSProp added)
OPTIMIZERS = {
    "SGD": lambda: optim.SGD(lr=0.95),
    "Momentum": lambda: optim.Momentum(lr=0.1),
    "Nesterov": lambda: optim.Nesterov(lr=0.1),
    "AdaGrad": lambda: optim.AdaGrad(lr=1.5),
    "RMSProp": lambda: optim.RMSProp(lr=0.15),
    "Adam": lambda: optim.Adam(lr=0.3),
}


def f(x, y):
    """``x^2/20 + y^2``."""
    return x * x / 20.0 + y * y


def path(optimizer, steps, start=START):
    """``(steps + 1, 2)`` array of the points visited by ``optimizer`` from ``start``."""
    params = {"x": np.array([start[0]]), "y": np.array([start[1]])}
    grads = {"x": np.zeros(1), "y": np.zeros(1)}
    pts = [start]
    for _ in range(steps):
        grads["x"][0] = params["x"][0] / 10.0
        grads["y"][0] = 2.0 * params["y"][0]
        optimizer.update(params, grads)
        pts.append((float(params["x"][0]), float(params["y"][0])))
    return np.array(pts)


@register("optimizers-path", "SGD/Momentum/Nesterov/AdaGrad/RMSProp/Adam on x^2/20 + y^2",
          uses_data=False)
def run(out_dir, quick, seed, progress):
    steps = 30
    paths, rows = {}, []
    for name, make in OPTIMIZERS.items():
        p = path(make(), steps)
        paths[name] = p
        flips = int(np.sum(np.diff(np.sign(p[:, 1])) != 0))
        rows.append({"optimizer": name, "final x": p[-1, 0], "final y": p[-1, 1],
                     "final f": float(f(*p[-1])), "y sign changes": flips})
    fig, axes = _common.figure(2, 3, size=(4.0, 3.0))
    gx, gy = np.meshgrid(np.linspace(-10, 10, 200), np.linspace(-5, 5, 100))
    gz = f(gx, gy)
    for ax, (name, p) in zip(axes.ravel(), paths.items()):
        ax.contour(gx, gy, gz, levels=np.geomspace(0.01, 30, 12), colors="0.7", linewidths=0.7)
        ax.plot(p[:, 0], p[:, 1], "o-", color="C3", markersize=2.5, linewidth=1)
        ax.plot(0, 0, "+", color="k")
        ax.set_xlim(-10, 10)
        ax.set_ylim(-5, 5)
        ax.set_title(f"{name} (f = {f(*p[-1]):.2g})", fontsize=9)
    png = _common.save(fig, out_dir, "optimizers-path", f"{steps} steps on f(x, y) = x^2/20 + y^2")
    return {"title": f"optimisers on x^2/20 + y^2 from {START}, {steps} steps",
            "columns": ["optimizer", "final x", "final y", "final f", "y sign changes"],
            "rows": rows, "png": png, "paths": paths}
