#!/usr/bin/env python
"""Every way of training runs the same step: the ways side by side, in one run.

Model: the MLP 784 -> [100]x4 -> 10 (ReLU, He init), float32. ``bn_adam`` = batch norm + dropout
0.5 + Adam; ``sgd`` = plain SGD. Ways (each a whole step: forward, backward, update):

* ``engine``   ``loss, grads = net.loss_and_gradient(x, t); opt.update(net.params, grads)``
* ``readme``   ``opt.update(net.params, net.gradient(x, t))`` (the README's loop: new arrays)
* ``textbook`` ``dlfast.compat``: ``MultiLayerNetExtend`` + compat ``Adam``/``SGD``, the same loop
* ``kernels``  the step's compiled program and fused update called directly (no Python around
               them): ``engine`` minus ``kernels`` is the Python time of a step
* ``trainer``  ``Trainer.fit`` (``eval_train=False``: no per-epoch pass over the training set)
               for 4 epochs of 2,000 shuffled rows, against ``engine`` over the same shuffled
               batches (gathered with ``x[idx]``, as the Trainer does)

and, at batch 100 with Adam, nets the engine runs next to a Sequential doing the same arithmetic:
a MultiTaskNet (trunk [100]x4, two 10-class heads) against a Sequential with one 20-unit head; an
MLP with PReLU against one with LeakyReLU(0.25) layers; an MLP with its lower two Dense layers
frozen against the lower layers' forward plus a Sequential of the upper layers.

Timing as ``compare.py`` (interleaved blocks, medians; ratios are medians of per-round ratios).

    python benchmarks/engine.py [--threads 2] [--rounds 9] [--json PATH]
"""
import _machine

_machine.unpin_openblas()

import time  # noqa: E402

import numpy as np  # noqa: E402

from dlfast import compat, optim  # noqa: E402
from dlfast import layers as L  # noqa: E402
from dlfast.net import MLP, MultiTaskNet, Sequential  # noqa: E402
from dlfast.train import Trainer  # noqa: E402

from compare import (Batches, Case, _fmt, median, mnist_like, ratio, run_case,  # noqa: E402
                     spread)

HIDDEN = [100, 100, 100, 100]


def _mlp(bn, **kw):
    return MLP(784, HIDDEN, 10, batchnorm=bn, dropout=0.5 if bn else 0.0, seed=0, **kw)


def _opt(bn):
    return optim.Adam(lr=1e-3) if bn else optim.SGD(lr=0.01)


def _loop(net, opt, data, readme=False):
    if readme:
        def step():
            x, t = data.next()
            opt.update(net.params, net.gradient(x, t))
    else:
        def step():
            x, t = data.next()
            _, grads = net.loss_and_gradient(x, t)
            opt.update(net.params, grads)
    return step


def ways_case(config, batch):
    bn = config == "bn_adam"
    fns = {"engine": _loop(_mlp(bn), _opt(bn), Batches(batch)),
           "readme": _loop(_mlp(bn), _opt(bn), Batches(batch), readme=True)}
    np.random.seed(0)
    book = compat.MultiLayerNetExtend(784, HIDDEN, 10, use_batchnorm=bn, use_dropout=bn,
                                      dropout_ration=0.5, dtype=np.float32)
    fns["textbook"] = _loop(book, compat.Adam() if bn else compat.SGD(), Batches(batch),
                            readme=True)
    fns["kernels"] = _kernels_only(bn, batch)
    return Case(f"{config} b={batch}", "ways", fns, batch=batch, config=config)


def _kernels_only(bn, batch):
    """The step's program (labels loaded once, counters advanced as the engine does) and the
    fused update, called directly on the same batches as the other ways (the batch fetch, the
    loop's own cost, cancels out of ``engine - kernels``)."""
    net, opt = _mlp(bn), _opt(bn)
    data = Batches(batch)
    x, t = data.next()
    for _ in range(2):
        _, grads = net.loss_and_gradient(x, t)
        opt.update(net.params, grads)
    plan, b = net._plans._plans[0], opt._binding
    program, drops = plan.program, plan._drops
    program.load_targets(*plan.targets((t,)))
    bound = b.bound._b
    lr = opt.lr

    def step():
        x, _ = data.next()
        for layer, op, size in drops:
            op.set_counter(layer._take_counter(size))
        program.run(x)
        bound.sumsq()
        bound.update(lr, 1.0, float("inf"), 1.0)
    return step


def trainer_case(config, batch, rows=2000, epochs=4):
    bn = config == "bn_adam"
    x, t = mnist_like(rows, seed=3)
    net_t, opt_t = _mlp(bn), _opt(bn)
    trainer = Trainer(net_t, opt_t, epochs=epochs, batch_size=batch, progress=False, seed=0,
                      handle_interrupt=False, eval_train=False)
    net_e, opt_e = _mlp(bn), _opt(bn)
    rng = np.random.default_rng(0)

    def engine():
        for _ in range(epochs):
            order = rng.permutation(rows)
            for s in range(0, rows, batch):
                idx = order[s:s + batch]
                _, grads = net_e.loss_and_gradient(x[idx], t[idx])
                opt_e.update(net_e.params, grads)

    return Case(f"{config} b={batch}: {epochs} epochs of {rows} rows", "trainer",
                {"engine": engine, "trainer": lambda: trainer.fit(x, t)}, batch=batch,
                steps=epochs * -(-rows // batch))


def nets_cases(batch=100):
    def trunk():
        return [L.Dense(784 if i == 0 else 100, 100, "relu", seed=i) for i in range(4)]

    cases = []
    mt = MultiTaskNet(trunk(), {"a": [L.Dense(100, 10, seed=5)], "b": [L.Dense(100, 10, seed=6)]})
    seq = Sequential(trunk() + [L.Dense(100, 20, seed=5)])
    d1, d2 = Batches(batch), Batches(batch)
    oa, ob = optim.Adam(), optim.Adam()

    def multitask():
        x, t = d1.next()
        _, g = mt.loss_and_gradient(x, {"a": t, "b": t})
        oa.update(mt.params, g)

    cases.append(Case(f"multitask b={batch}", "nets",
                      {"sequential": _loop(seq, ob, d2), "net": multitask}))

    def leaky():
        layers = []
        for i in range(4):
            layers += [L.Dense(784 if i == 0 else 100, 100, seed=i), L.LeakyReLU(0.25)]
        return Sequential(layers + [L.Dense(100, 10, seed=9)])
    cases.append(Case(f"prelu b={batch}", "nets",
                      {"sequential": _loop(leaky(), optim.Adam(), Batches(batch)),
                       "net": _loop(MLP(784, HIDDEN, 10, activation="prelu", seed=0),
                                    optim.Adam(), Batches(batch))}))

    frozen = MLP(784, HIDDEN, 10, seed=0)
    frozen.freeze(upto=2)
    full = MLP(784, HIDDEN, 10, seed=0)
    lower, upper = full.layers[:2], Sequential(full.layers[2:])
    d3 = Batches(batch)
    ou = optim.Adam()

    def by_hand():
        x, t = d3.next()
        h = x
        for layer in lower:
            h = layer.forward(h, True)
        _, g = upper.loss_and_gradient(h, t)
        ou.update(upper.params, g)
    cases.append(Case(f"frozen lower 2 of 5 b={batch}", "nets",
                      {"sequential": by_hand,
                       "net": _loop(frozen, optim.Adam(), Batches(batch))}))
    return cases


def table(cases):
    out = []
    for c in cases:
        names = list(c.times)
        ref = names[0]
        cells = [f"{k} {_fmt(median(c, k))}" + ("" if k == ref else f" ({ratio(c, ref, k):.2f}x)")
                 for k in names]
        out.append(f"| {c.name} | " + " | ".join(cells) + f" | {spread(c):.0%} |")
    return "\n".join(out)


def main(argv=None):
    p = _machine.parser(__doc__, 40.0)
    p.add_argument("--only", default="ways,trainer,nets")
    a = p.parse_args(argv)
    settle = _machine.start("dlfast engine", a)
    builders = []
    only = a.only.split(",")
    if "ways" in only:
        builders += [lambda: [ways_case("bn_adam", 100)], lambda: [ways_case("sgd", 1)]]
    if "trainer" in only:
        builders += [lambda: [trainer_case("bn_adam", 100)]]
    if "nets" in only:
        builders += [nets_cases]
    done = []
    t0 = time.perf_counter()
    for build in builders:
        for case in build():
            run_case(case, a.rounds, a.block_ms / 1e3, None, settle)
            case.fns = None
            done.append(case)
            print(f"  {case.name:<40} " + "  ".join(f"{k}={_fmt(median(case, k))}"
                                                    for k in case.times), flush=True)
    print("\n| case | ways: median (ratio to the first) | spread |\n|---|---|---|")
    print(table(done))
    for c in done:
        if c.group == "ways":
            py = median(c, "engine") - median(c, "kernels")
            print(f"  {c.name}: Python time per step (engine - kernels) {py * 1e6:.1f} us")
        if c.group == "trainer":
            print(f"  {c.name}: per step engine {_fmt(median(c, 'engine') / c.info['steps'])}, "
                  f"trainer {_fmt(median(c, 'trainer') / c.info['steps'])}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    if a.json:
        _machine.write_json(a.json, a, [
            {"name": c.name, "group": c.group, "median_s": {k: median(c, k) for k in c.times},
             "ratio_to_first": {k: ratio(c, next(iter(c.times)), k) for k in c.times},
             "spread": spread(c), "samples_s": c.times} for c in done])
    return done


if __name__ == "__main__":
    main()
