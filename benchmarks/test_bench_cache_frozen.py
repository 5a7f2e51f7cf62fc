"""Trainer(cache_frozen=True) vs the uncached path, float32: MLP 784 -> [512, 512, 512] -> 10,
ReLU, the three hidden layers frozen (``freeze(upto=3)``), SGD, batch 100, 10,000 synthetic
MNIST-shaped rows, validation 2,000 rows (``test_step_frozen``: one ``loss_and_gradient`` of a
batch of 100 with 0 / 2 / 3 hidden layers frozen: the backward pass skips their work). One benchmark round = one ``fit`` of ``epochs``
epochs on a fresh Trainer, so the cached rounds include building the cache (one eval-mode
forward of the frozen layers over training + validation rows)::

    python -m pytest benchmarks/test_bench_cache_frozen.py --benchmark-enable --benchmark-group-by=group
"""
import numpy as np
import pytest

from dlfast import optim
from dlfast.net import MLP
from dlfast.train import Trainer

ROWS, VAL, N_IN, HIDDEN, N_OUT = 10000, 2000, 784, [512, 512, 512], 10


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.random((ROWS + VAL, N_IN), dtype=np.float32)
    t = rng.integers(0, N_OUT, ROWS + VAL)
    return x[:ROWS], t[:ROWS], x[ROWS:], t[ROWS:]


@pytest.mark.parametrize("epochs", [1, 5])
@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
def test_fit_frozen(benchmark, backend, data, cached, epochs):
    x, t, xv, tv = data
    net = MLP(N_IN, HIDDEN, N_OUT, seed=0)
    net.freeze(upto=3)

    def setup():
        tr = Trainer(net, optim.SGD(lr=0.01), epochs=epochs, batch_size=100, seed=0,
                     progress=False, cache_frozen=cached)
        return (tr,), {}

    benchmark.group = f"fit, 3 of 4 layers frozen, {epochs} epoch(s)"
    benchmark.pedantic(lambda tr: tr.fit(x, t, xv, tv), setup=setup, rounds=3, iterations=1)


@pytest.mark.parametrize("frozen", [0, 2, 3])
def test_step_frozen(benchmark, backend, data, frozen):
    x, t, _, _ = data
    net = MLP(N_IN, HIDDEN, N_OUT, seed=0)
    net.freeze(upto=frozen)
    xb, tb = x[:100], t[:100]
    benchmark.group = "loss_and_gradient, batch 100, k hidden layers frozen"
    benchmark(net.loss_and_gradient, xb, tb)
