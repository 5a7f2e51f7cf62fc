"""Wall time of one 32-trial random search, serial vs 2 local worker processes (spawn pool, each
worker limited to cores // 2 threads), on the digits (MLP 64-[100, 100]-10, SGD, batch 32,
val_split 0.2 of the training three quarters). The serial search runs twice, with the default
threads and with 1 thread (OpenMP on small layers can lose on a busy machine); the ratio is
pool / the faster serial run (target <= 0.6 on 2 cores). Also checks the trials are identical.

    python benchmarks/tune_speedup.py [--trials 32] [--workers 2] [--epochs 12] [--quick]
"""
import argparse
import os
import time

from dlfast import get_backend, get_num_threads, set_num_threads, tune
from dlfast.datasets import load_digits, train_test_split

SPACE = {"lr": tune.LogUniform(1e-3, 0.5), "weight_decay": tune.LogUniform(1e-7, 1e-3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="serial with 1 thread only")
    a = ap.parse_args()
    x, t = load_digits()
    x, t, _, _ = train_test_split(x, t, 0.25, seed=a.seed, stratify=True)   # test part unused
    fn = tune.make_objective(tune.MLPBuilder(64, [100, 100], 10), tune.OptimizerBuilder("sgd"),
                             x, t, val_split=0.2, epochs=a.epochs, batch_size=32,
                             split_seed=a.seed)
    print(f"backend {get_backend()}, {get_num_threads()} threads in the parent, "
          f"{len(os.sched_getaffinity(0))} cores; {a.trials} trials x {a.epochs} epochs; "
          f"load average {os.getloadavg()[0]:.1f} (other processes distort the ratio)")
    times = {}
    for threads in ((1,) if a.quick else (0, 1)):      # 0: the default thread count
        set_num_threads(threads)
        t0 = time.perf_counter()
        serial = tune.random_search(fn, SPACE, a.trials, seed=a.seed)
        times[threads] = time.perf_counter() - t0
        print(f"serial, {get_num_threads()} thread(s): {times[threads]:7.2f} s")
    set_num_threads(0)
    ts = min(times.values())
    times.setdefault(0, ts)
    t0 = time.perf_counter()
    pool = tune.random_search(fn, SPACE, a.trials, seed=a.seed, n_jobs=a.workers)
    tp = time.perf_counter() - t0
    print(f"{a.workers} workers (spawn):    {tp:7.2f} s  (pool start-up included)")
    same = [(r.index, r.params, r.score) for r in serial] == [(r.index, r.params, r.score)
                                                               for r in pool]
    print(f"ratio pool / faster serial {tp / ts:.3f} (target <= 0.6), pool / default-thread "
          f"serial {tp / times[0]:.3f}; identical trials: {same}")
    print(f"load average now {os.getloadavg()[0]:.1f}")
    print(tune.format_table(serial, 3))


if __name__ == "__main__":
    main()
