"""Compiled rbm_cd_update against the NumPy backend, through dlfast.kernels: f32/f64, odd shapes,
non-contiguous and read-only inputs, 1 vs 2 threads bit-identical; formula and validation."""
import numpy as np
import pytest

import dlfast
from dlfast import kernels as K
from kernel_helpers import layout

pytestmark = pytest.mark.skipif("cython" not in dlfast.available_backends(),
                                reason="compiled backend not built")
# (N, I, J): tiny, odd, and above the parallel threshold (N * I * J >= 64 * 32768)
SHAPES = [(1, 1, 1), (3, 5, 2), (7, 13, 11), (64, 33, 17), (41, 203, 257)]


def _case(n, i, j, dtype, seed=0):
    rng = np.random.default_rng(seed)
    v0 = rng.random((n, i)).astype(dtype)
    h0 = rng.random((n, j)).astype(dtype)
    vk = rng.random((n, i)).astype(dtype)
    hk = rng.random((n, j)).astype(dtype)
    W = (0.1 * rng.standard_normal((i, j))).astype(dtype)
    bv = (0.1 * rng.standard_normal(i)).astype(dtype)
    bh = (0.1 * rng.standard_normal(j)).astype(dtype)
    return (v0, h0, vk, hk), (W, bv, bh)


def _run(ins, state, lr=0.05, wd=1e-3):
    W, bv, bh = (a.copy() for a in state)
    err = K.rbm_cd_update(*ins, W, bv, bh, lr, wd)
    return err, W, bv, bh


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["c", "f", "step", "ro"])
def test_compiled_matches_numpy(dtype, shape, kind):
    ins, state = _case(*shape, dtype)
    ins = [layout(a, kind) for a in ins]
    with dlfast.use_backend("numpy"):
        ref = _run(ins, state)
    got = []
    with dlfast.use_backend("cython"):
        for nt in (1, 2):
            dlfast.set_num_threads(nt)
            got.append(_run(ins, state))
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for a, b in zip(got[0][1:], got[1][1:]):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)              # thread count does not matter
    assert got[0][0] == got[1][0]
    for a, b in zip(got[0][1:], ref[1:]):
        np.testing.assert_allclose(a, b, **tol)
    np.testing.assert_allclose(got[0][0], ref[0], rtol=1e-12)


def test_formula(backend):
    ins, state = _case(6, 4, 3, np.float64, seed=2)
    v0, h0, vk, hk = ins
    W, bv, bh = state
    lr, wd = 0.1, 0.01
    err, W1, bv1, bh1 = _run(ins, state, lr, wd)
    np.testing.assert_allclose(W1, W + lr * ((v0.T @ h0 - vk.T @ hk) / 6 - wd * W), rtol=1e-13)
    np.testing.assert_allclose(bv1, bv + lr * (v0 - vk).mean(0), rtol=1e-13)
    np.testing.assert_allclose(bh1, bh + lr * (h0 - hk).mean(0), rtol=1e-13)
    assert err == pytest.approx(float(((v0 - vk) ** 2).sum()), rel=1e-13)


def test_validation(backend):
    ins, (W, bv, bh) = _case(4, 3, 2, np.float32)
    v0, h0, vk, hk = ins
    with pytest.raises(ValueError, match="h0 must have 4 rows"):
        K.rbm_cd_update(v0, h0[:3], vk, hk, W, bv, bh, 0.1)
    with pytest.raises(ValueError, match="vk must have shape"):
        K.rbm_cd_update(v0, h0, vk[:, :2], hk, W, bv, bh, 0.1)
    with pytest.raises(TypeError, match="mixed dtypes"):
        K.rbm_cd_update(v0, h0.astype(np.float64), vk, hk, W, bv, bh, 0.1)
    with pytest.raises(ValueError, match="W must have shape"):
        K.rbm_cd_update(v0, h0, vk, hk, W.T.copy(), bv, bh, 0.1)
    with pytest.raises(ValueError, match="W must be C-contiguous"):
        K.rbm_cd_update(v0, h0, vk, hk, np.asfortranarray(np.zeros((3, 2), np.float32)), bv, bh, 0.1)
    with pytest.raises(ValueError, match="lr must lie"):
        K.rbm_cd_update(v0, h0, vk, hk, W, bv, bh, -1.0)
    with pytest.raises(ValueError, match="wd must lie"):
        K.rbm_cd_update(v0, h0, vk, hk, W, bv, bh, 0.1, wd=float("nan"))
    with pytest.raises(ValueError, match="at least one row"):
        K.rbm_cd_update(v0[:0], h0[:0], vk[:0], hk[:0], W, bv, bh, 0.1)
    with pytest.raises(ValueError, match="overlaps"):
        K.rbm_cd_update(v0, h0, vk, hk, W, bv, h0[0], 0.1)   # bh aliases h0
