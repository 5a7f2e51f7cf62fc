"""Compiled batch-norm kernels against the NumPy backend, through dlfast.kernels: float32/float64,
batch 1 / odd batches, width 1 and wide layers (threads start), non-contiguous / Fortran /
read-only inputs, optional outputs, and 1 vs 2 threads bit-identical."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import dlfast
from dlfast import kernels as K
from kernel_helpers import layout, on_all

pytestmark = pytest.mark.skipif("cython" not in dlfast.available_backends(),
                                reason="compiled backend not built")
SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = st.sampled_from([np.float32, np.float64])
LAYOUTS = st.sampled_from(["c", "f", "step", "ro"])
ROWS = st.sampled_from([2, 3, 7, 16, 33, 129])
# widths around the 64-feature block; 1200 with 33+ rows crosses the parallel threshold
COLS = st.sampled_from([1, 2, 5, 63, 64, 65, 300, 1200])
TOL = {np.dtype(np.float32): (1e-5, 1e-5), np.dtype(np.float64): (1e-12, 1e-12)}


def check(ref, one, two, f64_floor=1.0):
    """1 vs 2 threads bit-identical; compiled vs NumPy within tolerance (absolute floor scaled by
    the largest magnitude of the reference, and for float64 by ``f64_floor``: sums over N rows
    taken in another order differ by ~sqrt(N) ulps of their terms)."""
    for r, a, b in zip(ref, one, two):
        if r is None:
            assert a is None and b is None
            continue
        assert a.dtype == r.dtype and a.shape == r.shape
        assert a.tobytes() == b.tobytes()
        rtol, atol = TOL[r.dtype]
        if r.dtype == np.float64:
            atol *= f64_floor
        scale = float(np.abs(r).max()) if r.size else 1.0
        np.testing.assert_allclose(a, r, rtol=rtol, atol=atol * max(1.0, scale))


def data(n, f, dtype, seed, offset=0.0, spread=1.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, f)) * spread * rng.random(f) * 3 + offset).astype(dtype)
    gamma = (rng.standard_normal(f) + 1).astype(dtype)
    beta = rng.standard_normal(f).astype(dtype)
    return rng, x, gamma, beta


@SETTINGS
@given(n=st.one_of(st.just(1), ROWS), f=COLS, dtype=DTYPES, kind=LAYOUTS, seed=st.integers(0, 99),
       offset=st.sampled_from([0.0, 1e3]))
def test_batchnorm_stats(n, f, dtype, kind, seed, offset):
    _, x, _, _ = data(n, f, dtype, seed, offset)
    x = layout(x, kind)

    def fn():
        mean, var = np.full(f, np.nan, dtype), np.full(f, np.nan, dtype)
        K.batchnorm_stats(x, mean, var)
        return [mean, var]

    check(*on_all(fn))


@SETTINGS
@given(n=ROWS, f=COLS, dtype=DTYPES, kinds=st.tuples(LAYOUTS, LAYOUTS, LAYOUTS),
       seed=st.integers(0, 99), running=st.booleans(), unbiased=st.booleans(),
       momentum=st.sampled_from([0.0, 0.1, 0.9, 1.0]), eps=st.sampled_from([1e-5, 1e-3, 1.0]))
def test_batchnorm_forward_train(n, f, dtype, kinds, seed, running, unbiased, momentum, eps):
    rng, x, gamma, beta = data(n, f, dtype, seed)
    x, gamma, beta = (layout(a, k) for a, k in zip((x, gamma, beta), kinds))
    rm0 = rng.standard_normal(f).astype(dtype)
    rv0 = (rng.random(f) + 0.5).astype(dtype)

    def fn():
        out, xhat = np.full((n, f), np.nan, dtype), np.full((n, f), np.nan, dtype)
        mean, invstd = np.full(f, np.nan, dtype), np.full(f, np.nan, dtype)
        rm, rv = (rm0.copy(), rv0.copy()) if running else (None, None)
        K.batchnorm_forward_train(x, gamma, beta, out, xhat, mean, invstd, rm, rv,
                                  momentum=momentum, eps=eps, unbiased=unbiased)
        return [out, xhat, mean, invstd, rm, rv]

    check(*on_all(fn))


def test_batchnorm_forward_train_large_offset_is_stable():
    """Two-pass statistics: a 1e4 offset with unit spread (float32) keeps the variance accurate."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((512, 100)) + 1e4).astype(np.float32)
    exact = x.astype(np.float64).var(axis=0)
    with dlfast.use_backend("cython"):
        mean, var = np.empty(100, np.float32), np.empty(100, np.float32)
        K.batchnorm_stats(x, mean, var)
    np.testing.assert_allclose(var, exact, rtol=1e-5)


@SETTINGS
@given(n=st.one_of(st.sampled_from([0, 1]), ROWS), f=COLS, dtype=DTYPES,
       kinds=st.tuples(LAYOUTS, LAYOUTS, LAYOUTS), seed=st.integers(0, 99),
       eps=st.sampled_from([1e-5, 0.5]))
def test_batchnorm_forward_eval(n, f, dtype, kinds, seed, eps):
    rng, x, gamma, beta = data(n, f, dtype, seed)
    rm = rng.standard_normal(f).astype(dtype)
    rv = rng.random(f).astype(dtype)
    rv[:: 3] = 0.0
    x, gamma, rv = (layout(a, k) for a, k in zip((x, gamma, rv), kinds))

    def fn():
        out, xhat = np.full((n, f), np.nan, dtype), np.full((n, f), np.nan, dtype)
        invstd = np.full(f, np.nan, dtype)
        K.batchnorm_forward_eval(x, gamma, beta, rm, rv, eps, out, xhat, invstd)
        return [out, xhat, invstd]

    check(*on_all(fn))


@SETTINGS
@given(n=st.one_of(st.sampled_from([0, 1]), ROWS), f=COLS, dtype=DTYPES,
       kinds=st.tuples(LAYOUTS, LAYOUTS), seed=st.integers(0, 99),
       want=st.tuples(st.booleans(), st.booleans(), st.booleans()), batch_stats=st.booleans())
def test_batchnorm_backward(n, f, dtype, kinds, seed, want, batch_stats):
    rng, x, gamma, _ = data(n, f, dtype, seed)
    dout = rng.standard_normal((n, f)).astype(dtype)
    invstd = (rng.random(f) + 0.5).astype(dtype)
    # a real xhat: standardised columns, so dx has the magnitude it has in training
    xhat = ((x - x.mean(axis=0)) / (x.std(axis=0) + 1)).astype(dtype) if n else x
    dout, xhat = (layout(a, k) for a, k in zip((dout, xhat), kinds))

    def fn():
        dx = np.full((n, f), np.nan, dtype) if want[0] else None
        dgamma = np.full(f, np.nan, dtype) if want[1] else None
        dbeta = np.full(f, np.nan, dtype) if want[2] else None
        K.batchnorm_backward(dout, xhat, gamma, invstd, dx, dgamma, dbeta, batch_stats=batch_stats)
        return [dx, dgamma, dbeta]

    with np.errstate(divide="ignore"):       # the NumPy backend divides by N = 0 (no rows to write)
        check(*on_all(fn))


def test_batchnorm_wide_layer_uses_threads_and_is_deterministic():
    """A (256, 4096) float32 batch: threads start; 1 and 2 threads agree bit for bit."""
    _, x, gamma, beta = data(256, 4096, np.float32, 7)

    def fn():
        out, xhat = np.empty_like(x), np.empty_like(x)
        mean, invstd = np.empty(4096, np.float32), np.empty(4096, np.float32)
        rm, rv = np.zeros(4096, np.float32), np.ones(4096, np.float32)
        K.batchnorm_forward_train(x, gamma, beta, out, xhat, mean, invstd, rm, rv)
        dx, dg, db = np.empty_like(x), np.empty(4096, np.float32), np.empty(4096, np.float32)
        K.batchnorm_backward(out, xhat, gamma, invstd, dx, dg, db)
        return [out, xhat, mean, invstd, rm, rv, dx, dg, db]

    check(*on_all(fn))


# row chunks of 256 rows for F <= 256: one extra row, the training shape, the widest F; 257 columns
# take the feature-block decomposition
@pytest.mark.parametrize("shape", [(2049, 1), (5000, 7), (40000, 3), (4097, 64), (2049, 65),
                                   (257, 256), (1000, 100), (600, 257)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_tall_narrow_batches(shape, dtype):
    """Many rows, few features (the row-chunked decomposition): stats, forward, backward."""
    n, f = shape
    rng, x, gamma, beta = data(n, f, dtype, n + f, offset=10.0)
    x = layout(x, "step")
    dout = rng.standard_normal((n, f)).astype(dtype)

    def fn():
        mean, var = np.empty(f, dtype), np.empty(f, dtype)
        K.batchnorm_stats(x, mean, var)
        out, xhat = np.empty((n, f), dtype), np.empty((n, f), dtype)
        m2, invstd = np.empty(f, dtype), np.empty(f, dtype)
        rm, rv = np.zeros(f, dtype), np.ones(f, dtype)
        K.batchnorm_forward_train(x, gamma, beta, out, xhat, m2, invstd, rm, rv)
        dx, dg, db = np.empty((n, f), dtype), np.empty(f, dtype), np.empty(f, dtype)
        K.batchnorm_backward(dout, xhat, gamma, invstd, dx, dg, db)
        dx2 = np.empty((n, f), dtype)
        K.batchnorm_backward(dout, xhat, gamma, invstd, dx2, None, None, batch_stats=False)
        return [mean, var, out, xhat, m2, invstd, rm, rv, dx, dg, db, dx2]

    check(*on_all(fn), f64_floor=np.sqrt(n))
