"""Compiled optimiser updates, norms and penalties against the NumPy backend, through dlfast.kernels:
float32/float64, any ndim, non-contiguous / Fortran / read-only gradients, 1 vs 2 threads
bit-identical."""
import math

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
# element counts around the parallel threshold (32768) and the 4096 block size
SHAPES = st.sampled_from([(1,), (2,), (7,), (3, 5), (1, 1), (4096,), (4097,), (1, 1000), (1000, 1),
                          (33, 1001), (2, 3, 4), (70001,), (0,), (0, 4)])
TOL = {np.dtype(np.float32): (1e-5, 1e-6), np.dtype(np.float64): (1e-12, 1e-14)}


def check(ref, one, two):
    """1 vs 2 threads bit-identical; compiled vs NumPy within the dtype's tolerance."""
    for r, a, b in zip(ref, one, two):
        if isinstance(r, np.ndarray):
            assert a.dtype == r.dtype and a.shape == r.shape
            assert a.tobytes() == b.tobytes()
            rtol, atol = TOL[r.dtype]
            scale = float(np.nanmax(np.abs(r))) if r.size and np.isfinite(r).any() else 1.0
            np.testing.assert_allclose(a, r, rtol=rtol, atol=atol * max(1.0, scale))
        else:
            assert a == b or (math.isnan(a) and math.isnan(b))
            assert a == pytest.approx(r, rel=1e-12, abs=1e-300) or (math.isnan(a) and math.isnan(r))


def make(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(dtype)
    g = (rng.standard_normal(shape) * 2).astype(dtype)
    pos = np.abs(rng.standard_normal(shape)).astype(dtype) * dtype(0.1)
    m = (rng.standard_normal(shape) * 0.1).astype(dtype)
    return w, g, pos, m


OPTIMISERS = {
    "sgd": (0, lambda d: dict()),
    "momentum": (1, lambda d: dict(mu=d.draw(st.sampled_from([0.0, 0.5, 0.9])))),
    "nesterov": (1, lambda d: dict(mu=d.draw(st.sampled_from([0.0, 0.9, 0.99])))),
    "adagrad": (1, lambda d: dict(eps=d.draw(st.sampled_from([1e-10, 1e-6, 0.1])),
                                  eps_inside=d.draw(st.booleans()))),
    "rmsprop": (1, lambda d: dict(rho=d.draw(st.sampled_from([0.0, 0.9, 0.99])),
                                  eps=d.draw(st.sampled_from([1e-8, 1e-3])),
                                  eps_inside=d.draw(st.booleans()))),
    "adam": (2, lambda d: dict(beta1=d.draw(st.sampled_from([0.0, 0.9])),
                               beta2=d.draw(st.sampled_from([0.999, 0.5])),
                               eps=d.draw(st.sampled_from([1e-8, 1e-3])),
                               step=d.draw(st.sampled_from([1, 2, 10, 10000])),
                               eps_hat=d.draw(st.booleans()),
                               decoupled_wd=d.draw(st.booleans()))),
}


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
@SETTINGS
@given(data=st.data(), shape=SHAPES, dtype=DTYPES, kind=LAYOUTS)
def test_optimiser_matches_numpy(name, data, shape, dtype, kind):
    nstate, extra = OPTIMISERS[name]
    kw = dict(lr=data.draw(st.sampled_from([0.0, 1e-3, 0.1, 1.0])),
              wd=data.draw(st.sampled_from([0.0, 0.01, 0.5])),
              grad_scale=data.draw(st.sampled_from([1.0, 0.5, 3.0])),
              clip_value=data.draw(st.sampled_from([math.inf, 0.5, 2.0])), **extra(data))
    w0, g, pos, m0 = make(shape, dtype, data.draw(st.integers(0, 99)))
    g = layout(g, kind)
    states0 = [pos, m0][:nstate] if name != "adam" else [m0, pos]

    def fn():
        w = w0.copy()
        states = [s.copy() for s in states0]
        getattr(K, f"{name}_update")(w, g, *states, **kw)
        return [w, *states]

    check(*on_all(fn))


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimiser_nonfinite_like_numpy(name, dtype):
    """NaN / inf gradients propagate exactly as in the NumPy backend (clip keeps NaN)."""
    w0, g, pos, m0 = make((50000,), dtype, 1)
    g[::97] = np.nan
    g[5::101] = np.inf
    g[7::103] = -np.inf
    states0 = [pos, m0][:OPTIMISERS[name][0]] if name != "adam" else [m0, pos]
    for clip in (math.inf, 1.0):
        def fn():
            w = w0.copy()
            states = [s.copy() for s in states0]
            kw = dict(lr=0.1, wd=0.01, clip_value=clip)
            if name == "adam":
                kw["step"] = 3
            getattr(K, f"{name}_update")(w, g, *states, **kw)
            return [w, *states]

        with np.errstate(invalid="ignore"):
            ref, one, two = on_all(fn)
        for r, a, b in zip(ref, one, two):
            assert a.tobytes() == b.tobytes()
            np.testing.assert_array_equal(np.isnan(a), np.isnan(r))
            np.testing.assert_allclose(a, r, rtol=TOL[np.dtype(dtype)][0])


def test_adam_several_steps_track_numpy():
    """Ten Adam steps on the same state: both backends stay together (float32, 10^5 params)."""
    w0, g, pos, m0 = make((100000,), np.float32, 3)

    def fn():
        w, m, v = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
        for t in range(1, 11):
            K.adam_update(w, g * np.float32(t % 3 - 1), m, v, lr=1e-2, step=t, wd=0.01)
        return [w, m, v]

    check(*on_all(fn))


@SETTINGS
@given(shape=SHAPES, dtype=DTYPES, kind=LAYOUTS, seed=st.integers(0, 99),
       l1=st.sampled_from([0.0, 1e-3, 0.5]), l2=st.sampled_from([0.0, 1e-2, 2.0]))
def test_sumsq_penalty_penalty_grad(shape, dtype, kind, seed, l1, l2):
    w, g0, _, _ = make(shape, dtype, seed)
    if w.size:
        w.reshape(-1)[::3] = 0.0                      # sign(0) = 0
    w = layout(w, kind)

    def fn():
        g = g0.copy()
        K.penalty_grad(w, g, l1, l2)
        return [K.sumsq(w), K.penalty(w, l1, l2), g]

    check(*on_all(fn))


@SETTINGS
@given(shape=SHAPES, dtype=DTYPES, kind=LAYOUTS, seed=st.integers(0, 10 ** 6),
       bad=st.sampled_from([None, np.nan, np.inf, -np.inf]))
def test_all_finite(shape, dtype, kind, seed, bad):
    w, _, _, _ = make(shape, dtype, 0)
    if bad is not None and w.size:
        w.reshape(-1)[seed % w.size] = bad
    w = layout(w, kind)
    ref, one, two = on_all(lambda: [K.all_finite(w)])
    assert ref == one == two == [bool(np.isfinite(w).all())]


def test_all_finite_extremes():
    with dlfast.use_backend("cython"):
        big = np.finfo(np.float32).max
        assert K.all_finite(np.array([big, -big, np.float32(1e-45), -0.0], np.float32))
        assert K.all_finite(np.array([np.finfo(np.float64).max, 5e-324]))
        x = np.zeros(100003, np.float64)
        x[-1] = np.nan
        assert not K.all_finite(x)
        assert K.all_finite(np.zeros((0, 3), np.float32))


@SETTINGS
@given(n=st.sampled_from([1, 2, 7, 64, 300]), f=st.sampled_from([1, 3, 63, 64, 65, 200, 1001]),
       dtype=DTYPES, c=st.sampled_from([1e-3, 0.5, 1.0, 5.0, 1e6]), seed=st.integers(0, 99))
def test_max_norm(n, f, dtype, c, seed):
    rng = np.random.default_rng(seed)
    W0 = (rng.standard_normal((n, f)) * rng.random(f) * 3).astype(dtype)

    def fn():
        W = W0.copy()
        K.max_norm(W, c)
        return [W]

    ref, one, two = on_all(fn)
    check(ref, one, two)
    norms = np.sqrt((one[0].astype(np.float64) ** 2).sum(axis=0))
    assert np.all(norms <= c * (1 + 1e-5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_dimensional_parameters(dtype):
    """A 0-d parameter is one element for every optimiser, norm and penalty."""
    def fn():
        res = []
        for name in sorted(OPTIMISERS):
            w, g = np.array(0.7, dtype), np.array(-0.3, dtype)
            states = [np.array(0.2, dtype) for _ in range(OPTIMISERS[name][0])]
            kw = dict(lr=0.1, wd=0.01)
            if name == "adam":
                kw["step"] = 2
            getattr(K, f"{name}_update")(w, g, *states, **kw)
            res += [w, *states]
        g = np.array(0.5, dtype)
        K.penalty_grad(np.array(-2.0, dtype), g, 0.1, 0.2)
        return res + [g, K.sumsq(np.array(3.0, dtype)), K.penalty(np.array(-2.0, dtype), 0.1, 0.2),
                      K.all_finite(np.array(np.inf, dtype))]

    check(*on_all(fn))
