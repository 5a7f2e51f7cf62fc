"""``kernels.bind_update`` (the fused multi-tensor optimiser update) on both backends: the same
results as the single-tensor kernels called tensor by tensor (bit for bit on one backend, within
the dtype's tolerance across backends), 1 vs 2 threads bit-identical, odd and empty shapes,
NaN/inf gradients, memory outside the bound arrays untouched, and clear errors for bad input."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import dlfast
from dlfast import kernels as K
from kernel_helpers import on_all

pytestmark = [pytest.mark.skipif("cython" not in dlfast.available_backends(),
                                 reason="compiled backend not built"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]

SHAPES = [(), (0,), (1,), (7,), (3, 5), (4095,), (4097,), (2, 3, 4), (33, 1001), (0, 4)]
HYPER = {"sgd": {}, "momentum": {"mu": 0.8}, "nesterov": {"mu": 0.9},
         "adagrad": {"eps": 1e-7, "eps_inside": True}, "rmsprop": {"rho": 0.9},
         "adam": {"beta1": 0.8, "beta2": 0.99, "eps_hat": True},
         "adamw": {"decoupled_wd": True}}
GUARD = 5


def _single(rule, w, g, st, wd, lr, gs, cv, step, hyper):
    """The single-tensor kernel call that the fused update must reproduce."""
    kw = dict(lr=lr, wd=wd, grad_scale=gs, clip_value=cv)
    h = dict(hyper)
    if rule == "adam":
        h = {"eps_hat": h.get("eps_hat", False), "decoupled_wd": h.get("decoupled_wd", False),
             "beta1": h.get("beta1", 0.9), "beta2": h.get("beta2", 0.999), "step": step}
    getattr(K, f"{rule}_update")(w, g, *st, **kw, **h)


def _problem(rule, shapes, dtype, seed, bad=None):
    """Bound arrays as views into sentinel-guarded buffers (to catch out-of-bounds writes)."""
    rng = np.random.default_rng(seed)
    bufs = []

    def guarded(a):
        buf = np.full(a.size + 2 * GUARD, 7.0, a.dtype)
        buf[GUARD:GUARD + a.size] = a.ravel()
        bufs.append(buf)
        return buf[GUARD:GUARD + a.size].reshape(a.shape)

    ws, gs, sts = [], [], []
    for s in shapes:
        ws.append(guarded(np.asarray(rng.standard_normal(s), dtype)))
        g = np.asarray(rng.standard_normal(s) * 2, dtype)
        if bad is not None and g.size:
            g.flat[rng.integers(g.size)] = bad
        gs.append(g)
        sts.append(tuple(guarded(np.asarray(np.abs(rng.standard_normal(s)) * 0.1, dtype))
                         for _ in K.RULES[rule]))
    wds = [float(x) for x in rng.choice([0.0, 0.01, 0.3], len(shapes))]
    return ws, gs, sts, wds, bufs


def _guards_intact(bufs):
    return all((b[:GUARD] == 7).all() and (b[-GUARD:] == 7).all() for b in bufs)


def _run(name, shapes, dtype, seed, steps, bad=None):
    """(sumsq per step, final arrays) through the fused update and the single-tensor loop."""
    rule = "adam" if name == "adamw" else name
    hyper = HYPER[name]
    fused = _problem(rule, shapes, dtype, seed, bad)
    single = _problem(rule, shapes, dtype, seed, bad)
    b = K.bind_update(rule, *fused[:4], **hyper)
    s_fused, s_single = [], []
    for t in range(1, steps + 1):
        lr, gs, cv = 0.01 * t, (1.0, 0.5)[t % 2], (math.inf, 0.7)[t % 2]
        s_fused.append(b.sumsq())
        b.update(lr, gs, cv, t)
        total = 0.0
        for g in single[1]:
            total += K.sumsq(g)
        s_single.append(total)
        for w, g, st, wd in zip(*single[:4]):
            _single(rule, w, g, st, wd, lr, gs, cv, t, hyper)
    assert _guards_intact(fused[4]) and _guards_intact(single[4])
    out = lambda p: [a.copy() for a in p[0]] + [a.copy() for st in p[2] for a in st]  # noqa: E731
    return s_fused, s_single, out(fused), out(single)


def _same_bits(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.shape == y.shape and x.tobytes() == y.tobytes()


@pytest.mark.parametrize("name", list(HYPER))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_equals_single_tensor_kernels(name, dtype):
    def fn():
        sf, ss, af, as_ = _run(name, SHAPES, dtype, seed=1, steps=3)
        assert sf == ss                       # the same float, same additions in the same order
        _same_bits(af, as_)                   # the same bits as the tensor-by-tensor kernels
        return sf, af

    (s_ref, ref), (s1, one), (s2, two) = on_all(fn)
    assert s1 == s2
    _same_bits(one, two)                      # 1 vs 2 threads
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert s1 == pytest.approx(s_ref, rel=tol)
    for a, r in zip(one, ref):
        np.testing.assert_allclose(a, r, rtol=tol, atol=tol)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(list(HYPER)), dtype=st.sampled_from([np.float32, np.float64]),
       shapes=st.lists(st.sampled_from(SHAPES + [(70001,)]), min_size=1, max_size=5),
       bad=st.sampled_from([None, np.nan, np.inf, -np.inf]), seed=st.integers(0, 2**16))
def test_fused_random_problems(name, dtype, shapes, bad, seed):
    def fn():
        sf, ss, af, as_ = _run(name, shapes, dtype, seed, steps=2, bad=bad)
        assert sf == ss or (math.isnan(sf[0]) and math.isnan(ss[0]))
        _same_bits(af, as_)
        return af

    ref, one, two = on_all(fn, quiet=True)
    _same_bits(one, two)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for a, r in zip(one, ref):
        np.testing.assert_allclose(a, r, rtol=tol, atol=tol)        # NaN where NaN


def test_set_hyper_matches_a_fresh_binding(backend):
    ws, gs, sts, wds, _ = _problem("momentum", [(5, 3), (3,)], np.float32, 0)
    ws2, gs2, sts2, _, _ = _problem("momentum", [(5, 3), (3,)], np.float32, 0)
    a = K.bind_update("momentum", ws, gs, sts, wds, mu=0.5)
    a.set_hyper(mu=0.95)
    K.bind_update("momentum", ws2, gs2, sts2, wds, mu=0.95).update(0.1)
    a.update(0.1)
    _same_bits(ws + [s[0] for s in sts], ws2 + [s[0] for s in sts2])
    with pytest.raises(ValueError, match="mu must lie in"):
        a.set_hyper(mu=1.5)


def _ok(rule="adam", n=2, dtype=np.float32):
    ws, gs, sts, wds, _ = _problem(rule, [(4, 3), (3,)][:n], dtype, 0)
    return ws, gs, sts, wds


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda a: a.update(rule="lbfgs"), ValueError, "rule must be one of"),
    (lambda a: a.update(ws=a["ws"][0]), TypeError, "ws must be a list or tuple"),
    (lambda a: a.update(wds=[0.0]), ValueError, "one entry per tensor"),
    (lambda a: a["gs"].__setitem__(0, np.asfortranarray(np.ones((4, 3), np.float32))), ValueError,
     r"gs\[0\] must be C-contiguous"),
    (lambda a: a["gs"].__setitem__(1, np.ones(3, np.float64)), TypeError, r"gs\[1\] has dtype"),
    (lambda a: a["gs"].__setitem__(1, np.ones(4, np.float32)), ValueError, r"gs\[1\] must have shape"),
    (lambda a: a["ws"].__setitem__(1, np.ones(3, np.int32)), TypeError,
     r"ws\[1\] must be float32 or float64"),
    (lambda a: a["ws"].__setitem__(1, np.ones(3, np.float64)), TypeError,
     r"ws\[1\] must have dtype float32"),
    (lambda a: a["ws"][0].setflags(write=False), ValueError, r"ws\[0\] must be writeable"),
    (lambda a: a["states"].__setitem__(0, a["states"][0][:1]), ValueError,
     r"states\[0\] must be a tuple of 2 arrays"),
    (lambda a: a["states"].__setitem__(1, (a["states"][1][0], a["gs"][1])), ValueError,
     r"overlaps gs\[1\]"),
    (lambda a: a["states"].__setitem__(1, (a["states"][1][0], a["states"][1][0])), ValueError,
     "overlaps"),
    (lambda a: a["wds"].__setitem__(0, -1.0), ValueError, r"wds\[0\] must lie in"),
    (lambda a: a.update(beta1=1.0), ValueError, "beta1 must lie in"),
    (lambda a: a.update(eps=0.0), ValueError, "eps must lie in"),
])
def test_bind_update_rejects_bad_input(backend, mutate, exc, match):
    ws, gs, sts, wds = _ok()
    args = {"rule": "adam", "ws": ws, "gs": gs, "states": sts, "wds": wds}
    mutate(args)
    with pytest.raises(exc, match=match):
        K.bind_update(args.pop("rule"), args.pop("ws"), args.pop("gs"), args.pop("states"),
                      args.pop("wds"), **args)


def test_update_scalars_are_checked(backend):
    b = K.bind_update("adam", *_ok())
    with pytest.raises(ValueError, match="lr must lie in"):
        b.update(-1.0)
    with pytest.raises(ValueError, match="lr must lie in"):
        b.update(math.nan)
    with pytest.raises(ValueError, match="step must be >= 1"):
        b.update(0.1, step=0)
    with pytest.raises(ValueError, match="grad_scale must lie in"):
        b.update(0.1, grad_scale=math.inf)
    with pytest.raises(ValueError, match="clip_value must lie in"):
        b.update(0.1, clip_value=0.0)
    with pytest.raises(TypeError):
        b.update(0.1, step=1.5)


def test_gradients_are_read_in_place_at_every_update(backend):
    ws, gs, sts, wds = _ok("sgd")
    b = K.bind_update("sgd", ws, gs, sts, [0.0, 0.0])
    w0 = ws[0].copy()
    gs[0][...] = 2.0
    assert b.sumsq() == pytest.approx(2.0 ** 2 * 12 + float((gs[1].astype(np.float64) ** 2).sum()))
    b.update(0.5)
    np.testing.assert_array_equal(ws[0], w0 - np.float32(0.5) * np.float32(2.0))
