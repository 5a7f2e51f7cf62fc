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


# ============================================================================ (N, C, *S): per channel
def _channel_ref(x, gamma, beta, eps):
    """Plain float64 batch norm of x (N, C, *S) over every axis but 1."""
    axes = (0,) + tuple(range(2, x.ndim))
    b = (1, -1) + (1,) * (x.ndim - 2)
    x64 = x.astype(np.float64)
    mu, var = x64.mean(axes), x64.var(axes)
    xhat = (x64 - mu.reshape(b)) / np.sqrt(var.reshape(b) + eps)
    return mu, var, xhat, gamma.reshape(b) * xhat + beta.reshape(b)


# planes of 1 (the 2-D paths), 2, 30 and 64 values; PCHUNK / S images per work item (S = 64: 256
# images, so 600 images are 3 items per channel); (300, 4, 8, 8) and (40, 70, 9, 11) start threads
@pytest.mark.parametrize("shape", [(5, 3, 1, 1), (2, 3, 1, 2), (1, 2, 5, 6), (7, 1, 4, 4),
                                   (300, 4, 8, 8), (600, 2, 8, 8), (40, 70, 9, 11), (3, 5, 7),
                                   (2, 3, 2, 2, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_per_channel_of_images(shape, dtype):
    """x (N, C, H, W) (any ndim >= 3): statistics per channel over N and the spatial axes (as
    PyTorch's BatchNorm2d); both backends agree, 1 and 2 threads bit for bit, and the values
    match a plain float64 computation; the running variance is unbiased by M / (M - 1)."""
    rng = np.random.default_rng(sum(shape))
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + rng.standard_normal((1, c) + (1,) * (len(shape) - 2))
         * 5).astype(dtype)
    gamma = (rng.standard_normal(c) + 1).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    rm0, rv0 = rng.standard_normal(c).astype(dtype), (rng.random(c) + 0.5).astype(dtype)

    def fn():
        mean, var = np.empty(c, dtype), np.empty(c, dtype)
        K.batchnorm_stats(x, mean, var)
        out, xhat = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
        m2, invstd = np.empty(c, dtype), np.empty(c, dtype)
        rm, rv = rm0.copy(), rv0.copy()
        K.batchnorm_forward_train(x, gamma, beta, out, xhat, m2, invstd, rm, rv, momentum=0.3)
        dx, dg, db = np.empty(shape, dtype), np.empty(c, dtype), np.empty(c, dtype)
        K.batchnorm_backward(dout, xhat, gamma, invstd, dx, dg, db)
        dx2 = np.empty(shape, dtype)
        K.batchnorm_backward(dout, xhat, gamma, invstd, dx2, None, None, batch_stats=False)
        oe, he, ie = np.empty(shape, dtype), np.empty(shape, dtype), np.empty(c, dtype)
        K.batchnorm_forward_eval(x, gamma, beta, rm, rv, 1e-3, oe, he, ie)
        return [mean, var, out, xhat, m2, invstd, rm, rv, dx, dg, db, dx2, oe, he, ie]

    ref, one, two = on_all(fn)
    m = x.size // c
    check(ref, one, two, f64_floor=np.sqrt(m))
    mu, var, xhat, out = _channel_ref(x, gamma, beta, 1e-5)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ref[0], mu, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(ref[1], var, rtol=tol * 10, atol=tol)
    np.testing.assert_allclose(ref[2], out, rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(ref[6], 0.7 * rm0 + 0.3 * mu, rtol=tol * 10, atol=tol)
    np.testing.assert_allclose(ref[7], 0.7 * rv0 + 0.3 * var * m / (m - 1), rtol=tol * 10)
    # dbeta, dgamma: sums over the channel's M values
    axes = (0,) + tuple(range(2, x.ndim))
    np.testing.assert_allclose(ref[10], dout.astype(np.float64).sum(axes), rtol=tol * 10,
                               atol=tol * np.sqrt(m))


def test_batchnorm_on_images_equals_batchnorm_on_pixel_rows(backend):
    """BN of x (N, C, H, W) is BN of the (N*H*W, C) rows of its pixels (float64)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3, 4, 5)) * 3 + 1
    rows = np.ascontiguousarray(x.transpose(0, 2, 3, 1).reshape(-1, 3))
    gamma, beta = rng.standard_normal(3) + 1, rng.standard_normal(3)

    def run(a):
        out, xhat = np.empty_like(a), np.empty_like(a)
        mean, invstd, rm, rv = (np.zeros(3) for _ in range(4))
        K.batchnorm_forward_train(a, gamma, beta, out, xhat, mean, invstd, rm, rv)
        d = np.cos(out)
        dx, dg, db = np.empty_like(a), np.empty(3), np.empty(3)
        K.batchnorm_backward(d, xhat, gamma, invstd, dx, dg, db)
        return out, dx, mean, invstd, rm, rv, dg, db

    img, flat = run(x), run(rows)
    back = lambda a: a.reshape(6, 4, 5, 3).transpose(0, 3, 1, 2)    # noqa: E731
    np.testing.assert_allclose(img[0], back(flat[0]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(img[1], back(flat[1]), rtol=1e-10, atol=1e-12)
    for a, b in zip(img[2:], flat[2:]):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


def test_batchnorm_images_need_two_values_per_channel(backend):
    x = np.ones((1, 2, 1, 1))
    v = lambda: np.zeros(2)     # noqa: E731
    with pytest.raises(ValueError, match=r"at least 2 values per channel \(N\*H\*W >= 2\)"):
        K.batchnorm_forward_train(x, v() + 1, v(), np.empty_like(x), np.empty_like(x), v(), v())
    x = np.ones((1, 2, 1, 2))                                   # one image of 2 pixels: fine
    out = np.empty_like(x)
    K.batchnorm_forward_train(x, v() + 1, v(), out, np.empty_like(x), v(), v())
    np.testing.assert_array_equal(out, 0.0)
    with pytest.raises(ValueError, match=r"x must be \(N, F\) or \(N, C, H, W\)"):
        K.batchnorm_stats(np.ones(3), v(), v())


@pytest.mark.parametrize("shape", [(2, 3, 0, 4), (0, 3, 2, 2), (0, 3), (3, 3, 5, 0)])
def test_batchnorm_eval_of_empty_inputs_touches_no_value(backend, shape):
    """Eval mode on inputs without values (N = 0 or an empty plane): invstd from the running
    variance, nothing read or written out of bounds (an empty plane once read N*C values)."""
    x = np.zeros(shape)
    rv = np.array([1.0, 3.0, 0.25])
    out, xhat, invstd = np.empty_like(x), np.empty_like(x), np.empty(3)
    K.batchnorm_forward_eval(x, np.ones(3), np.zeros(3), np.zeros(3), rv, 1e-5, out, xhat, invstd)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(rv + 1e-5), rtol=1e-12)


@pytest.mark.parametrize("shape", [(300, 5), (40, 3), (6, 3, 7, 5)])
def test_batchnorm_float32_passes_against_float64(shape):
    """float32's dx is computed in float32 from coefficients rounded once: on data offset by 1e4,
    xhat and dx are within a few float32 ulps of the float64 computation; narrow, wide and
    planar decompositions, both backends, 1 and 2 threads bit for bit."""
    rng = np.random.default_rng(7)
    c = shape[1]
    x = (rng.standard_normal(shape) + 1e4).astype(np.float32)
    gamma, beta = np.full(c, 1.5, np.float32), np.full(c, 0.25, np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)

    def fn():
        out, xhat = np.empty_like(x), np.empty_like(x)
        mean, invstd = np.empty(c, np.float32), np.empty(c, np.float32)
        K.batchnorm_forward_train(x, gamma, beta, out, xhat, mean, invstd)
        dx, dg, db = np.empty_like(x), np.empty(c, np.float32), np.empty(c, np.float32)
        K.batchnorm_backward(dout, xhat, gamma, invstd, dx, dg, db)
        return [out, xhat, dx]

    ref, one, two = on_all(fn)
    axes = (0,) + tuple(range(2, x.ndim))
    v = (slice(None),) + (None,) * (x.ndim - 2)
    xd, dd = x.astype(np.float64), dout.astype(np.float64)
    mu = xd.mean(axes)
    inv = 1 / np.sqrt(((xd - mu[v]) ** 2).mean(axes) + 1e-5)
    xhat = (xd - mu[v]) * inv[v]
    m = x.size // c
    k = 1.5 * inv.astype(np.float32).astype(np.float64)
    dx = k[v] / m * (m * dd - dd.sum(axes)[v] - xhat * (dd * xhat).sum(axes)[v])
    for got in (ref, one, two):
        np.testing.assert_allclose(got[1], xhat, rtol=1e-6, atol=4e-7 * np.abs(xhat).max())
        np.testing.assert_allclose(got[2], dx, rtol=1e-5, atol=4e-7 * np.abs(dx).max())
    for a, b in zip(one, two):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("shape", [(300, 5), (40, 3), (6, 3, 7, 5)])
def test_batchnorm_float32_coefficient_out_of_range_takes_the_double_loop(shape):
    """A constant feature with eps = 1e-80: invstd = 1e40 is inf in float32, so dx's coefficient
    a = gamma * invstd is inf and b * xhat = -inf * 0 would be NaN in float32; its tile takes the
    double loop, where dx = inf * (N dout - sum dout) is +-inf as on the NumPy backend (the other
    features agree too)."""
    rng = np.random.default_rng(8)
    c = shape[1]
    x = rng.standard_normal(shape).astype(np.float32)
    x[:, 1] = 3.0
    gamma, beta = np.full(c, 1.5, np.float32), np.full(c, 0.25, np.float32)
    dout = rng.standard_normal(shape).astype(np.float32)

    def fn():
        out, xhat = np.empty_like(x), np.empty_like(x)
        mean, invstd = np.empty(c, np.float32), np.empty(c, np.float32)
        dx, dg, db = np.empty_like(x), np.empty(c, np.float32), np.empty(c, np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            K.batchnorm_forward_train(x, gamma, beta, out, xhat, mean, invstd, eps=1e-80)
            K.batchnorm_backward(dout, xhat, gamma, invstd, dx, dg, db)
        return [out, xhat, invstd, dx]

    ref, one, two = on_all(fn)
    for got in (one, two):
        assert got[2][1] == np.inf
        np.testing.assert_array_equal(got[1][:, 1], 0.0)
        assert np.isinf(got[3][:, 1]).all()
        np.testing.assert_array_equal(got[3][:, 1], ref[3][:, 1])
        keep = [j for j in range(c) if j != 1]
        for a, r in zip(got, ref):
            np.testing.assert_allclose(a[:, keep] if a.ndim > 1 else a[keep],
                                       r[:, keep] if r.ndim > 1 else r[keep], rtol=1e-5,
                                       atol=1e-5)
    for a, b in zip(one, two):
        assert a.tobytes() == b.tobytes()
