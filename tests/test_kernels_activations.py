"""Compiled activation, PReLU, Maxout, softmax and softmax cross-entropy kernels
(dlfast._backends._activations / _dense / _softmax) against the NumPy backend, through dlfast.kernels:
float32/float64, 0-d to 3-d shapes, batch 1 / odd batches, width 1 and wide arrays (threads
start), non-contiguous / Fortran / read-only inputs, in-place activation, special values
(inf, NaN, saturation), optional outputs, and 1 vs 2 threads bit-identical."""
import inspect

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import dlfast
from dlfast import kernels as K
from dlfast._backends import numpy_kernels
from kernel_helpers import layout, on_all as _on_all

pytestmark = pytest.mark.skipif("cython" not in dlfast.available_backends(),
                                reason="compiled backend not built")
SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = st.sampled_from([np.float32, np.float64])
LAYOUTS = st.sampled_from(["c", "f", "step", "ro"])
ACTS = st.sampled_from(K.ACTIVATIONS)
ALPHAS = st.sampled_from([0.0, 0.01, 0.2, 1.0, 1.7])
ROWS = st.sampled_from([1, 2, 3, 7, 33, 64, 65, 129])
COLS = st.sampled_from([1, 2, 5, 10, 63, 64, 65, 300, 1200])
SHAPES = st.sampled_from([(), (1,), (7,), (5000,), (40000,), (3, 1), (33, 65), (129, 300),
                          (2, 3, 4), (17, 40, 60), (300001,)])
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def on_all(fn):
    """kernel_helpers.on_all with the NumPy reference's floating-point warnings silenced."""
    return _on_all(fn, quiet=True)


def check(ref, one, two, bounds=None, exact=False):
    """1 vs 2 threads bit-identical; compiled vs NumPy within rtol with an absolute floor of
    tol * bound (default: tol * max(1, max |ref|)); NaN where the reference has NaN."""
    bounds = bounds or [None] * len(ref)
    for r, a, b, bound in zip(ref, one, two, bounds):
        if r is None:
            assert a is None and b is None
            continue
        if isinstance(r, float):
            assert isinstance(a, float) and a == b
            assert abs(a - r) <= 1e-12 * (abs(r) + (1.0 if bound is None else bound)), (a, r)
            continue
        assert a.dtype == r.dtype and a.shape == r.shape
        assert a.tobytes() == b.tobytes(), "1 and 2 threads differ"
        if exact:
            np.testing.assert_array_equal(a, r)
            continue
        np.testing.assert_array_equal(np.isnan(a), np.isnan(r))
        tol = TOL[r.dtype]
        r64, a64 = r.astype(np.float64), a.astype(np.float64)
        fin = np.isfinite(r64)
        np.testing.assert_array_equal(a64[~fin & ~np.isnan(r64)], r64[~fin & ~np.isnan(r64)])
        if bound is None:
            bound = max(1.0, float(np.abs(r64[fin]).max())) if fin.any() else 1.0
        with np.errstate(invalid="ignore"):       # inf - inf where both are infinite
            err = np.abs(a64 - r64)[fin]
        lim = (tol * (np.abs(r64) + np.asarray(bound, np.float64)))[fin] \
            if np.ndim(bound) == 0 else tol * (np.abs(r64) + bound)[fin]
        lim = lim + np.finfo(r.dtype).tiny        # subnormal results carry fewer significant bits
        assert np.all(err <= lim), f"max excess {np.max(err - lim)}; max err {err.max()}"


def values(shape, dtype, seed, scale=3.0, special=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale
    if special and x.size:
        flat = x.reshape(-1)
        pick = rng.integers(0, flat.size, size=max(1, flat.size // 10))
        flat[pick] = rng.choice([np.inf, -np.inf, np.nan, 0.0, -0.0, 50.0, -50.0, 800.0, -800.0],
                                size=pick.size)
    return rng, np.asarray(x, dtype)


@pytest.mark.parametrize("mod,names", [
    ("_activations", ["activation_forward", "activation_backward", "prelu_forward",
                      "prelu_backward"]),
    ("_dense", ["dense_forward", "dense_backward", "maxout_forward", "maxout_backward"]),
    ("_softmax", ["softmax_forward", "softmax_backward", "softmax_xent_forward",
                  "softmax_xent_backward"])])
def test_signatures_match_numpy_backend(mod, names):
    import importlib
    m = importlib.import_module(f"dlfast._backends.{mod}")
    for name in names:
        got = list(inspect.signature(getattr(m, name)).parameters)
        want = list(inspect.signature(getattr(numpy_kernels, name)).parameters)
        assert got == want, name


# ---------------------------------------------------------------------------- activations
@SETTINGS
@given(shape=SHAPES, dtype=DTYPES, act=ACTS, alpha=ALPHAS, kind=LAYOUTS, seed=st.integers(0, 99),
       special=st.booleans(), inplace=st.booleans())
def test_activation_forward(shape, dtype, act, alpha, kind, seed, special, inplace):
    if act == "elu" and alpha == 0.0:
        alpha = 0.5
    _, x = values(shape, dtype, seed, special=special)
    xin = layout(x, kind)

    def fn():
        if inplace:
            buf = x.copy()
            assert K.activation_forward(buf, buf, act, alpha) is buf
            return [buf]
        out = np.full(shape, np.nan, dtype)
        assert K.activation_forward(xin, out, act, alpha) is out
        return [out]

    check(*on_all(fn))


@SETTINGS
@given(shape=SHAPES, dtype=DTYPES, act=ACTS, alpha=ALPHAS, kinds=st.tuples(LAYOUTS, LAYOUTS),
       seed=st.integers(0, 99), special=st.booleans())
def test_activation_backward(shape, dtype, act, alpha, kinds, seed, special):
    if act == "elu" and alpha == 0.0:
        alpha = 0.5
    rng, x = values(shape, dtype, seed, special=special)
    y = np.empty_like(x)
    with dlfast.use_backend("numpy"), np.errstate(all="ignore"):
        K.activation_forward(x, y, act, alpha)
    dout = np.asarray(rng.standard_normal(shape), dtype)
    y, dout = layout(y, kinds[0]), layout(dout, kinds[1])

    def fn():
        dx = np.full(shape, np.nan, dtype)
        assert K.activation_backward(dout, y, dx, act, alpha) is dx
        return [dx]

    check(*on_all(fn))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_special_values(dtype):
    """Saturation and non-finite inputs: sigmoid(+-inf) = 1/0, tanh(+-inf) = +-1, relu(-inf) = 0,
    elu(-inf) = -alpha, NaN stays NaN; same as NumPy."""
    x = np.array([-np.inf, -800, -50, -1, -0.0, 0.0, 1e-30, 1, 50, 800, np.inf, np.nan], dtype)
    with np.errstate(over="ignore"):
        x = x.astype(dtype)
    for act in K.ACTIVATIONS:
        def fn():
            out = np.empty_like(x)
            K.activation_forward(x, out, act, 0.5)
            return [out]
        ref, one, two = on_all(fn)
        check(ref, one, two)
        assert np.isnan(one[0][-1])
        assert not np.isnan(one[0][:-1]).any(), act
    with dlfast.use_backend("cython"):
        out = np.empty_like(x)
        K.activation_forward(x, out, "sigmoid")
        assert out[0] == 0 and out[10] == 1
        K.activation_forward(x, out, "elu", 0.5)
        assert out[0] == -0.5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", K.ACTIVATIONS)
def test_activation_wide_threads_deterministic(dtype, act):
    """(701, 700): large enough that even the cheap passes (relu, every backward) run on 2
    threads; 1 and 2 threads agree bit for bit and match NumPy, in place too."""
    rng, x = values((701, 700), dtype, 11, special=True)
    dout = np.asarray(rng.standard_normal(x.shape), dtype)

    def fn():
        out = K.activation_forward(x, np.empty_like(x), act, 0.3)
        buf = x.copy()
        K.activation_forward(buf, buf, act, 0.3)
        dx = K.activation_backward(dout, out, np.empty_like(x), act, 0.3)
        return [out, buf, dx]

    check(*on_all(fn))


# ---------------------------------------------------------------------------- PReLU
SLOPES = st.sampled_from(["scalar", "feature", "full"])


def _slope(kind, n, f, dtype, rng):
    shape = {"scalar": (1,), "feature": (f,), "full": (n, f)}[kind]
    return np.asarray(rng.random(shape) * 0.5, dtype)


@SETTINGS
@given(n=ROWS, f=COLS, dtype=DTYPES, skind=SLOPES, kinds=st.tuples(LAYOUTS, LAYOUTS),
       seed=st.integers(0, 99), special=st.booleans())
def test_prelu_forward(n, f, dtype, skind, kinds, seed, special):
    rng, x = values((n, f), dtype, seed, special=special)
    slope = _slope(skind, n, f, dtype, rng)
    x, slope = layout(x, kinds[0]), layout(slope, kinds[1])

    def fn():
        out = np.full((n, f), np.nan, dtype)
        assert K.prelu_forward(x, slope, out) is out
        return [out]

    check(*on_all(fn))


@SETTINGS
@given(n=ROWS, f=COLS, dtype=DTYPES, skind=SLOPES, kinds=st.tuples(LAYOUTS, LAYOUTS, LAYOUTS),
       want=st.tuples(st.booleans(), st.booleans()), seed=st.integers(0, 99))
def test_prelu_backward(n, f, dtype, skind, kinds, want, seed):
    rng, x = values((n, f), dtype, seed)
    slope = _slope(skind, n, f, dtype, rng)
    dout = np.asarray(rng.standard_normal((n, f)), dtype)
    contrib = np.where(x > 0, 0, np.abs(dout.astype(np.float64) * x))
    sbound = {"scalar": contrib.sum(keepdims=True).reshape(1), "feature": contrib.sum(axis=0),
              "full": contrib}[skind]
    x, slope, dout = (layout(a, k) for a, k in zip((x, slope, dout), kinds))

    def fn():
        dx = np.full((n, f), np.nan, dtype) if want[0] else None
        ds = np.full(slope.shape, np.nan, dtype) if want[1] else None
        K.prelu_backward(dout, x, slope, dx, ds)
        return [dx, ds]

    check(*on_all(fn), bounds=[None, sbound])


def test_prelu_wide_threads_deterministic():
    """(300, 1200) float32 with a shared scalar slope: the dslope reduction over 360000 elements
    is bit-identical for 1 and 2 threads and matches the float64-accumulated NumPy sum."""
    rng, x = values((300, 1200), np.float32, 5)
    dout = rng.standard_normal((300, 1200)).astype(np.float32)
    for shape in ((1,), (1200,)):
        slope = np.full(shape, 0.25, np.float32)

        def fn():
            dx, ds = np.empty_like(x), np.empty(shape, np.float32)
            K.prelu_backward(dout, x, slope, dx, ds)
            return [dx, ds]

        check(*on_all(fn), bounds=[None, np.abs(np.where(x > 0, 0, dout * x.astype(np.float64)))
                                   .sum(axis=0 if shape != (1,) else None)])


# ---------------------------------------------------------------------------- Maxout
@SETTINGS
@given(n=ROWS, o=st.sampled_from([1, 2, 5, 64, 700]), k=st.sampled_from([1, 2, 3, 5]),
       dtype=DTYPES, kind=LAYOUTS, seed=st.integers(0, 99),
       data=st.sampled_from(["normal", "ties", "special"]))
def test_maxout(n, o, k, dtype, kind, seed, data):
    rng = np.random.default_rng(seed)
    if data == "ties":
        z = rng.integers(-2, 3, size=(n, o * k)).astype(dtype)       # many equal maxima
    else:
        _, z = values((n, o * k), dtype, seed, special=data == "special")
    z = layout(z, kind)
    dout = np.asarray(rng.standard_normal((n, o)), dtype)

    def fn():
        out = np.full((n, o), np.nan, dtype)
        arg = np.full((n, o), -1, np.int64)
        assert K.maxout_forward(z, out, arg) is out
        dz = np.full((n, o * k), np.nan, dtype)
        K.maxout_backward(dout, arg, dz)
        return [out, arg, dz]

    check(*on_all(fn), exact=True)


def test_maxout_first_max_wins_and_nan():
    z = np.array([[1.0, 3.0, 3.0, -1.0, np.nan, 5.0, 2.0, 2.0, 2.0]], np.float64)
    with dlfast.use_backend("cython"):
        out, arg = np.empty((1, 3)), np.empty((1, 3), np.int64)
        K.maxout_forward(z, out, arg)
    np.testing.assert_array_equal(arg, [[1, 1, 0]])
    np.testing.assert_array_equal(out, [[3.0, np.nan, 2.0]])


# ---------------------------------------------------------------------------- softmax
@SETTINGS
@given(n=ROWS, c=COLS, dtype=DTYPES, kind=LAYOUTS, seed=st.integers(0, 99),
       scale=st.sampled_from([1.0, 30.0, 1e4]))
def test_softmax_forward_backward(n, c, dtype, kind, seed, scale):
    rng, x = values((n, c), dtype, seed, scale=scale)
    y = np.empty_like(x)
    with dlfast.use_backend("numpy"):
        K.softmax_forward(x, y)
    dout = np.asarray(rng.standard_normal((n, c)), dtype)
    x = layout(x, kind)
    y, dout = layout(y, kind), layout(dout, kind)

    def fn():
        out = np.full((n, c), np.nan, dtype)
        assert K.softmax_forward(x, out) is out
        dx = np.full((n, c), np.nan, dtype)
        assert K.softmax_backward(dout, y, dx) is dx
        return [out, dx]

    ref, one, two = on_all(fn)
    assert np.all(np.isfinite(one[0]))
    # dx = y * (dout - s): the row sum s = sum dout*y is computed in a different precision
    bound_dx = np.abs(y.astype(np.float64)) * (np.abs(dout.astype(np.float64)).max(axis=1,
                                                                               keepdims=True) + 1)
    check(ref, one, two, bounds=[None, bound_dx])


@SETTINGS
@given(n=ROWS, c=COLS, dtype=DTYPES, kind=LAYOUTS, seed=st.integers(0, 99),
       scale=st.sampled_from([1.0, 30.0, 1e4]), lscale=st.sampled_from([1.0, 0.5, 3.0]))
def test_softmax_xent(n, c, dtype, kind, seed, scale, lscale):
    rng, logits = values((n, c), dtype, seed, scale=scale)
    labels = rng.integers(0, c, size=n)
    logits = layout(logits, kind)
    bound = float(np.abs(logits.astype(np.float64)).max()) + 1.0

    def fn():
        probs = np.full((n, c), np.nan, dtype)
        loss = K.softmax_xent_forward(logits, labels, probs)
        dl = np.full((n, c), np.nan, dtype)
        K.softmax_xent_backward(probs, labels, dl, lscale)
        return [loss, probs, dl]

    ref, one, two = on_all(fn)
    assert np.isfinite(one[0]) and one[0] >= 0
    check(ref, one, two, bounds=[bound, None, None])


def test_softmax_xent_labels_any_int_dtype_and_extreme_logits():
    """int32 labels; logits of +-1e4 (float32) give finite probabilities and the exact loss."""
    logits = np.array([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0], [-1e4, -1e4, 1e4]], np.float32)
    labels = np.array([1, 2, 2], np.int32)
    with dlfast.use_backend("cython"):
        probs = np.empty_like(logits)
        loss = K.softmax_xent_forward(logits, labels, probs)
        dl = np.empty_like(logits)
        K.softmax_xent_backward(probs, labels, dl)
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(loss, (2e4 + np.log(3.0) + 0.0) / 3, rtol=1e-12)
    np.testing.assert_allclose(dl, (probs - np.eye(3, dtype=np.float32)[labels]) / 3, rtol=1e-6)


def test_softmax_wide_threads_deterministic():
    """(600, 1000) float32: parallel rows (threads start) give bit-identical results for 1 and 2
    threads, and the loss (a fixed-order mean over rows) is identical too."""
    rng, x = values((600, 1000), np.float32, 9)
    labels = rng.integers(0, 1000, size=600)

    def fn():
        p, p2, dl = np.empty_like(x), np.empty_like(x), np.empty_like(x)
        loss = K.softmax_xent_forward(x, labels, p)
        K.softmax_forward(x, p2)
        K.softmax_xent_backward(p, labels, dl, 2.0)
        return [loss, p, p2, dl]

    check(*on_all(fn))


def test_bad_input_names_argument():
    x = np.ones((2, 3), np.float32)
    with dlfast.use_backend("cython"):
        with pytest.raises(ValueError, match="labels"):
            K.softmax_xent_forward(x, np.array([0, 3]), np.empty_like(x))
        with pytest.raises(ValueError, match="slope"):
            K.prelu_forward(x, np.ones(2, np.float32), np.empty_like(x))
        with pytest.raises(ValueError, match="alpha"):
            K.activation_forward(x, np.empty_like(x), "elu", 0.0)
        with pytest.raises(ValueError, match="argmax"):
            K.maxout_backward(np.ones((2, 1), np.float32), np.array([[0], [3]]),
                              np.empty((2, 3), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["elu", "sigmoid", "tanh"])
def test_transcendental_activations_sweep(dtype, act):
    """The compiled exp/expm1/tanh (own vectorised polynomials) over the whole range: a dense sweep
    through the overflow/underflow limits, the polynomial/formula switch points (|z| = 0.5,
    0.625) and tiny arguments agrees with NumPy to a few ulp, with libm's special values."""
    lim = 120.0 if dtype == np.float32 else 800.0
    z = np.concatenate([np.linspace(-lim, lim, 200001), np.linspace(-1, 1, 20001),
                        np.geomspace(1e-30, 1e-3, 500), -np.geomspace(1e-30, 1e-3, 500),
                        np.nextafter(0.5, [0, 1]), np.nextafter(-0.5, [-1, 0]),
                        np.nextafter(0.625, [0, 1]), np.nextafter(-0.625, [-1, 0]),
                        [0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(dtype)
    ref, one, two = on_all(lambda: [K.activation_forward(z, np.empty_like(z), act, 0.7)])
    check(ref, one, two)
    eps = np.finfo(dtype).eps
    r, a = ref[0].astype(np.float64), one[0].astype(np.float64)
    fin = np.isfinite(r)
    assert np.all(np.abs(a[fin] - r[fin]) <= 4 * eps * np.abs(r[fin]) + np.finfo(dtype).tiny)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_extreme_rows(dtype):
    """Rows with huge spreads (exp underflows to 0 for all but the max), -inf entries, and a single
    column: probabilities stay finite, sum to 1 and match NumPy."""
    x = np.array([[0.0, -200.0, -1e4, 3.0], [-np.inf, 0.0, -np.inf, 1.0],
                  [1e4, 1e4, -1e4, 1e4], [5.0, 5.0, 5.0, 5.0]], dtype)
    ref, one, two = on_all(lambda: [K.softmax_forward(x, np.empty_like(x)),
                                    K.softmax_forward(x[:, 1:2], np.empty((4, 1), dtype))])
    check(ref, one, two)
    np.testing.assert_allclose(one[0].sum(axis=1), 1, rtol=4 * np.finfo(dtype).eps)
    np.testing.assert_array_equal(one[1], 1)
