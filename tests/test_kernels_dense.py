"""Compiled dense kernels (dlfast._backends._dense) against the NumPy backend, through
dlfast.kernels: every activation, float32/float64, batch 1 / odd batches, width 1 and wide layers
(threads start), non-contiguous / Fortran / read-only inputs, optional outputs, empty dimensions,
and 1 vs 2 threads bit-identical; each with the float32 GEMMs on dlfast's own kernel and on the
GEMM BLAS (fixture ``sgemm``).

GEMM results are compared with an absolute floor proportional to |x| @ |W| (the magnitude the dot
products are summed from), since NumPy and SciPy may link different BLAS builds."""
import inspect
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import dlfast
from dlfast import kernels as K
from dlfast._backends import numpy_kernels
from kernel_helpers import GEMM_KINDS, float32_gemm, layout, on_all
from process_helpers import fresh_json

pytestmark = pytest.mark.skipif("cython" not in dlfast.available_backends(),
                                reason="compiled backend not built")
SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = st.sampled_from([np.float32, np.float64])
LAYOUTS = st.sampled_from(["c", "f", "step", "ro"])
ACTS = st.sampled_from(K.ACTIVATIONS)
ALPHAS = st.sampled_from([0.01, 0.2, 1.0, 1.7])
ROWS = st.sampled_from([1, 2, 3, 7, 33, 64, 65, 129])
INS = st.sampled_from([1, 2, 5, 64, 300])
OUTS = st.sampled_from([1, 2, 5, 65, 1200])
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


@pytest.fixture(autouse=True, params=GEMM_KINDS)
def sgemm(request):
    """Every test runs with the float32 GEMMs on each of dlfast's own kernels (skipped where the
    CPU lacks it) and on the GEMM BLAS."""
    with float32_gemm(request.param) as kind:
        yield kind


def check(ref, one, two, bounds=None):
    """1 vs 2 threads bit-identical; compiled vs NumPy within rtol, with an absolute floor of
    tol * bound (bound: elementwise magnitude the result is summed from; default max |ref|)."""
    bounds = bounds or [None] * len(ref)
    for r, a, b, bound in zip(ref, one, two, bounds):
        if r is None:
            assert a is None and b is None
            continue
        assert a.dtype == r.dtype and a.shape == r.shape
        assert a.tobytes() == b.tobytes(), "1 and 2 threads differ"
        tol = TOL[r.dtype]
        if bound is None:
            bound = max(1.0, float(np.abs(r).max())) if r.size else 1.0
        err = np.abs(a.astype(np.float64) - r.astype(np.float64))
        lim = tol * (np.abs(r.astype(np.float64)) + np.asarray(bound, np.float64) + 1e-30)
        assert np.all(err <= lim), (f"max excess {np.max(err - lim)}; max err {err.max()}")


def f64abs(a):
    return np.abs(np.asarray(a, np.float64))


def dense_data(n, i, o, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, i)).astype(dtype)
    W = (rng.standard_normal((i, o)) / np.sqrt(max(i, 1))).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return rng, x, W, b


def test_signatures_match_numpy_backend():
    from dlfast._backends import _dense
    for name in ("dense_forward", "dense_backward"):
        got = list(inspect.signature(getattr(_dense, name)).parameters)
        want = list(inspect.signature(getattr(numpy_kernels, name)).parameters)
        assert got == want, name


@SETTINGS
@given(n=ROWS, i=INS, o=OUTS, dtype=DTYPES, act=ACTS, alpha=ALPHAS,
       kinds=st.tuples(LAYOUTS, LAYOUTS, LAYOUTS), bias=st.booleans(), seed=st.integers(0, 99))
def test_dense_forward(n, i, o, dtype, act, alpha, kinds, bias, seed):
    _, x, W, b = dense_data(n, i, o, dtype, seed)
    bound = f64abs(x) @ f64abs(W) + (f64abs(b) if bias else 0)
    x, W, b = (layout(a, k) for a, k in zip((x, W, b), kinds))
    if not bias:
        b = None

    def fn():
        out = np.full((n, o), np.nan, dtype)
        assert K.dense_forward(x, W, b, out, act, alpha) is out
        return [out]

    check(*on_all(fn), bounds=[bound * max(1.0, alpha)])


def _dense_out(x, W, b, act, alpha):
    """A forward output computed once (NumPy backend), fed identically to both backends."""
    out = np.empty((x.shape[0], W.shape[1]), x.dtype)
    with dlfast.use_backend("numpy"):
        K.dense_forward(x, W, b, out, act, alpha)
    return out


@SETTINGS
@given(n=ROWS, i=INS, o=OUTS, dtype=DTYPES, act=ACTS, alpha=ALPHAS,
       kinds=st.tuples(LAYOUTS, LAYOUTS, LAYOUTS, LAYOUTS),
       want=st.tuples(st.booleans(), st.booleans(), st.booleans()), seed=st.integers(0, 99))
def test_dense_backward(n, i, o, dtype, act, alpha, kinds, want, seed):
    rng, x, W, b = dense_data(n, i, o, dtype, seed)
    out = _dense_out(x, W, b, act, alpha)
    dout = rng.standard_normal((n, o)).astype(dtype)
    # the exact dz (elementwise, same formula on both backends) bounds the GEMM/sum errors
    dz_ref = np.empty_like(out)
    with dlfast.use_backend("numpy"):
        K.activation_backward(dout, out, dz_ref, act, alpha)
    adz = f64abs(dz_ref)
    bounds = [None, adz @ f64abs(W).T, f64abs(x).T @ adz, adz.sum(axis=0)]
    x, W, out, dout = (layout(a, k) for a, k in zip((x, W, out, dout), kinds))

    def fn():
        dz = np.full((n, o), np.nan, dtype)
        dx = np.full((n, i), np.nan, dtype) if want[0] else None
        dW = np.full((i, o), np.nan, dtype) if want[1] else None
        db = np.full(o, np.nan, dtype) if want[2] else None
        K.dense_backward(dout, x, W, out, dz, dx, dW, db, act, alpha)
        # dz is a workspace; the compiled identity path reads dout directly and leaves it alone
        return [None if act == "identity" else dz, dx, dW, db]

    ref, one, two = on_all(fn)
    check(ref, one, two, bounds)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", K.ACTIVATIONS)
def test_dense_wide_layer_threads_deterministic(dtype, act):
    """(257, 300) @ (300, 1500): the epilogue and the db reduction run on 2 threads and agree bit
    for bit with 1 thread; results match the NumPy backend."""
    rng, x, W, b = dense_data(257, 300, 1500, dtype, 3)
    out0 = _dense_out(x, W, b, act, 0.3)
    dout = rng.standard_normal(out0.shape).astype(dtype)
    bound_f = f64abs(x) @ f64abs(W) + f64abs(b)

    def fwd():
        out = np.empty_like(out0)
        K.dense_forward(x, W, b, out, act, 0.3)
        return [out]

    check(*on_all(fwd), bounds=[bound_f])

    dz_ref = np.empty_like(out0)
    with dlfast.use_backend("numpy"):
        K.activation_backward(dout, out0, dz_ref, act, 0.3)
    adz = f64abs(dz_ref)

    def bwd():
        dz, dx, dW, db = (np.empty_like(a) for a in (out0, x, W, b))
        K.dense_backward(dout, x, W, out0, dz, dx, dW, db, act, 0.3)
        return [None if act == "identity" else dz, dx, dW, db]

    check(*on_all(bwd), bounds=[None, adz @ f64abs(W).T, f64abs(x).T @ adz, adz.sum(axis=0)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,i,o", [(0, 3, 4), (3, 0, 4), (0, 0, 4), (3, 4, 0), (0, 4, 0), (3, 0, 0)])
def test_dense_empty_dimensions(dtype, n, i, o):
    """Zero rows / inputs / outputs: out = act(b) for no inputs; dW and db are zero for no rows."""
    rng, x, W, b = dense_data(n, i, o, dtype, 0)

    def fn():
        out = np.full((n, o), np.nan, dtype)
        K.dense_forward(x, W, b, out, "sigmoid", 0.0)
        dout = np.ones((n, o), dtype)
        dz = np.full((n, o), np.nan, dtype)
        dx, dW, db = np.full((n, i), np.nan, dtype), np.full((i, o), np.nan, dtype), \
            np.full(o, np.nan, dtype)
        K.dense_backward(dout, x, W, out, dz, dx, dW, db, "sigmoid", 0.0)
        return [out, dz, dx, dW, db]

    ref, one, two = on_all(fn)
    check(ref, one, two)
    assert not any(np.isnan(a).any() for a in one)
    if i == 0:
        with dlfast.use_backend("cython"):
            out = np.empty((n, o), dtype)
            K.dense_forward(x, W, b, out, "identity")
        np.testing.assert_array_equal(out, np.broadcast_to(b, (n, o)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_nonfinite_propagates(dtype):
    """NaN and inf in x or W reach the output as in the NumPy backend (no clamping)."""
    x = np.array([[1.0, np.nan], [np.inf, 1.0], [1.0, 2.0]], dtype)
    W = np.array([[1.0, -1.0, 0.5], [2.0, 0.0, 1.0]], dtype)
    b = np.zeros(3, dtype)
    for act in K.ACTIVATIONS:
        res = []
        for name in ("numpy", "cython"):
            with dlfast.use_backend(name), np.errstate(invalid="ignore"):
                out = np.empty((3, 3), dtype)
                K.dense_forward(x, W, b, out, act, 0.5)
                res.append(out)
        np.testing.assert_array_equal(np.isnan(res[0]), np.isnan(res[1]), err_msg=act)
        np.testing.assert_allclose(res[1], res[0], rtol=TOL[np.dtype(dtype)], err_msg=act)


def test_dense_inputs_untouched_and_dtype_kept():
    """Read-only inputs stay unchanged; a float32 call writes float32 outputs."""
    _, x, W, b = dense_data(5, 4, 3, np.float32, 1)
    for a in (x, W, b):
        a.flags.writeable = False
    copies = [a.copy() for a in (x, W, b)]
    with dlfast.use_backend("cython"):
        out = np.empty((5, 3), np.float32)
        K.dense_forward(x, W, b, out, "tanh")
        dz, dx, dW, db = (np.empty_like(a) for a in (out, x, W, b))
        K.dense_backward(out, x, W, out, dz, dx, dW, db, "tanh")
    for a, c in zip((x, W, b), copies):
        np.testing.assert_array_equal(a, c)
    assert {a.dtype for a in (out, dz, dx, dW, db)} == {np.dtype(np.float32)}


def test_dense_backward_identity_uses_dout():
    """With the identity activation the gradients equal plain matrix products of dout."""
    rng, x, W, _ = dense_data(9, 6, 4, np.float64, 2)
    dout = rng.standard_normal((9, 4))
    with dlfast.use_backend("cython"):
        dz, dx, dW, db = np.empty((9, 4)), np.empty((9, 6)), np.empty((6, 4)), np.empty(4)
        K.dense_backward(dout, x, W, x @ W, dz, dx, dW, db, "identity")
    np.testing.assert_allclose(dx, dout @ W.T, rtol=1e-12)
    np.testing.assert_allclose(dW, x.T @ dout, rtol=1e-12)
    np.testing.assert_allclose(db, dout.sum(axis=0), rtol=1e-12)


def test_dense_bad_input_names_argument():
    x, W = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    with dlfast.use_backend("cython"):
        with pytest.raises(ValueError, match="W"):
            K.dense_forward(x, np.ones((2, 4), np.float32), None, np.empty((2, 4), np.float32))
        with pytest.raises(TypeError, match="mixed"):
            K.dense_forward(x, W.astype(np.float64), None, np.empty((2, 4), np.float32))
        with pytest.raises(ValueError, match="activation"):
            K.dense_forward(x, W, None, np.empty((2, 4), np.float32), "swish")


@pytest.mark.parametrize("n,o", [(32, 130), (32, 128), (50, 128), (100, 130), (1000, 130),
                                 (1037, 130)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_row_blocks_thread_independent(n, o, dtype):
    """Shapes big enough that 2 threads really share the GEMM row blocks (several blocks of
    max(16, roundup4(ceil(n / P))) rows; at n=50 and 100 the backward's dW and dx, inner sizes n
    and o, share one region, cut for P // 2 cores each) or, below 64 rows per block, column
    blocks where the 16-column panels split evenly (n=32, o=130: dx's 320 columns, the forward's
    9 panels by rows; n=32 and 50, o=128: the forward's): forward and backward equal NumPy and
    are bit-identical with 1 and 2 threads."""
    from dlfast._backends import _dense
    assert _dense.gemm_parts() >= 1
    _, x, W, b = dense_data(n, 320, o, dtype, 5)
    dout = np.random.default_rng(6).standard_normal((n, o)).astype(dtype)
    out = _dense_out(x, W, b, "relu", 0.0)

    def fn():
        y = np.full((n, o), np.nan, dtype)
        K.dense_forward(x, W, b, y, "relu", 0.0)
        dx, dW, db = (np.full(s, np.nan, dtype) for s in (x.shape, W.shape, (o,)))
        dz = np.empty_like(dout)
        K.dense_backward(dout, x, W, out, dz, dx, dW, db, "relu", 0.0)
        return [y, dx, dW, db]

    bx = f64abs(dout) @ f64abs(W).T
    bW = f64abs(x).T @ f64abs(dout)
    check(*on_all(fn), bounds=[f64abs(x) @ f64abs(W) + f64abs(b), bx, bW, f64abs(dout).sum(0)])


def test_gemm_blas_stays_single_threaded_under_threadpool_limits():
    """A threadpoolctl limit that raises the BLAS behind the kernels' GEMMs to 2 threads is
    undone by the next kernel call (a threaded BLAS call inside the OpenMP blocks oversubscribes
    the cores and changes the bits): the same bits as with the BLAS pinned, and 1 thread after."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from dlfast._backends import cython_kernels
    if not cython_kernels.PINNED_BLAS:
        pytest.skip("no BLAS pinned (not SciPy's OpenBLAS)")
    _, x, W, b = dense_data(512, 300, 200, np.float32, 7)

    def fwd():
        y = np.empty((512, 200), np.float32)
        with dlfast.use_backend("cython"):
            K.dense_forward(x, W, b, y, "tanh", 0.0)
        return y

    def scipy_blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["filepath"] in cython_kernels.PINNED_BLAS]

    dlfast.set_num_threads(2)
    ref = fwd()
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        raised = scipy_blas_threads()
        got = fwd()
        after = scipy_blas_threads()
    assert got.tobytes() == ref.tobytes()
    from dlfast._backends import _dense
    if _dense._blas_pin_installed():               # a pthreads OpenBLAS (SciPy's wheels)
        assert raised == [2] and after == [1]


def test_raw_dense_module_rejects_bad_arrays():
    """The compiled module's own entry points (called by the wrappers) take arrays through the
    buffer protocol and check every shape and dtype themselves: a bad call is an exception, never a read or write out of bounds."""
    if "cython" not in dlfast.available_backends():
        pytest.skip("compiled backend not built")
    from dlfast._backends import _dense as D
    f = np.float32
    x, W, b = np.ones((3, 4), f), np.ones((4, 5), f), np.ones(5, f)
    out, dout = np.empty((3, 5), f), np.ones((3, 5), f)
    dz, dx, dW, db = np.empty((3, 5), f), np.empty((3, 4), f), np.empty((4, 5), f), np.empty(5, f)
    D.dense_forward(x, W, b, out, "relu", 0.0)
    np.testing.assert_allclose(out, np.maximum(x @ W + b, 0))
    D.dense_backward(dout, x, W, out, dz, dx, dW, db, "relu", 0.0)
    np.testing.assert_allclose(dW, x.T @ (dout * (out > 0)))
    bad_fwd = [
        ((x, np.ones((3, 5), f), b, out), ValueError, "W"),
        ((x, W, np.ones(4, f), out), ValueError, "elements"),
        ((x, W, b, np.empty((3, 4), f)), ValueError, "out"),
        ((x, W, b, np.empty(15, f)), ValueError, "out"),
        ((None, W, b, out), ValueError, "x"),
        ((x, W.astype(np.float64), b, out), TypeError, "dtype"),
        ((np.asfortranarray(x), W, b, out), (ValueError, BufferError), None),
        ((x, W, b, np.empty((3, 5), f)[::-1]), (ValueError, BufferError), None),
    ]
    ro = np.empty((3, 5), f)
    ro.flags.writeable = False
    bad_fwd.append(((x, W, b, ro), (ValueError, BufferError), None))
    for args, exc, match in bad_fwd:
        with pytest.raises(exc, match=match):
            D.dense_forward(*args, "relu", 0.0)
    bad_bwd = [
        ((None, x, W, out, dz, dx, dW, db), ValueError, "dout"),
        ((dout, x, W, None, dz, dx, dW, db), ValueError, "out and dz"),
        ((dout, x, W, out, dz, np.empty((3, 5), f), dW, db), ValueError, "dx"),
        ((dout, x, W, out, dz, dx, np.empty((5, 4), f), db), ValueError, "dW"),
        ((dout, x, W, out, dz, dx, dW, np.empty(4, f)), ValueError, "elements"),
        ((np.ones((2, 5), f), x, W, out, dz, dx, dW, db), ValueError, "dout"),
    ]
    for args, exc, match in bad_bwd:
        with pytest.raises(exc, match=match):
            D.dense_backward(*args, "relu", 0.0)
    # identity: out and dz may be None (dz is not written)
    D.dense_backward(dout, x, W, None, None, dx, dW, db, "identity", 0.0)
    np.testing.assert_allclose(dx, dout @ W.T)


def test_gemm_blas_choice():
    """The GEMMs run on dlfast's own OpenBLAS (scipy-openblas32) when it is installed, pinned to
    one thread, else on SciPy's; DLFAST_GEMM_BLAS=scipy picks SciPy's, with the same results
    (to rounding) and the same bits for 1 and 2 threads."""
    import importlib.util
    import os
    import subprocess
    import sys
    if "cython" not in dlfast.available_backends():
        pytest.skip("compiled backend not built")
    from dlfast._backends import cython_kernels
    own = importlib.util.find_spec("scipy_openblas32") is not None
    assert ("scipy-openblas32" in cython_kernels.GEMM_BLAS) == (own and os.environ.get(
        "DLFAST_GEMM_BLAS", "").lower() != "scipy")
    code = """if 1:
        import numpy as np, dlfast
        from dlfast import kernels as K
        from dlfast._backends import cython_kernels as c
        dlfast.set_backend("cython")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((100, 300)).astype(np.float32)
        W = rng.standard_normal((300, 70)).astype(np.float32)
        outs = []
        for t in (1, 2):
            dlfast.set_num_threads(t)
            y = np.empty((100, 70), np.float32)
            K.dense_forward(x, W, None, y)
            outs.append(y)
        assert np.array_equal(outs[0], outs[1])
        np.testing.assert_allclose(outs[0], x.astype(np.float64) @ W, rtol=1e-4, atol=1e-3)
        print(c.GEMM_BLAS)
    """
    env = dict(os.environ, DLFAST_GEMM_BLAS="scipy", DLFAST_BACKEND="cython")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "SciPy" in r.stdout


def test_own_blas_spares_the_scipy_linalg_import():
    """With dlfast's own OpenBLAS the compiled kernels never import scipy.linalg (~0.4 s): a
    fresh process trains a step of a dense net, float32 and float64, without it."""
    import importlib.util
    if "cython" not in dlfast.available_backends():
        pytest.skip("compiled backend not built")
    if importlib.util.find_spec("scipy_openblas32") is None or \
            os.environ.get("DLFAST_GEMM_BLAS", "").lower() == "scipy":
        pytest.skip("SciPy's BLAS is the GEMM BLAS here")
    got = fresh_json("""if 1:
        import json, sys, numpy as np, dlfast
        dlfast.set_backend("cython")
        from dlfast._backends import cython_kernels as c
        ok = []
        for dt in (np.float32, np.float64):
            net = dlfast.net.MLP(20, [16], 3, dtype=dt, seed=0)
            x = np.ones((8, 20), dt)
            loss, _ = net.loss_and_gradient(x, np.arange(8) % 3)
            ok.append(bool(np.isfinite(loss)))
        print(json.dumps([ok, "scipy.linalg" in sys.modules, c.GEMM_BLAS]))
    """)
    assert got[0] == [True, True] and got[1] is False, got


def test_dense_module_alone_loads_scipy_blas_on_first_gemm():
    """_dense imported without the backend has no BLAS installed; its first kernel call installs
    SciPy's (in C, under the GIL, before its GEMMs) and computes the product."""
    if "cython" not in dlfast.available_backends():
        pytest.skip("compiled backend not built")
    got = fresh_json("""if 1:
        import json, sys, numpy as np
        from dlfast._backends import _dense
        before = "scipy.linalg" in sys.modules
        rng = np.random.default_rng(0)
        a = rng.standard_normal((7, 5)).astype(np.float32)
        b = rng.standard_normal((5, 3)).astype(np.float32)
        c = np.empty((7, 3), np.float32)
        _dense._sgemm_run(False, a, b, c, 1)
        err = float(np.abs(c - a.astype(np.float64) @ b).max())
        print(json.dumps([before, "scipy.linalg" in sys.modules, err]))
    """)
    assert got[0] is False and got[1] is True and got[2] < 1e-5, got


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("i,o", [(1, 1), (784, 100), (33, 17), (5, 1)])
@pytest.mark.parametrize("kind", ["c", "f", "step", "ro"])
def test_dense_backward_batch1_outer_product_exact(dtype, i, o, kind):
    """Batch 1: dW = x.T @ dz is one product per element (the compiled backend's outer-product
    loop, dlf_outer): equal to np.outer, on both backends and thread counts; an output width
    of 1 sends dx = dz @ W.T (one deep, W read with a stride) through the same loop."""
    rng, x, W, b = dense_data(1, i, o, dtype, 5)
    dout = rng.standard_normal((1, o)).astype(dtype)
    out = np.zeros((1, o), dtype)             # y: unused by the identity's derivative
    x, W, dout = (layout(a, kind) for a in (x, W, dout))

    def fn():
        dz, dx, dW, db = (np.empty((1, o), dtype), np.empty((1, i), dtype),
                          np.empty((i, o), dtype), np.empty(o, dtype))
        K.dense_backward(dout, x, W, out, dz, dx, dW, db, "identity")
        return [dx, dW]

    for got in on_all(fn):
        np.testing.assert_array_equal(got[1], np.outer(x[0], dout[0]))
        if o == 1:
            np.testing.assert_array_equal(got[0], dout[0, 0] * W[:, 0][None, :])
