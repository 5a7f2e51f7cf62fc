"""Compiled counter-based RNG and dropout kernels against the NumPy backend, through dlfast.kernels:
bit-identical values for any shape, seed, counter, layout and thread count."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import dlfast
from dlfast import kernels as K
from dlfast._backends.numpy_kernels import bits32, uniform01
from kernel_helpers import layout, on_all

pytestmark = pytest.mark.skipif("cython" not in dlfast.available_backends(),
                                reason="compiled backend not built")
SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
U64 = 2 ** 64
# sizes around the parallel threshold (32768) and block boundaries (4096)
SIZES = st.sampled_from([0, 1, 2, 3, 7, 64, 4095, 4097, 33001, 70001])
SEEDS = st.one_of(st.sampled_from([0, 1, U64 - 1, 2 ** 63]), st.integers(0, U64 - 1))
# (2**32 - 3 and 7 * 2**32 - 1000: the dropout stream's key changes inside the call)
COUNTERS = st.one_of(st.sampled_from([0, U64 - 1, U64 - 5, 2 ** 63 - 1, 2 ** 32 - 3,
                                      7 * 2 ** 32 - 1000]), st.integers(0, U64 - 1))
LAYOUTS = st.sampled_from(["c", "f", "step", "ro"])


def shaped(n, ndim):
    """A shape with n elements: (n,), (1, n) or (n, 1) / (n//k, k) forms."""
    if ndim == 1 or n == 0:
        return (n,) if ndim == 1 else (0, 3)
    for k in (7, 3, 2):
        if n % k == 0 and n > k:
            return (n // k, k)
    return (1, n) if ndim == 2 else (n, 1)


def assert_identical(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@SETTINGS
@given(n=SIZES, ndim=st.sampled_from([1, 2]), p=st.floats(0.0, 1.0, exclude_max=True),
       seed=SEEDS, counter=COUNTERS)
def test_dropout_mask_bit_identical(n, ndim, p, seed, counter):
    shape = shaped(n, ndim)

    def fn():
        m = np.full(shape, 7, np.uint8)
        K.dropout_mask(m, p, seed, counter)
        return m

    ref, one, two = on_all(fn)
    assert_identical(one, ref)
    assert_identical(two, ref)
    assert set(np.unique(one)) <= {0, 1}


@SETTINGS
@given(n=SIZES, ndim=st.sampled_from([1, 2]), dtype=st.sampled_from([np.float32, np.float64]),
       low=st.floats(-1e3, 1e3), span=st.floats(0.0, 1e3), seed=SEEDS, counter=COUNTERS)
def test_random_uniform_bit_identical(n, ndim, dtype, low, span, seed, counter):
    shape = shaped(n, ndim)

    def fn():
        out = np.full(shape, np.nan, dtype)
        K.random_uniform(out, low, low + span, seed, counter)
        return out

    ref, one, two = on_all(fn)
    assert_identical(one, ref)
    assert_identical(two, ref)
    assert np.all((one >= dtype(low)) & (one <= dtype(low + span)))


@SETTINGS
@given(n=SIZES, ndim=st.sampled_from([1, 2]), dtype=st.sampled_from([np.float32, np.float64]),
       kind=LAYOUTS, seed=SEEDS, counter=COUNTERS)
def test_bernoulli_sample_bit_identical(n, ndim, dtype, kind, seed, counter):
    shape = shaped(n, ndim)
    rng = np.random.default_rng(seed % 1000)
    probs = rng.random(shape).astype(dtype)
    probs.reshape(-1)[::5] = 0.0
    probs.reshape(-1)[1::5] = 1.0
    probs = layout(probs, kind)

    def fn():
        out = np.full(shape, np.nan, dtype)
        K.bernoulli_sample(probs, out, seed, counter)
        return out

    ref, one, two = on_all(fn)
    assert_identical(one, ref)
    assert_identical(two, ref)
    flat = np.ascontiguousarray(probs).reshape(-1)
    assert np.all(one.reshape(-1)[flat == 0] == 0) and np.all(one.reshape(-1)[flat == 1] == 1)


@SETTINGS
@given(n=SIZES, ndim=st.sampled_from([1, 2]), dtype=st.sampled_from([np.float32, np.float64]),
       xkind=LAYOUTS, mkind=st.sampled_from(["none", "c", "f", "step", "ro"]),
       scale=st.sampled_from([1.0, 1 / 0.7, 2.0, 0.3, 0.0]))
def test_dropout_apply_matches_numpy(n, ndim, dtype, xkind, mkind, scale):
    shape = shaped(n, ndim)
    rng = np.random.default_rng(n)
    x = layout((rng.standard_normal(shape) * 10).astype(dtype), xkind)
    mask = None if mkind == "none" else layout((rng.random(shape) < 0.6).astype(np.uint8), mkind)

    def fn():
        out = np.full(shape, np.nan, dtype)
        K.dropout_apply(x, mask, scale, out)
        return out

    ref, one, two = on_all(fn)
    assert_identical(one, ref)
    assert_identical(two, ref)


def test_uniform_stream_is_counter_based():
    """Drawing n1 then n2 elements (counter advanced by n1) equals drawing n1 + n2 at once, and
    matches the documented formula."""
    seed, c = 2 ** 64 - 3, 2 ** 64 - 10   # the counter wraps inside the call
    n1, n2 = 40000, 5
    with dlfast.use_backend("cython"):
        whole = np.empty(n1 + n2)
        K.random_uniform(whole, 0.0, 1.0, seed, c)
        a, b = np.empty(n1), np.empty(n2)
        K.random_uniform(a, 0.0, 1.0, seed, c)
        K.random_uniform(b, 0.0, 1.0, seed, c + n1 - U64)
    assert_identical(np.concatenate([a, b]), whole)
    assert_identical(whole, uniform01(seed, c, n1 + n2))
    assert 0.0 <= whole.min() and whole.max() < 1.0


def test_dropout_mask_keep_rate_and_extremes():
    with dlfast.use_backend("cython"):
        m = np.empty(200000, np.uint8)
        K.dropout_mask(m, 0.3, 123, 0)
        assert abs(m.mean() - 0.7) < 0.005
        K.dropout_mask(m, 0.0, 5, 9)
        assert m.all()
        m2 = np.empty((3, 4, 5), np.uint8)          # any ndim
        K.dropout_mask(m2, 0.5, 1, 2)
        with dlfast.use_backend("numpy"):
            m3 = np.empty((3, 4, 5), np.uint8)
            K.dropout_mask(m3, 0.5, 1, 2)
        assert_identical(m2, m3)


@pytest.mark.parametrize("seed,c", [(2 ** 64 - 3, 2 ** 64 - 10), (17, 2 ** 32 - 20000),
                                    (0, 5 * 2 ** 32 - 1)])
def test_dropout_stream_is_counter_based(seed, c):
    """n1 then n2 elements (counter advanced by n1) equal n1 + n2 at once, across a change of
    j >> 32 inside the call, and match the documented formula (numpy_kernels.bits32)."""
    n1, n2, p = 40000, 5, 0.37
    with dlfast.use_backend("cython"):
        whole = np.empty(n1 + n2, np.uint8)
        K.dropout_mask(whole, p, seed, c)
        a, b = np.empty(n1, np.uint8), np.empty(n2, np.uint8)
        K.dropout_mask(a, p, seed, c)
        K.dropout_mask(b, p, seed, (c + n1) % U64)
    assert_identical(np.concatenate([a, b]), whole)
    expect = (bits32(seed, c, n1 + n2) >= np.uint32(np.ceil(p * 2.0 ** 32))).astype(np.uint8)
    assert_identical(whole, expect)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_statistics(p):
    """Keep rate 1 - p; neighbours, two seeds, and the two sides of a change of j >> 32 are
    pairwise independent (P(both kept) = (1 - p)^2), each within 6 standard errors."""
    n, q = 2 ** 20, 1.0 - p
    with dlfast.use_backend("cython"):
        m1, m2, m3 = (np.empty(n, np.uint8) for _ in range(3))
        K.dropout_mask(m1, p, 1, 0)
        K.dropout_mask(m2, p, 2, 0)
        K.dropout_mask(m3, p, 1, 2 ** 32 - n // 2)
    a, b, c = (m.astype(bool) for m in (m1, m2, m3))

    def near(frac, expect, count):
        assert abs(frac - expect) < 6 * np.sqrt(expect * (1 - expect) / count), (frac, expect)
    for m in (a, b, c):
        near(m.mean(), q, n)
    near(np.mean(a[1:] & a[:-1]), q * q, n - 1)
    near(np.mean(a & b), q * q, n)
    near(np.mean(c[:n // 2] & c[n // 2:]), q * q, n // 2)


def test_dropout_mask_thresholds():
    """p = 0 keeps all; p just below 1 (ceil(p 2^32) = 2^32) keeps none; p = 2^-33 (threshold
    1) drops only a hash of 0: both backends, same bits."""
    for p, check in ((0.0, np.all), (np.nextafter(1.0, 0.0), lambda m: not m.any()),
                     (2.0 ** -33, lambda m: m.mean() > 0.999)):
        def fn():
            m = np.full(70001, 9, np.uint8)
            K.dropout_mask(m, p, 3, 2 ** 32 - 7)
            return m
        ref, one, two = on_all(fn)
        assert check(ref)
        assert_identical(one, ref)
        assert_identical(two, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.0, 0.3, np.nextafter(1.0, 0.0)])
def test_dropout_op_is_mask_then_apply(dtype, p):
    """The training step's dropout op (mask and apply fused in one pass on the compiled backend)
    writes what dropout_mask then dropout_apply write, NaN and inf included, on 1 and 2
    threads; its counter crosses a change of j >> 32."""
    n = 70001
    x = np.random.default_rng(0).standard_normal(n).astype(dtype)
    x[::97], x[1::89], x[2::101] = np.nan, np.inf, -np.inf
    scale, seed, c = 1.0 / (1.0 - p), 11, 2 ** 32 - 30000

    def fn():
        out, mask = np.full(n, 7, dtype), np.full(n, 9, np.uint8)
        op = K.make_op("dropout", x.shape, dtype, out=out, mask=mask, dx=None, p=p, seed=seed,
                       scale=scale)
        prog = K._impl().Program([(K.FWD, op, None, None, 0)], [], x.shape, dtype, [out, mask])
        op.set_counter(c)
        prog.run(x)
        return out, mask

    m = np.empty(n, np.uint8)
    K.dropout_mask(m, p, seed, c)
    expect = K.dropout_apply(x, m, scale, np.empty_like(x))
    with np.errstate(invalid="ignore"):
        ref, one, two = on_all(fn)
    for got in (ref, one, two):
        assert_identical(got[1], m)
        assert_identical(got[0], expect)


def test_dropout_apply_propagates_nan_and_inf():
    x = np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)
    for mask in (None, np.array([1, 1, 1, 0], np.uint8)):
        outs = []
        for name in ("numpy", "cython"):
            with dlfast.use_backend(name):
                o = np.empty_like(x)
                K.dropout_apply(x, mask, 2.0, o)
                outs.append(o)
        np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_dimensional_arrays(dtype):
    """0-d arrays are one element, as in the NumPy backend."""
    def fn():
        m = np.zeros((), np.uint8)
        K.dropout_mask(m, 0.5, 3, 4)
        u = np.zeros((), dtype)
        K.random_uniform(u, -1.0, 1.0, 3, 4)
        b = np.zeros((), dtype)
        K.bernoulli_sample(np.array(0.5, dtype), b, 3, 5)
        o1, o2 = np.zeros((), dtype), np.zeros((), dtype)
        K.dropout_apply(np.array(1.5, dtype), np.array(1, np.uint8), 2.0, o1)
        K.dropout_apply(np.array(1.5, dtype), None, 3.0, o2)
        return [m, u, b, o1, o2]

    ref, one, two = on_all(fn)
    for r, a, b in zip(ref, one, two):
        assert a.shape == () and a.dtype == r.dtype
        assert_identical(a, r)
        assert_identical(b, r)
