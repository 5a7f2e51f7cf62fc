"""Layers on images (N, C, H, W): Conv2D, MaxPool2D, AvgPool2D, Flatten, and BatchNorm / Dropout
on 4-D inputs. Float64 gradient checks of every configuration on every backend, forward values
against plain loops, shapes, errors naming the argument, dtypes, state and config round trips."""
import numpy as np
import pytest

from kernel_helpers import assert_backends_agree
from dlfast import layers as L
from dlfast.gradcheck import layer_gradient_check

F64 = np.float64
TOL = 1e-6
XS = (3, 2, 7, 6)


def _x(shape=XS, seed=0, dtype=F64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


CASES = {
    "conv-3x3": lambda: L.Conv2D(2, 4, 3, dtype=F64, seed=1),
    "conv-3x3-pad1": lambda: L.Conv2D(2, 4, 3, padding=1, dtype=F64, seed=1),
    "conv-3x2-stride2x1": lambda: L.Conv2D(2, 3, (3, 2), stride=(2, 1), dtype=F64, seed=2),
    "conv-5x5-stride2-pad2": lambda: L.Conv2D(2, 3, 5, stride=2, padding=2, dtype=F64, seed=3),
    "conv-1x1-nobias": lambda: L.Conv2D(2, 5, 1, bias=False, dtype=F64, seed=4),
    "conv-frozen": lambda: L.Conv2D(2, 3, 2, dtype=F64, seed=5, trainable=False),
    "maxpool-2": lambda: L.MaxPool2D(2, dtype=F64),
    "maxpool-3-stride2-pad1": lambda: L.MaxPool2D(3, stride=2, padding=1, dtype=F64),
    "maxpool-2x3-stride1": lambda: L.MaxPool2D((2, 3), stride=1, dtype=F64),
    "avgpool-2": lambda: L.AvgPool2D(2, dtype=F64),
    "avgpool-3-stride2-pad1": lambda: L.AvgPool2D(3, stride=2, padding=1, dtype=F64),
    "avgpool-3-pad1-exclude-pad": lambda: L.AvgPool2D(3, 1, 1, count_include_pad=False,
                                                      dtype=F64),
    "flatten": lambda: L.Flatten(dtype=F64),
    "batchnorm-4d": lambda: L.BatchNorm(2, dtype=F64),
    "batchnorm-4d-textbook": lambda: L.BatchNorm(2, textbook=True, dtype=F64),
    "dropout-4d": lambda: L.Dropout(0.4, seed=5, dtype=F64),
    "relu-4d": lambda: L.ReLU(dtype=F64),
}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_gradient_check(backend, case, train):
    layer = CASES[case]()
    if isinstance(layer, L.BatchNorm) and not train:
        layer.running_mean[...] = [-0.5, 0.5]
        layer.running_var[...] = [0.5, 2.0]
    x = _x()
    errors = layer_gradient_check(layer, x, train=train)
    assert set(errors) == {"x", *(layer.params if layer.trainable else ())}
    assert max(errors.values()) < TOL, errors


# ============================================================================ forward values
def _conv_loop(x, W, b, stride, pad):
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    xp = np.zeros((n, c, h + 2 * pad[0], w + 2 * pad[1]))
    xp[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + w] = x
    oh = (h + 2 * pad[0] - kh) // stride[0] + 1
    ow = (w + 2 * pad[1] - kw) // stride[1] + 1
    out = np.zeros((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
            out[:, :, i, j] = np.tensordot(win, W, axes=([1, 2, 3], [1, 2, 3]))
    return out + (0 if b is None else b[:, None, None])


@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=(3, 2), stride=(2, 1)),
                                dict(kernel_size=5, stride=2, padding=2),
                                dict(kernel_size=2, padding=(1, 0), bias=False)])
def test_conv2d_forward_is_cross_correlation(backend, dtype, kw):
    layer = L.Conv2D(2, 4, dtype=dtype, seed=0, **kw)
    if "b" in layer.params:
        layer.params["b"][...] = np.arange(4) * 0.1
    x = _x(dtype=dtype)
    out = layer.forward(x)
    ref = _conv_loop(x.astype(F64), layer.params["W"].astype(F64), layer.params.get("b"),
                     layer.stride, layer.padding)
    assert out.dtype == dtype and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


def _pool_loop(x, k, s, p, op, include_pad=True):
    n, c, h, w = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s - p, j * s - p
            win = x[:, :, max(r0, 0):r0 + k, max(c0, 0):c0 + k]
            if op == "max":
                out[:, :, i, j] = win.max(axis=(2, 3))
            else:
                d = k * k if include_pad else win.shape[2] * win.shape[3]
                out[:, :, i, j] = win.sum(axis=(2, 3)) / d
    return out


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 3, 0)])
def test_pools_match_plain_loops(backend, k, s, p):
    x = _x()
    np.testing.assert_array_equal(L.MaxPool2D(k, s, p, dtype=F64).forward(x),
                                  _pool_loop(x, k, s, p, "max"))
    for inc in (True, False):
        np.testing.assert_allclose(L.AvgPool2D(k, s, p, count_include_pad=inc, dtype=F64)
                                   .forward(x), _pool_loop(x, k, s, p, "avg", inc), rtol=1e-13,
                                   atol=1e-15)


def test_maxpool_gradient_goes_to_the_first_maximum(backend):
    x = np.zeros((1, 1, 2, 4))
    x[0, 0, 1, 1] = x[0, 0, 0, 0] = 1.0           # a tie in the first window: (0, 0) wins
    pool = L.MaxPool2D(2, dtype=F64)
    pool.forward(x)
    dx = pool.backward(np.array([[[[3.0, 5.0]]]]))
    expect = np.zeros((1, 1, 2, 4))
    expect[0, 0, 0, 0], expect[0, 0, 0, 2] = 3.0, 5.0
    np.testing.assert_array_equal(dx, expect)


def test_flatten_views_and_shapes(backend):
    x = _x()
    f = L.Flatten(dtype=F64)
    out = f.forward(x)
    assert out.shape == (3, 2 * 7 * 6) and np.shares_memory(out, x)
    np.testing.assert_array_equal(out, x.reshape(3, -1))
    d = _x((3, 84), 1)
    dx = f.backward(d)
    assert dx.shape == XS and np.shares_memory(dx, d)
    assert f.backward(d, compute_dx=False) is None
    assert L.Flatten().forward(np.ones((4, 5), np.float32)).shape == (4, 5)


def test_conv_output_shapes():
    cases = [((1, 1, 8, 8), dict(kernel_size=5), (1, 30, 4, 4)),
             ((2, 1, 8, 8), dict(kernel_size=3, padding=1), (2, 30, 8, 8)),
             ((2, 1, 28, 28), dict(kernel_size=5, stride=2), (2, 30, 12, 12)),
             ((2, 1, 7, 9), dict(kernel_size=(3, 5), stride=(2, 1), padding=(1, 0)),
              (2, 30, 4, 5))]
    for xs, kw, expect in cases:
        assert L.Conv2D(1, 30, seed=0, **kw).forward(np.zeros(xs, np.float32)).shape == expect
    assert L.MaxPool2D(2).forward(np.zeros((2, 3, 5, 7), np.float32)).shape == (2, 3, 2, 3)
    assert L.AvgPool2D(3, 2, 1).forward(np.zeros((2, 3, 5, 7), np.float32)).shape == (2, 3, 3, 4)


def test_batchnorm_on_images_normalises_each_channel(backend, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((8, 3, 5, 4)) * [[[[1.0]], [[4.0]], [[0.5]]]] + 3).astype(dtype)
    bn = L.BatchNorm(3, dtype=dtype)
    out = bn.forward(x).astype(F64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=tol * 10)
    np.testing.assert_allclose(out.var(axis=(0, 2, 3)), 1, rtol=1e-3)   # eps = 1e-5
    x64 = x.astype(F64)
    m = 8 * 5 * 4
    np.testing.assert_allclose(bn.running_mean, 0.1 * x64.mean(axis=(0, 2, 3)), rtol=tol)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * x64.var(axis=(0, 2, 3)) * m / (m - 1),
                               rtol=tol)
    ev = bn.forward(x[:1], train=False)                      # eval: one image is fine
    assert ev.shape == (1, 3, 5, 4)


def test_dropout_on_images_draws_one_value_per_element(backend):
    d = L.Dropout(0.5, seed=3, dtype=F64)
    out = d.forward(np.ones(XS))
    assert d.mask.shape == XS and d.counter == np.prod(XS)
    assert set(np.unique(out)) <= {0.0, 2.0}


# ============================================================================ errors
@pytest.mark.parametrize("make, exc, msg", [
    (lambda: L.Conv2D(0, 4, 3), ValueError, "in_channels"),
    (lambda: L.Conv2D(2, 0, 3), ValueError, "out_channels"),
    (lambda: L.Conv2D(2, 4, 0), ValueError, "kernel_size must be positive"),
    (lambda: L.Conv2D(2, 4, (3, 3, 3)), ValueError, r"kernel_size must be an int or a pair"),
    (lambda: L.Conv2D(2, 4, 3.5), TypeError, "kernel_size must be an int or a pair of ints"),
    (lambda: L.Conv2D(2, 4, 3, stride=0), ValueError, "stride must be positive"),
    (lambda: L.Conv2D(2, 4, 3, padding=-1), ValueError, "padding must be non-negative"),
    (lambda: L.Conv2D(2, 4, 3, padding=(1, -2)), ValueError, "padding must be non-negative"),
    (lambda: L.Conv2D(2, 4, 3, seed=1, rng=2), ValueError, "rng or seed"),
    (lambda: L.Conv2D(2, 4, 3, weight_init="bogus"), ValueError, "unknown initialiser"),
    (lambda: L.MaxPool2D(0), ValueError, "kernel_size must be positive"),
    (lambda: L.MaxPool2D(2, stride=0), ValueError, "stride must be positive"),
    (lambda: L.MaxPool2D(2, padding=-1), ValueError, "padding must be non-negative"),
    (lambda: L.MaxPool2D(2, padding=2), ValueError, r"padding must be at most half the window"),
    (lambda: L.AvgPool2D((3, 2), padding=(1, 2)), ValueError,
     r"padding must be at most half the window \(kernel_size // 2 = \(1, 1\)\)"),
    (lambda: L.AvgPool2D(True), TypeError, "kernel_size must be an int"),
])
def test_bad_settings_fail_at_construction(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


@pytest.mark.parametrize("layer, x, msg", [
    (L.Conv2D(2, 4, 3), np.zeros((3, 2 * 7 * 6), np.float32), r"x must be 4-D \(N, C, H, W\) for Conv2D"),
    (L.Conv2D(2, 4, 3), np.zeros((3, 3, 7, 6), np.float32),
     r"x must have 2 channels \(axis 1\) for Conv2D\(in_channels=2\)"),
    (L.Conv2D(2, 4, 8), np.zeros(XS, np.float32),
     r"Conv2D: kernel_size \(8, 8\) is larger than the padded input \(7, 6\)"),
    (L.Conv2D(2, 4, 5, padding=(0, 1)), np.zeros((1, 2, 4, 4), np.float32),
     r"kernel_size \(5, 5\) is larger than the padded input \(4, 6\) .* padding \(0, 1\)"),
    (L.MaxPool2D(2), np.zeros((3, 7, 6), np.float32), r"x must be 4-D \(N, C, H, W\) for MaxPool2D"),
    (L.MaxPool2D(4), np.zeros((1, 1, 3, 5), np.float32),
     r"MaxPool2D: kernel_size \(4, 4\) is larger than the padded input \(3, 5\)"),
    (L.AvgPool2D(2), np.zeros((1, 1, 0, 4), np.float32), r"x must have H, W >= 1 for AvgPool2D"),
    (L.Flatten(), np.zeros(3, np.float32), r"x must have at least 2 axes \(N, ...\) for Flatten"),
    (L.BatchNorm(3), np.zeros(XS, np.float32),
     r"x must have 3 channels \(axis 1\) for BatchNorm\(num_features=3\)"),
    (L.BatchNorm(2), np.zeros((3, 2, 5), np.float32), r"x must be 2-D \(N, 2\) or 4-D \(N, 2, H, W\)"),
    (L.BatchNorm(2), np.zeros((1, 2, 1, 1), np.float32),
     r"at least 2 values per channel \(N\*H\*W >= 2\).*use train=False"),
])
def test_bad_input_names_the_argument(layer, x, msg):
    with pytest.raises(ValueError, match=msg):
        layer.forward(x)


def test_bad_input_dtype_and_values():
    with pytest.raises(TypeError, match="x has dtype float64 but the model is float32"):
        L.Conv2D(2, 4, 3).forward(_x())
    bad = _x(dtype=np.float32)
    bad[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="x contains NaN or infinity"):
        L.Conv2D(2, 4, 3).forward(bad)
    conv = L.Conv2D(2, 4, 3)
    out = conv.forward(_x(dtype=np.float32))
    with pytest.raises(ValueError, match=r"dout must have the shape of the last forward output"):
        conv.backward(np.zeros(out.shape[:3], np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        L.MaxPool2D(2).backward(np.zeros((1, 1, 1, 1), np.float32))


# ============================================================================ common behaviour
FACTORIES = {
    "Conv2D": lambda dt: L.Conv2D(2, 3, 3, padding=1, dtype=dt, seed=0),
    "Conv2D-strided": lambda dt: L.Conv2D(2, 3, (3, 2), stride=2, dtype=dt, seed=1),
    "MaxPool2D": lambda dt: L.MaxPool2D(2, dtype=dt),
    "AvgPool2D": lambda dt: L.AvgPool2D(3, 2, 1, count_include_pad=False, dtype=dt),
    "Flatten": lambda dt: L.Flatten(dtype=dt),
    "BatchNorm": lambda dt: L.BatchNorm(2, dtype=dt),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_dtype_is_preserved(backend, dtype, name):
    layer = FACTORIES[name](dtype)
    out = layer.forward(_x(dtype=dtype))
    dx = layer.backward(np.ones_like(out))
    assert out.dtype == dx.dtype == dtype and dx.shape == XS
    assert all(p.dtype == dtype for p in [*layer.params.values(), *layer.grads.values()])


def test_parameter_free_layers_follow_input_dtype(backend):
    for layer in [L.MaxPool2D(2), L.AvgPool2D(2), L.Flatten()]:
        assert layer.forward(_x()).dtype == F64
        assert layer.forward(_x(dtype=np.float32)).dtype == np.float32


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dict_and_config_round_trip(name):
    layer = FACTORIES[name](F64)
    x = _x()
    layer.forward(x)
    for p in layer.params.values():
        p += 0.5
    cfg = layer.config()
    import json
    clone = L.from_config(json.loads(json.dumps(cfg)))         # JSON-friendly
    assert type(clone) is type(layer) and clone.config() == cfg
    clone.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(clone.forward(x), layer.forward(x))


def test_conv_init_fans():
    w = L.Conv2D(16, 64, 5, dtype=F64, seed=0).params["W"]
    assert w.shape == (64, 16, 5, 5)
    assert w.std() == pytest.approx(np.sqrt(2 / (16 * 25)), rel=0.03)       # He: fan_in C*KH*KW
    assert np.all(L.Conv2D(2, 3, 3).params["b"] == 0)
    w = L.Conv2D(1, 6, 3, weight_init=0.01, seed=0, dtype=F64).params["W"]
    assert w.std() == pytest.approx(0.01, rel=0.3)
    with pytest.raises(ValueError, match=r"weight_init returned shape \(2, 2\)"):
        L.Conv2D(1, 6, 3, weight_init=lambda shape, rng, dtype: np.zeros((2, 2), dtype))


def test_workspaces_are_reused(backend):
    conv = L.Conv2D(2, 3, 3, seed=0)
    x = _x(dtype=np.float32)
    out1, dx1 = conv.forward(x), None
    dx1 = conv.backward(np.ones_like(out1))
    out2 = conv.forward(x * 2)
    assert out1 is out2 and conv.backward(np.ones_like(out2)) is dx1


def test_cross_backend_layers_agree():
    assert_backends_agree(FACTORIES, _x((9, 2, 7, 6)))


# ============================================================================ ops (make_op)
def _conv_arrays(xs=XS, f=4, k=3, pad=1, need_dx=True, dtype=F64):
    from dlfast import kernels as K
    W = _x((f, xs[1], k, k), 1, dtype)
    ws = K.conv2d_workspace_shape(xs, W.shape, 1, pad)
    return dict(W=W, b=np.zeros(f, dtype), out=np.empty(K.conv2d_output_shape(xs, W.shape, 1, pad),
                                                        dtype),
                col=np.empty(ws, dtype), dcol=np.empty(ws, dtype) if need_dx else None,
                dx=np.empty(xs, dtype) if need_dx else None, dW=np.empty_like(W),
                db=np.zeros(f, dtype), dz=None, stride=1, pad=pad, activation="identity",
                alpha=0.0)


def test_make_op_validates_the_image_ops(backend):
    from dlfast import kernels as K
    K.make_op("conv2d", XS, F64, **_conv_arrays())
    K.make_op("conv2d", XS, F64, **_conv_arrays(need_dx=False))
    os_ = _conv_arrays()["out"].shape
    K.make_op("conv2d", XS, F64, **dict(_conv_arrays(), activation="relu", dz=np.empty(os_)))
    conv = _conv_arrays()
    with pytest.raises(ValueError, match="output out overlaps dz"):
        K.make_op("conv2d", XS, F64, **dict(conv, activation="leaky_relu", alpha=0.1,
                                            dz=conv["out"]))
    bad = [
        (dict(_conv_arrays(), dcol=None), TypeError, r"dcol is required \(an output array"),
        (dict(_conv_arrays(), W=_x((4, 3, 3, 3))), ValueError,
         r"W must have shape \(F, 2, KH, KW\) to match the 2 channels"),
        (dict(_conv_arrays(), pad=-1), ValueError, "pad must be non-negative"),
        (dict(_conv_arrays(), out=np.empty((3, 4, 7, 5))), ValueError, r"out must have shape"),
        (dict(_conv_arrays(), col=_conv_arrays()["W"]), ValueError, "col must have shape"),
        ({k: v for k, v in _conv_arrays().items() if k != "pad"}, TypeError,
         r"op 'conv2d' takes \('W', 'b', 'out', 'col', 'dcol', 'dx', 'dW', 'db', 'dz', 'stride', "
         r"'pad', 'activation', 'alpha'\)"),
        (dict(_conv_arrays(), activation="tanh"), ValueError,
         r"a conv2d op applies an activation of \('identity', 'relu', 'leaky_relu'\), got 'tanh'"),
        (dict(_conv_arrays(), activation="leaky_relu", alpha=-0.5), ValueError,
         "alpha must be >= 0 for leaky_relu"),
        (dict(_conv_arrays(), dz=np.empty((3, 4, 7, 6))), ValueError,
         "dz is the workspace of an activation's derivative: give it only with activation"),
        (dict(_conv_arrays(), activation="relu", dz=np.empty((3, 4, 7, 7))), ValueError,
         r"dz must have shape \(3, 4, 7, 6\)"),
        (dict(_conv_arrays(), activation="relu", dz=np.empty((3, 4, 7, 6), np.float32)),
         TypeError, "dz must have dtype float64"),
    ]
    for kw, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            K.make_op("conv2d", XS, F64, **kw)
    with pytest.raises(ValueError, match=r"a conv2d op needs 4-D inputs"):
        K.make_op("conv2d", (3, 84), F64, **_conv_arrays())
    ps = K.pool2d_output_shape(XS, 2)
    pool = dict(out=np.empty(ps), argmax=np.empty(ps, np.int64), dx=np.empty(XS), kernel=2,
                stride=None, pad=0, activation="identity", alpha=0.0)
    K.make_op("maxpool2d", XS, F64, **pool)
    with pytest.raises(ValueError, match="applies the derivative of an activation of"):
        K.make_op("maxpool2d", XS, F64, **dict(pool, activation="tanh"))
    with pytest.raises(ValueError, match="alpha must be >= 0 for leaky_relu"):
        K.make_op("maxpool2d", XS, F64, **dict(pool, activation="leaky_relu", alpha=-1.0))
    with pytest.raises(TypeError, match="argmax must have dtype int64"):
        K.make_op("maxpool2d", XS, F64, **dict(pool, argmax=np.empty(ps)))
    with pytest.raises(ValueError, match=r"the window \(8, 8\) is larger"):
        K.make_op("maxpool2d", XS, F64, **dict(pool, kernel=8))
    with pytest.raises(ValueError, match="pad must be at most half the window"):
        K.make_op("avgpool2d", XS, F64, out=np.empty(ps), dx=None, kernel=2, stride=None, pad=2,
                  count_include_pad=True)
    flat = dict(out=np.empty((3, 84)), dx=np.empty(XS))
    K.make_op("flatten", XS, F64, **flat)
    with pytest.raises(ValueError, match=r"out must have shape \(3, 84\)"):
        K.make_op("flatten", XS, F64, **dict(flat, out=np.empty((3, 83))))
    with pytest.raises(ValueError, match="output out overlaps dx"):
        K.make_op("flatten", XS, F64, out=flat["dx"].reshape(3, 84), dx=flat["dx"])
