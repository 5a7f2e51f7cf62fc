#!/usr/bin/env python
"""Where the time of one training step goes: each step of the plan's program timed inside the
program (``Program.run(x, times)``: a clock around every op call, no Python between them on the
compiled backend), summed per layer type, plus the net's checks around the program and the
optimiser update, over many steps of the ``compare.py`` model.

    python benchmarks/step_breakdown.py --config bn_adam --batch 100
    python benchmarks/step_breakdown.py --config sgd --batch 1 --steps 20000
    python benchmarks/step_breakdown.py --config sgd --optimizer adam --inputs 100 \
        --hidden 256,128 --batch 200 --by-step      # sklearn_compare.py's fit, one step

``--inputs`` keeps the first columns of the MNIST-shaped data (copied, contiguous); with a value
loss (``--loss mse|mae|huber|sigmoid_bce``) the targets are ``--outputs`` columns drawn once
(normal; uniform in [0, 1] for sigmoid_bce), e.g. sklearn_compare.py's regression:
``--loss mse --outputs 1``.

The last line is the plain step (``loss_and_gradient`` + ``update``, no clocks); the clocks add
~0.05 us per program step.
"""
import _machine

_machine.unpin_openblas()

import argparse  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import dlfast  # noqa: E402
from compare import HIDDEN, MLP, N_IN, N_OUT, Batches, optim  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=("bn_adam", "sgd"), default="bn_adam")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--backend", choices=("cython", "numpy"), default="cython")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--inputs", type=int, default=N_IN, help=f"input features (<= {N_IN})")
    p.add_argument("--hidden", default=",".join(map(str, HIDDEN)),
                   help="hidden sizes, comma-separated")
    p.add_argument("--optimizer", choices=("adam", "sgd"),
                   help="default: adam for bn_adam, sgd for sgd")
    p.add_argument("--by-step", action="store_true",
                   help="one line per program step instead of per layer type")
    p.add_argument("--loss", default="softmax_xent",
                   choices=("softmax_xent", "mse", "mae", "huber", "sigmoid_bce"))
    p.add_argument("--outputs", type=int, default=N_OUT, help="output units")
    a = p.parse_args(argv)
    if a.outputs < 1 or (a.loss == "softmax_xent" and a.outputs != N_OUT):
        p.error(f"--outputs must be >= 1 (and {N_OUT} with softmax_xent: the data's classes)")
    try:
        hidden = [int(h) for h in a.hidden.split(",")]
    except ValueError:
        p.error(f"--hidden: expected comma-separated integers, got {a.hidden!r}")
    if not 1 <= a.inputs <= N_IN or min(hidden) < 1:
        p.error(f"--inputs must be in [1, {N_IN}] and --hidden sizes >= 1")
    if a.batch < 1 or a.steps < 1 or a.threads < 1:
        p.error("--batch, --steps and --threads must be >= 1")
    bn = a.config == "bn_adam"
    if bn and a.batch < 2:
        p.error("bn_adam needs --batch >= 2 (batch norm)")
    dlfast.set_num_threads(a.threads)
    net = MLP(a.inputs, hidden, a.outputs, activation="relu", weight_init="he", batchnorm=bn,
              dropout=0.5 if bn else 0.0, seed=0, loss=a.loss)
    adam = a.optimizer == "adam" if a.optimizer else bn
    opt = optim.Adam(lr=1e-3) if adam else optim.SGD(lr=0.01)
    data = Batches(a.batch)
    if a.inputs < N_IN:
        data.x = np.ascontiguousarray(data.x[:, :a.inputs])
    if a.loss != "softmax_xent":
        rng = np.random.default_rng(1)
        shape = (len(data.t), a.outputs)
        data.t = (rng.random(shape) if a.loss == "sigmoid_bce"
                  else rng.standard_normal(shape)).astype(np.float32)
    clock = time.perf_counter
    with dlfast.use_backend(a.backend):
        for _ in range(20):
            x, t = data.next()
            _, g = net.loss_and_gradient(x, t)
            opt.update(net.params, g)
        plan = net._plans._plans[0]
        program = plan.program
        times = np.zeros(len(plan.steps))
        around = update = 0.0
        for _ in range(a.steps):
            x, t = data.next()
            t0 = clock()
            xc = net._check_x(x)
            assert program.accepts(xc) and program.readonly() < 0
            program.load_targets(*plan.targets((t,)))
            for layer, op, size in plan._drops:
                op.set_counter(layer._take_counter(size))
            t1 = clock()
            program.run(xc, times)
            t2 = clock()
            g = net._finish_grads(dict(plan.grads))
            opt.update(net.params, g)
            t3 = clock()
            around += t1 - t0
            update += t3 - t2
        t0 = clock()
        for _ in range(a.steps):
            x, t = data.next()
            _, g = net.loss_and_gradient(x, t)
            opt.update(net.params, g)
        plain = (clock() - t0) / a.steps
    acc = {}
    for name, v in zip(plan.step_names(), times):
        key = name if a.by_step else re.sub(r"^(head \d+ )?layer \d+ ", "", name)
        acc[key] = acc.get(key, 0.0) + v
    acc["checks, labels, counters (Python)"] = around
    acc[f"{type(opt).__name__}.update (+ grads dict)"] = update
    total = sum(acc.values())
    print(f"# {a.config} batch {a.batch} backend {a.backend} threads {a.threads}, {a.steps} "
          f"steps: {total / a.steps * 1e6:.1f} us/step timed\n# {_machine.describe()}")
    for key, v in acc.items() if a.by_step else sorted(acc.items(), key=lambda kv: -kv[1]):
        print(f"{key:40s} {v / a.steps * 1e6:9.1f} us  {100 * v / total:5.1f}%")
    print(f"# plain steps (loss_and_gradient + update, no clocks): {plain * 1e6:.1f} us/step")


if __name__ == "__main__":
    main()
