"""Layers skip the kernel checks (``check=False``) only on repeat calls like an already validated
one (Layer._untrusted); results equal the validated calls, and anything unusual is validated."""
import numpy as np
import pytest

import dlfast
from dlfast import kernels
from dlfast.layers import (ELU, BatchNorm, Dense, Dropout, LeakyReLU, PReLU, ReLU,
                           SoftmaxCrossEntropy)
from dlfast.net import MLP


def _spy(monkeypatch, name):
    real = getattr(kernels, name)
    checks = []

    def spy(*a, check=True, **k):
        checks.append(check)
        return real(*a, check=check, **k)

    monkeypatch.setattr(kernels, name, spy)
    return checks


def _forget(*layers):
    """Make the next kernel calls of ``layers`` validated ones."""
    for layer in layers:
        layer._trust.clear()


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
        _forget(b)                                # b: always the validated call
        yb = b.forward(x).copy()
        _forget(b)
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
    layer.forward(big[:3])                                 # a view overlapping no output
    out = layer.forward(x)
    with pytest.raises(ValueError, match="overlaps"):
        layer.forward(out)                                 # x is the layer's own output buffer
    with pytest.raises(ValueError, match="overlaps"):
        layer.forward(out[:])                              # a view of it
    layer.alpha = 1                                        # a setting of another type
    layer.forward(x)
    assert checks == [True, False, True, False, False, True, True, True]
    layer.params["W"] = np.asfortranarray(layer.params["W"])  # non-contiguous W: validated copy
    np.testing.assert_array_equal(layer.forward(x), np.maximum(x @ layer.params["W"], 0))
    assert checks[-1] is True


def test_dense_validates_read_only_or_reshaped_arrays(backend):
    layer = Dense(4, 4, seed=0)
    x = np.ones((2, 4), np.float32)
    out = layer.forward(x)
    layer.forward(x)
    out.flags.writeable = False                            # the returned buffer, made read-only
    with pytest.raises(ValueError, match="out must be writeable"):
        layer.forward(x)
    layer.backward(np.ones((2, 4), np.float32))
    layer.params["W"].shape = (2, 8)                       # W reshaped in place
    with pytest.raises(ValueError, match="W must have shape"):
        layer.backward(np.ones((2, 4), np.float32))


def _run(layer, x, dout, train=True):
    y = layer.forward(x, train).copy()
    dx = layer.backward(dout)
    return y, None if dx is None else dx.copy(), {k: g.copy() for k, g in layer.grads.items()}


def _assert_runs_equal(ra, rb):
    for a, b in zip(ra[:2], rb[:2]):
        np.testing.assert_array_equal(a, b)
    for k in ra[2]:
        np.testing.assert_array_equal(ra[2][k], rb[2][k])


@pytest.mark.parametrize("make, kernel_names", [
    (lambda dt: BatchNorm(6, dtype=dt), ("batchnorm_forward_train", "batchnorm_backward")),
    (lambda dt: BatchNorm(6, textbook=True, dtype=dt),
     ("batchnorm_forward_train", "batchnorm_backward")),
    (lambda dt: Dropout(0.3, seed=5, dtype=dt), ("dropout_mask", "dropout_apply")),
    (lambda dt: ReLU(dtype=dt), ("activation_forward", "activation_backward")),
    (lambda dt: LeakyReLU(0.2, dtype=dt), ("activation_forward", "activation_backward")),
    (lambda dt: ELU(dtype=dt), ("activation_forward", "activation_backward")),
    (lambda dt: PReLU(6, dtype=dt), ("prelu_forward", "prelu_backward")),
], ids=["bn", "bn_textbook", "dropout", "relu", "leaky", "elu", "prelu"])
def test_layer_trusted_calls_match_validated(backend, dtype, monkeypatch, make, kernel_names):
    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((n, 6)).astype(dtype), rng.standard_normal((n, 6)).astype(dtype))
               for n in (5, 5, 5, 8)]                      # a new batch size: validated again
    a, b = make(dtype), make(dtype)
    checks = [_spy(monkeypatch, n) for n in kernel_names]
    runs = [_run(a, x, dout) for x, dout in batches]
    for c in checks:                                       # validated in steps 0 and 3 only
        per_step = len(c) // 4
        assert c == [s in (0, 3) for s in range(4) for _ in range(per_step)]
    for ra, (x, dout) in zip(runs, batches):
        _forget(b)
        _assert_runs_equal(ra, _run(b, x, dout))
    for k, v in a._buffers().items():
        np.testing.assert_array_equal(v, b._buffers()[k])


def test_dropout_eval_train_and_given_masks(backend, dtype):
    rng = np.random.default_rng(5)
    a, b = Dropout(0.4, seed=1, dtype=dtype), Dropout(0.4, seed=1, dtype=dtype)
    x = rng.standard_normal((4, 3)).astype(dtype)
    dout = rng.standard_normal((4, 3)).astype(dtype)
    mask = (rng.random((4, 3)) > 0.5).astype(np.uint8)
    for train, m in [(True, None), (False, None), (True, mask), (True, None), (False, None)] * 2:
        ya, dxa = a.forward(x, train, mask=m).copy(), a.backward(dout).copy()
        _forget(b)
        yb = b.forward(x, train, mask=m).copy()
        _forget(b)
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(dxa, b.backward(dout))
    assert a.counter == b.counter == 4 * 12


def test_dropout_validates_seed_and_counter(backend, monkeypatch):
    layer = Dropout(0.5, seed=3)
    x = np.ones((2, 3), np.float32)
    checks = _spy(monkeypatch, "dropout_mask")
    layer.forward(x)
    layer.forward(x)
    layer.counter = 2 ** 64 - 1                            # in range, not after this call
    layer.forward(x)
    with pytest.raises(ValueError, match="counter must lie in"):
        layer.forward(x)
    layer.counter = np.uint64(6)                           # not an int: validated
    layer.forward(x)
    layer.counter = 12
    layer.seed = 3.0
    with pytest.raises(TypeError, match="seed must be an integer"):
        layer.forward(x)
    layer.seed = 3
    layer.p = 1.0
    with pytest.raises(ValueError, match="p must lie in"):
        layer.forward(x)
    assert checks == [True, False, False, True, True, True, True]


def test_batchnorm_validates_changed_state(backend, monkeypatch):
    bn = BatchNorm(3)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    checks = _spy(monkeypatch, "batchnorm_forward_train")
    bn.forward(x)
    bn.forward(x)
    bn.running_var.flags.writeable = False
    with pytest.raises(ValueError, match="running_var must be writeable"):
        bn.forward(x)
    bn.running_var = bn.running_var.copy()                 # a new array
    bn.forward(x)
    bn.eps = 0.0
    with pytest.raises(ValueError, match="eps must lie in"):
        bn.forward(x)
    bn.eps = 1e-5
    bn.momentum = 1.5
    with pytest.raises(ValueError, match="momentum must lie in"):
        bn.forward(x)
    bn.momentum = 0.1
    bn.forward(x)
    assert checks == [True, False, True, True, True, True, False]
    bn.forward(x, train=False)
    bn.running_var[0] = -1.0                               # eval mode: always checked
    with pytest.raises(ValueError, match="running_var must be >= 0"):
        bn.forward(x, train=False)


def test_activation_validates_aliased_buffers(backend):
    relu = ReLU()
    x = np.ones((2, 3), np.float32)
    out = relu.forward(x)
    relu.forward(x)
    with pytest.raises(ValueError, match="overlaps"):
        relu.forward(out[:])                               # a view of its own output
    dx = relu.backward(np.ones((2, 3), np.float32))
    relu.backward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="overlaps"):
        relu.backward(dx)


def test_loss_trusts_only_labels_of_its_own(backend, dtype, monkeypatch):
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((5, 4)).astype(dtype)
    t = np.array([0, 3, 1, 2, 3])                          # int64: the layer uses t itself
    fchecks = _spy(monkeypatch, "softmax_xent_forward")
    bchecks = _spy(monkeypatch, "softmax_xent_backward")
    a, b = SoftmaxCrossEntropy(dtype=dtype), SoftmaxCrossEntropy(dtype=dtype)
    for labels in (t, t.astype(np.int32), t, np.eye(4, dtype=np.int8)[t]):
        la = a.forward(logits, labels)
        ga = a.backward(0.5).copy()
        _forget(b)
        assert b.forward(logits, labels) == la
        _forget(b)
        np.testing.assert_array_equal(b.backward(0.5), ga)
    assert fchecks[::2] == [True, False, False, False]
    assert bchecks[::2] == [True, False, True, False]       # t's labels: always checked
    a.forward(logits, t)
    t[0] = 7                                               # changed before backward
    with pytest.raises(ValueError, match="labels must lie in"):
        a.backward()


def test_net_trusted_steps_match_validated(backend, dtype, monkeypatch):
    kw = dict(batchnorm=True, dropout=0.3, dtype=dtype, seed=2)
    a, b = MLP(6, [5, 4], 3, **kw), MLP(6, [5, 4], 3, **kw)
    rng = np.random.default_rng(7)
    data = rng.standard_normal((12, 6)).astype(dtype)
    labels = rng.integers(0, 3, 12)
    checks = _spy(monkeypatch, "softmax_xent_backward")
    for i in range(4):
        x, t = data[3 * i:3 * i + 3], labels[3 * i:3 * i + 3]     # views, as a loader gives
        la, ga = a.loss_and_gradient(x, t)
        ga = {k: v.copy() for k, v in ga.items()}
        _forget(*b.layers, b.loss_layer)
        b._bound = None                                          # b: always the checked path
        lb, gb = b.loss_and_gradient(x, t)
        assert la == lb and ga.keys() == gb.keys()
        for k in ga:
            np.testing.assert_array_equal(ga[k], gb[k])
        for k, v in a.state_dict().items():
            np.testing.assert_array_equal(v, b.state_dict()[k])
    # a's first step and b's four call the checked kernels; a's later steps are bound
    # (dlfast._bound: no kernels.* calls at all)
    assert checks == [True] * 5 and a._bound.runnable


def test_backend_change_is_validated(monkeypatch):
    relu = ReLU()
    x = np.ones((2, 3), np.float32)
    checks = _spy(monkeypatch, "activation_forward")
    for name in ("numpy", "numpy", *dlfast.available_backends()[1:], "numpy"):
        with dlfast.use_backend(name):
            relu.forward(x)
    assert checks[:2] == [True, False] and all(checks[2:])


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_drop_trust_and_validate_again(backend, how, monkeypatch):
    import copy
    import pickle
    layer = Dense(4, 3, "relu", seed=0)
    x = np.ones((2, 4), np.float32)
    layer.forward(x)
    layer.forward(x)                                       # trusted from here on
    clone = copy.deepcopy(layer) if how == "deepcopy" else pickle.loads(pickle.dumps(layer))
    assert not clone._trust
    checks = _spy(monkeypatch, "dense_forward")
    np.testing.assert_array_equal(clone.forward(x), layer.forward(x))
    clone.forward(x)
    assert checks == [True, False, False]                  # clone validated once, then trusted
