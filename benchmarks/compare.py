#!/usr/bin/env python
"""dlfast-compiled vs dlfast-NumPy vs PyTorch eager, measured side by side in one run.

Cases (float32, ``--threads`` threads for dlfast, BLAS and torch):

* ``step bn_adam`` — one training step (forward, backward, update) of the MLP
  784 -> [100, 100, 100, 100] -> 10, ReLU, He init, batch norm, dropout 0.5, Adam;
* ``step sgd`` — the same MLP without batch norm or dropout, plain SGD;
* ``dense_fwd`` / ``dense_bwd`` — the fused dense layer (``x @ W + b`` then ReLU, and its backward);
* ``optim <name>`` — ``optimizer.update`` on one parameter of 10^6 elements;
* ``adam_kernel`` / ``adam_update`` — ``kernels.adam_update`` / ``Adam.update`` on 10^7 elements.

Probes give each figure a machine limit: ``gemm`` = the bare ``np.matmul`` calls of the same shapes
(into preallocated outputs), ``bandwidth`` = a plain NumPy copy moving the bytes of the Adam update
(read w, g, m, v; write w, m, v: 7 * 4 bytes per parameter), chunked over the threads.

Timing: every implementation runs blocks of calls (sized at calibration to ``--block-ms``); each
round times one block of every implementation, in a rotating order (interleaved, so the load of the
shared machine hits all alike), after a ``--settle-ms`` pause (with 2+ threads; OpenBLAS's worker
threads spin for ~0.11 s after use and would steal a core from the next one: _machine.SETTLE_S) and
5 ms of untimed calls (in a VM the first parallel region after idling waits for the sleeping vCPU,
up to 12 ms, and the next calls still stall now and then, which a training loop never pays;
calibration keeps the fastest of 3 timings likewise); the
figure is the median over ``--rounds`` rounds of the time per call. Ratios are medians of the
per-round ratios (paired within a round, so slow drifts of the load cancel); ``spread`` is the
largest interquartile range / median of the case's implementations (above ~20%: a noisy figure).
PyTorch is optional (``pip install torch==2.13.0``): without it its column is skipped.

    python benchmarks/compare.py --json docs/performance.json --plot docs/performance.png
"""
from __future__ import annotations

import _machine

_machine.unpin_openblas()       # before NumPy loads its OpenBLAS (see _machine)

import argparse
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import dlfast
from dlfast import kernels, optim
from dlfast.net import MLP

try:
    import torch
except ImportError:          # optional
    torch = None

IMPLS = ("cython", "numpy", "torch")
HIDDEN = [100, 100, 100, 100]
N_IN, N_OUT = 784, 10
DEFAULT_BN_BATCHES = (32, 100, 256, 1000)
DEFAULT_SGD_BATCHES = (1, 10, 100, 1000)
FULL_BN_BATCHES = (32, 64, 100, 256, 512, 1000, 2048, 4096)
FULL_SGD_BATCHES = (1, 10, 32, 100, 256, 1000, 4096)


# ============================================================================ timing
class Case:
    """One comparison: ``fns`` impl -> zero-argument callable doing one operation."""

    def __init__(self, name, group, fns, probe=None, probe_kind=None, **info):
        self.name, self.group, self.fns = name, group, fns
        self.probe, self.probe_kind, self.info = probe, probe_kind, info
        self.times = {}          # impl or "probe" -> list of per-call seconds


def _calibrate(fn, block_s):
    """Calls per block so that one block lasts about ``block_s`` (after a warm-up). Each trial
    length is timed 3 times and the fastest kept: one stall (a woken vCPU, another process) must
    not shrink the blocks to a single call."""
    for _ in range(3):
        fn()
    n, t = 1, 0.0
    while True:
        trials = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            trials.append(time.perf_counter() - t0)
        t = min(trials)
        if t >= block_s / 4 or n >= 1 << 16:
            break
        n *= 4
    return max(1, int(round(n * block_s / max(t, 1e-9))))


def run_case(case, rounds, block_s, fixed_n=None, settle_s=0.0):
    fns = dict(case.fns)
    if case.probe is not None:
        fns["probe"] = case.probe
    names = list(fns)
    counts = {k: fixed_n or _calibrate(fns[k], block_s) for k in names}
    case.times = {k: [] for k in names}
    case.calls = counts
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]   # rotate: no fixed position
        for k in order:
            fn, n = fns[k], counts[k]
            if settle_s:
                time.sleep(settle_s)    # let the previous implementation's spinning threads sleep
                _warm(fn, WARM_S)       # untimed: wake this one's sleeping workers and vCPUs
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            case.times[k].append((time.perf_counter() - t0) / n)


WARM_S = 0.005


def _warm(fn, seconds):
    """Untimed calls for ``seconds`` (at least one). In a VM the first parallel region after
    idling waited up to 12 ms for the sleeping vCPU, and the next few calls still stalled for
    1-3 ms now and then (AMD EPYC, 2 vCPUs: a 256x784x100 dense forward took 3.5 ms, 0.6, 0.5,
    0.4, ..., 3.1 ms, then 0.33 ms steadily), which a training loop never pays."""
    end = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < end:
        fn()


def median(case, k):
    t = case.times.get(k)
    return statistics.median(t) if t else None


# ============================================================================ data
def mnist_like(n, seed=0):
    """Synthetic MNIST-shaped data: x (n, 784) float32 in [0, 1] (k/255), labels int64 in [0, 10)."""
    rng = np.random.default_rng(seed)
    x = (rng.integers(0, 256, size=(n, N_IN), dtype=np.uint8) / np.float32(255)).astype(np.float32)
    t = rng.integers(0, N_OUT, size=n).astype(np.int64)
    return x, t


class Batches:
    """Cycles through consecutive row slices (contiguous views) of a fixed data set."""

    def __init__(self, batch, rows=8192, seed=0):
        rows = max(rows, batch)
        self.x, self.t = mnist_like(rows, seed)
        self.b = batch
        self.k = rows // batch
        self.i = 0
        if torch is not None:
            self.tx, self.tt = torch.from_numpy(self.x), torch.from_numpy(self.t)

    def next(self):
        i, b = self.i, self.b
        self.i = (i + 1) % self.k
        return self.x[i * b:(i + 1) * b], self.t[i * b:(i + 1) * b]

    def next_torch(self):
        i, b = self.i, self.b
        self.i = (i + 1) % self.k
        return self.tx[i * b:(i + 1) * b], self.tt[i * b:(i + 1) * b]


def on_backend(backend, fn):
    """``fn`` run on ``backend``: as is on the process's backend (its users pay no per-call
    context), else inside ``dlfast.use_backend`` (~0.5 us a call, on the NumPy backend's side)."""
    if dlfast.get_backend() == backend:
        return fn

    def f():
        with dlfast.use_backend(backend):
            return fn()
    return f


# ============================================================================ end-to-end steps
def dlfast_step(backend, config, batch):
    bn = config == "bn_adam"
    net = MLP(N_IN, HIDDEN, N_OUT, activation="relu", weight_init="he", batchnorm=bn,
              dropout=0.5 if bn else 0.0, seed=0)
    opt = optim.Adam(lr=1e-3) if bn else optim.SGD(lr=0.01)
    data = Batches(batch)

    def step():
        x, t = data.next()
        _, grads = net.loss_and_gradient(x, t)
        opt.update(net.params, grads)
    return on_backend(backend, step)


def torch_step(config, batch):
    bn = config == "bn_adam"
    nn = torch.nn
    layers, fan = [], N_IN
    for h in HIDDEN:
        lin = nn.Linear(fan, h)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if bn:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU())
        if bn:
            layers.append(nn.Dropout(0.5))
        fan = h
    layers.append(nn.Linear(fan, N_OUT))
    model = nn.Sequential(*layers).train()
    crit = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3) if bn else \
        torch.optim.SGD(model.parameters(), lr=0.01)
    data = Batches(batch)

    def step():
        x, t = data.next_torch()
        opt.zero_grad(set_to_none=True)
        loss = crit(model(x), t)
        loss.backward()
        opt.step()
    return step


def gemm_shapes(batch):
    """(A shape, B shape) of every matmul of one MLP training step: forward x @ W per layer;
    backward dW = x.T @ dz per layer and dx = dz @ W.T for all layers but the first."""
    sizes = [N_IN, *HIDDEN, N_OUT]
    out = []
    for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:])):
        out.append(((batch, i), (i, o)))                 # forward
        out.append(((i, batch), (batch, o)))             # dW
        if k:
            out.append(((batch, o), (o, i)))             # dx
    return out


def gemm_probe(shapes, seed=1):
    rng = np.random.default_rng(seed)
    ops = []
    for sa, sb in shapes:
        a = rng.standard_normal(sa, dtype=np.float32)
        b = rng.standard_normal(sb, dtype=np.float32)
        ops.append((a, b, np.empty((sa[0], sb[1]), np.float32)))

    def probe():
        for a, b, c in ops:
            np.matmul(a, b, out=c)
    return probe


def step_cases(config, batches, have_torch):
    cases = []
    for b in batches:
        fns = {"cython": dlfast_step("cython", config, b), "numpy": dlfast_step("numpy", config, b)}
        if have_torch:
            fns["torch"] = torch_step(config, b)
        cases.append(Case(f"step {config} b={b}", f"step_{config}", fns,
                          probe=gemm_probe(gemm_shapes(b)), probe_kind="gemm", batch=b,
                          config=config))
    return cases


# ============================================================================ dense layer
def dense_cases(shapes, have_torch):
    cases = []
    for b, i, o in shapes:
        cases += _dense_pair(b, i, o, have_torch)
    return cases


def _dense_pair(b, i, o, have_torch):
    """Forward and backward cases of one dense shape (own scope: the closures keep its arrays)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((b, i), dtype=np.float32)
    W = (rng.standard_normal((i, o), dtype=np.float32) * np.float32(math.sqrt(2 / i)))
    bias = rng.standard_normal(o, dtype=np.float32) * np.float32(0.1)
    out = np.empty((b, o), np.float32)
    dout = rng.standard_normal((b, o), dtype=np.float32)
    dz = np.empty((b, o), np.float32)
    dx = np.empty((b, i), np.float32)
    dW = np.empty((i, o), np.float32)
    db = np.empty(o, np.float32)
    kernels.dense_forward(x, W, bias, out, "relu")
    y = out.copy()
    gz = dout * (y > 0)
    WT = np.empty((o, i), np.float32)

    def fwd(backend):
        return on_backend(backend, lambda: kernels.dense_forward(x, W, bias, out, "relu"))

    def bwd(backend):
        return on_backend(backend, lambda: kernels.dense_backward(dout, x, W, y, dz, dx, dW, db,
                                                                  "relu"))

    def probe_fwd():
        np.matmul(x, W, out=out)

    def probe_bwd():
        np.matmul(x.T, gz, out=dW)
        np.matmul(gz, W.T, out=dx)

    ffn = {"cython": fwd("cython"), "numpy": fwd("numpy")}
    bfn = {"cython": bwd("cython"), "numpy": bwd("numpy")}
    if have_torch:
        tx, tW, tb = torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(bias)
        tout, tdout, ty = torch.from_numpy(out.copy()), torch.from_numpy(dout), torch.from_numpy(y)
        tdz, tdx = torch.empty(b, o), torch.empty(b, i)
        tdW, tdb = torch.empty(i, o), torch.empty(o)

        def tfwd():
            torch.addmm(tb, tx, tW, out=tout)
            torch.relu_(tout)

        def tbwd():
            torch.mul(tdout, ty > 0, out=tdz)
            torch.mm(tx.T, tdz, out=tdW)
            torch.sum(tdz, 0, out=tdb)
            torch.mm(tdz, tW.T, out=tdx)
        ffn["torch"], bfn["torch"] = tfwd, tbwd
    tag = f"b={b} {i}->{o}"
    return [Case(f"dense_fwd {tag}", "dense_fwd", ffn, probe_fwd, "gemm", batch=b,
                 fan_in=i, fan_out=o),
            Case(f"dense_bwd {tag}", "dense_bwd", bfn, probe_bwd, "gemm", batch=b,
                 fan_in=i, fan_out=o)]


# ============================================================================ optimisers
_TORCH_OPT = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.01),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.01, eps=1e-10),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.99, eps=1e-8),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01),
}


def _param(n, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n, dtype=np.float32) * np.float32(0.1)
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3)
    return w, g


def dlfast_opt(backend, name, n):
    w, g = _param(n, 3)
    params, grads = {"W": w}, {"W": g}
    opt = optim.get(name)

    return on_backend(backend, lambda: opt.update(params, grads))


def torch_opt(name, n):
    w, g = _param(n, 3)
    p = torch.nn.Parameter(torch.from_numpy(w))
    p.grad = torch.from_numpy(g)
    opt = _TORCH_OPT[name]([p])
    return opt.step


def bandwidth_probe(n, threads):
    """A plain copy moving 7 * 4 * n bytes (3.5 n floats read, 3.5 n written), split into
    ``threads`` chunks copied concurrently (NumPy releases the GIL for the copy)."""
    m = 7 * n // 2
    src = np.ones(m, np.float32)
    dst = np.empty(m, np.float32)
    if threads <= 1:
        return lambda: np.copyto(dst, src)
    edges = np.linspace(0, m, threads + 1).astype(int)
    parts = [(dst[a:b], src[a:b]) for a, b in zip(edges[:-1], edges[1:])]
    pool = ThreadPoolExecutor(threads)

    def probe():
        list(pool.map(lambda p: np.copyto(*p), parts))
    return probe


def optim_cases(n, names, have_torch):
    cases = []
    for name in names:
        fns = {"cython": dlfast_opt("cython", name, n), "numpy": dlfast_opt("numpy", name, n)}
        if have_torch:
            fns["torch"] = torch_opt(name, n)
        cases.append(Case(f"optim {name} n={n:.0e}", "optim", fns, params=n, optimizer=name))
    return cases


def adam_big_cases(n, threads, have_torch):
    w, g = _param(n, 4)
    m, v = np.zeros_like(w), np.zeros_like(w)
    step = [0]

    def kern(backend):
        def f():
            step[0] += 1
            kernels.adam_update(w, g, m, v, lr=1e-3, step=step[0])
        return on_backend(backend, f)
    probe = bandwidth_probe(n, threads)
    fns = {"cython": kern("cython"), "numpy": kern("numpy")}
    if have_torch:
        tw = torch.nn.Parameter(torch.from_numpy(w.copy()))
        tw.grad = torch.from_numpy(g)
        topt = torch.optim.Adam([tw], lr=1e-3)
        fns["torch"] = topt.step
    ofns = {"cython": dlfast_opt("cython", "adam", n), "numpy": dlfast_opt("numpy", "adam", n)}
    if have_torch:
        ofns["torch"] = torch_opt("adam", n)
    return [Case(f"adam_kernel n={n:.0e}", "adam_kernel", fns, probe, "bandwidth", params=n),
            Case(f"adam_update n={n:.0e}", "adam_update", ofns, probe, "bandwidth", params=n)]


# ============================================================================ report
def _fmt(s):
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def ratio(case, a, b):
    """Median over the rounds of time(b) / time(a), paired within each round (the two blocks ran
    seconds apart, so slow drifts of the machine's load cancel); None when either is missing."""
    if case is None or not case.times.get(a) or not case.times.get(b):
        return None
    return statistics.median(tb / ta for ta, tb in zip(case.times[a], case.times[b]) if ta > 0)


def spread(case):
    """Largest interquartile range / median over the implementations of a case (noise gauge)."""
    out = 0.0
    for t in case.times.values():
        if len(t) >= 4:
            q = statistics.quantiles(t, n=4)
            out = max(out, (q[2] - q[0]) / statistics.median(t))
    return out


def table(cases):
    head = ("case", "cython", "numpy", "torch", "probe", "numpy/cy", "torch/cy", "cy/probe",
            "spread")
    rows = []
    for c in cases:
        cy, nm, th, pr = (median(c, k) for k in ("cython", "numpy", "torch", "probe"))
        r1, r2, r3 = ratio(c, "cython", "numpy"), ratio(c, "cython", "torch"), ratio(c, "probe", "cython")
        rows.append((c.name, _fmt(cy), _fmt(nm), _fmt(th),
                     (_fmt(pr) + f" ({c.probe_kind})") if pr is not None else "-",
                     f"{r1:.2f}x" if r1 else "-", f"{r2:.2f}x" if r2 else "-",
                     f"{r3:.2f}x" if r3 else "-", f"{spread(c):.0%}"))
    w = [max(len(str(r[i])) for r in (head, *rows)) for i in range(len(head))]
    lines = ["| " + " | ".join(str(h).ljust(w[i]) for i, h in enumerate(head)) + " |",
             "|" + "|".join("-" * (x + 2) for x in w) + "|"]
    lines += ["| " + " | ".join(str(v).ljust(w[i]) for i, v in enumerate(r)) + " |" for r in rows]
    return "\n".join(lines)


def targets(cases):
    """The issue's targets: (description, measured ratio, goal, met) — None when not measured.
    A step target "other / cython >= goal" also gets its ``ceiling`` where dlfast's step takes
    at least its probe: other / probe, the ratio dlfast would reach if its step took only the time
    of its matrix products through np.matmul (a ceiling below the goal: the goal needs a step
    faster than those matmuls alone)."""
    by = {c.name: c for c in cases}
    out = []

    def add(desc, ratio, goal, higher=True, ceiling=None):
        if ratio is None:
            out.append({"target": desc, "ratio": None, "goal": goal, "met": None})
        else:
            out.append({"target": desc, "ratio": round(ratio, 3), "goal": goal,
                        "met": bool(ratio >= goal if higher else ratio <= goal)})
        if ceiling is not None:
            out[-1]["ceiling"] = round(ceiling, 3)

    def step(desc, c, other, goal):
        over = ratio(c, "probe", "cython")          # cython / probe: < 1 (tiny batches): dlfast
        add(desc, ratio(c, "cython", other), goal,  # beats the probe's BLAS calls, no ceiling
            ceiling=ratio(c, "probe", other) if over is not None and over >= 1 else None)

    b100, b1000 = by.get("step bn_adam b=100"), by.get("step bn_adam b=1000")
    s1, s1000 = by.get("step sgd b=1"), by.get("step sgd b=1000")
    step("step BN+dropout+Adam b=100: torch / cython >= 4", b100, "torch", 4)
    step("step BN+dropout+Adam b=100: numpy / cython >= 3", b100, "numpy", 3)
    step("step BN+dropout+Adam b=1000: torch / cython >= 3", b1000, "torch", 3)
    step("step BN+dropout+Adam b=1000: numpy / cython >= 2", b1000, "numpy", 2)
    step("step SGD b=1: torch / cython >= 5", s1, "torch", 5)
    step("step SGD b=1000: torch / cython >= 1.5", s1000, "torch", 1.5)
    step("step SGD b=1000: numpy / cython >= 1.5", s1000, "numpy", 1.5)
    for c in (b100, b1000):
        if c is not None:
            add(f"{c.name}: cython / its matmuls alone <= 1.5", ratio(c, "probe", "cython"), 1.5,
                higher=False)
    for c in cases:
        if c.group == "adam_kernel":
            add(f"{c.name}: cython / bandwidth probe <= 1.3", ratio(c, "probe", "cython"), 1.3,
                higher=False)
    for c in cases:
        if c.group == "optim":
            add(f"{c.name}: numpy / cython >= 5", ratio(c, "cython", "numpy"), 5)
    for c in cases:
        if c.group in ("dense_fwd", "dense_bwd") and c.info["batch"] >= 32:
            add(f"{c.name}: cython / bare GEMM <= 1.1", ratio(c, "probe", "cython"), 1.1,
                higher=False)
    return out


def plot(cases, path, load=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    titles = {"bn_adam": "MLP 784-4x100-10, BN + dropout 0.5 + Adam",
              "sgd": "MLP 784-4x100-10, plain SGD"}
    styles = {"cython": ("dlfast compiled", "C0", "o"), "numpy": ("dlfast NumPy", "C1", "s"),
              "torch": ("PyTorch eager", "C3", "^"), "probe": ("bare GEMMs (probe)", "0.5", "")}
    for ax, cfg in zip(axes, ("bn_adam", "sgd")):
        cs = sorted((c for c in cases if c.group == f"step_{cfg}"), key=lambda c: c.info["batch"])
        if not cs:
            ax.set_visible(False)
            continue
        xs = [c.info["batch"] for c in cs]
        for k, (label, color, mk) in styles.items():
            ys = [median(c, k) for c in cs]
            if any(y is None for y in ys):
                continue
            ax.plot(xs, [y * 1e3 for y in ys], marker=mk or None, color=color, label=label,
                    linestyle="--" if k == "probe" else "-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("time per training step (ms)")
        ax.set_title(titles[cfg], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    extra = f", load average {load:.1f} at start" if load is not None else ""
    nt = cases[0].threads
    fig.suptitle(f"{_machine.cpu_model()} ({_machine.isa()}): float32, {nt} "
                 f"thread{'s' * (nt != 1)}, median of interleaved rounds{extra}", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)


def meta(args):
    info = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "threads": args.threads, "rounds": args.rounds, "block_ms": args.block_ms,
            "settle_ms": args.settle_ms,
            "python": platform.python_version(), "numpy": np.__version__,
            "dlfast": dlfast.__version__, "torch": torch.__version__ if torch else None,
            "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
            **_machine.info()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    return info


# ============================================================================ main
def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="threads for dlfast, BLAS and torch (2)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds (9)")
    p.add_argument("--repeats", type=int, default=0,
                   help="calls per timed block (default 0: calibrated to --block-ms)")
    p.add_argument("--block-ms", type=float, default=20.0, help="target length of one block (20)")
    p.add_argument("--settle-ms", type=float, default=None,
                   help="pause before each block (default 250 with --threads > 1, else 0): "
                        "OpenBLAS's worker threads spin for ~0.11 s after use and "
                        "would slow the next implementation; one thread has no workers, and "
                        "the pause only adds cold-cache noise (1-thread spreads 14-29%% with it, "
                        "2-14%% without)")
    p.add_argument("--full", action="store_true", help="the full batch-size grid")
    p.add_argument("--only", default="step,dense,optim,adam",
                   help="comma list of sections: step,dense,optim,adam")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument("--json", metavar="PATH", help="write the table (medians, all samples, targets)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of step time vs batch size")
    a = p.parse_args(argv)
    if a.settle_ms is None:
        a.settle_ms = _machine.SETTLE_S * 1e3 if a.threads > 1 else 0.0
    if a.threads < 1 or a.rounds < 1 or a.repeats < 0 or not a.block_ms > 0 or a.settle_ms < 0:
        p.error("--threads and --rounds must be >= 1, --repeats >= 0, --block-ms > 0, "
                "--settle-ms >= 0")
    unknown = set(a.only.split(",")) - {"step", "dense", "optim", "adam"}
    if unknown:
        p.error(f"--only: unknown sections {sorted(unknown)}")
    return a


def main(argv=None):
    args = parse(argv)
    have_torch = torch is not None and not args.no_torch
    if torch is None and not args.no_torch:
        print("PyTorch is not installed: the torch column is skipped "
              "(pip install torch==2.13.0 to include it).", file=sys.stderr)
    if "cython" not in dlfast.available_backends():
        sys.exit("the compiled backend does not load: build it first (pip install -e .)")
    dlfast.set_num_threads(args.threads)       # compiled kernels + every BLAS (threadpoolctl)
    if have_torch:
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
    sections = args.only.split(",")
    bn_b = FULL_BN_BATCHES if args.full else DEFAULT_BN_BATCHES
    sgd_b = FULL_SGD_BATCHES if args.full else DEFAULT_SGD_BATCHES
    builders = []
    if "step" in sections:
        builders += [lambda: step_cases("bn_adam", bn_b, have_torch),
                     lambda: step_cases("sgd", sgd_b, have_torch)]
    if "dense" in sections:
        shapes = [(32, 784, 100), (256, 784, 100), (1024, 784, 100), (256, 1024, 1024),
                  (1024, 1024, 1024)]
        if args.full:
            shapes += [(4096, 784, 100), (4096, 2048, 2048), (256, 100, 10)]
        builders.append(lambda: dense_cases(shapes, have_torch))
    if "optim" in sections:
        builders.append(lambda: optim_cases(10 ** 6, list(optim.OPTIMIZERS), have_torch))
    if "adam" in sections:
        builders.append(lambda: adam_big_cases(10 ** 7, args.threads, have_torch))
    load = os.getloadavg()[0]
    print(f"# dlfast compare: float32, {args.threads} threads, {args.rounds} rounds, "
          f"load avg {load:.2f}\n# {_machine.describe()}", flush=True)
    if load > (os.cpu_count() or 1) - args.threads + 0.5:
        print(f"# WARNING: load average {load:.2f} on {os.cpu_count()} CPUs: other processes "
              f"compete for the cores; multi-threaded figures will be noisy", flush=True)
    t_start = time.perf_counter()
    done = []
    for build in builders:
        for case in build():
            case.threads = args.threads
            run_case(case, args.rounds, args.block_ms / 1e3, args.repeats or None,
                     args.settle_ms / 1e3)
            case.fns = None                 # free the closures (and their arrays)
            case.probe = None
            done.append(case)
            print(f"  {case.name:<32} " + "  ".join(
                f"{k}={_fmt(median(case, k))}" for k in case.times), flush=True)
    print()
    print(table(done))
    print()
    tg = targets(done)
    for t in tg:
        state = "n/a" if t["met"] is None else ("MET" if t["met"] else "MISSED")
        r = "-" if t["ratio"] is None else f"{t['ratio']:.2f}"
        c = t.get("ceiling")
        cl = "" if c is None else (f"; {c:.2f} if the step took only its np.matmul time"
                                   + (": the goal needs a step faster than its matmuls"
                                      if c < t["goal"] else ""))
        print(f"  [{state:>6}] {t['target']}  (measured {r}{cl})")
    print(f"\n({time.perf_counter() - t_start:.0f} s)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"meta": meta(args), "targets": tg,
                       "cases": [{"name": c.name, "group": c.group, **c.info,
                                  "probe_kind": c.probe_kind, "calls_per_block": c.calls,
                                  "median_s": {k: median(c, k) for k in c.times},
                                  "ratio_to_cython": {k: ratio(c, "cython", k) for k in c.times
                                                      if k != "cython"},
                                  "spread": spread(c),
                                  "samples_s": c.times} for c in done]}, f, indent=1)
    if args.plot:
        plot(done, args.plot, load)
    return done


if __name__ == "__main__":
    main()
