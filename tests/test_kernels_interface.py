"""The kernel interface itself: every backend implements every primitive, and the wrapper rejects
bad arguments with clear errors before any backend code runs (on every backend)."""
import math

import numpy as np
import pytest

import dlfast
from dlfast import kernels as K
from dlfast._backends import numpy_kernels


def test_numpy_backend_implements_every_kernel():
    missing = [n for n in K.KERNELS if not callable(getattr(numpy_kernels, n, None))]
    assert missing == []


def test_every_available_backend_implements_every_kernel():
    for name in dlfast.available_backends():
        with dlfast.use_backend(name) as mod:
            assert mod.NAME == name == dlfast.get_backend()
            assert [n for n in K.KERNELS if not callable(getattr(mod, n, None))] == []


def test_backend_selection_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        dlfast.set_backend("torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        with dlfast.use_backend("fortran"):
            pass


def test_use_backend_restores():
    before = dlfast.get_backend()
    with dlfast.use_backend("numpy"):
        assert dlfast.get_backend() == "numpy"
    assert dlfast.get_backend() == before
    with pytest.raises(KeyError):                       # restored on an exception too
        with dlfast.use_backend("numpy"):
            raise KeyError("x")
    assert dlfast.get_backend() == before
    ctx = dlfast.use_backend("numpy")                   # one instance entered twice, nested
    with ctx:
        with ctx:
            assert dlfast.get_backend() == "numpy"
        assert dlfast.get_backend() == "numpy"
    assert dlfast.get_backend() == before


def test_use_backend_decorates_a_function_in_every_thread():
    """Two threads inside the decorated function at once (a barrier): each call has its own
    context manager, so neither resets the other's backend."""
    import threading
    inside = threading.Barrier(2, timeout=10)

    @dlfast.use_backend("numpy")
    def which():
        inside.wait()
        name = dlfast.get_backend()
        inside.wait()
        return name

    before = dlfast.get_backend()
    seen, errors = [], []

    def worker():
        try:
            seen.extend(which() for _ in range(20))
        except Exception as exc:                        # pragma: no cover (reported below)
            errors.append(exc)
            inside.abort()
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and seen == ["numpy"] * 40 and dlfast.get_backend() == before


def test_set_num_threads_validates():
    with pytest.raises(ValueError, match="n must be >= 0"):
        dlfast.set_num_threads(-1)
    dlfast.set_num_threads(1)
    try:
        assert dlfast.get_num_threads() == 1
    finally:
        dlfast.set_num_threads(0)
    assert dlfast.get_num_threads() >= 1


def _dense_args(dt=np.float32, n=4, i=3, o=5):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, i)).astype(dt), rng.standard_normal((i, o)).astype(dt),
            np.zeros(o, dt), np.empty((n, o), dt))


def test_dense_forward_rejects_bad_input(backend):
    x, W, b, out = _dense_args()
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int64"):
        K.dense_forward(x.astype(np.int64), W, b, out)
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got object"):
        K.dense_forward(x.astype(object), W, b, out)
    with pytest.raises(TypeError, match="mixed dtypes"):
        K.dense_forward(x, W.astype(np.float64), b, out)
    with pytest.raises(ValueError, match=r"W must have shape \(3, out_features\)"):
        K.dense_forward(x, W.T.copy(), b, out)
    with pytest.raises(ValueError, match="x must be 2-D"):
        K.dense_forward(x[0], W, b, out)
    with pytest.raises(ValueError, match=r"b must have shape \(5,\)"):
        K.dense_forward(x, W, b[:4], out)
    with pytest.raises(ValueError, match=r"out must have shape \(4, 5\)"):
        K.dense_forward(x, W, b, out[:3])
    with pytest.raises(TypeError, match="out must have dtype float32"):
        K.dense_forward(x, W, b, out.astype(np.float64))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        K.dense_forward(x, W, b, np.empty((5, 4), np.float32).T)
    ro = out.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        K.dense_forward(x, W, b, ro)
    with pytest.raises(ValueError, match="activation must be one of"):
        K.dense_forward(x, W, b, out, "swish")
    with pytest.raises(ValueError, match="alpha must be > 0 for elu"):
        K.dense_forward(x, W, b, out, "elu", 0.0)
    with pytest.raises(ValueError, match="alpha must be >= 0 for leaky_relu"):
        K.dense_forward(x, W, b, out, "leaky_relu", -0.1)


def test_outputs_may_not_alias_inputs(backend):
    x = np.ones((4, 4), np.float32)
    W = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="output out overlaps x"):
        K.dense_forward(x, W, None, x)
    w = np.ones(6, np.float32)
    with pytest.raises(ValueError, match="output w overlaps g"):
        K.sgd_update(w, w, lr=0.1)
    m = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match="output m overlaps v"):
        K.adam_update(w, np.ones(6, np.float32), m, m, lr=0.1, step=1)
    # several outputs (each owning its memory): an output given as an input is caught, one input
    # given twice is allowed
    dout, y = np.ones((4, 4), np.float32), np.ones((4, 4), np.float32)
    dz, dx, dW, db = (np.empty_like(y), np.empty_like(x), np.empty_like(W),
                      np.empty(4, np.float32))
    with pytest.raises(ValueError, match="output dz overlaps dout"):
        K.dense_backward(dout, x, W, y, dout, dx, dW, db)
    with pytest.raises(ValueError, match="output dW overlaps W"):
        K.dense_backward(dout, x, W, y, dz, dx, W, db)
    with pytest.raises(ValueError, match="output dz overlaps dx"):
        K.dense_backward(dout, x, W, y, dz, dz, dW, db)
    K.dense_backward(y, x, W, y, dz, None, dW, db)


def test_inputs_may_be_noncontiguous_and_readonly(backend):
    rng = np.random.default_rng(1)
    xf = np.asfortranarray(rng.standard_normal((6, 3)))
    W = rng.standard_normal((6, 3))[::2]          # strided rows
    W.flags.writeable = False
    out = np.empty((6, 3))
    K.dense_forward(xf, W, None, out)
    np.testing.assert_allclose(out, xf @ W, rtol=1e-12)


def test_labels_validated(backend):
    logits = np.zeros((3, 4), np.float32)
    probs = np.empty_like(logits)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        K.softmax_xent_forward(logits, np.array([0, 4, 1]), probs)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        K.softmax_xent_forward(logits, np.array([0, -1, 1]), probs)
    with pytest.raises(TypeError, match="labels must be an integer array"):
        K.softmax_xent_forward(logits, np.array([0.0, 1.0, 1.0]), probs)
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        K.softmax_xent_forward(logits, np.array([0, 1]), probs)
    assert math.isclose(K.softmax_xent_forward(logits, np.array([0, 1, 3], np.uint8), probs),
                        math.log(4), rel_tol=1e-6)


@pytest.mark.parametrize("bad", [4, -1, np.iinfo(np.int64).max, np.iinfo(np.int64).min])
@pytest.mark.parametrize("row", [0, 6])
def test_backend_loss_kernels_check_the_label_range(backend, bad, row):
    """The backends' own loss kernels (called unchecked, as the training engine's ops do) check
    the labels' range: an out-of-range label would index outside a row."""
    logits = np.zeros((7, 4), np.float32)
    labels = np.array([1, 0, 3, 2, 1, 0, 3], np.int64)
    labels[row] = bad
    probs = np.full_like(logits, 7.0)
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, 4\), got {bad} in row {row}"):
        dlfast._config.active().softmax_xent_forward(logits, labels, probs)
    assert (probs == 7.0).all()                     # raised before writing
    dl = np.full_like(logits, 7.0)
    with pytest.raises(ValueError, match=rf"got {bad} in row {row}"):
        dlfast._config.active().softmax_xent_backward(probs, labels, dl, 1.0)
    assert (dl == 7.0).all()


def test_batchnorm_one_row_in_training_is_an_error(backend):
    f = 3
    x = np.ones((1, f), np.float32)
    v = lambda: np.zeros(f, np.float32)  # noqa: E731
    with pytest.raises(ValueError, match="at least 2 rows"):
        K.batchnorm_forward_train(x, v() + 1, v(), np.empty_like(x), np.empty_like(x), v(), v())


def test_hyperparameter_ranges(backend):
    w = np.ones(4, np.float32)
    g = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"p must lie in \[0.0, 1.0\)"):
        K.dropout_mask(np.empty(4, np.uint8), 1.0, 0, 0)
    with pytest.raises(ValueError, match=r"lr must lie in"):
        K.sgd_update(w, g, lr=-1.0)
    with pytest.raises(ValueError, match=r"lr must lie in"):
        K.sgd_update(w, g, lr=float("nan"))
    with pytest.raises(ValueError, match=r"beta2 must lie in"):
        K.adam_update(w, g, np.zeros(4, np.float32), np.zeros(4, np.float32), lr=0.1, beta2=1.0,
                      step=1)
    with pytest.raises(ValueError, match="step must be >= 1"):
        K.adam_update(w, g, np.zeros(4, np.float32), np.zeros(4, np.float32), lr=0.1, step=0)
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*64\)"):
        K.dropout_mask(np.empty(4, np.uint8), 0.5, -1, 0)
    with pytest.raises(TypeError, match="seed must be an integer"):
        K.dropout_mask(np.empty(4, np.uint8), 0.5, 1.5, 0)
    with pytest.raises(ValueError, match=r"c must lie in \(0.0"):
        K.max_norm(np.ones((2, 2), np.float32), 0.0)
    assert np.array_equal(w, np.ones(4, np.float32))


def test_random_streams_identical_across_backends():
    """The counter-based generator is part of the interface: same seed/counter, same bits."""
    outs = []
    for name in dlfast.available_backends():
        with dlfast.use_backend(name):
            m = K.dropout_mask(np.empty((7, 13), np.uint8), 0.3, 12345, 2**63 + 5)
            u = K.random_uniform(np.empty(101, np.float64), -1.0, 2.0, 2**64 - 1, 17)
            outs.append((m, u))
    for m, u in outs[1:]:
        assert np.array_equal(m, outs[0][0]) and np.array_equal(u, outs[0][1])


def test_random_counter_is_a_stream():
    """Drawing n then m numbers equals drawing n + m at once (counters advance by elements)."""
    for name in dlfast.available_backends():
        with dlfast.use_backend(name):
            whole = K.random_uniform(np.empty(50), 0.0, 1.0, 7, 100)
            a = K.random_uniform(np.empty(20), 0.0, 1.0, 7, 100)
            b = K.random_uniform(np.empty(30), 0.0, 1.0, 7, 120)
            assert np.array_equal(whole, np.concatenate([a, b]))
            assert 0.0 <= whole.min() and whole.max() < 1.0


def test_overlapping_views_are_rejected_and_disjoint_views_allowed(backend):
    base = np.zeros((8, 4))
    W = np.eye(4)
    with pytest.raises(ValueError, match="output out overlaps x"):
        K.dense_forward(base[:4], W, None, base[2:6])
    base[:4] = 1.0
    K.dense_forward(base[:4], W, None, base[4:])          # same buffer, disjoint halves
    np.testing.assert_array_equal(base[4:], np.ones((4, 4)))
    g = np.ones(6)
    buf = np.ones(12)
    w, v = buf[:6], buf[6:]                                # views (not owning memory), disjoint
    v[:] = 0
    K.momentum_update(w, g, v, lr=0.5)
    np.testing.assert_array_equal(w, np.full(6, 0.5))
    with pytest.raises(ValueError, match="output w overlaps v"):
        K.momentum_update(buf[:6], g, buf[3:9], lr=0.5)
