"""Optimiser updates, NumPy vs compiled backend, float32, one parameter of n elements
(10^4..10^7; default run 10^6 for all seven and Adam at 10^7). ``optimizer.update`` includes the
finiteness check (one ``sumsq`` pass over g). The Adam groups also hold ``adam_kernel`` (the bare
``kernels.adam_update``) and ``bandwidth_probe`` (a NumPy copy moving the same 7 * 4 * n bytes)."""
import numpy as np
import pytest

from dlfast import kernels, optim

FULL = pytest.mark.bench_full
SIZES = [10 ** 6, *(pytest.param(n, marks=FULL) for n in (10 ** 4, 10 ** 5, 10 ** 7))]


def _wg(n):
    rng = np.random.default_rng(3)
    w = (rng.standard_normal(n) * 0.1).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    return w, g


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"{n:.0e}")
@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_optimizer_update(benchmark, backend, name, n):
    w, g = _wg(n)
    w0 = w.copy()
    params, grads = {"W": w}, {"W": g}
    opt = optim.get(name)
    benchmark.group = f"optim {name} n={n:.0e}"
    benchmark(opt.update, params, grads)
    assert np.isfinite(w).all() and not np.array_equal(w, w0)


ADAM_BIG = [10 ** 7, *(pytest.param(n, marks=FULL) for n in (10 ** 5, 10 ** 6))]


@pytest.mark.parametrize("n", ADAM_BIG, ids=lambda n: f"{n:.0e}")
def test_adam_kernel(benchmark, backend, n):
    w, g = _wg(n)
    m, v = np.zeros_like(w), np.zeros_like(w)
    step = [0]

    def f():
        step[0] += 1
        kernels.adam_update(w, g, m, v, lr=1e-3, step=step[0])
    benchmark.group = f"adam_kernel n={n:.0e}"
    benchmark(f)
    assert np.isfinite(w).all()


@pytest.mark.parametrize("n", ADAM_BIG, ids=lambda n: f"{n:.0e}")
def test_adam_kernel_bandwidth_probe(benchmark, n):
    """np.copyto of 3.5 n floats: reads and writes 7 * 4 * n bytes, as the Adam update does."""
    src = np.ones(7 * n // 2, np.float32)
    dst = np.empty_like(src)
    benchmark.group = f"adam_kernel n={n:.0e}"
    benchmark(np.copyto, dst, src)
    assert dst[-1] == 1
