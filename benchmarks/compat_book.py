#!/usr/bin/env python
"""The book's own NumPy code ("Deep Learning from Scratch", oreilly-japan/deep-learning-from-scratch)
against ``dlfast.compat``, side by side: one training step, ``opt.update(net.params,
net.gradient(x, t))``, of each net at batch 100 on synthetic MNIST-shaped data (pixels k/255,
10 classes; float32 x as the book's ``load_mnist`` gives, int labels):

* ``ch5 two_layer``  TwoLayerNet 784-50-10, SGD (ch05/train_neuralnet.py)
* ``ch6 multi_layer`` MultiLayerNet 784-[100]x4-10, SGD (ch06/optimizer_compare_mnist.py)
* ``ch6 extend``     MultiLayerNetExtend 784-[100]x4-10, batch norm + dropout 0.5, Adam
* ``ch7 simple_conv`` SimpleConvNet (conv 30 5x5, ReLU, max-pool 2x2, affine 100, ReLU, affine 10),
                     1x28x28, Adam (ch07/train_convnet.py)
* ``ch8 deep_conv``  DeepConvNet (6 conv 3x3, 3 pools, affine 50, dropout), 1x28x28, Adam

Columns: ``book`` (its ``common`` package and chapter nets, float64 as the book's arrays are),
``compat`` (float64, the default), ``compat32`` (``dtype=np.float32``), and ``gemm``: the bare
``np.matmul`` calls of the compat step's matrix products (float64, into preallocated outputs;
convolutions as their im2col products), a floor for a float64 step on this machine. Ratios are
book / compat.

The book's code is read from ``--book PATH`` (default ``$DLFAST_BOOK``): a checkout, or the bare
git directory of one (then ``git archive HEAD`` is unpacked into a temporary folder that is removed
afterwards). Nothing of it is kept or copied. Without it the script says so and exits (status 0).

Timing as ``compare.py`` (interleaved blocks, medians; ratios are medians of per-round ratios).

    python benchmarks/compat_book.py --book PATH [--threads 2] [--rounds 7] [--only ch5,ch6,ch7,ch8]
"""
import _machine

_machine.unpin_openblas()       # before NumPy loads its OpenBLAS (see _machine)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import dlfast  # noqa: E402
from dlfast import compat  # noqa: E402

from compare import Batches, Case, _fmt, median, ratio, run_case, spread  # noqa: E402

BATCH = 100


# ============================================================================ the book's code
@contextlib.contextmanager
def book_folder(path):
    """A folder holding the book's code: ``path`` itself (a checkout) or a temporary export of
    a bare git directory; None when neither."""
    if path and os.path.isfile(os.path.join(path, "common", "layers.py")):
        yield path
        return
    tmp = None
    try:
        if path and os.path.isdir(path) and shutil.which("git"):
            tmp = tempfile.mkdtemp(prefix="dlfast-book-")
            archive = subprocess.run(["git", f"--git-dir={path}", "archive", "HEAD"],
                                     capture_output=True, timeout=120)
            if archive.returncode == 0:
                subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        ok = tmp and os.path.isfile(os.path.join(tmp, "common", "layers.py"))
        yield tmp if ok else None
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


class Book:
    """The book's modules, imported from its folder (``common`` and the chapter nets)."""

    def __init__(self, folder):
        sys.path[:0] = [folder] + [os.path.join(folder, c) for c in ("ch05", "ch07", "ch08")]
        self.optimizer = importlib.import_module("common.optimizer")
        self.MultiLayerNet = importlib.import_module("common.multi_layer_net").MultiLayerNet
        self.MultiLayerNetExtend = importlib.import_module(
            "common.multi_layer_net_extend").MultiLayerNetExtend
        self.TwoLayerNet = importlib.import_module("two_layer_net").TwoLayerNet
        self.SimpleConvNet = importlib.import_module("simple_convnet").SimpleConvNet
        self.DeepConvNet = importlib.import_module("deep_convnet").DeepConvNet


# ============================================================================ cases
def _loop(net, opt, data, image=False):
    def step():
        x, t = data.next()
        if image:
            x = x.reshape(-1, 1, 28, 28)
        opt.update(net.params, net.gradient(x, t))
    return step


def gemm_probe(shapes, seed=1):
    """The products (m, k) @ (k, n) of ``shapes``, float64, into preallocated outputs."""
    rng = np.random.default_rng(seed)
    mats = [(rng.random((m, k)), rng.random((k, n)), np.empty((m, n))) for m, k, n in shapes]

    def probe():
        for a, b, c in mats:
            np.matmul(a, b, out=c)
    return probe


def dense_shapes(sizes, n=BATCH):
    """Forward x @ W, dW = x.T @ dz for every layer, dx = dz @ W.T above the first."""
    out = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        out += [(n, a, b), (a, n, b)] + ([(n, b, a)] if i else [])
    return out


def conv_shapes(c, h, w, f, k, pad, n=BATCH, first=True):
    """A convolution's im2col products (stride 1): forward, dW, and dcol unless first."""
    oh, ow = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    rows, kk = n * oh * ow, c * k * k
    return [(rows, kk, f), (kk, rows, f)] + ([] if first else [(rows, f, kk)]), (f, oh, ow)


def simple_shapes():
    s, (f, oh, ow) = conv_shapes(1, 28, 28, 30, 5, 0)
    return s + dense_shapes([f * (oh // 2) * (ow // 2), 100, 10])


def deep_shapes():
    shapes, (c, h, w) = [], (1, 28, 28)
    for i, (f, pad) in enumerate([(16, 1), (16, 1), (32, 1), (32, 2), (64, 1), (64, 1)]):
        s, (c, h, w) = conv_shapes(c, h, w, f, 3, pad, first=i == 0)
        shapes += s
        if i % 2:
            h, w = h // 2, w // 2
    return shapes + [(BATCH, c * h * w, 50), (c * h * w, BATCH, 50), (BATCH, 50, c * h * w)] \
        + dense_shapes([50, 10])[:2] + [(BATCH, 10, 50)]


def cases(book, only):
    mk = {
        "ch5": [("ch5 two_layer", lambda M, dt: _make(M, "TwoLayerNet", dt, 784, 50, 10),
                 "SGD", {"lr": 0.1}, False, dense_shapes([784, 50, 10]))],
        "ch6": [("ch6 multi_layer", lambda M, dt: _make(M, "MultiLayerNet", dt, 784, [100] * 4, 10),
                 "SGD", {"lr": 0.01}, False, dense_shapes([784] + [100] * 4 + [10])),
                ("ch6 extend bn+dropout", lambda M, dt: _make(
                    M, "MultiLayerNetExtend", dt, 784, [100] * 4, 10, use_batchnorm=True,
                    use_dropout=True, dropout_ration=0.5),
                 "Adam", {}, False, dense_shapes([784] + [100] * 4 + [10]))],
        "ch7": [("ch7 simple_conv", lambda M, dt: _make(M, "SimpleConvNet", dt), "Adam", {},
                 True, simple_shapes())],
        "ch8": [("ch8 deep_conv", lambda M, dt: _make(M, "DeepConvNet", dt), "Adam", {}, True,
                 deep_shapes())],
    }
    out = []
    for key in only:
        for name, make, opt, kw, image, shapes in mk[key]:
            def build(make=make, opt=opt, kw=kw, image=image, shapes=shapes, name=name):
                np.random.seed(0)
                fns = {"book": _loop(make(book, None), getattr(book.optimizer, opt)(**kw),
                                     Batches(BATCH), image),
                       "compat": _loop(make(compat, np.float64), getattr(compat, opt)(**kw),
                                       Batches(BATCH), image),
                       "compat32": _loop(make(compat, np.float32), getattr(compat, opt)(**kw),
                                         Batches(BATCH), image)}
                return Case(name, key, fns, probe=gemm_probe(shapes), probe_kind="gemm")
            out.append(build)
    return out


def _make(M, cls, dtype, *args, **kw):
    if dtype is not None:
        kw["dtype"] = dtype
    return getattr(M, cls)(*args, **kw)


# ============================================================================ report
def table(done):
    lines = ["| case | book | compat | compat32 | gemm (f64 floor) | book/compat | "
             "book/compat32 | book/gemm | spread |", "|---|---|---|---|---|---|---|---|---|"]
    for c in done:
        r = [ratio(c, "compat", "book"), ratio(c, "compat32", "book"), ratio(c, "probe", "book")]
        lines.append(f"| {c.name} | {_fmt(median(c, 'book'))} | {_fmt(median(c, 'compat'))} | "
                     f"{_fmt(median(c, 'compat32'))} | {_fmt(median(c, 'probe'))} | "
                     + " | ".join(f"{x:.2f}x" for x in r) + f" | {spread(c):.0%} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--book", default=os.environ.get("DLFAST_BOOK"),
                   help="a checkout of the book's repository, or its bare git directory "
                        "(default $DLFAST_BOOK)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--block-ms", type=float, default=200.0)
    p.add_argument("--only", default="ch5,ch6,ch7,ch8")
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    only = [k for k in a.only.split(",") if k]
    if any(k not in ("ch5", "ch6", "ch7", "ch8") for k in only):
        p.error(f"--only takes ch5, ch6, ch7, ch8; got {a.only!r}")
    with book_folder(a.book) as folder:
        if folder is None:
            print(f"The book's code is not available (--book / $DLFAST_BOOK: {a.book!r} is "
                  f"neither a checkout of oreilly-japan/deep-learning-from-scratch nor its git "
                  f"directory); nothing to compare.")
            return 0
        if "cython" not in dlfast.available_backends():
            sys.exit("the compiled backend does not load: build it first (pip install -e .)")
        dlfast.set_num_threads(a.threads)       # dlfast's kernels and NumPy's BLAS alike
        settle = _machine.SETTLE_S if a.threads > 1 else 0.0
        print(f"# the book's code vs dlfast.compat: batch {BATCH}, {a.threads} threads, "
              f"{a.rounds} rounds, load avg {os.getloadavg()[0]:.2f}\n# {_machine.describe()}",
              flush=True)
        book = Book(folder)
        done, t0 = [], time.perf_counter()
        for build in cases(book, only):
            case = build()
            run_case(case, a.rounds, a.block_ms / 1e3, None, settle)
            case.fns = case.probe = None
            done.append(case)
            print(f"  {case.name:<24} " + "  ".join(f"{k}={_fmt(median(case, k))}"
                                                    for k in case.times), flush=True)
    print("\n" + table(done))
    print(f"\n(load avg {os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - t0:.0f} s)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": _machine.info(), "threads": a.threads, "rounds": a.rounds,
                       "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                       "cases": [{"name": c.name, "median_s": {k: median(c, k) for k in c.times},
                                  "book_over": {k: ratio(c, k, "book") for k in c.times
                                                if k != "book"},
                                  "spread": spread(c), "samples_s": c.times} for c in done]},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
