"""End to end, float32: one training step (forward, backward, update) and one epoch of the MLP
784 -> [100, 100, 100, 100] -> 10, ReLU, He init, on synthetic MNIST-shaped data:

* ``bn_adam`` — batch norm, dropout 0.5, Adam, batch 100 (full grid: 32, 256, 1000);
* ``sgd`` — no batch norm or dropout, plain SGD, batch 1 and 100 (full grid: 10, 1000).

Backends "numpy" and "cython", plus "torch" (PyTorch eager, the same model) when installed.
The step builders are shared with ``compare.py``."""
import time

import numpy as np
import pytest

import dlfast
from compare import (HIDDEN, N_IN, N_OUT, dlfast_step, gemm_probe, gemm_shapes, mnist_like, torch,
                     torch_step)
from dlfast import optim
from dlfast.net import MLP

FULL = pytest.mark.bench_full
IMPLS = ["numpy", "cython", "torch"]
STEPS = [("bn_adam", 100), ("sgd", 1), ("sgd", 100),
         *(pytest.param(c, b, marks=FULL) for c, b in
           (("bn_adam", 32), ("bn_adam", 256), ("bn_adam", 1000), ("sgd", 10), ("sgd", 1000)))]
EPOCH_ROWS = 60000
WARMUP = 20                     # untimed steps before a step benchmark
SETTLE_S = 0.3                  # pause before each step benchmark (OpenBLAS, libgomp and PyTorch
                                # workers spin ~0.1 s after use and would slow the next test)


def _skip_missing(impl):
    if impl == "torch" and torch is None:
        pytest.skip("PyTorch not installed (pip install torch==2.13.0)")
    if impl != "torch" and impl not in dlfast.available_backends():
        pytest.skip(f"backend {impl} not built")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("config,batch", STEPS)
def test_train_step(benchmark, impl, config, batch):
    _skip_missing(impl)
    time.sleep(SETTLE_S)        # the previous test's thread pools stop spinning
    step = torch_step(config, batch) if impl == "torch" else dlfast_step(impl, config, batch)
    for _ in range(WARMUP):     # the steady state: workspaces, plans, thread pools in place
        step()
    benchmark.group = f"train step {config} b={batch}"
    benchmark(step)


@pytest.mark.parametrize("config,batch", STEPS)
def test_train_step_gemm_probe(benchmark, config, batch):
    """The floor beside each step: the bare ``np.matmul`` calls of the step's 14 (batch 1: 14
    GEMV/outer-product) matrix products, NumPy's BLAS at the benchmark's thread count."""
    time.sleep(SETTLE_S)
    benchmark.group = f"train step {config} b={batch}"
    benchmark(gemm_probe(gemm_shapes(batch)))


@pytest.fixture(scope="module")
def mnist_epoch():
    return mnist_like(EPOCH_ROWS, seed=5)


def _dlfast_epoch(impl, config, batch, x, t):
    bn = config == "bn_adam"
    net = MLP(N_IN, HIDDEN, N_OUT, batchnorm=bn, dropout=0.5 if bn else 0.0, seed=0)
    opt = optim.Adam(lr=1e-3) if bn else optim.SGD(lr=0.01)
    rng = np.random.default_rng(0)
    losses = []

    def epoch():
        idx = rng.permutation(len(x))
        with dlfast.use_backend(impl):
            for s in range(0, len(x) - batch + 1, batch):
                j = idx[s:s + batch]
                loss, grads = net.loss_and_gradient(x[j], t[j])
                opt.update(net.params, grads)
        losses.append(loss)
    return epoch, losses


def _torch_epoch(config, batch, x, t):
    bn = config == "bn_adam"
    nn = torch.nn
    layers, fan = [], N_IN
    for h in HIDDEN:
        layers += [nn.Linear(fan, h), *([nn.BatchNorm1d(h)] if bn else []), nn.ReLU(),
                   *([nn.Dropout(0.5)] if bn else [])]
        fan = h
    model = nn.Sequential(*layers, nn.Linear(fan, N_OUT)).train()
    crit = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3) if bn else \
        torch.optim.SGD(model.parameters(), lr=0.01)
    tx, tt = torch.from_numpy(x), torch.from_numpy(t)
    gen = torch.Generator().manual_seed(0)
    losses = []

    def epoch():
        idx = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x) - batch + 1, batch):
            j = idx[s:s + batch]
            opt.zero_grad(set_to_none=True)
            loss = crit(model(tx[j]), tt[j])
            loss.backward()
            opt.step()
        losses.append(loss.item())
    return epoch, losses


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("config,batch", [("bn_adam", 100), ("sgd", 100)])
def test_train_epoch(benchmark, impl, config, batch, mnist_epoch):
    """One epoch over 60000 rows (600 steps, shuffled, gathered batches); 3 rounds."""
    _skip_missing(impl)
    x, t = mnist_epoch
    epoch, losses = (_torch_epoch(config, batch, x, t) if impl == "torch"
                     else _dlfast_epoch(impl, config, batch, x, t))
    benchmark.group = f"train epoch {config} b={batch} (60000 rows)"
    benchmark.pedantic(epoch, rounds=3, iterations=1, warmup_rounds=0)
    assert np.isfinite(losses).all()
