#!/usr/bin/env python
"""Where the time of one bound training step goes: a timer around each bound kernel call of
``Sequential.loss_and_gradient`` (``dlfast._bound``), the input check, the loss, and the
optimiser update, summed per layer type over many steps of the ``compare.py`` model.

    python benchmarks/step_breakdown.py --config bn_adam --batch 100
    python benchmarks/step_breakdown.py --config sgd --batch 1 --steps 2000

The timed calls are the bound step's Python calls (``BoundStep._fwd`` ...), one per layer; the
compiled backend runs the same kernels as one compiled chain (``src/_step.pyx``), whose plain
step time (no timers) is printed last. Timers add ~0.1 us per call.
"""
import argparse
import time

import dlfast
from compare import HIDDEN, MLP, N_IN, N_OUT, Batches, optim


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=("bn_adam", "sgd"), default="bn_adam")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--backend", choices=("cython", "numpy"), default="cython")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if a.batch < 1 or a.steps < 1 or a.threads < 1:
        p.error("--batch, --steps and --threads must be >= 1")
    bn = a.config == "bn_adam"
    if bn and a.batch < 2:
        p.error("bn_adam needs --batch >= 2 (batch norm)")
    dlfast.set_num_threads(a.threads)
    net = MLP(N_IN, HIDDEN, N_OUT, activation="relu", weight_init="he", batchnorm=bn,
              dropout=0.5 if bn else 0.0, seed=0)
    opt = optim.Adam(lr=1e-3) if bn else optim.SGD(lr=0.01)
    data = Batches(a.batch)
    clock = time.perf_counter
    acc = {}
    with dlfast.use_backend(a.backend):
        for _ in range(20):
            x, t = data.next()
            _, g = net.loss_and_gradient(x, t)
            opt.update(net.params, g)
        step = net._bound
        if step is None or not step.runnable:
            raise SystemExit("this net has no bound step")
        names = [type(layer).__name__ for layer in net.layers]
        bwd_names = names[::-1][:len(step._bwd)]

        def timed(key, fn, *args):
            t0 = clock()
            out = fn(*args)
            acc[key] = acc.get(key, 0.0) + clock() - t0
            return out

        for _ in range(a.steps):
            x, t = data.next()
            y = timed("input check", net._check_x, x)
            for name, f in zip(names, step._fwd):
                y = timed(f"{name} forward", f, y)
            timed("loss forward", step._loss_fwd, y, t)
            d = timed("loss backward", step._loss_bwd)
            for name, b in zip(bwd_names, step._bwd):
                d = timed(f"{name} backward", b, d)
            g = timed("grads (+ regulariser)", lambda: net._finish_grads(dict(step.grads)))
            timed(f"{type(opt).__name__}.update", opt.update, net.params, g)
        t0 = clock()
        for _ in range(a.steps):
            x, t = data.next()
            _, g = net.loss_and_gradient(x, t)
            opt.update(net.params, g)
        plain = (clock() - t0) / a.steps
        chain = getattr(step, "_chain", None) is not None
    total = sum(acc.values())
    print(f"# {a.config} batch {a.batch} backend {a.backend} threads {a.threads}, {a.steps} steps:"
          f" {total / a.steps * 1e6:.1f} us/step")
    for key, v in sorted(acc.items(), key=lambda kv: -kv[1]):
        print(f"{key:26s} {v / a.steps * 1e6:9.1f} us  {100 * v / total:5.1f}%")
    print(f"# plain steps ({'compiled chain' if chain else 'bound calls'}, no timers): "
          f"{plain * 1e6:.1f} us/step")


if __name__ == "__main__":
    main()
