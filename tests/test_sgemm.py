"""dlfast's own float32 GEMM (``src/dlfast_sgemm.h``: its AVX-512F and its AVX2 kernel, each where
the CPU has it), through the dense kernels that call it: x @ W (forward), x.T @ dz (dW) and
dz @ W.T (dx) at every tile edge (rows around the 8- and 6-row tiles, columns around the 8-, 16-
and 32-column vectors and panels, k around the 256 block), the two kernels' bits equal,
against a float64 product within the forward error bound of a k-term sum; results of a row do not
depend on the rows computed with it; bad-stride and NaN/Inf inputs; the choice switched off by
``DLFAST_SGEMM=blas`` (the per-class choice and its cache: tests/test_tuning.py)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import dlfast
from dlfast import kernels as K
from kernel_helpers import float32_gemm

pytestmark = pytest.mark.skipif("cython" not in dlfast.available_backends(),
                                reason="compiled backend not built")

ROWS = [1, 2, 5, 6, 7, 8, 9, 13, 15, 17, 31, 32, 33, 100]
COLS = [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100]
INNER = [2, 3, 255, 256, 257, 784]
U = 2.0 ** -24


@pytest.fixture(autouse=True, params=["avx512f", "avx2"])
def own(request):
    with float32_gemm(request.param), dlfast.use_backend("cython"):
        yield request.param


def within_bound(got, a, b):
    """|got - a @ b| <= 1.01 k u (|a| @ |b|) elementwise, a, b in float64 (a k-term sum of
    float32 products, each FMA rounding once)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    exact = a @ b
    lim = 1.01 * a.shape[1] * U * (np.abs(a) @ np.abs(b)) + 1e-30
    err = np.abs(got.astype(np.float64) - exact)
    assert np.all(err <= lim), f"max excess {np.max(err - lim)}"


def backward(dz, x, W, dx, dW):
    """dW = x.T @ dz, dx = dz @ W.T (identity activation: the GEMMs read dz)."""
    K.dense_backward(dz, x, W, np.zeros_like(dz), np.empty_like(dz), dx, dW, None, "identity")


def data(m, k, n, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, k)).astype(np.float32),
            rng.standard_normal((k, n)).astype(np.float32),
            rng.standard_normal((m, n)).astype(np.float32))


@pytest.mark.parametrize("k", INNER)
@pytest.mark.parametrize("n", COLS)
@pytest.mark.parametrize("m", ROWS)
def test_products_at_every_tile_edge(m, n, k):
    x, W, dz = data(m, k, n, m * 10007 + n * 101 + k)
    out = np.full((m, n), np.nan, np.float32)
    K.dense_forward(x, W, None, out, "identity")
    within_bound(out, x, W)
    dx = np.full((m, k), np.nan, np.float32)
    dW = np.full((k, n), np.nan, np.float32)
    backward(dz, x, W, dx, dW)
    within_bound(dW, x.T, dz)
    within_bound(dx, dz, W.T)


@pytest.mark.parametrize("m, k, n", [(600, 300, 70), (1000, 784, 100), (513, 700, 16),
                                     (257, 1030, 33)])
def test_dW_over_several_k_blocks_and_row_blocks(m, k, n):
    """dW = x.T @ dz with a batch (the GEMM's inner size) over several 256-blocks and x's columns
    over several row blocks: op(A) = A^T packed per row block and k block (one panel, n = 16:
    read in place)."""
    x, _, dz = data(m, k, n, m + k + n)
    dW = np.full((k, n), np.nan, np.float32)
    K.dense_backward(dz, x, np.zeros((k, n), np.float32), np.zeros_like(dz),
                     np.empty_like(dz), None, dW, None, "identity")
    within_bound(dW, x.T, dz)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_row_does_not_depend_on_the_rows_beside_it(threads):
    """Every row of x @ W, x.T @ dz and dz @ W.T is the same bits computed alone or in a batch
    (the own kernel's sums run over k in a fixed order, whatever the tile or row block), from 2
    rows on (one row is a BLAS GEMV)."""
    dlfast.set_num_threads(threads)
    x, W, dz = data(300, 600, 70, 3)
    out = np.empty((300, 70), np.float32)
    K.dense_forward(x, W, None, out, "identity")
    dx = np.empty((300, 600), np.float32)
    dW = np.empty((600, 70), np.float32)
    backward(dz, x, W, dx, dW)
    for lo, hi in [(0, 2), (5, 13), (37, 300), (100, 164)]:
        part = np.empty((hi - lo, 70), np.float32)
        K.dense_forward(x[lo:hi], W, None, part, "identity")
        assert part.tobytes() == out[lo:hi].tobytes()
        pdW = np.empty((600, 70), np.float32)
        pdx = np.empty((hi - lo, 600), np.float32)
        backward(dz[lo:hi], x[lo:hi], W, pdx, pdW)
        assert pdx.tobytes() == dx[lo:hi].tobytes()
    # dW's rows are x's columns: a column subset of x gives the same rows of dW
    sub = np.ascontiguousarray(x[:, 100:229])
    pdW = np.empty((129, 70), np.float32)
    backward(dz, sub, W[100:229], None, pdW)
    assert pdW.tobytes() == dW[100:229].tobytes()


# (n, i, o, mask): row blocks merged on one thread (32 and 100 rows; 17 and 18 rows end in a
# 1-row GEMV block and, under the skinny-only mask, a 2-row small-class block: not merged);
# column blocks (32 x 128); dx column blocks (32 rows, 320 columns); a skinny-only mask.
ONE_CALL = [(32, 784, 100, 7), (100, 784, 100, 7), (17, 784, 100, 7), (18, 784, 100, 2),
            (32, 320, 128, 7), (32, 320, 130, 7), (64, 200, 30, 2), (1037, 300, 130, 7)]


@pytest.mark.parametrize("n,i,o,mask", ONE_CALL)
@pytest.mark.parametrize("act", ["identity", "tanh"])
def test_one_thread_runs_own_kernel_blocks_as_one_call(n, i, o, mask, act):
    """On one thread the blocks of a GEMM that all run on the own kernel are one call (op(B)
    packed once): the same bits as the blocks on two threads, forward (bias and activation as the
    blocks apply them) and backward."""
    from dlfast._backends import _dense
    _dense._set_own_sgemm(mask)
    x, W, dz = data(n, i, o, n + i + o)
    b = np.random.default_rng(1).standard_normal(o).astype(np.float32)
    got = []
    for threads in (1, 2, 1):
        dlfast.set_num_threads(threads)
        out = np.full((n, o), np.nan, np.float32)
        K.dense_forward(x, W, b, out, act)
        dx, dW, db = np.empty_like(x), np.empty_like(W), np.empty(o, np.float32)
        K.dense_backward(dz, x, W, out, np.empty_like(dz), dx, dW, db, act)
        got.append([a.tobytes() for a in (out, dx, dW, db)])
    assert got[0] == got[1] == got[2]
    ref = x.astype(np.float64) @ W + b
    ref = np.tanh(ref) if act == "tanh" else ref
    np.testing.assert_allclose(np.frombuffer(got[0][0], np.float32).reshape(n, o), ref,
                               rtol=1e-4, atol=1e-4 * np.sqrt(i))


def test_the_two_kernels_give_the_same_bits(own):
    """The AVX2 kernel's sums are the AVX-512F kernel's (the same chains over the same k blocks):
    forward, dW and dx bit for bit, where the CPU runs both."""
    from dlfast._backends import _dense
    if own != "avx2" or _dense._cap_sgemm_isa("avx512f") != "avx512f":
        pytest.skip("needs a CPU with AVX-512F (run once, under the AVX2 kernel)")
    x, W, dz = data(77, 530, 45, 11)
    got = []
    for isa in ("avx512f", "avx2"):
        assert _dense._cap_sgemm_isa(isa) == isa
        out, dx, dW = np.empty((77, 45), np.float32), np.empty_like(x), np.empty_like(W)
        K.dense_forward(x, W, None, out, "identity")
        backward(dz, x, W, dx, dW)
        got.append([a.tobytes() for a in (out, dx, dW)])
    assert got[0] == got[1]


@pytest.mark.parametrize("width", [64, 128, 256, 1024])
def test_power_of_two_widths(width):
    """Row lengths that are multiples of the cache's set stride (the packed panels and the
    in-place reads of A must still be right)."""
    x, W, dz = data(129, width, width, width)
    out = np.empty((129, width), np.float32)
    K.dense_forward(x, W, None, out, "identity")
    within_bound(out, x, W)
    dx = np.empty((129, width), np.float32)
    dW = np.empty((width, width), np.float32)
    backward(dz, x, W, dx, dW)
    within_bound(dW, x.T, dz)
    within_bound(dx, dz, W.T)


def test_nan_and_inf_reach_exactly_their_rows_and_columns():
    x, W, _ = data(40, 300, 50, 9)
    x[3, 7] = np.nan
    x[20, 299] = np.inf
    W[11, 45] = -np.inf
    out = np.empty((40, 50), np.float32)
    K.dense_forward(x, W, None, out, "identity")
    with np.errstate(invalid="ignore", over="ignore"):
        ref = x.astype(np.float64) @ W.astype(np.float64)
    assert np.array_equal(np.isfinite(out), np.isfinite(ref))
    assert np.isnan(out[3]).all()
    assert not np.isfinite(out[:, 45]).any()


def test_switched_off_by_the_environment():
    code = """if 1:
        import numpy as np, dlfast
        from dlfast._backends import cython_kernels as c, _dense
        dlfast.set_backend("cython")
        x = np.random.default_rng(0).standard_normal((100, 300)).astype(np.float32)
        W = np.random.default_rng(1).standard_normal((300, 70)).astype(np.float32)
        y = np.empty((100, 70), np.float32)
        dlfast.kernels.dense_forward(x, W, None, y)
        np.testing.assert_allclose(y, x.astype(np.float64) @ W, rtol=1e-4, atol=1e-3)
        print(c.SGEMM, _dense.own_sgemm())
    """
    env = dict(os.environ, DLFAST_SGEMM="blas", DLFAST_BACKEND="cython")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "BLAS: set by DLFAST_SGEMM=blas 0"


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_packing_buffer_freed_when_its_thread_ends():
    """Each thread packs into a buffer of its own (here 256 x 2048 floats, 2 MiB), freed when the
    thread exits: 60 short-lived threads leave resident memory about where one leaves it (kept,
    they would add 120 MiB)."""
    import threading
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
    import long_run
    x, W, _ = data(64, 256, 2048, 5)

    def work():
        out = np.empty((64, 2048), np.float32)
        K.dense_forward(x, W, None, out, "identity")

    def run_threads(count):
        for _ in range(count):
            t = threading.Thread(target=work)
            t.start()
            t.join()

    run_threads(2)
    before = long_run.rss()
    run_threads(60)
    grown = long_run.rss() - before
    assert grown < 32 * 2 ** 20, f"resident memory grew {grown / 2 ** 20:.1f} MiB"
