"""The cached update plan of ``Optimizer.update`` (fast path) gives the validated path's results
and falls back to it whenever an array, the state, the backend or the decay selection changes."""
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


@pytest.mark.parametrize("name,kw", OPTS)
def test_plan_path_bit_identical_to_validated_path(backend, dtype, name, kw):
    pa, g = _problem(dtype)
    pb = {k: v.copy() for k, v in pa.items()}
    a, b = optim.get(name, **kw), optim.get(name, **kw)
    for i in range(5):
        a.update(pa, g)                    # plan path from the second call on
        b._full_update(pb, g)              # always the validated path
        for k in g:
            g[k] *= dtype.type(-0.9)
    assert a._plan is not None
    assert a.steps == b.steps == 5 and a.last_grad_norm == b.last_grad_norm
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
        for s, v in a.state[k].items():
            np.testing.assert_array_equal(v, b.state[k][s])


def test_plan_falls_back_when_arrays_or_state_change(backend):
    p, g = _problem(np.float32)
    opt = optim.Adam()
    opt.update(p, g)
    opt.update(p, g)
    plan = opt._plan
    assert plan is not None
    g2 = dict(g)
    g2["l0.W"] = g["l0.W"].copy()                 # a new gradient object: rebuilt plan
    opt.update(p, g2)
    assert opt._plan is not plan and opt._plan[3][0][2] is g2["l0.W"]
    opt.load_state_dict(opt.state_dict(), p)      # new state arrays: plan no longer applies
    old = opt._plan
    opt.update(p, g2)
    assert opt._plan is not old and opt._plan[4] is opt.state
    assert opt.state["l0.W"]["step"] == 4


def test_plan_keeps_checks(backend):
    p, g = _problem(np.float64)
    opt = optim.SGD(momentum=0.9)
    opt.update(p, g)
    opt.update(p, g)
    before = {k: v.copy() for k, v in p.items()}
    opt.momentum = 1.5                            # set directly, bypassing the constructor check
    with pytest.raises(ValueError, match="mu"):
        opt.update(p, g)                          # plan path: rejected before any change
    opt.momentum = 0.9
    p["l1.b"].flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        opt.update(p, g)
    p["l1.b"].flags.writeable = True
    g["l1.W"][0, 0] = np.nan
    with pytest.raises(optim.NonFiniteGradientError) as e:
        opt.update(p, g)
    assert e.value.param == "l1.W"
    for k in p:
        np.testing.assert_array_equal(p[k], before[k])
    assert opt.steps == 2


def test_plan_follows_decay_selection_and_backend():
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
        assert a._plan[0] is dlfast.kernels._impl()
    assert not math.isnan(a.steps)


@pytest.mark.parametrize("name,kw", OPTS)
def test_plan_runs_one_fused_update(backend, name, kw):
    """The plan binds every tensor into one ``kernels.bind_update`` (2 backend calls a step)."""
    p, g = _problem(np.float32)
    opt = optim.get(name, **kw)
    opt.update(p, g)
    bound = opt._plan[6][0]
    assert bound.size == sum(a.size for a in p.values())
    calls = []
    real = bound._b
    bound._b = type("Spy", (), {"sumsq": lambda s: calls.append("sumsq") or real.sumsq(),
                                "update": lambda s, *a: calls.append("update") or real.update(*a)})()
    opt.update(p, g)
    expect = ["update"] if not opt.check_finite and opt.clip_norm is None else ["sumsq", "update"]
    assert calls == expect


def test_plan_follows_hyperparameter_changes_and_uneven_counters(backend):
    """A momentum schedule re-sets the bound hyperparameters; Adam parameters with different
    step counts (one added later) update tensor by tensor; results stay the validated path's."""
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
    assert a._plan is not None
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
