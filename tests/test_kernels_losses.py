"""The loss kernels: mse, mae, huber, sigmoid BCE (dlfast._backends._losses) and the sample
weights of softmax cross-entropy (_softmax), compiled against the NumPy backend through
dlfast.kernels: float32/float64, odd shapes (one row, one output, wide rows: threads start),
non-contiguous / Fortran / read-only inputs, weights and none, reduction "sum", half mse, 1 vs 2
threads bit-identical; the formulas against plain NumPy; bad input named; the unweighted softmax
cross-entropy unchanged by its new argument."""
import inspect
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import dlfast
from dlfast import kernels as K
from dlfast._backends import numpy_kernels
from kernel_helpers import layout, on_all as _on_all

CYTHON = "cython" in dlfast.available_backends()
needs_cython = pytest.mark.skipif(not CYTHON, reason="compiled backend not built")
SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
KINDS = ("mse", "mae", "huber", "sigmoid_bce")
SHAPES = st.sampled_from([(1, 1), (2, 1), (7, 3), (33, 1), (65, 10), (129, 7), (5000, 10),
                          (40000, 1)])
LAYOUTS = st.sampled_from(["c", "f", "step", "ro"])
TOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}


def on_all(fn):
    return _on_all(fn, quiet=True)


def _settings(kind, half=False, delta=1.0, reduction="mean"):
    s = {"reduction": reduction}
    if kind == "mse":
        s["half"] = half
    if kind == "huber":
        s["delta"] = delta
    return s


def _data(kind, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    y = (rng.standard_normal(shape) * 3).astype(dtype)
    if kind == "sigmoid_bce":
        t = rng.choice([0.0, 1.0, 0.25], size=shape).astype(dtype)
    else:
        t = (rng.standard_normal(shape) * 3).astype(dtype)
    w = rng.random(shape[0]) * 2
    w[rng.random(shape[0]) < 0.2] = 0.0
    if not w.any():
        w[0] = 1.0
    return y, t, w


def _run(kind, y, t, w, scale, **s):
    n = y.shape[0]
    rows = np.full(n, np.nan)
    loss = getattr(K, f"{kind}_forward")(y, t, w, rows, **s)
    dy = np.full(y.shape, np.nan, y.dtype)
    getattr(K, f"{kind}_backward")(y, t, w, dy, scale, **s)
    return [loss, rows, dy]


def _close(ref, got, dtype):
    assert abs(got[0] - ref[0]) <= 1e-12 * (abs(ref[0]) + 1.0), (got[0], ref[0])
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[2].astype(np.float64), ref[2].astype(np.float64),
                               rtol=TOL[np.dtype(dtype)], atol=np.finfo(dtype).tiny)


@needs_cython
def test_signatures_match_numpy_backend():
    from dlfast._backends import _losses, _softmax
    for name in [f"{k}_{d}" for k in KINDS for d in ("forward", "backward")]:
        assert (list(inspect.signature(getattr(_losses, name)).parameters)
                == list(inspect.signature(getattr(numpy_kernels, name)).parameters)), name
    for name in ("softmax_xent_forward", "softmax_xent_backward"):
        assert (list(inspect.signature(getattr(_softmax, name)).parameters)
                == list(inspect.signature(getattr(numpy_kernels, name)).parameters)), name


@needs_cython
@SETTINGS
@given(kind=st.sampled_from(KINDS), shape=SHAPES, dtype=st.sampled_from([np.float32, np.float64]),
       kind_y=LAYOUTS, kind_t=LAYOUTS, weighted=st.booleans(), seed=st.integers(0, 99),
       scale=st.sampled_from([1.0, 0.3, 7.0]), half=st.booleans(),
       delta=st.sampled_from([0.1, 1.0, 4.0]), reduction=st.sampled_from(["mean", "sum"]))
def test_value_losses_match_numpy(kind, shape, dtype, kind_y, kind_t, weighted, seed, scale,
                                  half, delta, reduction):
    y, t, w = _data(kind, shape, dtype, seed)
    yin, tin = layout(y, kind_y), layout(t, kind_t)
    win = layout(w, "step") if weighted else None
    s = _settings(kind, half, delta, reduction)
    ref, one, two = on_all(lambda: _run(kind, yin, tin, win, scale, **s))
    assert one[0] == two[0]
    for a, b in zip(one[1:], two[1:]):
        assert a.tobytes() == b.tobytes(), "1 and 2 threads differ"
    _close(ref, one, dtype)


@pytest.mark.parametrize("backend_name", ["numpy", "cython"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weighted", [False, True])
def test_formulas(backend_name, kind, weighted):
    """Each loss and gradient against its formula written plainly (float64, loops over rows)."""
    if backend_name not in dlfast.available_backends():
        pytest.skip("backend not built")
    y, t, w = _data(kind, (9, 3), np.float64, 3)
    w = w if weighted else None
    delta = 0.8
    s = _settings(kind, delta=delta)
    with dlfast.use_backend(backend_name):
        loss, rows, dy = _run(kind, y, t, w, 2.0, **s)
    d = y - t
    if kind == "mse":
        e, g = d ** 2, 2 * d
    elif kind == "mae":
        e, g = np.abs(d), np.sign(d)
    elif kind == "huber":
        e = np.where(np.abs(d) <= delta, d ** 2 / 2, delta * (np.abs(d) - delta / 2))
        g = np.clip(d, -delta, delta)
    else:
        p = 1 / (1 + np.exp(-y))
        e, g = -(t * np.log(p) + (1 - t) * np.log(1 - p)), p - t
    wv = np.ones(9) if w is None else w
    np.testing.assert_allclose(rows, e.mean(axis=1), rtol=1e-12)
    assert loss == pytest.approx(np.sum(wv * e.mean(axis=1)) / wv.sum(), rel=1e-12)
    np.testing.assert_allclose(dy, 2.0 * wv[:, None] / wv.sum() * g / 3, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend_name", ["numpy", "cython"])
def test_half_mse_sum_reduction_and_ones_weights(backend_name):
    """half: l = sum (y-t)^2 / 2, gradient y - t; reduction "sum": no division by N; weights of
    ones give the unweighted results bit for bit."""
    if backend_name not in dlfast.available_backends():
        pytest.skip("backend not built")
    y, t, _ = _data("mse", (6, 4), np.float32, 1)
    with dlfast.use_backend(backend_name):
        l, rows, dy = _run("mse", y, t, None, 1.0, half=True, reduction="sum")
        d = y.astype(np.float64) - t.astype(np.float64)
        np.testing.assert_allclose(rows, 0.5 * (d ** 2).sum(axis=1), rtol=1e-12)
        assert l == pytest.approx(rows.sum(), rel=1e-12)
        np.testing.assert_allclose(dy, d, rtol=1e-6)
        for kind in KINDS:
            y, t, _ = _data(kind, (33, 3), np.float32, 2)
            a = _run(kind, y, t, None, 0.5)
            b = _run(kind, y, t, np.ones(33), 0.5)
            assert a[0] == b[0]
            assert a[2].tobytes() == b[2].tobytes()


@pytest.mark.parametrize("backend_name", ["numpy", "cython"])
def test_bce_is_stable_for_extreme_logits(backend_name):
    if backend_name not in dlfast.available_backends():
        pytest.skip("backend not built")
    z = np.array([[1e4, -1e4, 0.0, 40.0, -40.0]], np.float32)
    t = np.array([[0.0, 1.0, 1.0, 1.0, 0.0]], np.float32)
    with dlfast.use_backend(backend_name):
        loss, rows, dz = _run("sigmoid_bce", z, t, None, 1.0)
    want = (1e4 + 1e4 + math.log(2) + math.log1p(math.exp(-40)) * 2) / 5
    assert loss == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(dz, np.array([[1, -1, -0.5, -math.exp(-40), math.exp(-40)]]) / 5,
                               rtol=1e-6, atol=1e-30)


@needs_cython
@pytest.mark.parametrize("n,c", [(1, 1), (7, 3), (600, 1000)])
def test_weighted_softmax_xent(n, c):
    """Sample weights: the compiled kernels against NumPy, 1 and 2 threads identical; weights of
    ones give the unweighted results bit for bit; no weights give today's results."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((n, c)) * 3).astype(np.float32)
    labels = rng.integers(0, c, n)
    w = rng.random(n) + 0.1

    def fn(weights):
        def run():
            p, dl = np.empty_like(x), np.empty_like(x)
            loss = K.softmax_xent_forward(layout(x, "step"), labels, p, weights)
            K.softmax_xent_backward(p, labels, dl, 1.5, weights)
            return [loss, p, dl]
        return run

    for weights in (w, None, np.ones(n)):
        ref, one, two = on_all(fn(weights))
        assert one[0] == two[0] and one[2].tobytes() == two[2].tobytes()
        assert one[0] == pytest.approx(ref[0], rel=1e-12)
        np.testing.assert_allclose(one[2], ref[2], rtol=1e-5, atol=1e-12)
    with dlfast.use_backend("cython"):
        plain, ones = fn(None)(), fn(np.ones(n))()
    assert plain[0] == ones[0] and plain[2].tobytes() == ones[2].tobytes()
    lw = (w * np.array([np.log(np.exp(x[i].astype(np.float64)).sum()) - x[i, labels[i]]
                        for i in range(n)])).sum() / w.sum()
    with dlfast.use_backend("cython"):
        assert fn(w)()[0] == pytest.approx(lw, rel=1e-9)


@pytest.mark.parametrize("backend_name", ["numpy", "cython"])
def test_bad_input_is_named(backend_name):
    if backend_name not in dlfast.available_backends():
        pytest.skip("backend not built")
    y = np.zeros((3, 2), np.float32)
    t = np.zeros((3, 2), np.float32)
    dy = np.empty_like(y)
    with dlfast.use_backend(backend_name):
        with pytest.raises(ValueError, match=r"t must have the shape of y \(3, 2\)"):
            K.mse_forward(y, t[:2], None)
        with pytest.raises(TypeError, match="mixed dtypes"):
            K.mae_forward(y, t.astype(np.float64), None)
        bad = t.copy()
        bad[2, 1] = np.nan
        with pytest.raises(ValueError, match=r"t must be finite, got \[0.0, nan\] in row 2"):
            K.huber_forward(y, bad, None)
        bad[2, 1] = 1.5
        with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got \[0.0, 1.5\] in row 2"):
            K.sigmoid_bce_forward(y, bad, None)
        with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*row 2"):
            K.sigmoid_bce_backward(y, bad, None, dy)
        for w, msg in ((np.array([1.0, -1.0, 0.0]), r"finite and >= 0, got -1.0 in row 1"),
                       (np.array([1.0, np.inf, 0.0]), r"finite and >= 0, got inf in row 1"),
                       (np.zeros(3), "must not all be zero"),
                       (np.array([1e308, 1e308, 0]), "finite sum")):
            with pytest.raises(ValueError, match=msg):
                K.mse_forward(y, t, w)
            with pytest.raises(ValueError, match=msg):
                K.softmax_xent_forward(y, np.zeros(3, np.int64), np.empty_like(y), w)
        with pytest.raises(TypeError, match="float64"):
            K.mse_forward(y, t, np.ones(3, np.float32))
        with pytest.raises(ValueError, match=r"w must have shape \(3,\)"):
            K.mse_backward(y, t, np.ones(2), dy)
        with pytest.raises(ValueError, match="delta"):
            K.huber_forward(y, t, None, delta=0.0)
        with pytest.raises(ValueError, match="reduction"):
            K.mae_forward(y, t, None, reduction="max")
        with pytest.raises(ValueError, match="non-empty"):
            K.mse_forward(y[:0], t[:0], None)
        with pytest.raises(ValueError, match="rows must have shape"):
            K.mse_forward(y, t, None, np.empty(2))
        with pytest.raises(ValueError, match="overlaps"):
            K.mse_backward(y, t, None, y)
