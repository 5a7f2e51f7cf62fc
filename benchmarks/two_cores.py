#!/usr/bin/env python
"""What the second core gives: dlfast's dense layer at 1 and 2 threads, against what the machine
itself gives two independent streams of the same GEMM work.

For each shape (batch b, in i, out o; ReLU) and pass (forward: out = relu(x W + b); backward:
dz, dW, db and dx), side by side in one run:

* ``dlfast 1t`` / ``dlfast 2t``: the compiled kernel at 1 and 2 threads; speedup = 1t / 2t.
* ``halves``: the pass's GEMMs cut into two halves by rows (forward: x W; backward: x^T dz and
  dz W^T), each half a one-thread ``np.matmul``. ``seq``: one thread runs both halves;
  ``conc``: two threads each run one half, side by side, for a whole block of calls (no
  hand-off per call). ceiling = seq / conc: the machine's own two-core speedup for this work,
  an upper bound for any two-thread kernel of it (shared caches, memory, turbo and a shared
  host all show up here). Shown only where a half takes >= 100 us: below that the threads'
  turns at the GIL between NumPy calls, not the cores, set the figure.

The issue's target is a two-thread speedup >= 1.7 at batch >= 256. Timing: blocks of about
``--block-ms``, the implementations in rotating order each round, 150 ms settle before each block
(spinning worker threads of the previous one), medians over ``--rounds``; ratios are medians of
per-round ratios.

    python benchmarks/two_cores.py [--rounds 9] [--batches 256,1000] [--json PATH]
"""
import _machine

_machine.unpin_openblas()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import dlfast  # noqa: E402
from dlfast import kernels  # noqa: E402

SHAPES = ((784, 100), (100, 100), (1024, 1024))


def _arrays(b, i, o, seed=0):
    rng = np.random.default_rng(seed)
    f = np.float32
    a = {"x": rng.standard_normal((b, i)).astype(f), "W": rng.standard_normal((i, o)).astype(f),
         "b": rng.standard_normal(o).astype(f), "dout": rng.standard_normal((b, o)).astype(f)}
    a["out"], a["dz"] = np.empty((b, o), f), np.empty((b, o), f)
    a["dx"], a["dW"], a["db"] = np.empty((b, i), f), np.empty((i, o), f), np.empty(o, f)
    kernels.dense_forward(a["x"], a["W"], a["b"], a["out"], "relu")
    return a


def _kernel(a, which):
    if which == "forward":
        return lambda: kernels.dense_forward(a["x"], a["W"], a["b"], a["out"], "relu")
    return lambda: kernels.dense_backward(a["dout"], a["x"], a["W"], a["out"], a["dz"], a["dx"],
                                          a["dW"], a["db"], "relu")


def _halves(a, which):
    """Two callables, each one half (by output rows) of the pass's GEMMs, into fixed outputs."""
    x, W, dz = a["x"], a["W"], a["dout"]
    b, i = x.shape
    hb, hi = b // 2, i // 2
    if which == "forward":
        parts = [(x[:hb], W, np.empty((hb, W.shape[1]), np.float32)),
                 (x[hb:], W, np.empty((b - hb, W.shape[1]), np.float32))]
        return [lambda p=p: np.matmul(p[0], p[1], out=p[2]) for p in parts]
    xt, wt = x.T, W.T
    dw = [(xt[:hi], dz, np.empty((hi, dz.shape[1]), np.float32)),
          (xt[hi:], dz, np.empty((i - hi, dz.shape[1]), np.float32))]
    dx = [(dz[:hb], wt, np.empty((hb, i), np.float32)),
          (dz[hb:], wt, np.empty((b - hb, i), np.float32))]

    def half(k):
        def f():
            np.matmul(*dw[k][:2], out=dw[k][2])
            np.matmul(*dx[k][:2], out=dx[k][2])
        return f
    return [half(0), half(1)]


def _block_seq(fns, n):
    for _ in range(n):
        for f in fns:
            f()


def _block_conc(fns, n):
    def run(f):
        for _ in range(n):
            f()
    ths = [threading.Thread(target=run, args=(f,)) for f in fns]
    for t in ths:
        t.start()
    for t in ths:
        t.join()


def measure(b, i, o, which, rounds, block_s, settle_s):
    a = _arrays(b, i, o)
    k = _kernel(a, which)
    halves = _halves(a, which)

    def dl(nt):
        def block(n):
            for _ in range(n):
                k()
        return ("dlfast", nt, block)
    impls = {"dlfast 1t": dl(1), "dlfast 2t": dl(2),
             "seq": ("numpy", 1, lambda n: _block_seq(halves, n)),
             "conc": ("numpy", 1, lambda n: _block_conc(halves, n))}

    def prepare(kind, nt):
        dlfast.set_num_threads(nt if kind == "dlfast" else 1)

    counts = {}
    for name, (kind, nt, block) in impls.items():
        prepare(kind, nt)
        with threadpool_limits(1, user_api="blas"):
            block(3)
            t0 = time.perf_counter()
            block(3)
            per = (time.perf_counter() - t0) / 3
        counts[name] = max(3, int(block_s / max(per, 1e-9)))
    times = {name: [] for name in impls}
    names = list(impls)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            kind, nt, block = impls[name]
            prepare(kind, nt)
            with threadpool_limits(1, user_api="blas"):
                time.sleep(settle_s)
                block(max(1, counts[name] // 10))       # untimed: wake workers and vCPUs
                t0 = time.perf_counter()
                block(counts[name])
                times[name].append((time.perf_counter() - t0) / counts[name])
    dlfast.set_num_threads(0)
    med = {n: statistics.median(v) for n, v in times.items()}
    speed = statistics.median(a / b for a, b in zip(times["dlfast 1t"], times["dlfast 2t"]))
    ceil = statistics.median(a / b for a, b in zip(times["seq"], times["conc"]))
    if med["seq"] / 2 < 100e-6:
        ceil = None
    return {"b": b, "i": i, "o": o, "pass": which, "median_s": med, "speedup": speed,
            "ceiling": ceil, "times": times}


def _us(s):
    return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--batches", default="256,1000")
    p.add_argument("--block-ms", type=float, default=30.0)
    p.add_argument("--settle-ms", type=float, default=_machine.SETTLE_S * 1e3)
    p.add_argument("--json")
    a = p.parse_args(argv)
    batches = [int(v) for v in a.batches.split(",")]
    print(f"# two threads against one, float32; {_machine.describe()}", flush=True)
    print("| b x i x o | pass | dlfast 1t | dlfast 2t | speedup | machine ceiling (two "
          "one-thread halves) | target 1.7 |\n|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for b in batches:
        for i, o in SHAPES:
            for which in ("forward", "backward"):
                r = measure(b, i, o, which, a.rounds, a.block_ms / 1e3, a.settle_ms / 1e3)
                rows.append(r)
                m = r["median_s"]
                print(f"| {b}x{i}x{o} | {which} | {_us(m['dlfast 1t'])} | {_us(m['dlfast 2t'])} "
                      f"| {r['speedup']:.2f}x | "
                      f"{'-' if r['ceiling'] is None else format(r['ceiling'], '.2f') + 'x'} | "
                      f"{'met' if r['speedup'] >= 1.7 else 'MISSED'} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": _machine.info(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
