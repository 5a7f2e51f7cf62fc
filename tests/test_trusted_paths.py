"""Dense layers skip the kernel checks (``check=False``) only on repeat calls with the same,
already validated arrays; results equal the validated calls, and anything unusual is validated."""
import numpy as np
import pytest

from dlfast import kernels
from dlfast.layers import Dense


def _spy(monkeypatch, name):
    real = getattr(kernels, name)
    checks = []

    def spy(*a, check=True, **k):
        checks.append(check)
        return real(*a, check=check, **k)

    monkeypatch.setattr(kernels, name, spy)
    return checks


def test_dense_trusted_calls_match_validated(backend, dtype, monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 5)).astype(dtype)
    dout = rng.standard_normal((7, 3)).astype(dtype)
    a = Dense(5, 3, "leaky_relu", dtype=dtype, seed=0)
    b = Dense(5, 3, "leaky_relu", dtype=dtype, seed=0)
    fchecks, bchecks = _spy(monkeypatch, "dense_forward"), _spy(monkeypatch, "dense_backward")
    for _ in range(3):
        ya = a.forward(x).copy()
        dxa = a.backward(dout).copy()
        b._fkey = b._bkey = None                  # b: always the validated call
        yb = b.forward(x).copy()
        b._fkey = b._bkey = None
        dxb = b.backward(dout).copy()
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(dxa, dxb)
        np.testing.assert_array_equal(a.grads["W"], b.grads["W"])
        np.testing.assert_array_equal(a.grads["b"], b.grads["b"])
    assert fchecks[::2] == [True, False, False] and bchecks[::2] == [True, False, False]


def test_dense_validates_new_or_aliased_arrays(backend, monkeypatch):
    layer = Dense(4, 4, "relu", seed=0)
    x = np.ones((3, 4), np.float32)
    checks = _spy(monkeypatch, "dense_forward")
    layer.forward(x)
    layer.forward(x)
    layer.params["W"] = layer.params["W"].copy()          # a new W: validated again
    layer.forward(x)
    big = np.ones((6, 4), np.float32)
    layer.forward(big[:3])                                 # a view: validated
    out = layer.forward(x)
    with pytest.raises(ValueError, match="overlaps"):
        layer.forward(out)                                 # x is the layer's own output buffer
    assert checks == [True, False, True, True, False, True]
    layer.params["W"] = np.asfortranarray(layer.params["W"])  # non-contiguous W: validated copy
    np.testing.assert_array_equal(layer.forward(x), np.maximum(x @ layer.params["W"], 0))
