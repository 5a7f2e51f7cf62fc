"""Fuzzing every kernel wrapper of ``dlfast.kernels`` (issue 6).

Each example builds one call: random shapes (0 and 1 included; now and then one past the parallel
threshold), float32/float64, inputs in a random memory layout (C, Fortran, strided, negative
strides, read-only, zero-stride broadcast), values normal / huge / tiny / with NaN / with +-inf,
and one mutation at most (an input of a foreign dtype: int, bool, float16, complex, object; an
output overlapping an input; a NaN scalar). The call runs on both backends with identical
arguments. Oracle:

* both backends raise the same TypeError/ValueError, or both return results that agree
  (NaN/inf at the same places, finite values within a float tolerance);
* a foreign dtype or an overlapping output is always an exception (never a silent cast or alias);
* inputs are unchanged; outputs and in-place arrays live inside a sentinel-filled buffer whose
  guard regions must be untouched afterwards.

Examples per kernel: ``DLFAST_FUZZ_EXAMPLES`` (default 40, the CI budget). Counts per kernel go
to the session ``fuzz_counter`` (``fuzz_counts.json`` in pytest's base temp dir).
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dlfast
from dlfast import kernels as K
from fuzz_helpers import EXAMPLES, hang_guard  # noqa: F401 (autouse fixture)

pytestmark = [pytest.mark.skipif("cython" not in dlfast.available_backends(),
                                 reason="compiled backend not built"),
              # NaN/inf inputs give NaN/inf outputs (the NumPy oracle warns about that)
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ACTS = K.ACTIVATIONS
BAD_DTYPES = (np.int32, np.int64, np.bool_, np.float16, np.complex64, np.complex128, object)
LAYOUTS = ("C", "F", "strided", "neg", "readonly", "broadcast")
VALUES = ("normal", "normal", "huge", "tiny", "nan", "inf", "zeros")
GUARD = 7
BN_SPATIAL = st.sampled_from([(), (), (3, 2), (1, 4), (2, 1, 3)])   # batch norm: x (N, C, *S)


# ============================================================================ case builders
class Case:
    """One kernel call: arrays by keyword with a role ('in', 'out', 'io', 'work': output not
    compared, 'int': integer input not value-fuzzed) and scalar keywords."""

    def __init__(self, name):
        self.name, self.arrays, self.roles, self.scalars, self.nonneg = name, {}, {}, {}, set()

    def add(self, role, name, arr):
        self.arrays[name], self.roles[name] = arr, role
        return arr


def _rand(rng, shape, dt):
    return rng.standard_normal(shape).astype(dt)


def _sizes(draw, min_n=0, min_f=0):
    if draw(st.integers(0, 9)) == 0:                  # one past the parallel threshold
        return draw(st.integers(max(min_n, 170), 200)), draw(st.integers(max(min_f, 170), 200))
    return draw(st.integers(min_n, 5)), draw(st.integers(min_f, 5))


def _act(draw):
    a = draw(st.sampled_from(ACTS))
    alpha = {"leaky_relu": draw(st.sampled_from([0.0, 0.01, 0.3])),
             "elu": draw(st.sampled_from([0.5, 1.0, 2.0]))}.get(a, 0.0)
    return a, alpha


def _weights(draw, rng, n):
    """Sample weights (float64, the losses' w): mostly valid, now and then one negative or all
    zero (errors on both backends)."""
    w = rng.random(n) * 2
    bad = draw(st.integers(0, 7))
    if bad == 0 and n:
        w[rng.integers(0, n)] = -1.0
    elif bad == 1:
        w[:] = 0.0
    return w


def build(name, draw, rng, dt):
    c = Case(name)
    r = lambda *s: _rand(rng, s, dt)  # noqa: E731
    opt = lambda: draw(st.booleans())  # noqa: E731
    sp = draw(BN_SPATIAL) if name.startswith("batchnorm_") else ()
    if name == "dense_forward":
        n, i = _sizes(draw)
        o = draw(st.integers(0, 5))
        c.add("in", "x", r(n, i)), c.add("in", "W", r(i, o))
        c.add("in", "b", r(o) if opt() else None)
        c.add("out", "out", r(n, o))
        c.scalars["activation"], c.scalars["alpha"] = _act(draw)
    elif name == "dense_backward":
        n, i = _sizes(draw)
        o = draw(st.integers(0, 5))
        for k, s in (("dout", (n, o)), ("x", (n, i)), ("W", (i, o)), ("out", (n, o))):
            c.add("in", k, r(*s))
        c.add("work", "dz", r(n, o))
        for k, s in (("dx", (n, i)), ("dW", (i, o)), ("db", (o,))):
            c.add("out", k, r(*s) if opt() else None)
        c.scalars["activation"], c.scalars["alpha"] = _act(draw)
    elif name in ("activation_forward", "activation_backward"):
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        if draw(st.integers(0, 9)) == 0:
            shape = (40000,)
        if name == "activation_forward":
            c.add("in", "x", r(*shape)), c.add("out", "out", r(*shape))
        else:
            c.add("in", "dout", r(*shape)), c.add("in", "out", r(*shape))
            c.add("out", "dx", r(*shape))
        c.scalars["activation"], c.scalars["alpha"] = _act(draw)
    elif name in ("prelu_forward", "prelu_backward"):
        n, f = _sizes(draw)
        sshape = draw(st.sampled_from([(1,), (f,), (n, f)]))
        c.add("in", "x", r(n, f))
        c.add("in", "slope", np.abs(r(*sshape)))
        if name == "prelu_forward":
            c.add("out", "out", r(n, f))
        else:
            c.add("in", "dout", r(n, f))
            c.add("out", "dx", r(n, f) if opt() else None)
            c.add("out", "dslope", r(*sshape) if opt() else None)
    elif name in ("maxout_forward", "maxout_backward"):
        n, o = _sizes(draw, min_f=1)
        k = draw(st.integers(1, 4))
        if name == "maxout_forward":
            c.add("in", "z", r(n, o * k)), c.add("out", "out", r(n, o))
            c.add("out", "argmax", rng.integers(-5, 5, (n, o)).astype(np.int64))
        else:
            c.add("in", "dout", r(n, o))
            c.add("int", "argmax", rng.integers(0, k, (n, o)).astype(np.int64))
            c.add("out", "dz", r(n, o * k))
    elif name in ("softmax_forward", "softmax_backward"):
        n, cc = _sizes(draw, min_f=1)
        if name == "softmax_forward":
            c.add("in", "x", r(n, cc)), c.add("out", "out", r(n, cc))
        else:
            c.add("in", "dout", r(n, cc)), c.add("in", "y", r(n, cc)), c.add("out", "dx", r(n, cc))
    elif name in ("softmax_xent_forward", "softmax_xent_backward"):
        n, cc = _sizes(draw, min_n=1, min_f=1)
        lab = rng.integers(0, cc, n)
        if draw(st.integers(0, 7)) == 0:              # out-of-range / negative label
            lab[rng.integers(0, n)] = draw(st.sampled_from([-1, cc, 2 ** 40]))
        c.add("int", "labels", lab.astype(draw(st.sampled_from([np.int64, np.int32, np.uint8]))
                                          if lab.min() >= 0 and lab.max() < 256 else np.int64))
        if name == "softmax_xent_forward":
            c.add("in", "logits", r(n, cc)), c.add("out", "probs", r(n, cc))
        else:
            c.add("in", "probs", r(n, cc)), c.add("out", "dlogits", r(n, cc))
            c.scalars["scale"] = draw(st.sampled_from([1.0, 0.5, 3.0]))
        c.add("in", "w", _weights(draw, rng, n) if opt() else None)
        c.nonneg.add("w")
    elif name.rsplit("_", 1)[0] in ("mse", "mae", "huber", "sigmoid_bce"):
        kind, which = name.rsplit("_", 1)
        n, m = _sizes(draw)
        y = "z" if kind == "sigmoid_bce" else "y"
        c.add("in", y, r(n, m))
        c.add("in", "t", rng.random((n, m)).astype(dt) if kind == "sigmoid_bce" else r(n, m))
        if kind == "sigmoid_bce":
            c.nonneg.add("t")
        c.add("in", "w", _weights(draw, rng, n) if opt() else None)
        c.nonneg.add("w")
        if which == "forward":
            c.add("out", "rows", rng.standard_normal(n) if opt() else None)
        else:
            c.add("out", "d" + y, r(n, m))
            c.scalars["scale"] = draw(st.sampled_from([1.0, 0.5, 3.0]))
        c.scalars["reduction"] = draw(st.sampled_from(["mean", "mean", "sum"]))
        if kind == "mse":
            c.scalars["half"] = opt()
        if kind == "huber":
            c.scalars["delta"] = draw(st.sampled_from([0.1, 1.0, 5.0]))
    elif name == "batchnorm_stats":
        n, f = _sizes(draw, min_n=1)
        c.add("in", "x", r(n, f, *sp)), c.add("out", "mean", r(f)), c.add("out", "var", r(f))
    elif name == "batchnorm_forward_train":
        n, f = _sizes(draw, min_n=2)
        c.add("in", "x", r(n, f, *sp)), c.add("in", "gamma", r(f)), c.add("in", "beta", r(f))
        for k, s in (("out", (n, f, *sp)), ("xhat", (n, f, *sp)), ("mean", (f,)), ("invstd", (f,))):
            c.add("out", k, r(*s))
        if opt():
            c.add("io", "running_mean", r(f)), c.add("io", "running_var", np.abs(r(f)))
            c.nonneg.add("running_var")
        c.scalars.update(momentum=draw(st.sampled_from([0.0, 0.1, 1.0])),
                         eps=draw(st.sampled_from([1e-5, 1e-3])), unbiased=opt())
    elif name == "batchnorm_forward_eval":
        n, f = _sizes(draw)
        for k in ("gamma", "beta", "running_mean", "running_var"):
            c.add("in", k, r(f))
        c.arrays["running_var"] = np.abs(c.arrays["running_var"])
        c.nonneg.add("running_var")
        c.add("in", "x", r(n, f, *sp))
        for k, s in (("out", (n, f, *sp)), ("xhat", (n, f, *sp)), ("invstd", (f,))):
            c.add("out", k, r(*s))
        c.scalars["eps"] = draw(st.sampled_from([1e-5, 1e-3]))
    elif name == "batchnorm_backward":
        n, f = _sizes(draw)
        c.add("in", "dout", r(n, f, *sp)), c.add("in", "xhat", r(n, f, *sp))
        c.add("in", "gamma", r(f)), c.add("in", "invstd", np.abs(r(f)))
        c.add("out", "dx", r(n, f, *sp) if opt() else None)
        c.add("out", "dgamma", r(f) if opt() else None), c.add("out", "dbeta", r(f) if opt() else None)
        c.scalars["batch_stats"] = opt()
    elif name in ("dropout_mask", "random_uniform", "bernoulli_sample", "dropout_apply"):
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        if draw(st.integers(0, 9)) == 0:
            shape = (40000,)
        if name != "dropout_apply":
            c.scalars["seed"] = draw(st.sampled_from([0, 1, 12345, 2 ** 63, 2 ** 64 - 1]))
            c.scalars["counter"] = draw(st.sampled_from([0, 7, 2 ** 32, 2 ** 64 - 1, 2 ** 64 - 3]))
        if name == "dropout_mask":
            c.add("out", "mask", rng.integers(0, 255, shape).astype(np.uint8))
            c.scalars["p"] = draw(st.sampled_from([0.0, 0.1, 0.5, 0.999]))
        elif name == "random_uniform":
            c.add("out", "out", r(*shape))
            lo = draw(st.sampled_from([-1.0, 0.0, 5.0]))
            c.scalars.update(low=lo, high=lo + draw(st.sampled_from([0.0, 1.0, 1e3])))
        elif name == "bernoulli_sample":
            c.add("in", "probs", rng.random(shape).astype(dt)), c.add("out", "out", r(*shape))
        else:
            c.add("in", "x", r(*shape))
            c.add("int", "mask", rng.integers(0, 2, shape).astype(np.uint8) if opt() else None)
            c.add("out", "out", r(*shape))
            c.scalars["scale"] = draw(st.sampled_from([1.0, 2.0, 0.0]))
    elif name in ("sumsq", "all_finite"):
        n, f = _sizes(draw)
        c.add("in", "x", r(n, f))
    elif name in ("penalty", "penalty_grad"):
        n, f = _sizes(draw)
        c.add("in", "w", r(n, f))
        if name == "penalty_grad":
            c.add("io", "g", r(n, f))
        c.scalars.update(l1=draw(st.sampled_from([0.0, 1e-3, 0.5])),
                         l2=draw(st.sampled_from([0.0, 1e-3, 0.5])))
    elif name == "max_norm":
        n, f = _sizes(draw)
        c.add("io", "W", r(n, f))
        c.scalars["c"] = draw(st.sampled_from([0.1, 1.0, 3.0]))
    elif name == "rbm_cd_update":
        n, i = _sizes(draw)
        j = draw(st.integers(0, 5))
        for k, s in (("v0", (n, i)), ("h0", (n, j)), ("vk", (n, i)), ("hk", (n, j))):
            c.add("in", k, r(*s))
        c.add("io", "W", r(i, j)), c.add("io", "bv", r(i)), c.add("io", "bh", r(j))
        c.scalars.update(lr=draw(st.sampled_from([0.0, 0.05])), wd=draw(st.sampled_from([0.0, 1e-3])))
    elif name.endswith("_update"):
        n, f = _sizes(draw)
        shape = draw(st.sampled_from([(n, f), (n * f,)]))
        c.add("io", "w", r(*shape)), c.add("in", "g", r(*shape))
        states = {"sgd_update": (), "momentum_update": ("v",), "nesterov_update": ("v",),
                  "adagrad_update": ("h",), "rmsprop_update": ("h",), "adam_update": ("m", "v")}[name]
        for s in states:
            c.add("io", s, r(*shape))
        for s in ("h", "v") if name != "momentum_update" and name != "nesterov_update" else ():
            if s in c.arrays:
                c.arrays[s] = np.abs(c.arrays[s])
                c.nonneg.add(s)
        c.scalars.update(lr=draw(st.sampled_from([0.0, 1e-3, 0.1])),
                         wd=draw(st.sampled_from([0.0, 1e-4])),
                         grad_scale=draw(st.sampled_from([1.0, 0.5])),
                         clip_value=draw(st.sampled_from([math.inf, 1.0])))
        if name in ("momentum_update", "nesterov_update"):
            c.scalars["mu"] = draw(st.sampled_from([0.0, 0.9]))
        if name in ("adagrad_update", "rmsprop_update"):
            c.scalars["eps_inside"] = opt()
        if name == "rmsprop_update":
            c.scalars["rho"] = draw(st.sampled_from([0.0, 0.9, 0.99]))
        if name == "adam_update":
            c.scalars.update(step=draw(st.sampled_from([1, 2, 1000])), eps_hat=opt(),
                             decoupled_wd=opt(), beta1=draw(st.sampled_from([0.0, 0.9])),
                             beta2=draw(st.sampled_from([0.0, 0.999])))
    elif name in ("conv2d_forward", "conv2d_backward"):
        n, cc, f = draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.integers(0, 3))
        h, w = draw(st.integers(0, 6)), draw(st.integers(0, 6))
        if draw(st.integers(0, 9)) == 0:              # one past the parallel threshold
            n, cc, f, h, w = draw(st.integers(1, 4)), 8, 8, 24, 24
        ws = (f, cc, draw(st.sampled_from([1, 1, 2, 2, 3, 3, 0])), draw(st.integers(1, 3)))
        c.scalars.update(stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                         pad=(draw(st.integers(0, 2)), draw(st.integers(0, 2))))
        try:
            oshape = K.conv2d_output_shape((n, cc, h, w), ws, **c.scalars)
            cshape = K.conv2d_workspace_shape((n, cc, h, w), ws, **c.scalars)
        except ValueError:                            # kernel larger than the padded input
            oshape, cshape = (n, f, 1, 1), (n, cc * ws[2] * ws[3], 1)
        c.add("in", "x", r(n, cc, h, w)), c.add("in", "W", r(*ws))
        if name == "conv2d_forward":
            c.add("in", "b", r(f) if opt() else None)
            c.add("out", "out", r(*oshape)), c.add("work", "col", r(*cshape))
        else:
            c.add("in", "dout", r(*oshape)), c.add("work", "col", r(*cshape))
            wx = opt()
            c.add("work", "dcol", r(*cshape) if wx or opt() else None)
            c.add("out", "dx", r(n, cc, h, w) if wx else None)
            c.add("out", "dW", r(*ws) if opt() else None)
            c.add("out", "db", r(f) if opt() else None)
    elif name in ("maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward",
                  "avgpool2d_backward"):
        n, cc = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        kern = (draw(st.sampled_from([1, 2, 2, 3, 3, 0])), draw(st.integers(1, 3)))
        pad = tuple(draw(st.integers(0, max(k, 0) // 2)) for k in kern)
        h, w = (draw(st.integers(max(1, k - 2 * q), 6)) for k, q in zip(kern, pad))
        if draw(st.integers(0, 7)) == 0:              # any size: too small for the window, or 0
            h, w = draw(st.integers(0, 6)), draw(st.integers(0, 6))
        if draw(st.integers(0, 7)) == 0:              # more than half the window
            pad = (pad[0] + 1, pad[1])
        if draw(st.integers(0, 9)) == 0:              # one past the parallel threshold
            n, cc, h, w = draw(st.integers(1, 4)), 30, 24, 24
        c.scalars.update(kernel=kern, pad=pad,
                         stride=None if opt() else (draw(st.integers(1, 3)),
                                                    draw(st.integers(1, 3))))
        if name.startswith("avg"):
            c.scalars["count_include_pad"] = opt()
        try:
            oshape = K.pool2d_output_shape((n, cc, h, w), kern, c.scalars["stride"],
                                           c.scalars["pad"])
        except ValueError:                            # window too large, pad > window // 2, H = 0
            oshape = (n, cc, 1, 1)
        if name.endswith("forward"):
            c.add("in", "x", r(n, cc, h, w)), c.add("out", "out", r(*oshape))
            if name.startswith("max"):
                c.add("out", "argmax", rng.integers(-5, 5, oshape).astype(np.int64))
        else:
            c.add("in", "dout", r(*oshape)), c.add("out", "dx", r(n, cc, h, w))
            if name.startswith("max"):
                c.add("int", "argmax", rng.integers(0, max(h * w, 1), oshape).astype(np.int64))
    else:
        return None                                   # a kernel without a builder: test fails
    return c


# ============================================================================ variations
def _values(a, mode, rng, nonneg=False):
    if a.size == 0 or a.dtype.kind != "f" or mode == "normal":
        return a
    a = a.copy()
    big = 1e30 if a.dtype == np.float32 else 1e300
    if mode == "huge":
        a *= big
    elif mode == "tiny":
        a *= 1e-42 if a.dtype == np.float32 else 1e-310
    elif mode == "zeros":
        a[...] = 0
    else:
        idx = rng.integers(0, a.size, max(1, a.size // 4))
        a.reshape(-1)[idx] = np.nan if mode == "nan" else rng.choice([np.inf, -np.inf], idx.size)
    return np.abs(a) if nonneg else a


def _layout(a, how):
    """The same values in another memory layout."""
    if how == "C" or a.ndim == 0:
        return a
    if how == "F":
        return np.asfortranarray(a)
    if how == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if how == "neg":
        return a[::-1].copy()[::-1]
    if how == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if how == "broadcast" and a.size and np.all(a == a.reshape(-1)[0]):
        return np.broadcast_to(a.reshape(-1)[:1].reshape((1,) * a.ndim), a.shape)
    if how == "broadcast" and a.ndim >= 1 and a.shape[0] >= 1:   # rows made equal, stride 0
        return np.broadcast_to(a[:1], a.shape)
    return a


SENTINEL = {"f": 1234.5, "i": 0x5A5A5A5A, "u": 0xA5}


def _guarded(a):
    """A copy of a (C-contiguous) inside a buffer with sentinel guard regions on both sides
    (None for dtypes without a sentinel: those calls must fail validation anyway)."""
    if a.dtype.kind not in SENTINEL:
        return None, a.copy()
    buf = np.full(a.size + 2 * GUARD, SENTINEL[a.dtype.kind], a.dtype)
    view = buf[GUARD:GUARD + a.size].reshape(a.shape)
    view[...] = a
    return buf, view


def _same(a, b):
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "O":                           # element by element, NaN equal to NaN
        return all(x is y or x == y or (x != x and y != y) for x, y in zip(a.flat, b.flat))
    return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _agree(name, key, ref, got, dt, huge):
    ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    assert ref.shape == got.shape, (name, key)
    fin = np.isfinite(ref) & np.isfinite(got)
    if not huge:   # summation order can change where a huge finite sum overflows: huge mode skips this
        assert np.array_equal(np.isnan(ref), np.isnan(got)), f"{name}: {key} NaN pattern differs"
        assert np.array_equal(ref[~fin & ~np.isnan(ref)], got[~fin & ~np.isnan(ref)]), \
            f"{name}: {key} inf pattern differs"
    if fin.any():
        tol = 2e-3 if dt == np.float32 else 1e-9
        scale = max(1.0, float(np.max(np.abs(ref[fin]))))
        np.testing.assert_allclose(got[fin], ref[fin], rtol=tol, atol=tol * scale,
                                   err_msg=f"{name}: {key}")


def _run(case, arrays, backend):
    """Call case on backend with fresh copies of outputs; returns (outcome, results)."""
    args, bufs, saved = {}, {}, {}
    for k, a in arrays.items():
        role = case.roles[k]
        if a is None or role in ("in", "int"):
            args[k] = a
            if a is not None:
                saved[k] = a.copy()
        else:
            bufs[k], args[k] = _guarded(a)
    with dlfast.use_backend(backend):
        try:
            ret = getattr(K, case.name)(**args, **case.scalars)
            outcome = "ok"
        except (TypeError, ValueError) as exc:
            ret, outcome = None, type(exc).__name__
    for k, b in bufs.items():
        if b is not None:
            s = b.dtype.type(SENTINEL[b.dtype.kind])
            assert np.all(b[:GUARD] == s) and np.all(b[-GUARD:] == s), \
                f"{case.name}: guard region around {k} was written"
    for k, a in saved.items():
        assert _same(args[k], a), f"{case.name}: input {k} was modified"
    res = {k: args[k] for k in bufs}
    if not isinstance(ret, np.ndarray) and ret is not None:
        res["return"] = ret
    return outcome, res


@st.composite
def calls(draw, name):
    dt = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    case = build(name, draw, rng, dt)
    if case is None:
        return None
    mode = draw(st.sampled_from(VALUES))
    arrays = {}
    for k, a in case.arrays.items():
        if a is not None and case.roles[k] in ("in", "io"):
            a = _values(a, mode, rng, k in case.nonneg)
        if a is not None and case.roles[k] == "in":
            a = _layout(a, draw(st.sampled_from(LAYOUTS)))
        arrays[k] = a
    mutation = draw(st.sampled_from(["none"] * 6 + ["dtype", "overlap", "nan_scalar"]))
    expect_error = False
    if mutation == "dtype":
        keys = [k for k, a in arrays.items() if a is not None and a.dtype.kind == "f"]
        if keys:
            k = draw(st.sampled_from(keys))
            bad = draw(st.sampled_from(BAD_DTYPES))
            with np.errstate(all="ignore"):
                arrays[k] = np.asarray(arrays[k]).astype(bad)
            expect_error = True
    elif mutation == "overlap":
        outs = [k for k, a in arrays.items() if a is not None and case.roles[k] in ("out", "work")]
        ins = [k for k, a in arrays.items() if a is not None and case.roles[k] in ("in", "int")]
        pairs = [(o, i) for o in outs for i in ins
                 if arrays[o].shape == arrays[i].shape and arrays[o].dtype == arrays[i].dtype
                 and arrays[o].size]
        if pairs:
            o, i = draw(st.sampled_from(pairs))
            src = np.ascontiguousarray(arrays[i]).copy()
            arrays[i], arrays[o] = src, src.view()        # same memory, another object
            case.roles[o] = "in"                          # not guarded: it *is* the input
            expect_error = True
    elif mutation == "nan_scalar":
        keys = [k for k, v in case.scalars.items() if isinstance(v, float)]
        if keys:
            case.scalars[draw(st.sampled_from(keys))] = math.nan
    return case, arrays, dt, seed, mode, mutation, expect_error


# bind_update takes lists of arrays: tests/test_kernels_bound_update.py fuzzes it
@pytest.mark.parametrize("name", [n for n in K.KERNELS if n != "bind_update"])
def test_fuzz_kernel(name, fuzz_counter):
    @FUZZ
    @given(data=calls(name))
    def check(data):
        assert data is not None, f"no fuzz builder for kernel {name!r}: add one to {__file__}"
        case, arrays, dt, seed, mode, mutation, expect_error = data
        o_np, r_np = _run(case, arrays, "numpy")
        o_cy, r_cy = _run(case, arrays, "cython")
        fuzz_counter.add(f"kernels.{name}", o_cy)
        assert o_np == o_cy, f"{name}: numpy {o_np}, cython {o_cy} ({mode}, {mutation})"
        if expect_error:
            assert o_cy != "ok", f"{name}: {mutation} mutation accepted silently"
        if o_cy == "ok":
            for k in r_np:
                if case.roles.get(k) == "work":
                    continue
                _agree(name, k, r_np[k], r_cy[k], dt, mode in ("huge", "tiny"))
    check()
