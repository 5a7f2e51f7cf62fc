#!/usr/bin/env python
"""Memory-bound passes against a plain copy of the same bytes, side by side in one run.

Each compiled kernel below streams its arrays once or a few times and does little arithmetic per
element, so its floor is the machine's memory (or cache) bandwidth. The probe is ``np.copyto`` of
B/2 bytes into another B/2 bytes (one call, or one chunk per thread copied concurrently: the
faster here), where B
is the least number of bytes the pass must read and write:

    pass                                   B per element (float32)
    sgd_update         w -= lr g           12   (read w, g; write w)
    adam_update        w, m, v from g      28   (read w, g, m, v; write w, m, v)
    Adam.update        fused, with norm    32   (+ read g for the norm and finiteness check)
    batchnorm fwd      the step's op       12   (read x; write out, xhat)         (N, F)
    batchnorm bwd      the step's op       12   (read dout, xhat; write dx)
    dropout fwd        the step's op       10   (write mask 1; read x 4, mask 1; write out 4)

at n = 10^5 elements (in cache) and 10^7 (in memory). Ratio = time / probe (the issue's target:
<= 1.3). Timing as ``compare.py`` (interleaved blocks, medians of per-round ratios).

    python benchmarks/memory.py [--threads 2] [--rounds 9] [--sizes 1e5,1e7] [--json PATH]
"""
import _machine

_machine.unpin_openblas()

import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402

import dlfast  # noqa: E402
from dlfast import kernels, optim  # noqa: E402

from compare import Case, _fmt, median, ratio, run_case, spread  # noqa: E402

FEATURES = 100          # batch norm's F; N = n / F


def copy_probe(nbytes, threads):
    """np.copyto of nbytes / 2 bytes (float32): one call, or (threads > 1) one chunk per thread
    copied concurrently, whichever is faster here (the threads' hand-off costs ~0.1 ms, more
    than a whole in-cache copy)."""
    m = max(1, nbytes // 8)
    src, dst = np.ones(m, np.float32), np.empty(m, np.float32)

    def one():
        np.copyto(dst, src)
    if threads <= 1:
        return one
    edges = np.linspace(0, m, threads + 1).astype(int)
    parts = [(dst[a:b], src[a:b]) for a, b in zip(edges[:-1], edges[1:])]
    pool = ThreadPoolExecutor(threads)

    def chunked():
        list(pool.map(lambda p: np.copyto(*p), parts))

    def best_of(fn, reps=30):
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return time.perf_counter() - t0
    return min((one, chunked), key=lambda fn: min(best_of(fn) for _ in range(3)))


def passes(n):
    """name -> (bytes per element, zero-argument call) of the compiled passes at n elements."""
    rng = np.random.default_rng(0)

    def arr(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    w, g, m, v = arr(n), arr(n) * np.float32(1e-3), np.zeros(n, np.float32), np.zeros(n, np.float32)
    t = [0]

    def adam():
        t[0] += 1
        kernels.adam_update(w, g, m, v, lr=1e-4, step=t[0])

    opt = optim.Adam(lr=1e-4)
    params, grads = {"w": w.copy()}, {"w": g}
    rows = max(2, n // FEATURES)
    x, dout = arr(rows, FEATURES), arr(rows, FEATURES)
    gamma, beta = np.ones(FEATURES, np.float32), np.zeros(FEATURES, np.float32)
    out, xhat, dx = (np.empty_like(x) for _ in range(3))
    mean, invstd = np.empty(FEATURES, np.float32), np.empty(FEATURES, np.float32)
    dgamma, dbeta = np.empty_like(gamma), np.empty_like(beta)
    kernels.batchnorm_forward_train(x, gamma, beta, out, xhat, mean, invstd)
    mask = np.empty(x.shape, np.uint8)
    c = [0]
    # batch norm and dropout: the training step's ops (as the engine runs them: no per-call
    # argument checks), each run as a one-step program
    Program = kernels._impl().Program
    bn = kernels.make_op("batchnorm", x.shape, x.dtype, gamma=gamma, beta=beta, out=out,
                         xhat=xhat, mean=mean, invstd=invstd, running_mean=None,
                         running_var=None, dx=dx, dgamma=dgamma, dbeta=dbeta, momentum=0.1,
                         eps=1e-5, unbiased=True, y=None, activation="identity", alpha=0.0)
    bn_fwd = Program([(kernels.FWD, bn, None, None, 0)], [], x.shape, x.dtype, [out, xhat])
    bn_bwd = Program([(kernels.BWD, bn, None, dout, 0)], [], x.shape, x.dtype, [dx])
    op = kernels.make_op("dropout", x.shape, x.dtype, out=out, mask=mask, dx=None, p=0.5, seed=7,
                         scale=2.0)
    prog = Program([(kernels.FWD, op, None, None, 0)], [], x.shape, x.dtype, [out, mask])

    def dropout():
        c[0] += x.size
        op.set_counter(c[0])
        prog.run(x)

    return {
        "sgd_update": (12, lambda: kernels.sgd_update(w, g, lr=1e-4)),
        "adam_update": (28, adam),
        "Adam.update": (32, lambda: opt.update(params, grads)),
        "batchnorm fwd": (12, lambda: bn_fwd.run(x)),
        "batchnorm bwd": (12, lambda: bn_bwd.run(x)),
        "dropout fwd": (10, dropout),
    }


def cases(sizes, threads):
    out = []
    for n in sizes:
        for name, (bpe, fn) in passes(n).items():
            out.append(Case(f"{name} n={n:.0e}", "memory", {"cython": fn},
                            copy_probe(bpe * n, threads), "copy", n=n, bytes_per_element=bpe))
    return out


def main(argv=None):
    p = _machine.parser(__doc__, 20.0)
    p.add_argument("--sizes", default="1e5,1e7")
    a = p.parse_args(argv)
    dlfast.set_backend("cython")
    settle = _machine.start("dlfast memory-bound passes", a)
    done = []
    t0 = time.perf_counter()
    for case in cases([int(float(s)) for s in a.sizes.split(",")], a.threads):
        run_case(case, a.rounds, a.block_ms / 1e3, None, settle)
        case.fns = case.probe = None
        done.append(case)
    print("\n| pass | n | B/elem | dlfast | copy of the same bytes | ratio | target <= 1.3 | spread |"
          "\n|---|---|---|---|---|---|---|---|")
    for c in done:
        r = ratio(c, "probe", "cython")
        print(f"| {c.name.split(' n=')[0]} | {c.info['n']:.0e} | {c.info['bytes_per_element']} | "
              f"{_fmt(median(c, 'cython'))} | {_fmt(median(c, 'probe'))} | {r:.2f}x | "
              f"{'met' if r <= 1.3 else 'MISSED'} | {spread(c):.0%} |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if a.json:
        _machine.write_json(a.json, a, [
            {"name": c.name, "n": c.info["n"], "bytes_per_element": c.info["bytes_per_element"],
             "median_s": {k: median(c, k) for k in c.times},
             "ratio_to_copy": ratio(c, "probe", "cython"), "spread": spread(c),
             "samples_s": c.times} for c in done])
    return done


if __name__ == "__main__":
    main()
