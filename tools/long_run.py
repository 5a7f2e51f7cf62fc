"""Train a small MLP for many steps and print the resident memory (RSS) at intervals.

    python tools/long_run.py [--steps 20000] [--every 2000] [--warmup 500] [--backend cython]
                             [--threads 0] [--json]

Model: MLP 64-128-64-10 with batch norm and dropout, Adam with weight decay and clip_norm, on the
embedded digits (batches of 64, cycling). RSS is read from ``/proc/self/statm`` (resident pages x
page size; Linux). Each line: ``step  rss_MiB``; the last lines give the RSS after warm-up, at the
end, and the growth. ``--json`` prints one JSON object instead: {"steps", "warmup", "rss":
[[step, bytes], ...], "start", "after_warmup", "end", "growth", "loss"}.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import dlfast  # noqa: E402
from dlfast import optim  # noqa: E402
from dlfast.datasets import load_digits  # noqa: E402
from dlfast.net import MLP  # noqa: E402

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    """Resident set size of this process in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def run(steps, every, warmup, backend="cython", threads=0, batch=64):
    dlfast.set_backend(backend)
    if threads:
        dlfast.set_num_threads(threads)
    x, t = load_digits()
    model = MLP(64, [128, 64], 10, batchnorm=True, dropout=0.1, seed=0)
    opt = optim.Adam(lr=1e-3, weight_decay=1e-4, clip_norm=5.0)
    n = (len(x) // batch) * batch
    marks = [(0, rss())]
    after_warmup = None
    loss = float("nan")
    for s in range(1, steps + 1):
        lo = ((s - 1) * batch) % n
        loss, grads = model.loss_and_gradient(x[lo:lo + batch], t[lo:lo + batch])
        opt.update(model.params, grads)
        if s == warmup:
            after_warmup = rss()
        if s % every == 0 or s == steps:
            marks.append((s, rss()))
    end = marks[-1][1]
    after_warmup = after_warmup if after_warmup is not None else marks[0][1]
    return {"steps": steps, "warmup": warmup, "rss": marks, "start": marks[0][1],
            "after_warmup": after_warmup, "end": end, "growth": end - after_warmup,
            "loss": float(loss)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--every", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--backend", default="cython")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    r = run(a.steps, a.every, a.warmup, a.backend, a.threads)
    if a.json:
        print(json.dumps(r))
        return 0
    mib = 1 / 2 ** 20
    for s, b in r["rss"]:
        print(f"{s:7d}  {b * mib:8.2f} MiB")
    print(f"start {r['start'] * mib:.2f} MiB, after warm-up ({a.warmup} steps) "
          f"{r['after_warmup'] * mib:.2f} MiB, end ({a.steps} steps) {r['end'] * mib:.2f} MiB, "
          f"growth after warm-up {r['growth'] / 1024:.0f} KiB; final loss {r['loss']:.4f}; "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
