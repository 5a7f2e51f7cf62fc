"""Fuzzing the public surface above the kernels (issue 6): every layer of ``dlfast.layers``, every
optimiser of ``dlfast.optim.OPTIMIZERS``, the IDX loader and ``dlfast.io.load_model``.

Layers and optimisers run on both backends with identical random inputs (shapes with 0 and 1 rows,
float32/float64, foreign dtypes, memory layouts, NaN/inf/huge values): both raise the same
documented exception (TypeError, ValueError, or ``NonFiniteGradientError`` for a non-finite
gradient) or both give results that agree; inputs are never modified. Loaders read random
mutations of valid files (truncated, a byte flipped, garbage, empty): each returns the right data or
raises ValueError (``ModelFileError`` is a ValueError). Examples: ``DLFAST_FUZZ_EXAMPLES``.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dlfast
from dlfast import datasets, io, layers, optim
from dlfast.net import MLP
from fuzz_helpers import EXAMPLES, hang_guard  # noqa: F401 (autouse fixture)

pytestmark = [pytest.mark.skipif("cython" not in dlfast.available_backends(),
                                 reason="compiled backend not built"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
DOCUMENTED = (TypeError, ValueError, optim.NonFiniteGradientError)
BAD_DTYPES = (np.int32, np.int64, np.bool_, np.float16, np.complex64, object)


def _variant(draw, a):
    """a with random values mode, dtype mutation and layout; returns (array, must_raise)."""
    mode = draw(st.sampled_from(["normal", "normal", "normal", "huge", "nan", "inf", "zeros"]))
    a = a.copy()
    if a.size and mode != "normal":
        if mode == "huge":
            a *= 1e30 if a.dtype == np.float32 else 1e300
        elif mode == "zeros":
            a[...] = 0
        else:
            a.reshape(-1)[draw(st.integers(0, a.size - 1))] = np.nan if mode == "nan" else -np.inf
    bad = False
    if draw(st.integers(0, 7)) == 0:
        with np.errstate(all="ignore"):
            a = a.astype(draw(st.sampled_from(BAD_DTYPES)))
        bad = True
    how = draw(st.sampled_from(["C", "F", "strided", "readonly", "neg"]))
    if how == "F":
        a = np.asfortranarray(a)
    elif how == "strided" and a.ndim == 2:
        big = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)
        big[:, ::2] = a
        a = big[:, ::2]
    elif how == "readonly":
        a.flags.writeable = False
    elif how == "neg":
        a = a[::-1].copy()[::-1]
    return a, bad


def _unchanged(a, b):
    """Same shape, dtype and values (NaN equal to NaN, object arrays element by element)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "O":
        return all(x is y or x == y or (x != x and y != y) for x, y in zip(a.flat, b.flat))
    return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _close(name, ref, got, dt):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    assert ref.shape == got.shape, name
    assert np.array_equal(np.isnan(ref), np.isnan(got)), f"{name}: NaN pattern differs"
    fin = np.isfinite(ref) & np.isfinite(got)
    assert np.array_equal(np.isfinite(ref), np.isfinite(got)), f"{name}: inf pattern differs"
    if fin.any():
        tol = 2e-3 if dt == np.float32 else 1e-8
        scale = max(1.0, float(np.abs(ref[fin]).max()))
        np.testing.assert_allclose(got[fin], ref[fin], rtol=tol, atol=tol * scale, err_msg=name)


# ============================================================================ layers
LAYERS = ("Dense", "Maxout", "Activation", "Identity", "ReLU", "Sigmoid", "Tanh", "LeakyReLU",
          "ELU", "PReLU", "RReLU", "Softmax", "BatchNorm", "Dropout", "SoftmaxCrossEntropy",
          "MSELoss", "MAELoss", "HuberLoss", "SigmoidBCELoss", "Conv2D", "MaxPool2D", "AvgPool2D",
          "Flatten")
LOSSES = ("SoftmaxCrossEntropy", "MSELoss", "MAELoss", "HuberLoss", "SigmoidBCELoss")
IMAGES = ("Conv2D", "MaxPool2D", "AvgPool2D", "Flatten")    # x (N, C, H, W); BatchNorm: either


def test_every_public_layer_is_fuzzed():
    public = {n for n in layers.__all__ if isinstance(getattr(layers, n), type)
              and issubclass(getattr(layers, n), layers.Layer) and n not in ("Layer", "Loss")}
    assert public - set(LAYERS) == set(), f"layers without a fuzz case: {sorted(public - set(LAYERS))}"


def _make_layer(name, f, o, dt, opts):
    L = getattr(layers, name)
    if name == "Dense":
        return L(f, o, activation=opts["act"], dtype=dt, seed=3)
    if name == "Maxout":
        return L(f, o, pieces=opts["pieces"], dtype=dt, seed=3)
    if name == "Activation":
        return L(opts["act"] or "identity", dtype=dt)
    if name == "PReLU":
        return L(num_parameters=f if opts["per_feature"] else 1, dtype=dt)
    if name in ("RReLU", "Dropout"):
        return L(seed=5, dtype=dt)
    if name == "BatchNorm":
        return L(f, dtype=dt)
    if name == "Conv2D":
        return L(f, o, opts["kernel"], stride=opts["stride"], padding=opts["pad"], dtype=dt,
                 seed=3)
    if name in ("MaxPool2D", "AvgPool2D"):
        return L(opts["kernel"], stride=opts["stride"], padding=opts["pad"], dtype=dt)
    return L(dtype=dt)


def _layer_run(name, backend, f, o, dt, opts, x, t, train, dout_seed, w=None):
    """forward + backward on one backend: ('ok', outputs) or (exception type name, None)."""
    with dlfast.use_backend(backend):
        try:
            layer = _make_layer(name, f, o, dt, opts)
            if name in LOSSES:
                res = {"loss": layer.forward(x, t, w)}
                res["dx"] = layer.backward(1.0).copy()
            else:
                y = layer.forward(x, train=train).copy()
                dout = np.random.default_rng(dout_seed).standard_normal(y.shape).astype(dt)
                res = {"y": y, "dx": layer.backward(dout).copy()}
            res.update({f"grad_{k}": v.copy() for k, v in layer.grads.items()})
            return "ok", res
        except DOCUMENTED as exc:
            return type(exc).__name__, None


@pytest.mark.parametrize("name", LAYERS)
def test_fuzz_layer(name, fuzz_counter):
    @FUZZ
    @given(data=st.data())
    def check(data):
        draw = data.draw
        dt = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
        n = draw(st.integers(0, 5))
        f = draw(st.integers(1, 5))
        o = draw(st.integers(1, 4))
        opts = {"act": draw(st.sampled_from([None, "relu", "sigmoid", "tanh", "leaky_relu", "elu"])),
                "pieces": draw(st.integers(1, 3)), "per_feature": draw(st.booleans()),
                "kernel": draw(st.sampled_from([1, 2, 3, (2, 1)])),
                "stride": draw(st.sampled_from([1, 2, (1, 2)])), "pad": draw(st.integers(0, 1))}
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        image = name in IMAGES or (name in ("BatchNorm", "Dropout", "ReLU") and draw(st.booleans()))
        shape = (n, f, draw(st.integers(0, 5)), draw(st.integers(1, 5))) if image else (n, f)
        x0 = rng.standard_normal(shape).astype(dt)
        x, bad = _variant(draw, x0)
        t = rng.integers(0, f, n)
        if draw(st.integers(0, 7)) == 0 and n:
            t[0] = draw(st.sampled_from([-1, f]))
        w = None
        if name in LOSSES and name != "SoftmaxCrossEntropy":     # value targets (and weights)
            t = rng.random(shape) if name == "SigmoidBCELoss" else rng.standard_normal(shape)
            t, _ = _variant(draw, t.astype(draw(st.sampled_from([dt, np.float64]))))
            if draw(st.integers(0, 3)) == 0 and t.dtype.kind == "f":
                with np.errstate(all="ignore"):
                    t = np.round(t).astype(np.int64)
            if draw(st.booleans()) and n:
                t = t[:, 0]                     # (N,): fits one output only
        if name in LOSSES and draw(st.booleans()):
            w, _ = _variant(draw, rng.random(n) * draw(st.sampled_from([1.0, -1.0, 0.0])))
        train = draw(st.booleans())
        saved, t_saved, w_saved = x.copy(), np.copy(t), None if w is None else w.copy()
        o_np, r_np = _layer_run(name, "numpy", f, o, dt, opts, x, t, train, 1, w)
        o_cy, r_cy = _layer_run(name, "cython", f, o, dt, opts, x, t, train, 1, w)
        fuzz_counter.add(f"layers.{name}", o_cy)
        assert _unchanged(x, saved), "input modified"
        assert _unchanged(np.asarray(t), t_saved), "targets modified"
        assert w is None or _unchanged(w, w_saved), "weights modified"
        assert o_np == o_cy, f"{name}: numpy {o_np}, cython {o_cy}"
        if bad:
            assert o_cy != "ok", f"{name}: input of dtype {x.dtype} accepted"
        if o_cy == "ok":
            assert r_np.keys() == r_cy.keys()
            for k in r_np:
                _close(f"{name}.{k}", r_np[k], r_cy[k], dt)
    check()


# ============================================================================ optimisers
def _opt_run(name, backend, kw, params0, grads, steps):
    with dlfast.use_backend(backend):
        opt = optim.get(name, **kw)
        params = {k: v.copy() for k, v in params0.items()}
        try:
            for _ in range(steps):
                opt.update(params, grads)
            return "ok", params
        except DOCUMENTED as exc:
            return type(exc).__name__, None


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_fuzz_optimizer(name, fuzz_counter):
    @FUZZ
    @given(data=st.data())
    def check(data):
        draw = data.draw
        dt = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        shapes = draw(st.lists(st.sampled_from([(0,), (1,), (3,), (1, 1), (0, 4), (4, 3), (2, 2, 2)]),
                               min_size=1, max_size=3))
        params = {f"l{i}.W": rng.standard_normal(s).astype(dt) for i, s in enumerate(shapes)}
        grads, bad = {}, False
        for k, p in params.items():
            g, b = _variant(draw, rng.standard_normal(p.shape).astype(dt))
            grads[k], bad = g, bad or b
        if draw(st.integers(0, 9)) == 0:                  # a gradient of the wrong shape
            k = next(iter(grads))
            grads[k], bad = np.zeros(grads[k].shape + (2,), dt), True
        kw = {"lr": draw(st.sampled_from([0.0, 1e-3, 0.1])),
              "weight_decay": draw(st.sampled_from([0.0, 1e-3])),
              "clip_norm": draw(st.sampled_from([None, 1.0])),
              "clip_value": draw(st.sampled_from([None, 0.5]))}
        saved = {k: g.copy() for k, g in grads.items()}
        steps = draw(st.integers(1, 3))
        o_np, r_np = _opt_run(name, "numpy", kw, params, grads, steps)
        o_cy, r_cy = _opt_run(name, "cython", kw, params, grads, steps)
        fuzz_counter.add(f"optim.{name}", o_cy)
        for k in grads:
            assert _unchanged(grads[k], saved[k]), "gradient modified"
        assert o_np == o_cy, f"{name}: numpy {o_np}, cython {o_cy}"
        if bad:
            assert o_cy != "ok", f"{name}: bad gradient accepted"
        if o_cy == "ok":
            for k in r_np:
                _close(f"{name}.{k}", r_np[k], r_cy[k], dt)
    check()


# ============================================================================ loaders
def _mutate(draw, blob):
    how = draw(st.sampled_from(["none", "truncate", "flip", "garbage", "empty", "append"]))
    b = bytearray(blob)
    if how == "truncate" and b:
        b = b[:draw(st.integers(0, len(b) - 1))]
    elif how == "flip" and b:
        i = draw(st.integers(0, len(b) - 1))
        b[i] ^= draw(st.integers(1, 255))
    elif how == "garbage":
        b = bytearray(draw(st.binary(max_size=64)))
    elif how == "empty":
        b = bytearray()
    elif how == "append":
        b += draw(st.binary(min_size=1, max_size=8))
    return bytes(b), how


_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
              np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def test_fuzz_load_idx(tmp_path, fuzz_counter):
    @FUZZ
    @given(data=st.data())
    def check(data):
        draw = data.draw
        dt = np.dtype(draw(st.sampled_from(sorted(_IDX_CODES, key=str))))
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=3)))
        arr = (np.random.default_rng(0).standard_normal(shape) * 50).astype(dt)
        blob = bytes([0, 0, _IDX_CODES[dt], len(shape)]) + np.array(shape, ">u4").tobytes() \
            + arr.astype(dt.newbyteorder(">")).tobytes()
        blob, how = _mutate(draw, blob)
        gz = draw(st.booleans())
        path = tmp_path / ("f.idx.gz" if gz else "f.idx")
        if gz:
            import gzip
            blob = gzip.compress(blob)
        path.write_bytes(blob)
        try:
            got = datasets.load_idx(str(path))
            outcome = "ok"
        except ValueError as exc:
            outcome = type(exc).__name__
        fuzz_counter.add("datasets.load_idx", outcome)
        if how == "none":
            assert outcome == "ok" and got.shape == shape and np.array_equal(got, arr, equal_nan=True)
        if how in ("empty", "append") or (how == "truncate"):
            assert outcome != "ok", f"{how} IDX file accepted"
    check()


def test_fuzz_load_model(tmp_path, fuzz_counter):
    good = tmp_path / "good.npz"
    model = MLP(3, [4], 2, seed=1)
    io.save_model(model, good)
    blob0 = good.read_bytes()
    ref = {k: v.copy() for k, v in model.state_dict().items()} if hasattr(model, "state_dict") else None

    @FUZZ
    @given(data=st.data())
    def check(data):
        blob, how = _mutate(data.draw, blob0)
        path = tmp_path / "m.npz"
        path.write_bytes(blob)
        try:
            m = io.load_model(path)
            outcome = "ok"
        except ValueError as exc:           # io.ModelFileError is a ValueError
            outcome = type(exc).__name__
        fuzz_counter.add("io.load_model", outcome)
        if how == "none":
            assert outcome == "ok"
        if how in ("empty", "garbage") or (how == "truncate"):
            assert outcome != "ok", f"{how} model file accepted"
        if outcome == "ok" and ref is not None:
            state = m.state_dict()
            if how == "none":
                assert all(np.array_equal(state[k], ref[k]) for k in ref)
    check()


def test_maxout_empty_batch_both_backends(backend):
    """Regression (found by the fuzzer): the NumPy maxout kernels failed on a batch of 0 rows
    (``reshape(n, o, -1)`` is ambiguous for size 0) while the compiled ones returned."""
    from dlfast import kernels as K
    z = np.zeros((0, 6), np.float32)
    out, arg = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    K.maxout_forward(z, out, arg)
    K.maxout_backward(out, arg, np.zeros((0, 6), np.float32))
    layer = layers.Maxout(4, 3, pieces=2, seed=0)
    assert layer.forward(np.zeros((0, 4), np.float32)).shape == (0, 3)
