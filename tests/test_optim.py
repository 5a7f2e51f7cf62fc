"""dlfast.optim against the formulas of CONVENTIONS.md, written out here in plain float64 NumPy,
step by step, on both backends and both dtypes; non-finite gradients; state dicts; validation."""
import math

import numpy as np
import pytest

from dlfast import optim

TOL = {np.dtype(np.float32): dict(rtol=2e-4, atol=2e-6), np.dtype(np.float64): dict(rtol=1e-11, atol=1e-13)}
SHAPES = {"W1": (4, 3), "b1": (3,), "gamma1": (3,), "head.W": (2, 5), "head.b": (5,)}
STEPS = 6


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def make_grads(dtype, steps=STEPS, seed=1, scale=1.0, names=None):
    rng = np.random.default_rng(seed)
    return [{k: (scale * rng.standard_normal(s)).astype(dtype) for k, s in SHAPES.items()
             if names is None or k in names} for _ in range(steps)]


# ------------------------------------------------------------------------------- reference
DEFAULTS = {
    "sgd": dict(lr=0.01, momentum=0.0, nesterov=False),
    "momentum": dict(lr=0.01, momentum=0.9),
    "nesterov": dict(lr=0.01, momentum=0.9),
    "adagrad": dict(lr=0.01, eps=1e-10, eps_inside_sqrt=False),
    "rmsprop": dict(lr=0.01, rho=0.99, eps=1e-8, eps_inside_sqrt=False),
    "adam": dict(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, eps_hat=False),
    "adamw": dict(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, eps_hat=False),
}


def reference(kind, params, grads_seq, lrs=None, **kw):
    """The CONVENTIONS.md updates in float64, independent of dlfast. Returns (params, norms)."""
    hp = dict(DEFAULTS[kind])
    if "decay_rate" in kw:
        kw["rho"] = kw.pop("decay_rate")
    hp.update(kw)
    if kind == "sgd" and (hp["momentum"] or hp["nesterov"]):     # SGD(momentum=, nesterov=)
        kind = "nesterov" if hp["nesterov"] else "momentum"
    wd = hp.get("weight_decay", 0.01 if kind == "adamw" else 0.0)
    clip_norm, clip_value = hp.get("clip_norm"), hp.get("clip_value")
    w = {k: v.astype(np.float64) for k, v in params.items()}
    st = {}
    norms = []
    for i, grads in enumerate(grads_seq):
        lr = hp["lr"] if lrs is None else lrs[i]
        names = [k for k in w if k in grads]
        norm = math.sqrt(sum(float(np.sum(grads[k].astype(np.float64) ** 2)) for k in names))
        norms.append(norm)
        scale = clip_norm / (norm + 1e-6) if clip_norm is not None and norm > clip_norm else 1.0
        for k in names:
            g = grads[k].astype(np.float64) * scale
            if clip_value is not None:
                g = np.clip(g, -clip_value, clip_value)
            decays = k.split(".")[-1].startswith("W")
            lam = wd if decays else 0.0
            if kind != "adamw":
                g = g + lam * w[k]
            s = st.setdefault(k, {"v": np.zeros_like(w[k]), "h": np.zeros_like(w[k]),
                                  "m": np.zeros_like(w[k]), "t": 0})
            mu = hp.get("momentum", 0.0)
            if kind == "sgd":
                w[k] = w[k] - lr * g
            elif kind == "momentum":
                s["v"] = mu * s["v"] - lr * g
                w[k] = w[k] + s["v"]
            elif kind == "nesterov":
                s["v"] = mu * s["v"] - lr * g
                w[k] = w[k] + mu * s["v"] - lr * g
            elif kind in ("adagrad", "rmsprop"):
                if kind == "adagrad":
                    s["h"] = s["h"] + g * g
                else:
                    s["h"] = hp["rho"] * s["h"] + (1 - hp["rho"]) * g * g
                if hp["eps_inside_sqrt"]:
                    w[k] = w[k] - lr * g / np.sqrt(s["h"] + hp["eps"])
                else:
                    w[k] = w[k] - lr * g / (np.sqrt(s["h"]) + hp["eps"])
            else:
                if kind == "adamw":
                    w[k] = w[k] * (1 - lr * lam)
                b1, b2, eps = hp["beta1"], hp["beta2"], hp["eps"]
                s["t"] += 1
                t = s["t"]
                s["m"] = b1 * s["m"] + (1 - b1) * g
                s["v"] = b2 * s["v"] + (1 - b2) * g * g
                if hp["eps_hat"]:
                    w[k] = w[k] - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * s["m"] / (np.sqrt(s["v"]) + eps)
                else:
                    mhat = s["m"] / (1 - b1 ** t)
                    vhat = s["v"] / (1 - b2 ** t)
                    w[k] = w[k] - lr * mhat / (np.sqrt(vhat) + eps)
    return w, norms


def run(opt, params, grads_seq, lrs=None):
    norms = []
    for i, g in enumerate(grads_seq):
        if lrs is not None:
            opt.lr = lrs[i]
        opt.update(params, g)
        norms.append(opt.last_grad_norm)
    return norms


def assert_close(params, ref, dtype):
    for k, v in ref.items():
        assert params[k].dtype == dtype, k
        np.testing.assert_allclose(params[k], v, err_msg=k, **TOL[np.dtype(dtype)])


CASES = [
    ("sgd", {}),
    ("sgd", dict(lr=0.1, weight_decay=0.05)),
    ("sgd", dict(lr=0.05, momentum=0.8)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("momentum", {}),
    ("momentum", dict(lr=0.1, momentum=0.5, weight_decay=0.02)),
    ("nesterov", {}),
    ("nesterov", dict(lr=0.1, momentum=0.7, weight_decay=0.02)),
    ("adagrad", {}),
    ("adagrad", dict(lr=0.1, eps=1e-3, eps_inside_sqrt=True, weight_decay=0.1)),
    ("rmsprop", {}),
    ("rmsprop", dict(decay_rate=0.9, eps=1e-4, eps_inside_sqrt=True)),
    ("rmsprop", dict(rho=0.5, eps=0.1, weight_decay=0.3)),
    ("adam", {}),
    ("adam", dict(eps_hat=True)),
    ("adam", dict(lr=0.01, beta1=0.5, beta2=0.9, eps=0.05, weight_decay=0.1)),
    ("adam", dict(lr=0.01, beta1=0.5, beta2=0.9, eps=0.05, eps_hat=True)),
    ("adamw", {}),
    ("adamw", dict(lr=0.05, weight_decay=0.5, eps_hat=True)),
    ("adamw", dict(lr=0.05, weight_decay=0.5, eps=0.1, beta1=0.0)),
    # clipping: global norm, elementwise value, both, together with weight decay
    ("sgd", dict(lr=0.1, clip_norm=1.0)),
    ("sgd", dict(lr=0.1, clip_value=0.3)),
    ("momentum", dict(lr=0.1, clip_norm=2.0, clip_value=0.2, weight_decay=0.1)),
    ("adagrad", dict(lr=0.1, clip_value=0.5)),
    ("rmsprop", dict(clip_norm=0.5, weight_decay=0.05)),
    ("adam", dict(lr=0.01, clip_norm=0.5, clip_value=0.05, weight_decay=0.1)),
    ("adamw", dict(lr=0.01, clip_norm=1.5, weight_decay=0.2)),
]


@pytest.mark.parametrize("kind,kw", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_matches_formula(backend, dtype, kind, kw):
    params = make_params(dtype)
    p0 = {k: v.copy() for k, v in params.items()}
    grads = make_grads(dtype)
    opt = optim.get(kind, **kw)
    norms = run(opt, params, grads)
    ref, ref_norms = reference(kind, p0, grads, **kw)
    assert_close(params, ref, dtype)
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-12)    # float64 accumulation
    assert opt.steps == STEPS
    for k, st in opt.state.items():
        for name, a in st.items():
            if isinstance(a, np.ndarray):
                assert a.dtype == dtype and a.shape == params[k].shape, (k, name)


def test_options_change_the_result():
    """The reference forms really differ (so the tests above discriminate between them)."""
    p = make_params(np.float64)
    g = make_grads(np.float64, scale=1e-3)
    kw = dict(lr=0.01, eps=1e-3)
    a, _ = reference("adam", p, g, **kw)
    b, _ = reference("adam", p, g, eps_hat=True, **kw)
    c, _ = reference("adagrad", p, g, **kw)
    d, _ = reference("adagrad", p, g, eps_inside_sqrt=True, **kw)
    assert not np.allclose(a["W1"], b["W1"], rtol=1e-6, atol=0)
    assert not np.allclose(c["W1"], d["W1"], rtol=1e-6, atol=0)
    e, _ = reference("sgd", p, g, lr=0.1, clip_norm=1e-3)
    f, _ = reference("sgd", p, g, lr=0.1)
    assert not np.allclose(e["W1"], f["W1"], rtol=1e-6, atol=0)


def test_adam_first_step_is_lr_times_sign(backend, dtype):
    """Bias correction: at t = 1, mhat = g and vhat = g^2, so w moves by lr * g / (|g| + eps)."""
    w = np.array([1.0, -2.0, 3.0, 0.5], dtype)
    g = np.array([0.3, -4.0, 1e-2, -2.0], dtype)
    opt = optim.Adam(lr=0.1)
    p = {"W": w.copy()}
    opt.update(p, {"W": g})
    np.testing.assert_allclose(p["W"], w - 0.1 * np.sign(g), rtol=1e-5)


def test_weight_decay_excludes_biases_bn_and_slopes(backend, dtype):
    """Zero gradients: only the decay term acts, and only on names whose last part starts with W."""
    names = {"W1": (3, 2), "b1": (2,), "gamma1": (2,), "beta1": (2,), "slope1": (1,), "enc.W": (2, 2),
             "enc.b": (2,), "Wout": (2, 1)}
    for kind in optim.OPTIMIZERS:
        params = {k: np.full(s, 2.0, dtype) for k, s in names.items()}
        grads = {k: np.zeros(s, dtype) for k, s in names.items()}
        opt = optim.get(kind, lr=0.1, weight_decay=0.5)
        opt.update(params, grads)
        for k in names:
            if k in ("W1", "enc.W", "Wout"):
                assert np.all(params[k] < 2.0), (kind, k)
            else:
                assert np.all(params[k] == 2.0), (kind, k)
    assert optim.default_decay_filter("layer3.W") and not optim.default_decay_filter("W.b")


def test_decay_filter_and_exclude(backend):
    shapes = {"W1": (2, 2), "W2": (2, 2), "b1": (2,), "emb.Wx": (2,)}

    def after(**kw):
        params = {k: np.ones(s) for k, s in shapes.items()}
        optim.SGD(lr=0.1, weight_decay=1.0, **kw).update(params, {k: np.zeros(s) for k, s in shapes.items()})
        return {k: float(v.flat[0]) for k, v in params.items()}

    assert after() == {"W1": 0.9, "W2": 0.9, "b1": 1.0, "emb.Wx": 0.9}
    assert after(decay_filter=lambda n: True) == {"W1": 0.9, "W2": 0.9, "b1": 0.9, "emb.Wx": 0.9}
    assert after(decay_filter=lambda n: n == "b1") == {"W1": 1.0, "W2": 1.0, "b1": 0.9, "emb.Wx": 1.0}
    assert after(exclude=["W2", "emb.*"]) == {"W1": 0.9, "W2": 1.0, "b1": 1.0, "emb.Wx": 1.0}
    assert after(exclude="Wx") == {"W1": 0.9, "W2": 0.9, "b1": 1.0, "emb.Wx": 1.0}
    with pytest.raises(TypeError, match="decay_filter"):
        optim.SGD(decay_filter="W")
    with pytest.raises(TypeError, match="exclude"):
        optim.SGD(exclude=[1])


def test_adamw_decay_is_decoupled(backend, dtype):
    """AdamW with zero gradient: w *= (1 - lr*wd) exactly once per step; Adam's coupled decay
    instead goes through the moments (step of size ~lr)."""
    p = {"W": np.full(3, 2.0, dtype), "b": np.full(3, 2.0, dtype)}
    opt = optim.AdamW(lr=0.1, weight_decay=0.5)
    for _ in range(3):
        opt.update(p, {"W": np.zeros(3, dtype), "b": np.zeros(3, dtype)})
    np.testing.assert_allclose(p["W"], 2.0 * 0.95 ** 3, rtol=1e-6)
    assert np.all(p["b"] == 2.0)
    q = {"W": np.full(3, 2.0, dtype)}
    optim.Adam(lr=0.1, weight_decay=0.5).update(q, {"W": np.zeros(3, dtype)})
    np.testing.assert_allclose(q["W"], 2.0 - 0.1, rtol=1e-5)    # lr * sign(wd*w) at t=1


def test_clip_norm_bounds_the_step(backend, dtype):
    """SGD lr=1: the update equals the scaled gradient, whose global norm is clip_norm/(1+1e-6/n)."""
    params = make_params(dtype)
    p0 = {k: v.copy() for k, v in params.items()}
    (grads,) = make_grads(dtype, steps=1, scale=10.0)
    opt = optim.SGD(lr=1.0, clip_norm=0.5)
    opt.update(params, grads)
    n = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    assert opt.last_grad_norm == pytest.approx(n, rel=1e-12) and n > 0.5
    step = math.sqrt(sum(float(np.sum((p0[k].astype(np.float64) - params[k]) ** 2)) for k in p0))
    assert step == pytest.approx(0.5 * n / (n + 1e-6), rel=1e-4)
    # below the threshold nothing is scaled
    params = make_params(dtype)
    optim.SGD(lr=1.0, clip_norm=1e6).update(params, grads)
    for k in p0:
        np.testing.assert_allclose(params[k], p0[k] - grads[k], **TOL[np.dtype(dtype)])


def test_clip_value_clamps_each_element(backend, dtype):
    params = {"W": np.zeros(5, dtype)}
    g = np.array([-3.0, -0.1, 0.0, 0.2, 7.0], dtype)
    optim.SGD(lr=1.0, clip_value=0.5).update(params, {"W": g})
    np.testing.assert_array_equal(params["W"], np.array([0.5, 0.1, 0.0, -0.2, -0.5], dtype))


def test_last_grad_norm_only_when_computed(backend):
    p = {"W": np.ones(2)}
    g = {"W": np.array([3.0, 4.0])}
    opt = optim.SGD(check_finite=False)
    opt.update(p, g)
    assert opt.last_grad_norm is None
    opt = optim.SGD(check_finite=False, clip_norm=10.0)
    opt.update(p, g)
    assert opt.last_grad_norm == 5.0
    opt = optim.SGD()
    opt.update(p, g)
    assert opt.last_grad_norm == 5.0


def test_huge_finite_gradients_are_not_reported_as_non_finite(backend):
    """float64 gradients whose sum of squares overflows are finite: no error, correct norm, and
    clipping scales them to a finite step."""
    p = {"W": np.zeros(2)}
    opt = optim.SGD(lr=1.0, clip_norm=1.0)
    opt.update(p, {"W": np.array([3e200, 4e200])})
    assert opt.last_grad_norm == pytest.approx(5e200, rel=1e-12)
    np.testing.assert_allclose(p["W"], [-0.6, -0.8], rtol=1e-9)


# ------------------------------------------------------------------------------- non-finite
def _snapshot(opt, params):
    return ({k: v.copy() for k, v in params.items()}, opt.state_dict())


def _same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _same_state(a[k], b[k])
        elif isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("kind", list(optim.OPTIMIZERS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradient_changes_nothing(backend, dtype, kind, bad):
    params = make_params(dtype)
    grads = make_grads(dtype, steps=3)
    opt = optim.get(kind, lr=0.01, weight_decay=0.1, momentum=0.5) if kind in ("sgd", "momentum", "nesterov") \
        else optim.get(kind, weight_decay=0.1)
    run(opt, params, grads[:2])
    before_p, before_s = _snapshot(opt, params)
    g = grads[2]
    g["gamma1"][1] = bad
    with pytest.raises(optim.NonFiniteGradientError, match="gamma1") as info:
        opt.update(params, g)
    assert info.value.param == "gamma1"
    assert isinstance(info.value, FloatingPointError)
    for k in params:
        assert params[k].tobytes() == before_p[k].tobytes(), k
    _same_state(opt.state_dict(), before_s)
    # check_finite=False lets it through
    opt.check_finite = False
    with np.errstate(all="ignore"):
        opt.update(params, g)
    assert not np.all(np.isfinite(params["gamma1"]))
    assert opt.steps == 3


def test_non_finite_first_update_allocates_no_state(backend):
    params = {"W": np.ones(3, np.float32), "b": np.ones(3, np.float32)}
    opt = optim.Adam()
    with pytest.raises(optim.NonFiniteGradientError) as info:
        opt.update(params, {"W": np.ones(3, np.float32), "b": np.array([0, np.nan, 0], np.float32)})
    assert info.value.param == "b"
    assert opt.state == {} and opt.steps == 0
    assert np.all(params["W"] == 1) and np.all(params["b"] == 1)


# ------------------------------------------------------------------------------- state dicts
ROUNDTRIP = [("sgd", {}), ("sgd", dict(momentum=0.9)), ("momentum", dict(weight_decay=0.1)),
             ("nesterov", {}), ("adagrad", dict(eps_inside_sqrt=True)), ("rmsprop", dict(decay_rate=0.9)),
             ("adam", dict(eps_hat=True, clip_norm=1.0)), ("adamw", dict(clip_value=0.5))]


@pytest.mark.parametrize("kind,kw", ROUNDTRIP, ids=[k for k, _ in ROUNDTRIP])
def test_state_dict_resume_is_bit_identical(backend, dtype, kind, kw):
    params = make_params(dtype)
    grads = make_grads(dtype, steps=6)
    opt = optim.get(kind, lr=0.02, **kw)
    run(opt, params, grads[:3])
    saved_params = {k: v.copy() for k, v in params.items()}
    sd = opt.state_dict()
    run(opt, params, grads[3:])                  # uninterrupted
    # the saved dict is a copy: continuing did not change it
    fresh = optim.get(kind)                      # default hyperparameters: all come from the state
    fresh.load_state_dict(sd, saved_params)
    assert fresh.lr == 0.02 and fresh.steps == 3
    run(fresh, saved_params, grads[3:])
    for k in params:
        assert saved_params[k].tobytes() == params[k].tobytes(), k
    _same_state(fresh.state_dict(), opt.state_dict())


def test_state_dict_is_a_copy_and_load_copies():
    params = {"W": np.ones(3)}
    opt = optim.Momentum()
    opt.update(params, {"W": np.ones(3)})
    sd = opt.state_dict()
    sd["state"]["W"]["v"][:] = 42.0
    assert np.all(opt.state["W"]["v"] != 42.0)
    opt2 = optim.Momentum()
    opt2.load_state_dict(sd)
    sd["state"]["W"]["v"][:] = 0.0
    assert np.all(opt2.state["W"]["v"] == 42.0)


def test_load_state_dict_validates():
    params = {"W": np.ones((2, 3)), "b": np.ones(3)}
    opt = optim.Adam(lr=0.5)
    opt.update(params, {k: np.ones_like(v) for k, v in params.items()})
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="Adam.*AdamW|AdamW.*Adam"):
        optim.AdamW().load_state_dict(sd)
    with pytest.raises(ValueError, match="'W'.*shape"):
        optim.Adam().load_state_dict(sd, {"W": np.ones((3, 2)), "b": np.ones(3)})
    with pytest.raises(ValueError, match="'b'.*dtype"):
        optim.Adam().load_state_dict(sd, {"W": np.ones((2, 3)), "b": np.ones(3, np.float32)})
    bad = optim.Adam().state_dict() | {"steps": -1}
    with pytest.raises(ValueError, match="steps"):
        optim.Adam().load_state_dict(bad)
    bad = opt.state_dict()
    bad["hyperparams"]["beta1"] = 1.0
    target = optim.Adam(lr=0.25)
    with pytest.raises(ValueError, match="beta1"):
        target.load_state_dict(bad)
    assert target.lr == 0.25 and target.state == {}          # all-or-nothing
    bad = opt.state_dict()
    bad["state"]["W"]["v"] = np.ones((5,))
    with pytest.raises(ValueError, match="'W'"):
        optim.Adam().load_state_dict(bad)
    bad = opt.state_dict()
    del bad["state"]["W"]["step"]
    with pytest.raises(ValueError, match="'W'"):
        optim.Adam().load_state_dict(bad)
    # loaded without params: a mismatch surfaces at the next update, naming the parameter
    o = optim.Adam()
    o.load_state_dict(sd)
    with pytest.raises(ValueError, match="'W'"):
        o.update({"W": np.ones((3, 2))}, {"W": np.ones((3, 2))})


# ------------------------------------------------------------------------------- update() input
def test_update_input_errors(backend):
    opt = optim.SGD()
    params = {"W": np.ones((2, 2)), "b": np.ones(2)}
    with pytest.raises(KeyError, match="'Wx'"):
        opt.update(params, {"Wx": np.ones((2, 2))})
    with pytest.raises(ValueError, match=r"grads\['W'\].*shape"):
        opt.update(params, {"W": np.ones(4)})
    with pytest.raises(TypeError, match=r"grads\['b'\].*float32"):
        opt.update(params, {"b": np.ones(2, np.float32)})
    with pytest.raises(TypeError, match=r"grads\['W'\]"):
        opt.update(params, {"W": [[1.0, 1.0], [1.0, 1.0]]})
    with pytest.raises(TypeError, match=r"params\['i'\].*float"):
        opt.update({"i": np.ones(2, np.int64)}, {"i": np.ones(2, np.int64)})
    ro = np.ones(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\['W'\].*writeable"):
        opt.update({"W": ro}, {"W": np.ones(2)})
    assert np.all(params["W"] == 1) and np.all(params["b"] == 1)


def test_frozen_params_are_left_alone(backend, dtype):
    params = make_params(dtype)
    p0 = {k: v.copy() for k, v in params.items()}
    grads = make_grads(dtype, names={"W1", "b1"})
    opt = optim.Adam(weight_decay=0.1)
    run(opt, params, grads)
    for k in ("gamma1", "head.W", "head.b"):
        assert params[k].tobytes() == p0[k].tobytes()
    assert set(opt.state) == {"W1", "b1"}
    ref, _ = reference("adam", {k: p0[k] for k in ("W1", "b1")}, grads, weight_decay=0.1)
    assert_close(params, ref, dtype)


def test_late_joining_param_has_its_own_adam_step(backend):
    """A parameter first updated at the optimiser's 3rd step gets bias correction from t = 1."""
    params = {"W": np.ones(2), "W2": np.ones(2)}
    opt = optim.Adam(lr=0.1)
    opt.update(params, {"W": np.ones(2)})
    opt.update(params, {"W": np.ones(2)})
    opt.update(params, {"W": np.ones(2), "W2": np.array([2.0, -3.0])})
    np.testing.assert_allclose(params["W2"], [0.9, 1.1], rtol=1e-7)
    assert opt.state["W2"]["step"] == 1 and opt.state["W"]["step"] == 3


def test_lr_attribute_is_live_and_validated(backend):
    params = {"W": np.zeros(2)}
    opt = optim.SGD(lr=0.1)
    opt.lr = 0.5
    opt.update(params, {"W": np.ones(2)})
    np.testing.assert_array_equal(params["W"], [-0.5, -0.5])
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="lr"):
            opt.lr = bad
    with pytest.raises(TypeError, match="lr"):
        opt.lr = "0.1"
    assert opt.lr == 0.5


@pytest.mark.parametrize("cls,kw,arg", [
    (optim.SGD, dict(lr=-0.1), "lr"),
    (optim.SGD, dict(weight_decay=-1.0), "weight_decay"),
    (optim.SGD, dict(clip_norm=0.0), "clip_norm"),
    (optim.SGD, dict(clip_value=-1.0), "clip_value"),
    (optim.SGD, dict(momentum=-0.1), "momentum"),
    (optim.Momentum, dict(momentum=1.5), "momentum"),
    (optim.Nesterov, dict(momentum=math.nan), "momentum"),
    (optim.AdaGrad, dict(eps=0.0), "eps"),
    (optim.RMSProp, dict(rho=1.0), "rho"),
    (optim.RMSProp, dict(decay_rate=-0.5), "decay_rate"),
    (optim.RMSProp, dict(eps=-1e-8), "eps"),
    (optim.Adam, dict(beta1=1.0), "beta1"),
    (optim.Adam, dict(beta2=-0.1), "beta2"),
    (optim.Adam, dict(eps=0.0), "eps"),
    (optim.AdamW, dict(weight_decay=-0.01), "weight_decay"),
])
def test_argument_validation(cls, kw, arg):
    with pytest.raises(ValueError, match=arg):
        cls(**kw)


def test_argument_types_and_aliases():
    with pytest.raises(TypeError, match="check_finite"):
        optim.SGD(check_finite="yes")
    with pytest.raises(TypeError, match="rho"):
        optim.RMSProp(rho=0.9, decay_rate=0.9)
    r = optim.RMSProp(decay_rate=0.8)
    assert r.rho == 0.8 and r.decay_rate == 0.8
    a = optim.Adam(betas=(0.8, 0.99))
    assert (a.beta1, a.beta2) == (0.8, 0.99)
    assert optim.AdamW().weight_decay == 0.01 and optim.Adam().weight_decay == 0.0
    assert optim.Adam().lr == 0.001 and optim.SGD().lr == 0.01 and optim.AdaGrad().eps == 1e-10


def test_get_name_table():
    assert set(optim.OPTIMIZERS) == {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"}
    o = optim.get("AdamW", lr=0.1, weight_decay=0.2)
    assert type(o) is optim.AdamW and o.lr == 0.1 and o.weight_decay == 0.2
    assert type(optim.get(" RMSprop ")) is optim.RMSProp
    assert optim.get(o) is o
    with pytest.raises(ValueError, match="sgd.*adamw"):
        optim.get("lbfgs")
    with pytest.raises(TypeError):
        optim.get("adam", nonsense=1)


# ------------------------------------------------------------------------------- random configurations
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_HYPER = {
    "sgd": dict(momentum=st.sampled_from([0.0, 0.3, 0.9]), nesterov=st.booleans()),
    "momentum": dict(momentum=st.floats(0.0, 1.0)),
    "nesterov": dict(momentum=st.floats(0.0, 1.0)),
    "adagrad": dict(eps=st.floats(1e-8, 1.0), eps_inside_sqrt=st.booleans()),
    "rmsprop": dict(rho=st.floats(0.0, 0.999), eps=st.floats(1e-6, 1.0), eps_inside_sqrt=st.booleans()),
    "adam": dict(beta1=st.floats(0.0, 0.99), beta2=st.floats(0.0, 0.999), eps=st.floats(1e-6, 1.0),
                 eps_hat=st.booleans()),
    "adamw": dict(beta1=st.floats(0.0, 0.99), beta2=st.floats(0.0, 0.999), eps=st.floats(1e-6, 1.0),
                  eps_hat=st.booleans()),
}


@st.composite
def _configs(draw):
    kind = draw(st.sampled_from(sorted(_HYPER)))
    kw = {k: draw(s) for k, s in _HYPER[kind].items()}
    kw["lr"] = draw(st.floats(0.0, 0.5))
    kw["weight_decay"] = draw(st.sampled_from([0.0, 0.01, 0.3]))
    kw["clip_norm"] = draw(st.sampled_from([None, 0.1, 1.0, 10.0]))
    kw["clip_value"] = draw(st.sampled_from([None, 0.05, 1.0]))
    shapes = draw(st.dictionaries(st.sampled_from(["W", "b", "l1.W", "l1.gamma", "Wz", "slope"]),
                                  st.sampled_from([(), (0,), (1,), (3,), (2, 3), (2, 1, 2)]),
                                  min_size=1, max_size=4))
    steps = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return kind, kw, shapes, steps, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=_configs())
def test_random_configurations_match_formula(backend, dtype, cfg):
    """Random hyperparameters, parameter shapes (0-d and empty included), frozen params and step
    counts: every optimiser follows the reference formulas."""
    kind, kw, shapes, steps, seed = cfg
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    p0 = {k: v.copy() for k, v in params.items()}
    names = list(shapes)
    grads = []
    for _ in range(steps):
        live = [k for k in names if rng.random() < 0.8] or names[:1]    # some params frozen
        grads.append({k: rng.standard_normal(shapes[k]).astype(dtype) for k in live})
    opt = optim.get(kind, **kw)
    norms = run(opt, params, grads)
    ref, ref_norms = reference(kind, p0, grads, **kw)
    tol = TOL[np.dtype(dtype)]
    for k in ref:
        assert params[k].dtype == dtype and params[k].shape == shapes[k]
        np.testing.assert_allclose(params[k], ref[k], rtol=tol["rtol"] * 5, atol=tol["atol"] * 5, err_msg=k)
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-12, atol=1e-300)
