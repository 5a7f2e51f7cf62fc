"""Per primitive, NumPy vs compiled backend, float32; one group per primitive + size.

Sizes: batch 32..4096, widths 10..2048 (the default run keeps a representative subset, with 100x100
= one layer of a batch-100 training step; the rest is marked ``bench_full``). The dense groups also
hold ``gemm_probe``: the bare ``np.matmul`` calls of the same shapes, the machine's limit for that
primitive.
"""
import numpy as np
import pytest

from dlfast import kernels

FULL = pytest.mark.bench_full
F32 = np.float32


def _grid(default, full):
    return [*default, *(pytest.param(s, marks=FULL) for s in full if s not in default)]


def _id(s):
    return "x".join(map(str, s))


# 100x784x100 and 100x100x100: the layers of the batch-100 training step
DENSE = _grid([(32, 784, 100), (100, 784, 100), (100, 100, 100), (256, 784, 100),
               (1024, 1024, 1024)],
              [(b, i, o) for b in (32, 100, 256, 1024, 4096)
               for i, o in ((784, 100), (100, 100), (100, 10), (2048, 2048))])
ELEM = _grid([(100, 100), (256, 1024)],
             [(b, w) for b in (32, 256, 1024, 4096) for w in (10, 100, 2048)])
SOFTMAX = _grid([(256, 10)], [(b, c) for b in (32, 256, 1024, 4096) for c in (10, 1000)])
BN = _grid([(100, 100), (256, 100), (1024, 1024)],
           [(b, w) for b in (32, 256, 1024, 4096) for w in (100, 2048)])


def _rand(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(F32)


def _dense_arrays(b, i, o):
    x = _rand((b, i), 1)
    W = _rand((i, o), 2, np.sqrt(2.0 / i))
    bias = _rand((o,), 3, 0.1)
    return x, W, bias


# ============================================================================ dense
@pytest.mark.parametrize("shape", DENSE, ids=_id)
def test_dense_forward(benchmark, backend, shape):
    b, i, o = shape
    x, W, bias = _dense_arrays(b, i, o)
    out = np.empty((b, o), F32)
    benchmark.group = f"dense_forward relu {_id(shape)}"
    benchmark(kernels.dense_forward, x, W, bias, out, "relu")
    np.testing.assert_allclose(out, np.maximum(x @ W + bias, 0), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("shape", DENSE, ids=_id)
def test_dense_forward_gemm_probe(benchmark, shape):
    b, i, o = shape
    x, W, _ = _dense_arrays(b, i, o)
    out = np.empty((b, o), F32)
    benchmark.group = f"dense_forward relu {_id(shape)}"
    benchmark(np.matmul, x, W, out=out)


@pytest.mark.parametrize("shape", DENSE, ids=_id)
def test_dense_backward(benchmark, backend, shape):
    b, i, o = shape
    x, W, bias = _dense_arrays(b, i, o)
    y = np.maximum(x @ W + bias, 0)
    dout = _rand((b, o), 4)
    dz, dx, dW, db = (np.empty(s, F32) for s in ((b, o), (b, i), (i, o), (o,)))
    benchmark.group = f"dense_backward relu {_id(shape)}"
    benchmark(kernels.dense_backward, dout, x, W, y, dz, dx, dW, db, "relu")
    g = dout * (y > 0)
    np.testing.assert_allclose(db, g.sum(0), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("shape", DENSE, ids=_id)
def test_dense_backward_gemm_probe(benchmark, shape):
    b, i, o = shape
    x, W, _ = _dense_arrays(b, i, o)
    g = _rand((b, o), 4)
    dx, dW = np.empty((b, i), F32), np.empty((i, o), F32)

    def probe():
        np.matmul(x.T, g, out=dW)
        np.matmul(g, W.T, out=dx)
    benchmark.group = f"dense_backward relu {_id(shape)}"
    benchmark(probe)


# ============================================================================ activations
@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("shape", ELEM, ids=_id)
def test_activation_forward(benchmark, backend, shape, act):
    x = _rand(shape, 5)
    out = np.empty_like(x)
    benchmark.group = f"activation_forward {act} {_id(shape)}"
    benchmark(kernels.activation_forward, x, out, act)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("shape", ELEM, ids=_id)
def test_activation_backward(benchmark, backend, shape, act):
    y = np.tanh(_rand(shape, 6)) * F32(0.5) + F32(0.5)     # a valid output of every activation
    dout = _rand(shape, 7)
    dx = np.empty_like(y)
    benchmark.group = f"activation_backward {act} {_id(shape)}"
    benchmark(kernels.activation_backward, dout, y, dx, act)
    assert np.isfinite(dx).all()


# ============================================================================ softmax + loss
@pytest.mark.parametrize("shape", SOFTMAX, ids=_id)
def test_softmax_xent_forward(benchmark, backend, shape):
    b, c = shape
    logits = _rand(shape, 8, 3.0)
    labels = np.random.default_rng(9).integers(0, c, b)
    probs = np.empty_like(logits)
    benchmark.group = f"softmax_xent_forward {_id(shape)}"
    loss = benchmark(kernels.softmax_xent_forward, logits, labels, probs)
    assert np.isfinite(loss)


@pytest.mark.parametrize("shape", SOFTMAX, ids=_id)
def test_softmax_xent_backward(benchmark, backend, shape):
    b, c = shape
    probs = np.full(shape, 1.0 / c, F32)
    labels = np.random.default_rng(9).integers(0, c, b)
    d = np.empty_like(probs)
    benchmark.group = f"softmax_xent_backward {_id(shape)}"
    benchmark(kernels.softmax_xent_backward, probs, labels, d)
    np.testing.assert_allclose(d.sum(1), 0, atol=1e-5)


# ============================================================================ batch norm
@pytest.mark.parametrize("shape", BN, ids=_id)
def test_batchnorm_forward_train(benchmark, backend, shape):
    b, f = shape
    x = _rand(shape, 10, 2.0)
    gamma, beta = np.ones(f, F32), np.zeros(f, F32)
    out, xhat = np.empty_like(x), np.empty_like(x)
    mean, invstd = np.empty(f, F32), np.empty(f, F32)
    rm, rv = np.zeros(f, F32), np.ones(f, F32)
    benchmark.group = f"batchnorm_forward_train {_id(shape)}"
    benchmark(kernels.batchnorm_forward_train, x, gamma, beta, out, xhat, mean, invstd, rm, rv)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-3)


@pytest.mark.parametrize("shape", BN, ids=_id)
def test_batchnorm_backward(benchmark, backend, shape):
    b, f = shape
    xhat = _rand(shape, 11)
    dout = _rand(shape, 12)
    gamma, invstd = np.ones(f, F32), np.ones(f, F32)
    dx, dg, db = np.empty_like(xhat), np.empty(f, F32), np.empty(f, F32)
    benchmark.group = f"batchnorm_backward {_id(shape)}"
    benchmark(kernels.batchnorm_backward, dout, xhat, gamma, invstd, dx, dg, db)
    np.testing.assert_allclose(db, dout.sum(0), rtol=1e-3, atol=1e-3)


# ============================================================================ dropout
@pytest.mark.parametrize("shape", ELEM, ids=_id)
def test_dropout_mask_and_apply(benchmark, backend, shape):
    x = _rand(shape, 13)
    mask = np.empty(shape, np.uint8)
    out = np.empty_like(x)
    counter = [0]

    def step():
        kernels.dropout_mask(mask, 0.5, 7, counter[0])
        counter[0] += mask.size
        kernels.dropout_apply(x, mask, 2.0, out)
    benchmark.group = f"dropout mask+apply p=0.5 {_id(shape)}"
    benchmark(step)
    assert 0.4 < mask.mean() < 0.6


# ============================================================================ norms
@pytest.mark.parametrize("n", _grid([10 ** 6], [10 ** 4, 10 ** 5, 10 ** 7]))
def test_sumsq(benchmark, backend, n):
    x = _rand((n,), 14)
    benchmark.group = f"sumsq n={n:.0e}"
    s = benchmark(kernels.sumsq, x)
    assert s == pytest.approx(float(np.dot(x.astype(np.float64), x)), rel=1e-6)
