"""Convolution and pooling kernels (issue 21): the NumPy oracle against nested-loop references on
tiny shapes; the compiled backend (dlfast._backends._conv) against the oracle through
dlfast.kernels in float32 and float64 on odd geometries (strides 1-3, pads 0-2, windows that do
not tile the input, batch 1, empty dimensions), with Fortran / strided / read-only inputs and 1 vs 2
threads bit-identical; max-pool ties, NaN and padding; float64 finite-difference checks of every
backward against its forward; bad arguments (clear exceptions naming the argument, on both
backends and on the compiled module's own entry points).

GEMM-based results are compared with the k-term bound: each backend is within
gamma_k * bound of the exact value (gamma_k = k u / (1 - k u), u the unit roundoff; bound = the
same sum over absolute values), so they differ by at most 2 gamma_k * bound. Pooling sums run in
the same order on both backends: exact equality."""
import inspect
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import dlfast
from dlfast import kernels as K
from dlfast._backends import numpy_kernels
from kernel_helpers import GEMM_KINDS, float32_gemm, layout, on_all

pytestmark = pytest.mark.skipif("cython" not in dlfast.available_backends(),
                                reason="compiled backend not built")
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = st.sampled_from([np.float32, np.float64])
LAYOUTS = st.sampled_from(["c", "f", "step", "ro"])
UNIT = {np.dtype(np.float32): 2.0 ** -24, np.dtype(np.float64): 2.0 ** -53}
NAMES = ("conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
         "avgpool2d_forward", "avgpool2d_backward")


@pytest.fixture(params=GEMM_KINDS)
def sgemm(request):
    """The float32 GEMMs on each of dlfast's own kernels (where the CPU has it) and on the BLAS."""
    with float32_gemm(request.param) as kind:
        yield kind


# ============================================================================ references
def out_hw(h, w, kernel, stride, pad):
    return ((h + 2 * pad[0] - kernel[0]) // stride[0] + 1,
            (w + 2 * pad[1] - kernel[1]) // stride[1] + 1)


def loop_conv(x, W, b, stride, pad):
    """The definition, one multiply-add at a time (float64)."""
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    oh, ow = out_hw(h, w, (kh, kw), stride, pad)
    out = np.zeros((n, f, oh, ow))
    for m, o, i, j in itertools.product(range(n), range(f), range(oh), range(ow)):
        s = 0.0 if b is None else float(b[o])
        for ch, a, e in itertools.product(range(c), range(kh), range(kw)):
            r, q = i * stride[0] - pad[0] + a, j * stride[1] - pad[1] + e
            if 0 <= r < h and 0 <= q < w:
                s += float(W[o, ch, a, e]) * float(x[m, ch, r, q])
        out[m, o, i, j] = s
    return out


def loop_conv_grads(dout, x, W, stride, pad):
    """(dx, dW, db) of sum(out * dout) by the chain rule, term by term."""
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    dx, dW, db = np.zeros(x.shape), np.zeros(W.shape), np.zeros(f)
    for m, o, i, j in itertools.product(*map(range, dout.shape)):
        g = float(dout[m, o, i, j])
        db[o] += g
        for ch, a, e in itertools.product(range(c), range(kh), range(kw)):
            r, q = i * stride[0] - pad[0] + a, j * stride[1] - pad[1] + e
            if 0 <= r < h and 0 <= q < w:
                dx[m, ch, r, q] += float(W[o, ch, a, e]) * g
                dW[o, ch, a, e] += float(x[m, ch, r, q]) * g
    return dx, dW, db


def loop_windows(shape, kernel, stride, pad):
    """(n, c, i, j, [(r, q) cells of the window inside x, row-major])."""
    n, c, h, w = shape
    oh, ow = out_hw(h, w, kernel, stride, pad)
    for m, ch, i, j in itertools.product(range(n), range(c), range(oh), range(ow)):
        cells = [(r, q) for r in range(i * stride[0] - pad[0], i * stride[0] - pad[0] + kernel[0])
                 for q in range(j * stride[1] - pad[1], j * stride[1] - pad[1] + kernel[1])
                 if 0 <= r < h and 0 <= q < w]
        yield m, ch, i, j, cells


def loop_maxpool(x, kernel, stride, pad):
    n, c, h, w = x.shape
    oh, ow = out_hw(h, w, kernel, stride, pad)
    out, arg = np.zeros((n, c, oh, ow), x.dtype), np.zeros((n, c, oh, ow), np.int64)
    for m, ch, i, j, cells in loop_windows(x.shape, kernel, stride, pad):
        best = None
        for r, q in cells:                 # the first NaN, else the first maximum
            v = x[m, ch, r, q]
            if best is None or (not np.isnan(best) and (np.isnan(v) or v > best)):
                best, at = v, r * w + q
        out[m, ch, i, j], arg[m, ch, i, j] = best, at
    return out, arg


def loop_avgpool(x, kernel, stride, pad, include):
    n, c, h, w = x.shape
    out = np.zeros((n, c) + out_hw(h, w, kernel, stride, pad))
    for m, ch, i, j, cells in loop_windows(x.shape, kernel, stride, pad):
        d = kernel[0] * kernel[1] if include else len(cells)
        out[m, ch, i, j] = sum(float(x[m, ch, r, q]) for r, q in cells) / d
    return out


def loop_avgpool_grad(dout, x_shape, kernel, stride, pad, include):
    dx = np.zeros(x_shape)
    for m, ch, i, j, cells in loop_windows(x_shape, kernel, stride, pad):
        d = kernel[0] * kernel[1] if include else len(cells)
        for r, q in cells:
            dx[m, ch, r, q] += float(dout[m, ch, i, j]) / d
    return dx


# ============================================================================ calls
def conv_fwd(x, W, b, stride, pad, dtype=None):
    dt = dtype or x.dtype
    out = np.full(K.conv2d_output_shape(x.shape, W.shape, stride, pad), np.nan, dt)
    col = np.full(K.conv2d_workspace_shape(x.shape, W.shape, stride, pad), np.nan, dt)
    assert K.conv2d_forward(x, W, b, out, col, stride, pad) is out
    return out, col


def conv_bwd(dout, x, W, stride, pad, want=(True, True, True)):
    dt = x.dtype
    shape = K.conv2d_workspace_shape(x.shape, W.shape, stride, pad)
    col = np.full(shape, np.nan, dt) if want[1] else None      # workspaces: written before read
    dcol = np.full(shape, np.nan, dt) if want[0] else None
    dx = np.full(x.shape, np.nan, dt) if want[0] else None
    dW = np.full(W.shape, np.nan, dt) if want[1] else None
    db = np.full(W.shape[0], np.nan, dt) if want[2] else None
    assert K.conv2d_backward(dout, x, W, col, dcol, dx, dW, db, stride, pad) is None
    return dx, dW, db


def numpy_f64(fn, *args):
    with dlfast.use_backend("numpy"):
        return fn(*(a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args))


def gamma(k, dt):
    ku = k * UNIT[np.dtype(dt)]
    return ku / (1 - ku)


def check_close(got, ref, bound, k):
    """|got - ref| <= 2 gamma_k bound (+ one rounding of each to the dtype)."""
    assert got.dtype == ref.dtype and got.shape == ref.shape
    u = UNIT[ref.dtype]
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    lim = 2 * gamma(max(k, 1), ref.dtype) * bound + 2 * u * np.abs(ref.astype(np.float64)) + 1e-300
    assert np.all(err <= lim), f"max excess {np.max(err - lim)}, max err {err.max()}"


def same_bits(a, b):
    return a is None and b is None or (a.dtype == b.dtype and a.shape == b.shape
                                       and a.tobytes() == b.tobytes())


# ============================================================================ the oracle
GEOMETRIES = [  # (N, C, H, W), (F, KH, KW), stride, pad
    ((2, 2, 5, 6), (3, 3, 2), (1, 1), (0, 0)),
    ((1, 3, 7, 5), (2, 3, 3), (2, 2), (1, 1)),
    ((2, 1, 8, 7), (2, 2, 3), (3, 2), (2, 1)),
    ((1, 2, 4, 4), (1, 4, 4), (1, 3), (0, 2)),
    ((3, 1, 6, 9), (2, 1, 1), (2, 3), (0, 0)),
    ((1, 2, 1, 3), (2, 3, 1), (1, 1), (1, 0)),
]


@pytest.mark.parametrize("xs,ws,stride,pad", GEOMETRIES)
def test_oracle_conv_matches_nested_loops(xs, ws, stride, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs)
    W = rng.standard_normal((ws[0], xs[1]) + ws[1:])
    b = rng.standard_normal(ws[0])
    with dlfast.use_backend("numpy"):
        out, _ = conv_fwd(x, W, b, stride, pad)
        np.testing.assert_allclose(out, loop_conv(x, W, b, stride, pad), rtol=1e-12, atol=1e-12)
        dout = rng.standard_normal(out.shape)
        got = conv_bwd(dout, x, W, stride, pad)
        # the NumPy backend's col after a backward is im2col(x): out[n] = W2 @ col[n] + b
        col = np.full(K.conv2d_workspace_shape(xs, W.shape, stride, pad), np.nan)
        K.conv2d_backward(dout, x, W, col, None, None, np.empty_like(W), None, stride, pad)
        f = W.shape[0]
        np.testing.assert_allclose(out.reshape(out.shape[0], f, -1),
                                   W.reshape(f, -1) @ col + b[:, None], rtol=1e-12, atol=1e-12)
    for g, r in zip(got, loop_conv_grads(dout, x, W, stride, pad)):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)


POOLS = [  # (N, C, H, W), kernel, stride, pad
    ((2, 2, 5, 6), (2, 2), (2, 2), (0, 0)),
    ((1, 3, 7, 5), (3, 3), (2, 2), (1, 1)),
    ((2, 1, 8, 7), (3, 2), (1, 2), (1, 1)),
    ((1, 2, 5, 5), (2, 3), (3, 1), (1, 0)),
    ((2, 1, 4, 6), (1, 1), (2, 3), (0, 0)),
    ((1, 1, 3, 3), (3, 3), (1, 1), (1, 1)),
]


@pytest.mark.parametrize("xs,kernel,stride,pad", POOLS)
@pytest.mark.parametrize("include", [True, False])
def test_oracle_pools_match_nested_loops(xs, kernel, stride, pad, include):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(xs)
    x.reshape(-1)[::4] = np.round(x.reshape(-1)[::4])    # some ties
    oshape = xs[:2] + out_hw(xs[2], xs[3], kernel, stride, pad)
    dout = rng.standard_normal(oshape)
    with dlfast.use_backend("numpy"):
        out, arg = np.empty(oshape), np.empty(oshape, np.int64)
        K.maxpool2d_forward(x, out, arg, kernel, stride, pad)
        ref_out, ref_arg = loop_maxpool(x, kernel, stride, pad)
        np.testing.assert_array_equal(out, ref_out)
        np.testing.assert_array_equal(arg, ref_arg)
        dx = np.empty(xs)
        K.maxpool2d_backward(dout, arg, dx, kernel, stride, pad)
        ref = np.zeros(xs)
        for m, ch, i, j in itertools.product(*map(range, oshape)):
            ref[m, ch].flat[ref_arg[m, ch, i, j]] += dout[m, ch, i, j]
        np.testing.assert_allclose(dx, ref, rtol=1e-14, atol=1e-14)
        K.avgpool2d_forward(x, out, kernel, stride, pad, include)
        np.testing.assert_allclose(out, loop_avgpool(x, kernel, stride, pad, include), rtol=1e-14,
                                   atol=1e-14)
        K.avgpool2d_backward(dout, dx, kernel, stride, pad, include)
        np.testing.assert_allclose(dx, loop_avgpool_grad(dout, xs, kernel, stride, pad, include),
                                   rtol=1e-14, atol=1e-14)


# ============================================================================ compiled vs oracle
def test_signatures_match_numpy_backend():
    from dlfast._backends import _conv
    for name in NAMES:
        got = list(inspect.signature(getattr(_conv, name)).parameters)
        assert got == list(inspect.signature(getattr(numpy_kernels, name)).parameters), name


def _setting(draw, pair):
    """The pair as given to the wrapper: an int when both agree (sometimes), a tuple or a list."""
    form = draw(st.sampled_from(["tuple", "list", "int"]))
    if form == "int" and pair[0] == pair[1]:
        return pair[0]
    return list(pair) if form == "list" else tuple(pair)


@st.composite
def conv_geometry(draw):
    n = draw(st.sampled_from([1, 1, 2, 3]))
    c = draw(st.sampled_from([1, 2, 3, 5]))
    f = draw(st.sampled_from([1, 2, 4, 7]))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pad = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * pad[0]), 10))
    w = draw(st.integers(max(1, kw - 2 * pad[1]), 10))
    return (n, c, h, w), (f, c, kh, kw), _setting(draw, stride), _setting(draw, pad)


def conv_data(xs, ws, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    W = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    return rng, x, W, b


def fwd_bound(x, W, b, stride, pad):
    """|W| * |x| summed as the forward sums (float64), and its term count."""
    out, _ = numpy_f64(lambda *a: conv_fwd(*a), np.abs(x), np.abs(W),
                       None if b is None else np.abs(b), stride, pad)
    return out, W.shape[1] * W.shape[2] * W.shape[3] + 1


def bwd_bounds(dout, x, W, stride, pad):
    """(bound, k) of dx, dW, db."""
    dx, dW, db = numpy_f64(lambda *a: conv_bwd(*a), np.abs(dout), np.abs(x), np.abs(W), stride,
                           pad)
    n, f, oh, ow = dout.shape
    return [(dx, f + W.shape[2] * W.shape[3]), (dW, n * oh * ow), (db, n * oh * ow)]


@SETTINGS
@given(geo=conv_geometry(), dtype=DTYPES, kinds=st.tuples(LAYOUTS, LAYOUTS, LAYOUTS),
       bias=st.booleans(), seed=st.integers(0, 99))
def test_conv_forward(sgemm, geo, dtype, kinds, bias, seed):
    xs, ws, stride, pad = geo
    _, x, W, b = conv_data(xs, ws, dtype, seed)
    b = b if bias else None
    bound, k = fwd_bound(x, W, b, stride, pad)
    x, W = layout(x, kinds[0]), layout(W, kinds[1])
    b = layout(b, kinds[2]) if bias else None
    ref, one, two = on_all(lambda: conv_fwd(x, W, b, stride, pad))
    assert same_bits(one[0], two[0]), "1 and 2 threads differ"
    check_close(one[0], ref[0], bound, k)                   # col: a workspace, unspecified


@SETTINGS
@given(geo=conv_geometry(), dtype=DTYPES, kinds=st.tuples(LAYOUTS, LAYOUTS, LAYOUTS),
       want=st.tuples(st.booleans(), st.booleans(), st.booleans()), seed=st.integers(0, 99))
def test_conv_backward(sgemm, geo, dtype, kinds, want, seed):
    xs, ws, stride, pad = geo
    rng, x, W, b = conv_data(xs, ws, dtype, seed)
    dout = rng.standard_normal(K.conv2d_output_shape(xs, W.shape, stride, pad)).astype(dtype)
    bounds = bwd_bounds(dout, x, W, stride, pad)
    x, W, dout = (layout(a, k) for a, k in zip((x, W, dout), kinds))
    ref, one, two = on_all(lambda: conv_bwd(dout, x, W, stride, pad, want))
    for r, a, c, (bound, k) in zip(ref, one, two, bounds):
        assert same_bits(a, c), "1 and 2 threads differ"
        if r is not None:
            check_close(a, r, bound, k)


@st.composite
def pool_geometry(draw):
    n, c = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 2, 3]))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    pad = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    stride = None if draw(st.booleans()) else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h = draw(st.integers(max(1, kh - 2 * pad[0]), 10))
    w = draw(st.integers(max(1, kw - 2 * pad[1]), 10))
    kernel = _setting(draw, (kh, kw))
    return ((n, c, h, w), kernel, stride if stride is None else _setting(draw, stride),
            _setting(draw, pad))


def pool_shape(xs, kernel, stride, pad):
    return K.pool2d_output_shape(xs, kernel, stride, pad)


@SETTINGS
@given(geo=pool_geometry(), dtype=DTYPES, kind=LAYOUTS, dkind=LAYOUTS, ties=st.booleans(),
       seed=st.integers(0, 99))
def test_maxpool(geo, dtype, kind, dkind, ties, seed):
    xs, kernel, stride, pad = geo
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    if ties:
        x = np.round(x).astype(dtype)
    oshape = pool_shape(xs, kernel, stride, pad)
    dout = layout(rng.standard_normal(oshape).astype(dtype), dkind)
    x = layout(x, kind)

    def fn():
        out, arg = np.full(oshape, np.nan, dtype), np.full(oshape, -7, np.int64)
        assert K.maxpool2d_forward(x, out, arg, kernel, stride, pad) is out
        dx = np.full(xs, np.nan, dtype)
        assert K.maxpool2d_backward(dout, layout(arg, kind), dx, kernel, stride, pad) is dx
        return out, arg, dx

    ref, one, two = on_all(fn)        # the same operations in the same order: the same bits
    for r, a, b in zip(ref, one, two):
        assert same_bits(a, r) and same_bits(b, r)


@SETTINGS
@given(geo=pool_geometry(), dtype=DTYPES, kind=LAYOUTS, dkind=LAYOUTS, include=st.booleans(),
       seed=st.integers(0, 99))
def test_avgpool(geo, dtype, kind, dkind, include, seed):
    xs, kernel, stride, pad = geo
    rng = np.random.default_rng(seed)
    x = layout(rng.standard_normal(xs).astype(dtype), kind)
    oshape = pool_shape(xs, kernel, stride, pad)
    dout = layout(rng.standard_normal(oshape).astype(dtype), dkind)

    def fn():
        out, dx = np.full(oshape, np.nan, dtype), np.full(xs, np.nan, dtype)
        assert K.avgpool2d_forward(x, out, kernel, stride, pad, include) is out
        assert K.avgpool2d_backward(dout, dx, kernel, stride, pad, include) is dx
        return out, dx

    ref, one, two = on_all(fn)
    for r, a, b in zip(ref, one, two):
        assert same_bits(a, r) and same_bits(b, r)


# ============================================================================ threads
BIG = [  # shapes where 2 threads really share the work (im2col/GEMM blocks, dW column blocks)
    ((100, 1, 28, 28), (30, 1, 5, 5), 1, 0),     # SimpleConvNet
    ((1, 16, 28, 28), (16, 16, 3, 3), 1, 1),     # batch 1: column blocks of one image
    ((3, 16, 14, 14), (32, 16, 3, 3), (1, 2), (1, 2)),
    ((7, 8, 15, 13), (12, 8, 3, 5), 2, (2, 1)),
]


@pytest.mark.parametrize("xs,ws,stride,pad", BIG)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_threads_bit_identical(sgemm, xs, ws, stride, pad, dtype):
    rng, x, W, b = conv_data(xs, ws, dtype, 3)
    with dlfast.use_backend("numpy"):
        out, _ = conv_fwd(x, W, b, stride, pad)
    dout = rng.standard_normal(out.shape).astype(dtype)
    ref, one, two = on_all(lambda: conv_fwd(x, W, b, stride, pad)[:1]      # col: unspecified
                           + conv_bwd(dout, x, W, stride, pad))
    bounds = [fwd_bound(x, W, b, stride, pad)] + bwd_bounds(dout, x, W, stride, pad)
    for r, a, c, (bound, k) in zip(ref, one, two, bounds):
        assert same_bits(a, c), "1 and 2 threads differ"
        check_close(a, r, bound, k)


DIRECT = [  # stride 1, >= 32 taps, batch >= 2: out and dx by direct convolution (dlfast_dconv.h)
    ((2, 16, 28, 28), (16, 16, 3, 3), 1, 1),      # DeepConvNet's
    ((3, 5, 9, 7), (7, 5, 3, 3), 1, 0),           # odd sizes, no padding, a partial channel tile
    ((2, 4, 6, 11), (13, 4, 3, 5), 1, (2, 1)),    # non-square kernel and padding
    ((4, 7, 5, 5), (6, 7, 4, 4), 1, (3, 3)),      # padding KH - 1: dx's own padding is 0
    ((2, 6, 1, 17), (40, 6, 1, 7), 1, (0, 3)),    # one row; F = 40 (tiles of 6)
    ((2, 8, 4, 4), (6, 8, 2, 2), 1, 1),           # out direct (32 taps), dx (24) by the GEMM
    ((2, 3, 8, 8), (13, 3, 3, 3), 1, 1),          # C = 3: dx by the GEMM
    ((2, 3, 12, 12), (8, 3, 5, 5), 1, 2),         # 5x5: dW's 10 (row, 3 columns) accumulator
    ((3, 2, 9, 10), (7, 2, 7, 7), 1, 3),          # sets in 2 groups; 7x7: 21 in 3
    ((2, 8, 5, 6), (7, 8, 2, 2), 1, (2, 3)),      # padding >= the kernel: rows of W + 2pw
    ((2, 32, 4, 5), (6, 32, 1, 1), 1, 1),         # 1x1 padded: no column shared between rows
]


@pytest.mark.parametrize("xs,ws,stride,pad", DIRECT)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["c", "step", "ro"])
def test_conv_direct_matches_the_oracle(xs, ws, stride, pad, dtype, kind):
    """out and dx by the direct path against the NumPy oracle (within the dot-product error
    bound), dW from the backward's own im2col, the same bits on 1 and 2 threads, on odd shapes,
    kernels, paddings and layouts."""
    rng, x, W, b = conv_data(xs, ws, dtype, 5)
    with dlfast.use_backend("numpy"):
        out, _ = conv_fwd(x, W, b, stride, pad)
    dout = rng.standard_normal(out.shape).astype(dtype)
    bounds = [fwd_bound(x, W, b, stride, pad)] + bwd_bounds(dout, x, W, stride, pad)
    x, W, dout = layout(x, kind), layout(W, kind), layout(dout, kind)
    ref, one, two = on_all(lambda: conv_fwd(x, W, b, stride, pad)[:1]      # col: unspecified
                           + conv_bwd(dout, x, W, stride, pad))
    for r, a, c, (bound, k) in zip(ref, one, two, bounds):
        assert same_bits(a, c), "1 and 2 threads differ"
        check_close(a, r, bound, k)


# The two families of direct kernels (vectors over positions, over output channels) on the
# shapes where each one is chosen and on shapes that fill neither's tiles: 7x7 and 14x14 maps,
# channel counts around the 2-vector blocks (16 floats, 8 doubles), the partial position tiles.
CHANNEL_VECTORS = DIRECT + [
    ((2, 32, 7, 7), (64, 32, 3, 3), 1, 1),        # DeepConvNet's 7x7 layers
    ((3, 16, 14, 14), (32, 16, 3, 3), 1, 1),
    ((2, 17, 5, 6), (33, 17, 3, 3), 1, 1),        # one channel past a block, both ways
    ((2, 9, 3, 4), (15, 9, 3, 3), 1, 2),          # F below a block; dx's C = 9
    ((2, 70, 2, 3), (16, 70, 1, 2), 1, (0, 1)),   # 70 input channels: chunks of them
]


@pytest.fixture(params=[1, 2], ids=["positions", "channels"])
def direct_kernel(request):
    """Every direct convolution on one family: vectors over positions (1) or output channels
    (2); the choice by work restored afterwards."""
    from dlfast._backends import _conv
    prev = _conv._set_direct_kernel(request.param)
    yield request.param
    _conv._set_direct_kernel(prev)


@pytest.mark.parametrize("xs,ws,stride,pad", CHANNEL_VECTORS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_direct_kernel_families(direct_kernel, xs, ws, stride, pad, dtype):
    """Each family against the oracle (within the dot-product bound) with the same bits on 1 and
    2 threads; out and dx also the same bits as the other family's (every output's taps run in
    the same order)."""
    from dlfast._backends import _conv
    rng, x, W, b = conv_data(xs, ws, dtype, 11)
    with dlfast.use_backend("numpy"):
        out, _ = conv_fwd(x, W, b, stride, pad)
    dout = rng.standard_normal(out.shape).astype(dtype)
    x, dout = layout(x, "step"), layout(dout, "ro")
    bounds = [fwd_bound(x, W, b, stride, pad)] + bwd_bounds(dout, x, W, stride, pad)
    run = lambda: conv_fwd(x, W, b, stride, pad)[:1] + conv_bwd(dout, x, W, stride, pad)  # noqa
    ref, one, two = on_all(run)
    for r, a, c, (bound, k) in zip(ref, one, two, bounds):
        assert same_bits(a, c), "1 and 2 threads differ"
        check_close(a, r, bound, k)
    _conv._set_direct_kernel(3 - direct_kernel)
    with dlfast.use_backend("cython"):
        other = run()
    for a, c in zip(one[:2], other[:2]):
        assert same_bits(a, c), "the two families' out or dx differ"


def test_direct_kernel_setting_is_checked():
    from dlfast._backends import _conv
    with pytest.raises(ValueError, match="mode must be 0, 1 or 2"):
        _conv._set_direct_kernel(3)
    with pytest.raises(ValueError, match="n must be >= 0"):
        _conv._set_dw_chunk(-1)


@pytest.mark.parametrize("xs,ws,stride,pad", [
    ((7, 16, 14, 14), (16, 16, 3, 3), 1, 1),      # both families' shapes, 7 images
    ((5, 17, 5, 6), (33, 17, 3, 3), 1, 1),
    ((5, 3, 12, 12), (8, 3, 5, 5), 1, 2),         # 5x5: accumulator sets in 2 groups
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_direct_dw_chunks(direct_kernel, xs, ws, stride, pad, dtype):
    """The direct dW runs over chunks of images, each item's sums waiting between chunks: any
    chunk size (1, 2, 3 images, or all) gives the same bits, on 1 and 2 threads, within the
    oracle's bound."""
    from dlfast._backends import _conv
    rng, x, W, b = conv_data(xs, ws, dtype, 13)
    dout = rng.standard_normal(K.conv2d_output_shape(x.shape, W.shape, stride, pad)).astype(dtype)
    bound, k = bwd_bounds(dout, x, W, stride, pad)[1]
    run = lambda: conv_bwd(dout, x, W, stride, pad)[1:2]           # noqa: E731  dW only
    prev = _conv._set_dw_chunk(xs[0])
    try:
        ref, whole, _ = on_all(run)
        check_close(whole[0], ref[0], bound, k)
        for n in (1, 2, 3):
            _conv._set_dw_chunk(n)
            _, one, two = on_all(run)
            assert same_bits(one[0], whole[0]) and same_bits(two[0], whole[0]), n
    finally:
        _conv._set_dw_chunk(prev)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_direct_non_finite_x(direct_kernel, dtype):
    """A non-finite x on the direct path, on both kernel families: out, dx, dW with the oracle's
    inf/NaN pattern (the position family's dW sees 0 * inf on its extended grid and hands over to
    the GEMM)."""
    rng, x, W, b = conv_data((2, 6, 6, 7), (7, 6, 3, 3), dtype, 9)
    x[0, 1, 2, 3], x[1, 3, 0, 6] = np.inf, np.nan
    dout = rng.standard_normal(K.conv2d_output_shape(x.shape, W.shape, 1, 1)).astype(dtype)
    ref, one, two = on_all(lambda: conv_fwd(x, W, b, 1, 1)[:1] + conv_bwd(dout, x, W, 1, 1),
                           quiet=True)
    for r, a, c in zip(ref, one, two):
        assert same_bits(a, c)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(r))
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)      # inf where the oracle's


# Winograd F(2x2, 3x3) (dlfast_wino.h): out and dx of 3x3 stride-1 convolutions.
WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)
WINO_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)


def wino_bound(x, W, b, pad):
    """The bound S of Winograd's rounding error, out = conv(x, W) + b at stride 1 (float64):
    S = |A^T| (sum_c |G| |g| |G^T| (.) |B^T| |d| |B|) |A| + |b| per 2x2 tile of outputs, d the
    tile's 4x4 inputs; and its term count (C sums, 2 + 2 transform additions each side)."""
    n, c, h, w = x.shape
    ph, pw = (pad, pad) if np.isscalar(pad) else pad
    oh, ow = h + 2 * ph - 2, w + 2 * pw - 2
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    xp = np.zeros((n, c, 2 * th + 2, 2 * tw + 2))
    xp[:, :, ph:ph + h, pw:pw + w] = np.abs(x)
    d = np.lib.stride_tricks.sliding_window_view(xp, (4, 4), axis=(2, 3))[:, :, ::2, ::2]
    bt, g, at = np.abs(WINO_BT), np.abs(WINO_G), np.abs(WINO_AT)
    v = np.einsum("ia,nctwab,jb->nctwij", bt, d, bt)
    u = np.einsum("ia,fcab,jb->fcij", g, np.abs(W.astype(np.float64)), g)
    y = np.einsum("ia,nftwab,jb->nftwij", at, np.einsum("nctwab,fcab->nftwab", v, u), at)
    y = y.transpose(0, 1, 2, 4, 3, 5).reshape(n, W.shape[0], 2 * th, 2 * tw)[:, :, :oh, :ow]
    if b is not None:
        y = y + np.abs(b.astype(np.float64))[:, None, None]
    return y, c + 8


WINO = [  # (N, C, H, W), F, pad
    ((2, 16, 8, 8), 16, 1),           # one vector block of output channels (float32: 2 of float64)
    ((3, 32, 8, 8), 64, 1),           # DeepConvNet's 8x8 layers: 16 tiles, 6 + 6 + 4
    ((2, 9, 7, 7), 15, 1),            # odd map: a half tile at each edge; channels past a block
    ((2, 17, 5, 6), 33, 0),           # no padding, odd rows, 3 columns of tiles
    ((2, 8, 14, 14), 8, 2),           # padding 2 (dx's own padding 0), 49 tiles
    ((2, 6, 3, 4), 7, 3),             # padding 3: out only (dx's would be -1)
    ((2, 6, 29, 1), 6, 1),            # one column: tiles of one output column
    ((2, 8, 14, 14), 9, 1),           # 49 tiles: a last register block of 2 (one of them zero)
    ((2, 64, 28, 28), 64, 1),         # blocks of tile rows (V and M beyond half an L2)
    ((2, 7, 6, 9), 8, (0, 2)),        # padding (0, 2): dx's (2, 0)
]


@pytest.fixture
def winograd():
    """Every 3x3 stride-1 out and dx by Winograd; the choice by work restored afterwards."""
    from dlfast._backends import _conv
    prev = _conv._set_winograd(2)
    yield
    _conv._set_winograd(prev)


@pytest.mark.parametrize("xs,f,pad", WINO)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["c", "step", "ro"])
def test_conv_winograd(winograd, xs, f, pad, dtype, kind):
    """Winograd's out and dx against the oracle within its own bound (wino_bound), the same bits
    on 1 and 2 threads, from C-ordered, strided and read-only inputs; dW (direct or GEMM) within
    the dot-product bound."""
    rng, x, W, b = conv_data(xs, (f, xs[1], 3, 3), dtype, 17)
    with dlfast.use_backend("numpy"):
        out, _ = conv_fwd(x, W, b, 1, pad)
    dout = rng.standard_normal(out.shape).astype(dtype)
    flipped = W.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
    bounds = [wino_bound(x, W, b, pad)]
    pads = (pad, pad) if np.isscalar(pad) else pad
    bounds += ([wino_bound(dout, flipped, None, tuple(2 - p for p in pads))] if max(pads) <= 2
               else [bwd_bounds(dout, x, W, 1, pad)[0]])
    bounds += bwd_bounds(dout, x, W, 1, pad)[1:]
    xi, di, wi = layout(x, kind), layout(dout, kind), layout(W, kind)
    run = lambda: conv_fwd(xi, wi, b, 1, pad)[:1] + conv_bwd(di, xi, wi, 1, pad)  # noqa: E731
    ref, one, two = on_all(run)
    for r, a, c, (bound, k) in zip(ref, one, two, bounds):
        assert same_bits(a, c), "1 and 2 threads differ"
        check_close(a, r, bound, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_winograd_non_finite(winograd, dtype):
    """inf and NaN in x, in dout, or a finite x whose transform overflows: the images whose
    Winograd output is not finite are redone directly, so out and dx have the oracle's inf/NaN
    pattern; the other images are unchanged."""
    rng, x, W, b = conv_data((3, 8, 6, 7), (9, 8, 3, 3), dtype, 5)
    x[0, 1, 2, 3], x[1, 3, 0, 6] = np.inf, np.nan
    big = np.finfo(dtype).max * dtype(0.6)                # x[2]: the sums fit, but d0 - d2
    x[2, 0, 1, 1], x[2, 0, 1, 3] = big, -big              # of a tile's row overflows
    W /= 4
    dout = rng.standard_normal(K.conv2d_output_shape(x.shape, W.shape, 1, 1)).astype(dtype)
    dout[1, 2, 3, 3] = -np.inf
    ref, one, two = on_all(lambda: conv_fwd(x, W, None, 1, 1)[:1]
                           + conv_bwd(dout, x, W, 1, 1, want=(True, False, False))[:1],
                           quiet=True)
    for r, a, c in zip(ref, one, two):
        assert same_bits(a, c)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(r))
        np.testing.assert_array_equal(np.isinf(a), np.isinf(r))
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)


def test_conv_winograd_choice():
    """By work (at efficiency 1.2: the tuning measures it per machine): Winograd on DeepConvNet's
    64-channel 8x8 layer, never for 1 input channel or a kernel other than 3x3; never while a
    direct family is forced; the settings are checked."""
    from dlfast._backends import _conv, cython_kernels
    _conv._set_winograd_efficiency(1.2, 1.2)
    prev = _conv._set_direct_kernel(1)
    try:
        assert not _conv._wino_chosen(64, 64, 8, 8, 3, 3)
        _conv._set_direct_kernel(0)
        for double in (True, False):
            assert _conv._wino_chosen(64, 64, 8, 8, 3, 3, 1, double)
            assert not _conv._wino_chosen(16, 1, 28, 28, 3, 3, 1, double)
            assert not _conv._wino_chosen(64, 64, 8, 8, 5, 5, 2, double)
    finally:
        _conv._set_direct_kernel(prev)
        cython_kernels._apply(cython_kernels.TUNING)
    with pytest.raises(ValueError, match="no convolution"):
        _conv._wino_counted(8, 8, 1, 1, 0)
    with pytest.raises(ValueError, match="mode must be 0, 1 or 2"):
        _conv._set_winograd(3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pools_threads_bit_identical(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 30, 24, 24)).astype(dtype)
    dout = rng.standard_normal((50, 30, 12, 12)).astype(dtype)

    def fn():
        mo, arg, mdx = np.empty(dout.shape, dtype), np.empty(dout.shape, np.int64), \
            np.empty(x.shape, dtype)
        K.maxpool2d_forward(x, mo, arg, 2)
        K.maxpool2d_backward(dout, arg, mdx, 2)
        ao, adx = np.empty(dout.shape, dtype), np.empty(x.shape, dtype)
        K.avgpool2d_forward(x, ao, (3, 3), 2, 1, False)
        K.avgpool2d_backward(dout, adx, (3, 3), 2, 1, False)
        return mo, arg, mdx, ao, adx

    ref, one, two = on_all(fn)
    for r, a, b in zip(ref, one, two):
        assert same_bits(a, r) and same_bits(b, r)


# ============================================================================ max-pool rules
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["c", "step", "ro"])
@pytest.mark.parametrize("xs", [(3, 5, 7, 9), (2, 40, 24, 24), (1, 1, 2, 2)])
def test_maxpool_2x2_stride_2_matches_the_oracle(dtype, kind, xs):
    """The compiled 2x2, stride-2, unpadded window has its own loop: same maxima, first-maximum
    indices and NaN rule as the oracle, bit for bit, on ties, NaN, -inf and odd sizes (the last
    row/column dropped)."""
    rng = np.random.default_rng(xs[1])
    x = np.round(rng.standard_normal(xs) * 2).astype(dtype)        # many ties
    flat = x.reshape(-1)
    flat[rng.integers(0, flat.size, flat.size // 7)] = np.nan
    flat[rng.integers(0, flat.size, flat.size // 11)] = -np.inf
    x = layout(x, kind)
    oshape = K.pool2d_output_shape(xs, 2, 2, 0)
    dout = rng.standard_normal(oshape).astype(dtype)
    dout.reshape(-1)[::13] = -0.0                          # 0 + -0.0 is +0.0

    def fn():
        out, arg = np.full(oshape, 7, dtype), np.full(oshape, -7, np.int64)
        K.maxpool2d_forward(x, out, arg, (2, 2), (2, 2), (0, 0))
        dx = np.full(xs, np.nan, dtype)
        K.maxpool2d_backward(dout, arg, dx, (2, 2), (2, 2), (0, 0))
        # indices outside their own window (valid in the plane): the general backward
        moved = np.roll(arg, 1, axis=-1)
        dx2 = np.full(xs, np.nan, dtype)
        K.maxpool2d_backward(dout, moved, dx2, (2, 2), (2, 2), (0, 0))
        return out, arg, dx, dx2

    ref, one, two = on_all(fn)
    for r, a, b in zip(ref, one, two):
        assert same_bits(a, r) and same_bits(b, r)


@pytest.mark.parametrize("name", ["numpy", "cython"])
def test_maxpool_ties_nan_and_padding(name):
    f = np.float64
    x = np.array([[[[1, 3, 3, 0],
                    [3, 2, 1, 5],
                    [np.nan, 4, 2, np.nan],
                    [9, np.nan, 8, 8]]]], f)
    with dlfast.use_backend(name):
        out, arg = np.empty((1, 1, 2, 2)), np.empty((1, 1, 2, 2), np.int64)
        K.maxpool2d_forward(x, out, arg, 2)
        # ties: the first 3 in row-major order (0, 1) wins over (1, 0); a NaN wins, the first one
        np.testing.assert_array_equal(out[0, 0], [[3, 5], [np.nan, np.nan]])
        np.testing.assert_array_equal(arg[0, 0], [[1, 7], [8, 11]])
        dx = np.empty_like(x)
        K.maxpool2d_backward(np.ones((1, 1, 2, 2)), arg, dx, 2)
        assert dx.sum() == 4 and dx[0, 0, 0, 1] == dx[0, 0, 1, 3] == 1
        # padded cells never win: all-negative windows over the padding; all -inf (ties of
        # -inf: the first cell inside x, never a padded one)
        y = np.array([[[[-5.0, -2.0], [-3.0, -4.0]]]])
        K.maxpool2d_forward(y, out, arg, 3, 1, 1)
        np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), -2.0))
        np.testing.assert_array_equal(arg, np.ones((1, 1, 2, 2), np.int64))
        K.maxpool2d_forward(np.full((1, 1, 2, 2), -np.inf), out, arg, 3, 1, 1)
        np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), -np.inf))
        np.testing.assert_array_equal(arg, np.zeros((1, 1, 2, 2), np.int64))
        # overlapping windows add their gradients into a shared winner
        o, a = np.empty((1, 1, 1, 2)), np.empty((1, 1, 1, 2), np.int64)
        K.maxpool2d_forward(np.array([[[[0.0, 9.0, 0.0]]]]), o, a, (1, 2), 1)
        np.testing.assert_array_equal(a, [[[[1, 1]]]])
        dx = np.empty((1, 1, 1, 3))
        K.maxpool2d_backward(np.array([[[[2.0, 3.0]]]]), a, dx, (1, 2), 1)
        np.testing.assert_array_equal(dx[0, 0, 0], [0, 5, 0])


@pytest.mark.parametrize("name", ["numpy", "cython"])
def test_avgpool_count_include_pad(name):
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    with dlfast.use_backend(name):
        out = np.empty((1, 1, 2, 2))
        K.avgpool2d_forward(x, out, 2, 2, 1)                 # windows of 1, 2, 2, 4 cells
        np.testing.assert_array_equal(out[0, 0], [[1 / 4, (2 + 3) / 4], [(4 + 7) / 4, 28 / 4]])
        K.avgpool2d_forward(x, out, 2, 2, 1, count_include_pad=False)
        np.testing.assert_array_equal(out[0, 0], [[1, 2.5], [5.5, 7]])
        dx = np.empty_like(x)
        K.avgpool2d_backward(np.ones((1, 1, 2, 2)), dx, 2, 2, 1, count_include_pad=False)
        np.testing.assert_array_equal(dx[0, 0], [[1, 0.5, 0.5], [0.5, 0.25, 0.25],
                                                 [0.5, 0.25, 0.25]])


# ============================================================================ gradient checks
def numeric_grad(f, a, eps=1e-6):
    """Central differences of the scalar f() with respect to every element of a (in place)."""
    g = np.zeros(a.shape)
    for i in np.ndindex(a.shape):
        v = a[i]
        a[i] = v + eps
        hi = f()
        a[i] = v - eps
        lo = f()
        a[i] = v
        g[i] = (hi - lo) / (2 * eps)
    return g


@pytest.mark.parametrize("name", ["numpy", "cython"])
@pytest.mark.parametrize("xs,ws,stride,pad", GEOMETRIES[:4])
def test_conv_gradients_finite_differences(name, xs, ws, stride, pad):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(xs)
    W = rng.standard_normal((ws[0], xs[1]) + ws[1:])
    b = rng.standard_normal(ws[0])
    r = rng.standard_normal(K.conv2d_output_shape(xs, W.shape, stride, pad))
    with dlfast.use_backend(name):
        def loss():
            return float(np.sum(conv_fwd(x, W, b, stride, pad)[0] * r))

        _, col = conv_fwd(x, W, b, stride, pad)
        dx, dW, db = conv_bwd(r, x, W, stride, pad)
        for got, a in ((dx, x), (dW, W), (db, b)):
            np.testing.assert_allclose(got, numeric_grad(loss, a), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["numpy", "cython"])
@pytest.mark.parametrize("xs,kernel,stride,pad", POOLS)
def test_pool_gradients_finite_differences(name, xs, kernel, stride, pad):
    rng = np.random.default_rng(6)
    x = rng.permutation(np.prod(xs)).reshape(xs) * 0.01 + rng.uniform(0, 1e-3, xs)  # no ties
    oshape = pool_shape(xs, kernel, stride, pad)
    r = rng.standard_normal(oshape)
    with dlfast.use_backend(name):
        out, arg, dx = np.empty(oshape), np.empty(oshape, np.int64), np.empty(xs)

        def max_loss():
            K.maxpool2d_forward(x, out, arg, kernel, stride, pad)
            return float(np.sum(out * r))

        max_loss()
        K.maxpool2d_backward(r, arg, dx, kernel, stride, pad)
        np.testing.assert_allclose(dx, numeric_grad(max_loss, x), rtol=1e-6, atol=1e-8)
        for include in (True, False):
            def avg_loss():
                K.avgpool2d_forward(x, out, kernel, stride, pad, include)
                return float(np.sum(out * r))

            K.avgpool2d_backward(r, dx, kernel, stride, pad, include)
            np.testing.assert_allclose(dx, numeric_grad(avg_loss, x), rtol=1e-6, atol=1e-8)


# ============================================================================ edge shapes
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs,f", [((0, 2, 5, 5), 3), ((2, 0, 5, 5), 3), ((2, 2, 5, 5), 0),
                                  ((2, 3, 0, 4), 2), ((1, 1, 1, 1), 1)])
def test_conv_empty_and_unit_dimensions(dtype, xs, f):
    """Empty batch, channels or filters; a zero-height input that the padding alone covers (its
    output is the bias); 1x1 everything."""
    pad = 1 if xs[2] == 0 else 0
    kh = 2 if xs[2] == 0 else 1
    rng, x, W, b = conv_data(xs, (f, xs[1], kh, 1), dtype, 7)
    with dlfast.use_backend("numpy"):
        out, _ = conv_fwd(x, W, b, 1, pad)
    dout = rng.standard_normal(out.shape).astype(dtype)
    ref, one, two = on_all(lambda: conv_fwd(x, W, b, 1, pad)[:1] + conv_bwd(dout, x, W, 1, pad))
    for r, a, c in zip(ref, one, two):
        assert same_bits(a, c)
        np.testing.assert_allclose(a, r, rtol=1e-6)
        assert not np.isnan(a).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pools_empty_batch_and_channels(dtype):
    for xs in ((0, 3, 4, 4), (2, 0, 4, 4)):
        x = np.ones(xs, dtype)
        oshape = pool_shape(xs, 2, None, 0)

        def fn():
            out, arg, dx = np.empty(oshape, dtype), np.empty(oshape, np.int64), np.empty(xs, dtype)
            K.maxpool2d_forward(x, out, arg, 2)
            K.maxpool2d_backward(out, arg, dx, 2)
            K.avgpool2d_forward(x, out, 2)
            K.avgpool2d_backward(out, dx, 2)
            return out, dx

        for got in on_all(fn):
            assert got[0].shape == oshape and got[1].shape == xs


def test_read_only_inputs_untouched_and_dtype_kept():
    rng, x, W, b = conv_data((2, 3, 6, 6), (4, 3, 3, 3), np.float32, 8)
    for a in (x, W, b):
        a.flags.writeable = False
    with dlfast.use_backend("cython"):
        out, col = conv_fwd(x, W, b, 1, 1)
        dout = np.ones_like(out)
        dout.flags.writeable = False
        copies = [a.copy() for a in (x, W, b, dout)]
        got = conv_bwd(dout, x, W, 1, 1)
    for a, c in zip((x, W, b, dout), copies):
        np.testing.assert_array_equal(a, c)
    assert {a.dtype for a in (out, col, *got)} == {np.dtype(np.float32)}


def test_shape_helpers():
    assert K.conv2d_output_shape((100, 1, 28, 28), (30, 1, 5, 5)) == (100, 30, 24, 24)
    assert K.conv2d_workspace_shape((100, 1, 28, 28), (30, 1, 5, 5)) == (100, 25, 576)
    assert K.conv2d_output_shape((2, 3, 7, 9), (4, 3, 3, 2), (2, 3), (1, 0)) == (2, 4, 4, 3)
    assert K.conv2d_workspace_shape((2, 3, 7, 9), (4, 3, 3, 2), [2, 3], 1) == (2, 18, 16)
    assert K.pool2d_output_shape((5, 30, 24, 24), 2) == (5, 30, 12, 12)
    assert K.pool2d_output_shape((1, 1, 7, 7), 3, 2, 1) == (1, 1, 4, 4)
    assert K.pool2d_output_shape((1, 1, 7, 5), (2, 3), None, (1, 1)) == (1, 1, 4, 2)
    assert "conv2d_workspace_shape" in K.__all__ and "conv2d_workspace_shape" not in K.KERNELS
    with pytest.raises(ValueError, match="larger than the padded input"):
        K.conv2d_output_shape((1, 1, 3, 3), (1, 1, 4, 4))
    with pytest.raises(ValueError, match="W must have shape"):
        K.conv2d_workspace_shape((1, 2, 3, 3), (1, 3, 2, 2))
    with pytest.raises(TypeError, match="x_shape"):
        K.pool2d_output_shape("abcd", 2)
    with pytest.raises(ValueError, match="x_shape"):
        K.pool2d_output_shape((1, 2, 3), 2)


# ============================================================================ bad input
def _conv_arrays(dt=np.float32):
    rng, x, W, b = conv_data((2, 3, 6, 5), (4, 3, 3, 2), dt, 9)
    out = np.empty(K.conv2d_output_shape(x.shape, W.shape), dt)
    col = np.empty(K.conv2d_workspace_shape(x.shape, W.shape), dt)
    return x, W, b, out, col


def test_conv_forward_rejects_bad_input(backend):
    x, W, b, out, col = _conv_arrays()
    bad = [
        (dict(x=x[0]), ValueError, "x must be 4-D"),
        (dict(x=x.astype(np.int32)), TypeError, "x must have dtype float32 or float64, got int32"),
        (dict(W=W.astype(np.float64)), TypeError, "W has dtype float64 .*mixed dtypes"),
        (dict(W=W[:, :2]), ValueError, r"W must have shape \(F, 3, KH, KW\)"),
        (dict(W=W[:, :, :0]), ValueError, "W must have a kernel of at least 1x1"),
        (dict(W=np.ones((4, 3, 7, 2), np.float32)), ValueError,
         r"kernel \(7, 2\) is larger than the padded input \(6, 5\)"),
        (dict(b=b[:3]), ValueError, r"b must have shape \(4,\)"),
        (dict(b=b.astype(np.float64)), TypeError, "b has dtype float64"),
        (dict(out=out[:1]), ValueError, r"out must have shape \(2, 4, 4, 4\)"),
        (dict(out=out.astype(np.float64)), TypeError, "out must have dtype float32"),
        (dict(out=None), TypeError, "out is required"),
        (dict(col=col[:, :5]), ValueError, r"col must have shape \(2, 18, 16\)"),
        (dict(col=np.empty((2, 16, 18), np.float32).transpose(0, 2, 1)), ValueError,
         "col must be C-contiguous"),
        (dict(stride=0), ValueError, "stride must be positive"),
        (dict(stride=(1, -2)), ValueError, "stride must be positive"),
        (dict(stride=1.5), TypeError, "stride must be an int or a pair of ints"),
        (dict(stride=True), TypeError, "stride must be an int or a pair of ints"),
        (dict(stride=(1, 2, 3)), ValueError, r"stride must be an int or a pair \(h, w\)"),
        (dict(pad=-1), ValueError, "pad must be non-negative"),
        (dict(pad="1"), TypeError, "pad must be an int or a pair of ints"),
        (dict(pad=2 ** 40), ValueError, "pad must be non-negative"),
    ]
    for change, exc, msg in bad:
        args = dict(x=x, W=W, b=b, out=out, col=col, stride=1, pad=0)
        args.update(change)
        with pytest.raises(exc, match=msg):
            K.conv2d_forward(**args)
    ro = out.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        K.conv2d_forward(x, W, b, ro, col)
    # outputs aliasing inputs
    xo = np.zeros(2 * 4 * 4 * 4 + 32, np.float32)
    with pytest.raises(ValueError, match="output out overlaps x"):
        K.conv2d_forward(xo[:96].reshape(2, 3, 4, 4), np.ones((4, 3, 1, 1), np.float32), None,
                         xo[32:].reshape(2, 4, 4, 4), np.empty((2, 3, 16), np.float32))
    buf = np.zeros(col.size + out.size, np.float32)
    with pytest.raises(ValueError, match="output out overlaps col"):
        K.conv2d_forward(x, W, b, buf[:out.size].reshape(out.shape),
                         buf[out.size // 2:out.size // 2 + col.size].reshape(col.shape))
    bigw = np.zeros(W.size + col.size, np.float32)
    Wv = bigw[:W.size].reshape(W.shape)
    Wv[...] = W
    with pytest.raises(ValueError, match="output col overlaps W"):
        K.conv2d_forward(x, Wv, b, out, bigw[W.size - 1:W.size - 1 + col.size].reshape(col.shape))


def test_conv_backward_rejects_bad_input(backend):
    x, W, b, out, col = _conv_arrays()
    K.conv2d_forward(x, W, b, out, col)
    dout = np.ones_like(out)
    dcol, dx, dW, db = np.empty_like(col), np.empty_like(x), np.empty_like(W), np.empty_like(b)
    bad = [
        (dict(dout=dout[:, :2]), ValueError, r"dout must have shape \(2, 4, 4, 4\)"),
        (dict(dout=dout.astype(np.float64)), TypeError, "dout has dtype float64"),
        (dict(col=None), TypeError, "col is required"),
        (dict(col=col[:1]), ValueError, "col must have shape"),
        (dict(dcol=None), TypeError, "dcol is required"),
        (dict(dx=dx[:1]), ValueError, r"dx must have shape \(2, 3, 6, 5\)"),
        (dict(dW=dW.astype(np.float64)), TypeError, "dW must have dtype float32"),
        (dict(db=np.empty(5, np.float32)), ValueError, r"db must have shape \(4,\)"),
        (dict(dx=x), ValueError, "output dx overlaps x"),
        (dict(dcol=col), ValueError, "dcol overlaps col|col overlaps dcol"),
        (dict(dW=W), ValueError, "output dW overlaps W"),
        (dict(x=x[:, :, :2]), ValueError, "larger than the padded input"),
        (dict(pad=(0, -1)), ValueError, "pad must be non-negative"),
    ]
    for change, exc, msg in bad:
        args = dict(dout=dout, x=x, W=W, col=col, dcol=dcol, dx=dx, dW=dW, db=db, stride=1, pad=0)
        args.update(change)
        with pytest.raises(exc, match=msg):
            K.conv2d_backward(**args)
    ro = db.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="db must be writeable"):
        K.conv2d_backward(dout, x, W, col, dcol, dx, dW, ro)
    # skipped outputs need no workspace
    K.conv2d_backward(dout, x, W, None, None, None, None, db)
    np.testing.assert_allclose(db, dout.sum(axis=(0, 2, 3)))


def test_pools_reject_bad_input(backend):
    x = np.ones((2, 3, 6, 5), np.float32)
    out, arg = np.empty((2, 3, 3, 2), np.float32), np.zeros((2, 3, 3, 2), np.int64)
    dx = np.empty_like(x)
    fwd = [
        (dict(x=x[0]), ValueError, "x must be 4-D"),
        (dict(x=x.astype(np.float16)), TypeError, "x must have dtype float32 or float64"),
        (dict(kernel=0), ValueError, "kernel must be positive"),
        (dict(kernel=(2, 2.0)), TypeError, "kernel must be an int or a pair of ints"),
        (dict(kernel=7), ValueError, r"window \(7, 7\) is larger than the padded input"),
        (dict(stride=0), ValueError, "stride must be positive"),
        (dict(pad=(2, 0)), ValueError, r"pad must be at most half the window"),
        (dict(pad=-1), ValueError, "pad must be non-negative"),
        (dict(out=out[:, :2]), ValueError, r"out must have shape \(2, 3, 3, 2\)"),
        (dict(out=out.astype(np.float64)), TypeError, "out must have dtype float32"),
        (dict(x=np.ones((2, 3, 0, 5), np.float32), kernel=1, out=np.empty((2, 3, 0, 5),
                                                                         np.float32)),
         ValueError, "H >= 1 and W >= 1"),
    ]
    for change, exc, msg in fwd:
        args = dict(x=x, out=out, kernel=2, stride=None, pad=0)
        args.update(change)
        with pytest.raises(exc, match=msg):
            K.avgpool2d_forward(**args)
        with pytest.raises(exc, match=msg):
            K.maxpool2d_forward(argmax=arg, **args)
    with pytest.raises(TypeError, match="argmax must have dtype int64"):
        K.maxpool2d_forward(x, out, arg.astype(np.int32), 2)
    with pytest.raises(ValueError, match="output out overlaps x"):
        K.avgpool2d_forward(x, x, 1)
    with pytest.raises(ValueError, match="output dx overlaps dout"):
        K.avgpool2d_backward(x, x, 1)
    bwd = [
        (dict(dout=out[:, :, :2]), ValueError, r"dout must have shape \(2, 3, 3, 2\)"),
        (dict(dout=out.astype(np.float64)), TypeError, "dx must have dtype float64"),
        (dict(dx=dx[0]), ValueError, "dx must be 4-D"),
        (dict(dx=[1.0]), TypeError, "dx must be a numpy.ndarray"),
        (dict(dx=np.empty((5, 6, 3, 2), np.float32).transpose(3, 2, 1, 0)), ValueError,
         "dx must be C-contiguous"),
    ]
    for change, exc, msg in bwd:
        args = dict(dout=out, dx=dx, kernel=2, stride=None, pad=0)
        args.update(change)
        with pytest.raises(exc, match=msg):
            K.avgpool2d_backward(**args)
        with pytest.raises(exc, match=msg):
            K.maxpool2d_backward(argmax=arg, **args)
    ro = dx.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="dx must be writeable"):
        K.maxpool2d_backward(out, arg, ro, 2)
    for bad_arg, exc, msg in ((arg.astype(np.int32), TypeError, "argmax must be an int64"),
                              (arg[:1], ValueError, "argmax must have shape"),
                              (arg + 30, ValueError, r"argmax values must lie in \[0, 30\)"),
                              (arg - 1, ValueError, r"argmax values must lie in \[0, 30\)")):
        with pytest.raises(exc, match=msg):
            K.maxpool2d_backward(out, bad_arg, dx, 2)


def test_raw_conv_module_rejects_bad_arrays():
    """The compiled entry points check every shape, dtype and setting themselves (what the
    wrappers pass them is trusted by no one): a bad call raises, never reads or writes out of
    bounds."""
    from dlfast._backends import _conv as C
    f = np.float32
    x, W, b, out, col = _conv_arrays()
    C.conv2d_forward(x, W, b, out, col, (1, 1), (0, 0))
    dout = np.ones_like(out)
    dcol, dx, dW, db = np.empty_like(col), np.empty_like(x), np.empty_like(W), np.empty_like(b)
    C.conv2d_backward(dout, x, W, col, dcol, dx, dW, db, (1, 1), (0, 0))
    s, p = (1, 1), (0, 0)
    bad_fwd = [
        ((x, W, b, out, col, (0, 1), p), ValueError, "stride"),
        ((x, W, b, out, col, s, (-1, 0)), ValueError, "pad"),
        ((x, W, b, out, col, s, (9, 0)), ValueError, "out"),
        ((x, W, b, out, col[:, :3], s, p), (ValueError, BufferError), "col"),
        ((x, W, b, out[:1], col, s, p), ValueError, "out"),
        ((x, W, b[:2], out, col, s, p), ValueError, "b"),
        ((x, W[:, :1], b, out, col, s, p), ValueError, "W"),
        ((x, np.ones((4, 3, 9, 9), f), b, out, col, s, p), ValueError, "larger"),
        ((x.astype(np.float64), W, b, out, col, s, p), TypeError, "W"),
        ((None, W, b, out, col, s, p), TypeError, "x"),
        ((np.asfortranarray(x), W, b, out, col, s, p), (ValueError, BufferError), "x"),
        ((x, W, b, out, np.empty(col.shape, f)[::-1], s, p), (ValueError, BufferError), "col"),
        ((x, W, b, out, col, (1,), p), ValueError, None),
    ]
    for args, exc, match in bad_fwd:
        with pytest.raises(exc, match=match):
            C.conv2d_forward(*args)
    bad_bwd = [
        ((dout[:1], x, W, col, dcol, dx, dW, db, s, p), ValueError, "dout"),
        ((dout, x, W, col, None, dx, dW, db, s, p), ValueError, "dcol"),
        ((dout, x, W, None, dcol, dx, dW, db, s, p), ValueError, "col"),
        ((dout, x, W, col, dcol[:1], dx, dW, db, s, p), ValueError, "dcol"),
        ((dout, x, W, col, dcol, dx[:, :1], dW, db, s, p), ValueError, "dx"),
        ((dout, x, W, col, dcol, dx, dW[:1], db, s, p), ValueError, "dW"),
        ((dout, x, W, col, dcol, dx, dW, db[:1], s, p), ValueError, "db"),
    ]
    for args, exc, match in bad_bwd:
        with pytest.raises(exc, match=match):
            C.conv2d_backward(*args)
    po, arg = np.empty((2, 3, 3, 2), f), np.zeros((2, 3, 3, 2), np.int64)
    C.maxpool2d_forward(x, po, arg, (2, 2), (2, 2), (0, 0))
    bad_pool = [
        (lambda: C.maxpool2d_forward(x, po, arg, (2, 2), (2, 2), (2, 0)), ValueError, "pad"),
        (lambda: C.maxpool2d_forward(x, po, arg, (0, 2), (2, 2), (0, 0)), ValueError, "window"),
        (lambda: C.maxpool2d_forward(x, po, arg[:1], (2, 2), (2, 2), (0, 0)), ValueError,
         "argmax"),
        (lambda: C.maxpool2d_forward(x, po, arg.astype(np.int32), (2, 2), (2, 2), (0, 0)),
         TypeError, "argmax"),
        (lambda: C.maxpool2d_backward(po, arg + 100, dx, (2, 2), (2, 2), (0, 0)), ValueError,
         "argmax values"),
        (lambda: C.maxpool2d_backward(po, arg * 0 - 1, dx, (2, 2), (2, 2), (0, 0)), ValueError,
         "argmax values"),
        (lambda: C.avgpool2d_forward(x, po[:, :1], (2, 2), (2, 2), (0, 0), True), ValueError,
         "out"),
        (lambda: C.avgpool2d_backward(po[:1], dx, (2, 2), (2, 2), (0, 0), True), ValueError,
         "dout"),
        (lambda: C.avgpool2d_forward(x, po, (2, 2), (0, 2), (0, 0), True), ValueError, "stride"),
    ]
    for call, exc, match in bad_pool:
        with pytest.raises(exc, match=match):
            call()
