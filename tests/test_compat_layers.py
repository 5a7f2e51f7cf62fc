"""dlfast.compat.layers: the book's layer API (constructors, forward/backward, attribute names) on
dlfast's kernels, against NumPy formulas and nested loops written here, and central differences."""
import numpy as np
import pytest

from dlfast.compat import gradient as G
from dlfast.compat.layers import (Affine, BatchNormalization, Convolution, Dropout, Pooling, Relu,
                                  Sigmoid, SoftmaxWithLoss)


def rng(seed=0):
    return np.random.default_rng(seed)


def check_grad(f, x, analytic, n=12, rtol=1e-6, atol=1e-8):
    """Central differences of the scalar f at a few entries of x (perturbed in place)."""
    r = rng(7)
    for flat in r.choice(x.size, min(n, x.size), replace=False):
        idx = np.unravel_index(flat, x.shape)
        saved = x[idx]
        x[idx] = saved + 1e-6
        fp = f()
        x[idx] = saved - 1e-6
        fm = f()
        x[idx] = saved
        assert (fp - fm) / 2e-6 == pytest.approx(analytic[idx], rel=rtol, abs=atol), idx


# ============================================================================ activations / affine
def test_relu_and_sigmoid(backend, dtype):
    x = rng().normal(size=(4, 5)).astype(dtype)
    x[0, 0] = 0.0
    r = Relu()
    out = r.forward(x)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    np.testing.assert_array_equal(r.mask, x <= 0)
    d = rng(1).normal(size=x.shape).astype(dtype)
    d0 = d.copy()
    np.testing.assert_array_equal(r.backward(d), np.where(x > 0, d0, 0))
    np.testing.assert_array_equal(d, d0)                  # dout left unchanged
    s = Sigmoid()
    y = s.forward(x)
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-6)
    assert s.out is y and y.dtype == dtype
    np.testing.assert_allclose(s.backward(d), d * (1 - y) * y, rtol=1e-6)
    assert Relu().forward(np.array([[1, -2]])).dtype == np.float64          # ints -> float64


def test_relu_passes_dout_at_a_nan_input_as_the_books(backend):
    """The book's Relu zeroes dout where x <= 0 only: at a NaN input (not <= 0) dout passes."""
    layer = Relu()
    with np.errstate(invalid="ignore"):
        out = layer.forward(np.array([[np.nan, 1.0, -1.0, 0.0]]))
    assert np.isnan(out[0, 0]) and (out[0, 1:] == [1, 0, 0]).all()
    np.testing.assert_array_equal(layer.mask, [[False, False, True, True]])
    np.testing.assert_array_equal(layer.backward(np.array([[2.0, 3.0, 4.0, 5.0]])),
                                  [[2.0, 3.0, 0.0, 0.0]])


def test_affine_book_attributes_and_tensor_input(backend):
    W, b = rng().normal(size=(12, 5)), rng(1).normal(size=5)
    a = Affine(W, b)
    assert a.W is W and a.b is b and a.dW is None and a.x is None
    x = rng(2).normal(size=(3, 2, 2, 3))                  # (N, C, H, W) flattened, as the book
    out = a.forward(x)
    np.testing.assert_allclose(out, x.reshape(3, -1) @ W + b, rtol=1e-12)
    assert a.original_x_shape == x.shape and a.x.shape == (3, 12)
    d = rng(3).normal(size=out.shape)
    dx = a.backward(d)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, (d @ W.T).reshape(x.shape), rtol=1e-12)
    np.testing.assert_allclose(a.dW, x.reshape(3, -1).T @ d, rtol=1e-12)
    np.testing.assert_allclose(a.db, d.sum(axis=0), rtol=1e-12)
    dW1 = a.dW
    a.backward(d)
    assert a.dW is not dW1                                 # new arrays each backward, as the book
    a.W = W * 2                                            # the book's load_params sets W
    np.testing.assert_allclose(a.forward(x), x.reshape(3, -1) @ (2 * W) + b, rtol=1e-12)
    # float16/float32 input takes W's dtype
    assert a.forward(x.astype(np.float16)).dtype == np.float64


def test_layer_errors():
    with pytest.raises(TypeError, match="Affine.W must be a float32 or float64 array"):
        Affine(np.ones((2, 2), int), np.zeros(2)).forward(np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"Affine.b must broadcast to \(2,\).*shape \(3,\)"):
        Affine(np.ones((2, 2)), np.zeros(3)).forward(np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"Convolution.b must broadcast to \(2,\)"):
        Convolution(np.ones((2, 1, 2, 2)), np.zeros((2, 1))).forward(np.ones((1, 1, 3, 3)))
    with pytest.raises(TypeError, match="Affine.b must be a number or an array of numbers"):
        Affine(np.ones((2, 2)), "0").forward(np.ones((1, 2)))
    with pytest.raises(TypeError, match="Convolution.b must be a number.*got NoneType"):
        Convolution(np.ones((2, 1, 2, 2)), None).forward(np.ones((1, 1, 3, 3)))
    with pytest.raises(TypeError, match="Affine.b must hold real numbers, got dtype complex128"):
        Affine(np.ones((2, 2)), np.zeros(2, complex)).forward(np.ones((1, 2)))
    with pytest.raises(RuntimeError, match="before forward"):
        Relu().backward(np.ones(2))
    with pytest.raises(RuntimeError, match="before forward"):
        Affine(np.ones((2, 2)), np.zeros(2)).backward(np.ones((1, 2)))
    with pytest.raises(ValueError, match="dropout_ratio"):
        Dropout(1.5).forward(np.ones(3))
    with pytest.raises(ValueError, match="4-D"):
        Pooling(2, 2).forward(np.ones((2, 3)))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        Relu().forward(np.array(["a"]))


# ============================================================================ loss
@pytest.mark.parametrize("labels", ["indices", "one-hot", "column", "soft"])
def test_softmax_with_loss(backend, labels):
    x = rng().normal(size=(4, 3)) * 3
    idx = np.array([2, 0, 1, 1])
    t = {"indices": idx, "one-hot": np.eye(3)[idx], "column": idx.reshape(4, 1),
         "soft": np.eye(3)[idx] * 0.8 + 0.2 / 3}[labels]
    layer = SoftmaxWithLoss()
    loss = layer.forward(x, t)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    y = e / e.sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(y[np.arange(4), idx] + 1e-7)), rel=1e-12)
    np.testing.assert_allclose(layer.y, y, rtol=1e-12)
    assert layer.loss == loss and layer.t is t
    target = t if labels == "soft" else np.eye(3)[idx]
    np.testing.assert_allclose(layer.backward(), (y - target) / 4, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(layer.backward(5.0), (y - target) / 4, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="labels"):
        SoftmaxWithLoss().forward(x, np.array([0, 1, 2]))


def test_softmax_with_loss_one_sample_is_the_books(backend):
    """One 1-D sample, as the book's chapter-4 code passes it: y and dx of shape (C,), and for a
    one-hot t the book's dx = (y - t) / t.shape[0] (here C); a label gives y - onehot."""
    x, t = np.array([0.1, 2.0, -1.0]), np.array([0.0, 1.0, 0.0])
    e = np.exp(x - x.max())
    y = e / e.sum()
    layer = SoftmaxWithLoss()
    assert layer.forward(x, t) == pytest.approx(-np.log(y[1] + 1e-7), rel=1e-12)
    assert layer.y.shape == (3,)
    np.testing.assert_allclose(layer.backward(), (y - t) / 3, rtol=1e-12)
    layer.forward(x, np.array([1]))
    np.testing.assert_allclose(layer.backward(), y - t, rtol=1e-12)


# ============================================================================ dropout
def test_dropout_textbook_form_and_seed(backend):
    x = np.abs(rng().normal(size=(200, 300))) + 0.1
    np.random.seed(4)
    d = Dropout(0.3)
    out = d.forward(x).copy()
    m = d.mask
    assert m.dtype == np.bool_ and m.shape == x.shape
    np.testing.assert_array_equal(out, x * m)             # no 1/(1-p) scaling
    assert abs(m.mean() - 0.7) < 0.01
    np.testing.assert_allclose(d.forward(x, train_flg=False), x * 0.7)
    dd = rng(1).normal(size=x.shape)
    d.forward(x)
    np.testing.assert_array_equal(d.backward(dd), dd * d.mask)
    np.random.seed(4)
    assert np.array_equal(Dropout(0.3).forward(x), out)    # np.random.seed reproduces the mask
    assert not np.array_equal(d.forward(x), out)           # a new mask at each forward


# ============================================================================ batch norm
def bn_reference(x, gamma, beta, eps=1e-6):
    mu = x.mean(axis=0)
    xc = x - mu
    var = np.mean(xc ** 2, axis=0)
    std = np.sqrt(var + eps)
    return gamma * xc / std + beta, mu, var, xc / std, std


@pytest.mark.parametrize("shape", [(6, 5), (4, 2, 3, 3)])
def test_batchnorm_train_eval_and_running(backend, shape):
    x = rng().normal(size=shape) * 2 + 1
    d = int(np.prod(shape[1:]))
    gamma, beta = rng(1).normal(size=d), rng(2).normal(size=d)
    bn = BatchNormalization(gamma, beta)
    out = bn.forward(x)
    x2 = x.reshape(shape[0], -1)
    want, mu, var, xn, std = bn_reference(x2, gamma, beta)
    np.testing.assert_allclose(out, want.reshape(shape), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, 0.1 * mu, rtol=1e-10)     # from 0, as the book
    np.testing.assert_allclose(bn.running_var, 0.1 * var, rtol=1e-10)
    np.testing.assert_allclose(bn.xn, xn, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.std, std, rtol=1e-10)
    np.testing.assert_allclose(bn.xc, x2 - mu, rtol=1e-8, atol=1e-12)
    assert bn.batch_size == shape[0] and bn.input_shape == shape
    # backward: central differences of sum(out * R)
    R = rng(3).normal(size=shape)
    dx = bn.backward(R).copy()
    np.testing.assert_allclose(bn.dbeta, R.reshape(shape[0], -1).sum(axis=0), rtol=1e-10)

    def f():
        b = BatchNormalization(gamma, beta)
        return np.sum(b.forward(x) * R)
    check_grad(f, x, dx)
    check_grad(f, gamma, bn.dgamma)
    # eval uses the running statistics
    ev = bn.forward(x, train_flg=False)
    np.testing.assert_allclose(ev, (gamma * (x2 - bn.running_mean) / np.sqrt(bn.running_var + 1e-6)
                                    + beta).reshape(shape), rtol=1e-10)


def test_batchnorm_one_row_batch_is_the_books(backend):
    gamma, beta = np.array([1.5, 2.0, 0.5]), np.array([0.1, -0.2, 0.3])
    bn = BatchNormalization(gamma, beta, momentum=0.9)
    x = np.array([[3.0, -1.0, 2.0]])
    out = bn.forward(x)
    np.testing.assert_array_equal(out, beta.reshape(1, 3))      # var 0: xn = 0
    np.testing.assert_allclose(bn.running_mean, 0.1 * x[0], rtol=1e-12)
    np.testing.assert_array_equal(bn.running_var, 0.0)
    dx = bn.backward(np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(bn.dbeta, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(bn.dgamma, 0.0)


# ============================================================================ conv and pooling
def conv_loops(x, W, b, stride, pad):
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    out = np.zeros((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.tensordot(win, W, axes=([1, 2, 3], [1, 2, 3])) + b
    return out


@pytest.mark.parametrize("stride,pad", [(1, 0), (2, 1), (1, 2)])
def test_convolution(backend, stride, pad):
    x = rng().normal(size=(2, 3, 7, 6))
    W, b = rng(1).normal(size=(4, 3, 3, 3)), rng(2).normal(size=4)
    conv = Convolution(W, b, stride, pad)
    out = conv.forward(x)
    np.testing.assert_allclose(out, conv_loops(x, W, b, stride, pad), rtol=1e-10, atol=1e-12)
    assert conv.x is x and conv.col_W.shape == (27, 4)
    np.testing.assert_array_equal(conv.col_W, W.reshape(4, -1).T)
    R = rng(3).normal(size=out.shape)
    dx = conv.backward(R).copy()
    dW, db = conv.dW.copy(), conv.db.copy()
    np.testing.assert_allclose(db, R.sum(axis=(0, 2, 3)), rtol=1e-10)

    def f():
        return np.sum(conv_loops(x, W, b, stride, pad) * R)
    check_grad(f, x, dx)
    check_grad(f, W, dW)


@pytest.mark.parametrize("b", [0, 0.5, np.float32(-1.5), np.array(2.0), np.array([0.25]),
                               [[1.0, -1.0, 2.0, 0.0]], np.arange(4, dtype=np.float32)])
def test_bias_broadcasts_as_the_books_plus_b(backend, b):
    """The book's chapter-7 apply_filter.py builds Convolution(w, 0): any bias that NumPy
    broadcasts in ``+ b`` (a number, 0-d, (1,), (1, F), another float dtype) works, db is (F,)."""
    x, R = rng().normal(size=(2, 3, 5, 5)), rng(3).normal(size=(2, 4, 3, 3))
    W = rng(1).normal(size=(4, 3, 3, 3))
    full = np.broadcast_to(np.asarray(b, np.float64), (1, 4)).ravel()
    conv = Convolution(W, b)
    np.testing.assert_allclose(conv.forward(x), conv_loops(x, W, full, 1, 0), rtol=1e-10,
                               atol=1e-12)
    conv.backward(R)
    assert conv.b is b and conv.db.shape == (np.shape(b) if np.size(b) == 4 else (4,))
    np.testing.assert_allclose(conv.db.reshape(4), R.sum(axis=(0, 2, 3)), rtol=1e-10)
    xa, Wa, Ra = rng(4).normal(size=(3, 6)), rng(5).normal(size=(6, 4)), rng(6).normal(size=(3, 4))
    a = Affine(Wa, b)
    np.testing.assert_allclose(a.forward(xa), xa @ Wa + full, rtol=1e-12, atol=1e-12)
    a.backward(Ra)
    assert a.db.shape == (4,) and a.db.dtype == np.float64
    np.testing.assert_allclose(a.db, Ra.sum(axis=0), rtol=1e-12)


def test_pooling_and_books_arg_max(backend):
    x = rng().normal(size=(2, 3, 6, 5))
    x[0, 0, 0, :2] = 9.0                                   # a tie: the first maximum wins
    p = Pooling(2, 2)                                      # stride 2 by default, as the book
    out = p.forward(x)
    assert out.shape == (2, 3, 3, 2)
    am = []
    for n in range(2):
        for i in range(3):
            for j in range(2):
                for c in range(3):
                    win = x[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                    assert out[n, c, i, j] == win.max()
                    am.append(int(np.argmax(win)))
    np.testing.assert_array_equal(p.arg_max, am)           # the book's layout: (n, i, j, c)
    R = rng(1).normal(size=out.shape)
    dx = p.backward(R)
    want = np.zeros_like(x)
    k = 0
    for n in range(2):
        for i in range(3):
            for j in range(2):
                for c in range(3):
                    kh, kw = divmod(am[k], 2)
                    want[n, c, 2 * i + kh, 2 * j + kw] += R[n, c, i, j]
                    k += 1
    np.testing.assert_array_equal(dx, want)
    p3 = Pooling(3, 3, stride=1)
    p3.forward(x)
    assert p3.arg_max.shape == (2 * 4 * 3 * 3,) and p3.arg_max.max() < 9


def test_layer_outputs_are_buffers_and_params_shared():
    W, b = np.ones((3, 2)), np.zeros(2)
    a = Affine(W, b)
    y1 = a.forward(np.ones((4, 3)))
    y2 = a.forward(2 * np.ones((4, 3)))
    assert y1 is y2                                        # reused (documented): copy to keep
    assert a.forward(np.ones((5, 3))) is not y1            # another batch size: another buffer
    W += 1.0                                               # in-place updates reach the layer
    np.testing.assert_array_equal(a.forward(np.ones((1, 3))), [[6.0, 6.0]])


def test_float32_layers(backend):
    x = rng().normal(size=(2, 1, 6, 6)).astype(np.float32)
    W, b = rng(1).normal(size=(2, 1, 3, 3)).astype(np.float32), np.zeros(2, np.float32)
    conv, pool = Convolution(W, b, 1, 1), Pooling(2, 2)
    h = pool.forward(conv.forward(x))
    assert h.dtype == np.float32
    dx = conv.backward(pool.backward(np.ones_like(h)))
    assert dx.dtype == np.float32 and conv.dW.dtype == np.float32
    np.testing.assert_allclose(conv.forward(x), conv_loops(x.astype(np.float64), W, b, 1, 1),
                               rtol=1e-5, atol=1e-5)


def test_numerical_gradient_through_layers():
    """The book's pattern: numerical_gradient(lambda W: loss(...), params[key]) with the layers
    holding the very arrays that are perturbed."""
    W, b = rng().normal(size=(4, 3)), np.zeros(3)
    a, last = Affine(W, b), SoftmaxWithLoss()
    x, t = rng(1).normal(size=(5, 4)), np.array([0, 2, 1, 1, 0])

    def loss(_):
        return last.forward(a.forward(x), t)
    num = G.numerical_gradient(loss, W)
    loss(None)
    a.backward(last.backward())
    np.testing.assert_allclose(num, a.dW, rtol=1e-5, atol=1e-7)    # the +1e-7 in the loss aside
