"""Activation histograms of 5 layers of 100 units for 1,000 random inputs x ~ N(0, 1):
weights N(0, std^2) with std 1, std 0.01, Xavier (sqrt(1/100)) and He (sqrt(2/100)), each with
sigmoid, tanh and ReLU (a grid of subplots: one row per (init, activation), one column per layer).

Table: per (init, activation) the std of each layer's activations and the fraction of
"dead or saturated" units in the last layer (|a| < 0.02 for ReLU/tanh near 0, or sigmoid/tanh
within 0.02 of a bound)."""
from __future__ import annotations

import numpy as np

from .. import layers as L
from . import _common, register

INITS = {"std 1": 1.0, "std 0.01": 0.01, "Xavier": "xavier", "He": "he"}
ACTIVATIONS = ("sigmoid", "tanh", "relu")
N_LAYERS, WIDTH, N_INPUTS = 5, 100, 1000


def activations(init, activation, seed, n_layers=N_LAYERS, width=WIDTH, n_inputs=N_INPUTS):
    """List of the n_layers activation arrays (n_inputs, width) of a stack of ``Dense`` layers."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_inputs, width)).astype(np.float32)
    outs = []
    for _ in range(n_layers):
        layer = L.Dense(width, width, activation, weight_init=init, bias=True, rng=rng)
        x = layer.forward(x, train=False).copy()
        outs.append(x)
    return outs


def _saturated(a, activation):
    if activation == "sigmoid":
        return float(np.mean((a < 0.02) | (a > 0.98)))
    if activation == "tanh":
        return float(np.mean(np.abs(a) > 0.98))
    return float(np.mean(a <= 0.0))          # ReLU: dead units


@register("init-histograms", "activation histograms per layer for 4 inits x 3 activations",
          uses_data=False)
def run(out_dir, quick, seed, progress):
    n_inputs = 300 if quick else N_INPUTS
    rows, stds = [], {}
    fig, axes = _common.figure(len(INITS) * len(ACTIVATIONS), N_LAYERS, size=(2.2, 1.6))
    r = 0
    for iname, init in INITS.items():
        for act in ACTIVATIONS:
            outs = activations(init, act, seed, n_inputs=n_inputs)
            s = [float(np.std(a)) for a in outs]
            stds[(iname, act)] = s
            row = {"init": iname, "activation": act}
            row.update({f"std L{k + 1}": v for k, v in enumerate(s)})
            row["saturated/dead L5"] = _saturated(outs[-1], act)
            rows.append(row)
            rng = (0.0, 1.0) if act != "tanh" else (-1.0, 1.0)
            for k, a in enumerate(outs):
                ax = axes[r, k]
                ax.hist(a.ravel(), bins=30, range=rng, color="C0")
                ax.set_yticks([])
                ax.tick_params(labelsize=6)
                if r == 0:
                    ax.set_title(f"layer {k + 1}", fontsize=8)
                if k == 0:
                    ax.set_ylabel(f"{iname}\n{act}", fontsize=7)
            r += 1
    png = _common.save(fig, out_dir, "init-histograms", "activation distributions per layer")
    cols = ["init", "activation"] + [f"std L{k + 1}" for k in range(N_LAYERS)] + ["saturated/dead L5"]
    return {"title": "activation std per layer (5 x 100 units, inputs N(0,1))", "columns": cols,
            "rows": rows, "png": png, "stds": stds}
