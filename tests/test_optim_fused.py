"""The fused update of ``Optimizer.update`` (its parameters and state bound once, the gradients
taken from whatever dict holds them) gives the validated path's results, and falls back to it
whenever an array, the state, the backend or the decay selection changes, or a gradient does not
fit."""
import math

import numpy as np
import pytest

import dlfast
from dlfast import optim


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"l0.W": (7, 5), "l0.b": (5,), "l1.W": (5, 3), "l1.b": (3,)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    return params, grads


OPTS = [("sgd", {}), ("momentum", {}), ("nesterov", {"weight_decay": 0.1}), ("adagrad", {}),
        ("rmsprop", {"clip_value": 0.5}), ("adam", {"clip_norm": 1.0}), ("adamw", {}),
        ("adam", {"eps_hat": True, "weight_decay": 0.01, "check_finite": False})]


@pytest.fixture
def full(monkeypatch):
    """Counts the validated (full) updates."""
    count = [0]
    real = optim.Optimizer._full_update

    def counted(self, *args):
        count[0] += 1
        return real(self, *args)

    monkeypatch.setattr(optim.Optimizer, "_full_update", counted)
    return count


@pytest.mark.parametrize("fresh", [False, True], ids=["same-dict", "new-dict-each-step"])
@pytest.mark.parametrize("name,kw", OPTS)
def test_fused_path_bit_identical_to_validated_path(backend, dtype, name, kw, fresh, full):
    """The README loop hands the optimiser a new dict of new arrays every step
    (``net.gradient``): it takes the fused path all the same."""
    pa, g = _problem(dtype)
    pb = {k: v.copy() for k, v in pa.items()}
    a, b = optim.get(name, **kw), optim.get(name, **kw)
    for i in range(5):
        a.update(pa, {k: v.copy() for k, v in g.items()} if fresh else g)
        b._full_update(pb, g)              # always the validated path
        for k in g:
            g[k] *= dtype.type(-0.9)
    assert a._binding is not None and full[0] == 1 + 5
    assert a.steps == b.steps == 5 and a.last_grad_norm == b.last_grad_norm
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
        for s, v in a.state[k].items():
            np.testing.assert_array_equal(v, b.state[k][s])


def test_fused_path_falls_back_when_arrays_or_state_change(backend, full):
    p, g = _problem(np.float32)
    opt = optim.Adam()
    opt.update(p, g)
    opt.update(p, g)
    binding = opt._binding
    assert binding is not None and full[0] == 1
    opt.update(p, {k: v.copy() for k, v in g.items()})     # new gradient arrays: still fused
    assert opt._binding is binding and full[0] == 1
    p["l0.W"] = p["l0.W"].copy()                  # a replaced parameter: validated, bound again
    opt.update(p, g)
    assert opt._binding is not binding and full[0] == 2
    opt.load_state_dict(opt.state_dict(), p)      # new state arrays: validated, bound again
    old = opt._binding
    opt.update(p, g)
    assert opt._binding is not old and opt._binding.state is opt.state and full[0] == 3
    opt.update(p, {k: v for k, v in g.items() if k != "l1.b"})     # fewer gradients: validated
    assert full[0] == 4
    assert opt.state["l0.W"]["step"] == 6 and opt.state["l1.b"]["step"] == 5


def test_fused_path_keeps_checks(backend):
    p, g = _problem(np.float64)
    opt = optim.SGD(momentum=0.9)
    opt.update(p, g)
    opt.update(p, g)
    before = {k: v.copy() for k, v in p.items()}
    opt.momentum = 1.5                            # set directly, bypassing the constructor check
    with pytest.raises(ValueError, match="mu"):
        opt.update(p, g)                          # fused path: rejected before any change
    opt.momentum = 0.9
    p["l1.b"].flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        opt.update(p, g)
    p["l1.b"].flags.writeable = True
    g["l1.W"][0, 0] = np.nan
    with pytest.raises(optim.NonFiniteGradientError) as e:
        opt.update(p, g)
    assert e.value.param == "l1.W"
    g["l1.W"][0, 0] = 0.5
    for bad, match in ((p["l0.W"], "overlaps"), (p["l0.W"][:, :], "overlaps"),
                       (g["l0.W"].astype(np.float32), "dtype"), (g["l0.W"].T.copy(), "shape")):
        with pytest.raises((ValueError, TypeError), match=match):
            opt.update(p, {**g, "l0.W": bad})
    with pytest.raises(KeyError):
        opt.update(p, {**g, "nope": g["l0.W"]})
    for k in p:
        np.testing.assert_array_equal(p[k], before[k])
    assert opt.steps == 2


def test_gradients_that_do_not_fit_take_the_validated_path(backend, full):
    """Non-contiguous gradients, or views of another gradient array, are valid: they take the
    validated path (with its per-tensor kernels) and give the same results."""
    pa, g = _problem(np.float64)
    pb = {k: v.copy() for k, v in pa.items()}
    a, b = optim.Adam(), optim.Adam()
    a.update(pa, g), b._full_update(pb, g)
    big = np.zeros((7, 10))
    big[:, ::2] = g["l0.W"]
    strided = {**g, "l0.W": big[:, ::2]}
    a.update(pa, strided), b._full_update(pb, strided)
    a.update(pa, g), b._full_update(pb, g)
    assert full[0] == 3 + 3                        # a: every step validated (b: always)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])


def test_fused_path_follows_decay_selection_and_backend():
    p, g = _problem(np.float64)
    pb = {k: v.copy() for k, v in p.items()}
    a, b = optim.SGD(weight_decay=0.5), optim.SGD(weight_decay=0.5)
    a.update(p, g), b._full_update(pb, g)
    a.exclude = b.exclude = ("l1.*",)
    a.update(p, g), b._full_update(pb, g)
    for k in p:
        np.testing.assert_array_equal(p[k], pb[k])
    with dlfast.use_backend("numpy"):
        a.update(p, g)
        assert a._binding.impl is dlfast.kernels._impl()
    assert not math.isnan(a.steps)


@pytest.mark.parametrize("name,kw", OPTS)
def test_one_fused_update_a_step(backend, name, kw):
    """Every tensor is bound into one ``kernels.bind_update``: one backend call a step
    (``BoundUpdate.step``: the checks, the norm pass when needed, the update)."""
    p, g = _problem(np.float32)
    opt = optim.get(name, **kw)
    opt.update(p, g)
    bound = opt._binding.bound
    assert bound.size == sum(a.size for a in p.values())
    calls = []
    real = bound._b
    bound._b = type("Spy", (), {"step": lambda s, *a: calls.append(a[6]) or real.step(*a)})()
    opt.update(p, {k: v.copy() for k, v in g.items()})
    assert calls == [opt.check_finite or opt.clip_norm is not None]     # its ``norm`` argument


def test_fused_path_follows_hyperparameter_changes_and_uneven_counters(backend):
    """A momentum schedule re-sets the bound hyperparameters; Adam parameters with different
    step counts (one added later) take the validated path; results stay the validated path's."""
    pa, g = _problem(np.float64)
    pb = {k: v.copy() for k, v in pa.items()}
    a, b = optim.SGD(momentum=0.5), optim.SGD(momentum=0.5)
    for mu in (0.5, 0.6, 0.7, 0.7, 0.0):
        a.momentum = b.momentum = mu
        a.update(pa, g)
        b._full_update(pb, g)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    pa, g = _problem(np.float32)
    pb = {k: v.copy() for k, v in pa.items()}
    a, b = optim.Adam(), optim.Adam()
    first = {k: v for k, v in g.items() if k != "l1.b"}
    a.update(pa, first), b._full_update(pb, first)
    for _ in range(3):
        a.update(pa, g), b._full_update(pb, g)
    assert a.state["l1.b"]["step"] == 3 and a.state["l0.W"]["step"] == 4
    assert a._binding is None
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])


def test_fused_path_checks_the_state_dicts_contents(backend, full):
    """A state array replaced inside a parameter's state dict, an edited step counter, or
    momentum switched on for plain SGD: the validated path (whose results are the reference),
    never an update of the arrays bound before."""
    p, g = _problem(np.float64)
    ref = {k: v.copy() for k, v in p.items()}
    a, b = optim.Adam(), optim.Adam()
    for _ in range(2):
        a.update(p, g), b._full_update(ref, g)
    n = full[0]
    a.state["l0.b"]["m"] = a.state["l0.b"]["m"].copy()
    b.state["l0.b"]["m"] = b.state["l0.b"]["m"].copy()
    a.update(p, g), b._full_update(ref, g)
    assert full[0] == n + 2                     # (b's own call counts too)
    a.update(p, g), b._full_update(ref, g)      # bound again: fused
    assert full[0] == n + 3
    for st in (a.state, b.state):
        st["l1.W"]["step"] = 7                  # counters that differ
    a.update(p, g), b._full_update(ref, g)
    assert full[0] == n + 5
    assert a.state["l1.W"]["step"] == 8 and a.state["l0.W"]["step"] == 5
    for k in p:
        np.testing.assert_array_equal(p[k], ref[k])
    p, g = _problem(np.float32)
    ref = {k: v.copy() for k, v in p.items()}
    a, b = optim.SGD(lr=0.1), optim.SGD(lr=0.1)
    for mu in (0.0, 0.0, 0.9, 0.9):
        a.momentum = b.momentum = mu
        a.update(p, g), b._full_update(ref, g)
    assert "v" in a.state["l0.W"]
    for k in p:
        np.testing.assert_array_equal(p[k], ref[k])
