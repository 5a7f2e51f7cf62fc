#!/usr/bin/env python
"""dlfast.sklearn against scikit-learn's own MLP, side by side (issue 22's figures).

1. ``fit``: the same architecture and solver on both: hidden (256, 128), ReLU, Adam lr 1e-3,
   batch 200, 10 epochs, no early stopping (tol 0), no batch norm or dropout, Glorot-uniform
   weights (scikit-learn's init; dlfast ``weight_init="xavier_uniform"``), the same L2 (sklearn
   alpha 1e-4, which it divides by the batch size: dlfast ``alpha=1e-4 / 200``), float32 data,
   2 threads (scikit-learn's BLAS limited with threadpoolctl; dlfast ``n_threads=2``).
   Data: ``make_classification(40000, 100, n_informative=50, n_classes=10)`` and
   ``make_regression(40000, 100, n_informative=50, noise=10)`` (targets standardised on the
   training rows), 30,000 rows to train, 10,000 to test. Fit times: medians of interleaved
   repeats (sklearn, dlfast, sklearn, ...), each after a ``--settle`` pause (0.5 s): the
   worker threads of the BLAS the other library just used keep spinning for ~0.1-0.2 s after
   its last call, and a two-thread fit started in that window shares the two cores with them
   (sklearn's fit then dlfast's, 4 pairs: dlfast 1.17-1.84 s right after, 1.03-1.52 s after
   0.5 s); ``--settle 0`` times them back to back. The ratio is the median of the per-round
   ratios. Test accuracy / R^2 of each fit (both deterministic with random_state=0).

2. ``time to accuracy``: on an MNIST-shaped problem (``make_classification(70000, 784,
   n_informative=80, n_redundant=120, n_classes=10, n_clusters_per_class=3, flip_y=0.02)``,
   60,000 rows to train, 10,000 to validate), scikit-learn's best of a small grid (Adam, batch
   200, hidden (256, 128), lr in {1e-3, 3e-3} x alpha in {1e-4, 1e-3}, up to ``--epochs``) sets
   the target: its best validation accuracy, and the training time it took to first reach it.
   dlfast with batch norm, dropout 0.2 and a step schedule (lr 3e-3, halved every 4 epochs) then
   trains until its validation accuracy reaches the target. Both train one epoch per
   ``fit`` call (``warm_start=True, max_iter=1``); only the fits are timed.

    python benchmarks/sklearn_compare.py [--repeats 3] [--epochs 20] [--settle 0.5] [--quick]
                                         [--json PATH]

The machine may be shared: the load average is printed before and after each part.
"""
import _machine

_machine.unpin_openblas()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

THREADS = 2


def _load():
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _data(kind, n, f, seed=0):
    from sklearn.datasets import make_classification, make_regression
    if kind == "classify":
        x, y = make_classification(n, f, n_informative=50, n_classes=10, random_state=seed)
    else:
        x, y = make_regression(n, f, n_informative=50, noise=10.0, random_state=seed)
    x = x.astype(np.float32)
    ntr = n * 3 // 4
    xtr, xte, ytr, yte = x[:ntr], x[ntr:], y[:ntr], y[ntr:]
    if kind == "regress":
        m, s = ytr.mean(), ytr.std()
        ytr, yte = ((ytr - m) / s).astype(np.float32), ((yte - m) / s).astype(np.float32)
    return xtr, ytr, xte, yte


def _same_fit(kind, epochs):
    """(sklearn estimator, dlfast estimator) of part 1."""
    from sklearn import neural_network as sk
    from dlfast import sklearn as dl
    common = dict(hidden_layer_sizes=(256, 128), activation="relu", learning_rate_init=1e-3,
                  batch_size=200, max_iter=epochs, shuffle=True, random_state=0, tol=0.0,
                  n_iter_no_change=10 ** 6, early_stopping=False)
    skc = sk.MLPClassifier if kind == "classify" else sk.MLPRegressor
    dlc = dl.MLPClassifier if kind == "classify" else dl.MLPRegressor
    return (skc(solver="adam", alpha=1e-4, **common),
            dlc(solver="adam", alpha=1e-4 / 200, weight_init="xavier_uniform",
                n_threads=THREADS, **common))


def _fit_timed(est, x, y, settle=0.0):
    from threadpoolctl import threadpool_limits
    time.sleep(settle)
    with warnings.catch_warnings(), threadpool_limits(THREADS):
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        est.fit(x, y)
        return time.perf_counter() - t0


def part1(repeats, epochs, n, settle=0.5):
    from sklearn.base import clone
    out = {}
    for kind in ("classify", "regress"):
        xtr, ytr, xte, yte = _data(kind, n, 100)
        sk0, dl0 = _same_fit(kind, epochs)
        times = {"sklearn": [], "dlfast": []}
        scores = {}
        load0 = _load()
        for _ in range(repeats):
            for name, proto in (("sklearn", sk0), ("dlfast", dl0)):
                est = clone(proto)
                times[name].append(_fit_timed(est, xtr, ytr, settle))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    scores[name] = float(est.score(xte, yte))
        ratios = [a / b for a, b in zip(times["sklearn"], times["dlfast"])]
        out[kind] = {"times": times, "median": {k: statistics.median(v) for k, v in
                                                times.items()},
                     "ratio": statistics.median(ratios), "score": scores,
                     "load": [load0, _load()], "settle_s": settle}
        metric = "accuracy" if kind == "classify" else "R^2"
        r = out[kind]
        print(f"{kind:9s} fit {epochs} epochs of {len(xtr)} x 100 ({settle:g} s apart): sklearn "
              f"{r['median']['sklearn']:.2f} s, dlfast {r['median']['dlfast']:.2f} s "
              f"(median of {repeats}; sklearn/dlfast {r['ratio']:.2f}x; all: sklearn "
              f"{', '.join(f'{t:.2f}' for t in times['sklearn'])}, dlfast "
              f"{', '.join(f'{t:.2f}' for t in times['dlfast'])}); test {metric}: sklearn "
              f"{scores['sklearn']:.4f}, dlfast {scores['dlfast']:.4f} (difference "
              f"{scores['dlfast'] - scores['sklearn']:+.4f}); load {r['load'][0]} -> "
              f"{r['load'][1]}", flush=True)
    return out


def _mnist_shaped(n_train):
    from sklearn.datasets import make_classification
    x, y = make_classification(n_train + 10000, 784, n_informative=80, n_redundant=120,
                               n_classes=10, n_clusters_per_class=3, flip_y=0.02,
                               random_state=1)
    x = x.astype(np.float32)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _curve(est, xtr, ytr, xva, yva, epochs, target=None):
    """Train one epoch per fit; [(cumulative fit seconds, validation accuracy)] (stops at
    ``target``)."""
    from threadpoolctl import threadpool_limits
    out, total = [], 0.0
    for _ in range(epochs):
        with warnings.catch_warnings(), threadpool_limits(THREADS):
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            est.fit(xtr, ytr)
            total += time.perf_counter() - t0
            acc = float(est.score(xva, yva))
        out.append((total, acc))
        if target is not None and acc >= target:
            break
    return out


def part2(epochs, n_train):
    from sklearn.neural_network import MLPClassifier as SK
    from dlfast.sklearn import MLPClassifier as DL
    xtr, ytr, xva, yva = _mnist_shaped(n_train)
    load0 = _load()
    grid = {}
    for lr in (1e-3, 3e-3):
        for alpha in (1e-4, 1e-3):
            est = SK((256, 128), solver="adam", learning_rate_init=lr, alpha=alpha,
                     batch_size=200, max_iter=1, warm_start=True, tol=0.0,
                     n_iter_no_change=10 ** 6, random_state=np.random.RandomState(0))
            grid[(lr, alpha)] = _curve(est, xtr, ytr, xva, yva, epochs)
            best = max(a for _, a in grid[(lr, alpha)])
            print(f"  sklearn lr {lr:g} alpha {alpha:g}: best validation accuracy {best:.4f} "
                  f"({len(grid[(lr, alpha)])} epochs, {grid[(lr, alpha)][-1][0]:.1f} s)",
                  flush=True)
    (lr, alpha), curve = max(grid.items(), key=lambda kv: max(a for _, a in kv[1]))
    target = max(a for _, a in curve)
    k = next(i for i, (_, a) in enumerate(curve) if a >= target)
    sk_time = curve[k][0]
    est = DL((256, 128), solver="adam", learning_rate_init=3e-3, alpha=1e-4 / 200,
             batchnorm=True, dropout=0.2, schedule="step",
             schedule_params={"step_size": 4, "gamma": 0.5}, batch_size=200, max_iter=1,
             warm_start=True, tol=0.0, n_iter_no_change=10 ** 6, n_threads=THREADS,
             random_state=np.random.RandomState(0))
    dcurve = _curve(est, xtr, ytr, xva, yva, epochs, target)
    reached = dcurve[-1][1] >= target
    res = {"sklearn_best": {"lr": lr, "alpha": alpha, "target": target, "epoch": k + 1,
                            "seconds": sk_time},
           "sklearn_grid": {f"lr={a},alpha={b}": v for (a, b), v in grid.items()},
           "dlfast": {"curve": dcurve, "reached": reached, "epochs": len(dcurve),
                      "seconds": dcurve[-1][0]},
           "ratio": sk_time / dcurve[-1][0] if reached else None, "load": [load0, _load()]}
    print(f"time to validation accuracy {target:.4f} (sklearn's best: lr {lr:g}, alpha "
          f"{alpha:g}, epoch {k + 1}): sklearn {sk_time:.1f} s; dlfast (batch norm, dropout 0.2, "
          f"step schedule) " + (f"{dcurve[-1][0]:.1f} s at epoch {len(dcurve)} "
                                f"({res['ratio']:.2f}x faster)" if reached else
                                f"did not reach it in {epochs} epochs (best "
                                f"{max(a for _, a in dcurve):.4f}, {dcurve[-1][0]:.1f} s)")
          + f"; load {res['load'][0]} -> {res['load'][1]}", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20, help="part 2: most epochs per run")
    ap.add_argument("--quick", action="store_true", help="smaller data, 1 repeat (a smoke run)")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="part 1: seconds of pause before each timed fit (default 0.5)")
    ap.add_argument("--part", choices=("1", "2", "both"), default="both")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    import dlfast
    import sklearn
    print(_machine.describe())
    print(f"dlfast {dlfast.__version__} (backend {dlfast.get_backend()}), scikit-learn "
          f"{sklearn.__version__}, numpy {np.__version__}; {THREADS} threads, float32; load "
          f"average {_load()}", flush=True)
    res = {"machine": _machine.info(), "threads": THREADS}
    if args.part in ("1", "both"):
        if args.settle < 0:
            ap.error("--settle must be >= 0")
        res["fit"] = part1(1 if args.quick else args.repeats, 2 if args.quick else 10,
                           4000 if args.quick else 40000, args.settle)
    if args.part in ("2", "both"):
        res["time_to_accuracy"] = part2(3 if args.quick else args.epochs,
                                        6000 if args.quick else 60000)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
