"""dlfast.schedules against the CONVENTIONS.md formulas; driving an optimiser's lr per step and per
epoch; ReduceOnPlateau's rules and state; argument validation."""
import math

import numpy as np
import pytest

from dlfast import optim, schedules as S


@pytest.mark.parametrize("t", [0, 1, 2, 3, 4, 5, 9, 10, 11, 29, 30, 2.5, 1000])
def test_step_decay_formula(t):
    s = S.StepDecay(0.1, 3, gamma=0.5)
    assert s(t) == pytest.approx(0.1 * 0.5 ** math.floor(t / 3), rel=1e-15)
    assert S.StepDecay(0.2, 10)(t) == pytest.approx(0.2 * 0.1 ** (t // 10), rel=1e-12)


def test_step_decay_plateaus_exactly():
    s = S.StepDecay(0.1, 3, gamma=0.5)
    assert [s(t) for t in range(7)] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]


@pytest.mark.parametrize("t", [0, 1, 2, 7.5, 50, 1e4])
def test_exponential_decay_formula(t):
    assert S.ExponentialDecay(0.3, 0.05)(t) == pytest.approx(0.3 * np.exp(-0.05 * t), rel=1e-14)
    assert S.ExponentialDecay(0.3, 0.0)(t) == 0.3


@pytest.mark.parametrize("t", [0, 1, 2, 7.5, 50, 1e4])
def test_inverse_time_decay_formula(t):
    assert S.InverseTimeDecay(0.3, 0.5)(t) == pytest.approx(0.3 / (1 + 0.5 * t), rel=1e-14)


def test_schedules_are_monotone_non_increasing():
    for s in (S.StepDecay(1.0, 2), S.ExponentialDecay(1.0, 0.1), S.InverseTimeDecay(1.0, 0.1)):
        lrs = [s(t) for t in range(50)]
        assert lrs[0] == 1.0 and all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 1.0


def test_time_schedules_have_no_step_method():
    """The trainer treats a schedule with step(metric) as metric-driven; t-schedules must not have it."""
    for s in (S.StepDecay(1.0, 2), S.ExponentialDecay(1.0, 0.1), S.InverseTimeDecay(1.0, 0.1)):
        assert not hasattr(s, "step")
    assert callable(S.ReduceOnPlateau(1.0).step)


def _sgd_reference(w, grads, lrs):
    w = w.astype(np.float64)
    for g, lr in zip(grads, lrs):
        w = w - lr * g.astype(np.float64)
    return w


@pytest.mark.parametrize("sched", [S.StepDecay(0.5, 2, 0.5), S.ExponentialDecay(0.5, 0.3),
                                   S.InverseTimeDecay(0.5, 1.0)], ids=["step", "exp", "inverse"])
def test_drives_optimizer_lr_per_step(backend, dtype, sched):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(5).astype(dtype)
    grads = [rng.standard_normal(5).astype(dtype) for _ in range(8)]
    opt = optim.SGD(lr=123.0)
    p = {"W": w0.copy()}
    seen = []
    for t, g in enumerate(grads):
        assert sched.apply(opt, t) == opt.lr
        seen.append(opt.lr)
        opt.update(p, {"W": g})
    lrs = [sched(t) for t in range(8)]
    assert seen == lrs
    np.testing.assert_allclose(p["W"], _sgd_reference(w0, grads, lrs), rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_drives_optimizer_lr_per_epoch(backend):
    """t = epoch: the lr is constant within an epoch and follows the schedule across epochs."""
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal(4)
    steps_per_epoch, epochs = 3, 5
    grads = [rng.standard_normal(4) for _ in range(steps_per_epoch * epochs)]
    sched = S.StepDecay(0.4, 2, 0.1)
    opt = optim.Momentum(lr=1.0, momentum=0.0)
    p = {"W": w0.copy()}
    lrs = []
    for epoch in range(epochs):
        sched.apply(opt, epoch)
        for i in range(steps_per_epoch):
            lrs.append(opt.lr)
            opt.update(p, {"W": grads[epoch * steps_per_epoch + i]})
    expected = [0.4] * 6 + [0.04] * 6 + [0.004] * 3
    np.testing.assert_allclose(lrs, expected, rtol=1e-15)
    np.testing.assert_allclose(p["W"], _sgd_reference(w0, grads, expected), rtol=1e-12)


def test_with_the_trainer_per_epoch():
    """Trainer(schedule=...) sets lr = s(epochs done) before each epoch."""
    from dlfast.net import MLP
    from dlfast.train import Trainer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    t = (x[:, 0] > 0).astype(np.int64)
    opt = optim.Adam(lr=1.0)
    sched = S.ExponentialDecay(0.01, 0.5)
    Trainer(MLP(3, [4], 2, seed=0), opt, epochs=3, batch_size=10, schedule=sched).fit(x, t)
    assert opt.lr == pytest.approx(0.01 * math.exp(-0.5 * 2), rel=1e-15)


# ------------------------------------------------------------------------------- ReduceOnPlateau
def test_plateau_reduces_after_patience_bad_epochs():
    s = S.ReduceOnPlateau(1.0, factor=0.5, patience=2, min_delta=0.0)
    lrs = [s.step(m) for m in [5.0, 4.0, 4.0, 4.5, 3.0, 3.0, 3.0, 3.0, 3.0]]
    #          improve improve bad  bad->cut improve bad bad->cut bad bad->cut
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125]
    assert s(100) == 0.125 and s.reductions == 3


def test_plateau_min_delta_mode_max_min_lr_cooldown():
    s = S.ReduceOnPlateau(1.0, factor=0.1, patience=1, min_delta=0.1, mode="max", min_lr=0.05)
    assert s.step(0.5) == 1.0          # first value: best
    assert s.step(0.55) == pytest.approx(0.1)   # +0.05 is not more than min_delta: bad -> cut
    assert s.step(0.7) == pytest.approx(0.1)    # +0.15 improves
    assert s.step(0.6) == 0.05         # cut, clamped at min_lr
    assert s.step(0.6) == 0.05 and s.reductions == 2
    c = S.ReduceOnPlateau(1.0, factor=0.5, patience=1, min_delta=0.0, cooldown=2)
    lrs = [c.step(m) for m in [1.0, 2.0, 2.0, 2.0, 2.0, 2.0]]
    assert lrs == [1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    z = S.ReduceOnPlateau(1.0, factor=0.5, patience=0)
    assert [z.step(m) for m in [1.0, 0.5, 0.5]] == [1.0, 1.0, 0.5]


def test_plateau_apply_and_metric_validation():
    s = S.ReduceOnPlateau(0.3, patience=1, min_delta=0.0)
    opt = optim.SGD(lr=9.0)
    assert s.apply(opt, 0) == 0.3 and opt.lr == 0.3
    s.step(1.0)
    s.step(np.float32(2.0))
    assert s.apply(opt, 7) == pytest.approx(0.03) and opt.lr == pytest.approx(0.03)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="metric"):
            s.step(bad)
    with pytest.raises(TypeError, match="metric"):
        s.step("low")
    assert s.lr == pytest.approx(0.03) and s.num_bad == 0


def test_plateau_state_dict_round_trip():
    metrics = [3.0, 2.0, 2.5, 2.4, 2.6, 1.0, 1.5, 1.6, 1.7, 1.8]
    a = S.ReduceOnPlateau(0.1, factor=0.5, patience=2, cooldown=1)
    for m in metrics[:5]:
        a.step(m)
    sd = a.state_dict()
    b = S.ReduceOnPlateau(7.0)
    b.load_state_dict(sd)
    assert [a.step(m) for m in metrics[5:]] == [b.step(m) for m in metrics[5:]]
    assert a.state_dict() == b.state_dict()
    bad = dict(sd, factor=2.0)
    c = S.ReduceOnPlateau(7.0)
    with pytest.raises(ValueError, match="factor"):
        c.load_state_dict(bad)
    assert c.lr == 7.0                         # all-or-nothing
    with pytest.raises(ValueError, match="num_bad"):
        c.load_state_dict(dict(sd, num_bad=-1))
    with pytest.raises(ValueError, match="missing"):
        c.load_state_dict({"lr": 1.0})


@pytest.mark.parametrize("make,arg", [
    (lambda: S.StepDecay(-0.1, 2), "lr0"),
    (lambda: S.StepDecay(0.1, 0), "step_size"),
    (lambda: S.StepDecay(0.1, 2, gamma=0.0), "gamma"),
    (lambda: S.StepDecay(math.nan, 2), "lr0"),
    (lambda: S.ExponentialDecay(0.1, -1.0), "k"),
    (lambda: S.InverseTimeDecay(0.1, math.inf), "k"),
    (lambda: S.ReduceOnPlateau(0.1, factor=1.0), "factor"),
    (lambda: S.ReduceOnPlateau(0.1, patience=-1), "patience"),
    (lambda: S.ReduceOnPlateau(0.1, min_delta=-1e-3), "min_delta"),
    (lambda: S.ReduceOnPlateau(0.1, min_lr=-1.0), "min_lr"),
    (lambda: S.ReduceOnPlateau(0.1, mode="up"), "mode"),
    (lambda: S.ExponentialDecay(0.1, 0.1)(-1), "t"),
    (lambda: S.InverseTimeDecay(0.1, 0.1)(math.nan), "t"),
])
def test_argument_validation(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


def test_argument_types():
    with pytest.raises(TypeError, match="patience"):
        S.ReduceOnPlateau(0.1, patience=2.5)
    with pytest.raises(TypeError, match="lr0"):
        S.StepDecay("0.1", 2)
    with pytest.raises(TypeError, match="optimizer"):
        S.StepDecay(0.1, 2).apply(object(), 0)
