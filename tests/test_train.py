"""dlfast.train: the Trainer learns, counts, splits, schedules, stops, calls back, fails loudly."""
import math
import os
import signal

import numpy as np
import pytest

from dlfast import datasets as D
from dlfast.net import MLP
from dlfast.train import (Callback, EarlyStopping, History, LambdaCallback, NonFiniteError,
                          StopTraining, Trainer)


class PlainSGD:
    """The smallest optimiser the Trainer accepts: w -= lr * g (no finite check of its own)."""

    def __init__(self, lr=0.1):
        self.lr = lr

    def update(self, params, grads):
        for k, g in grads.items():
            params[k] -= self.lr * g


def blobs(n=120, seed=0, dtype=np.float32, classes=3):
    """Well separated Gaussian blobs in 4-D."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) % classes
    centers = rng.standard_normal((classes, 4)) * 3
    x = (centers[t] + rng.standard_normal((n, 4))).astype(dtype)
    return x, t


def small_net(dtype=np.float32, **kw):
    return MLP(4, [16], 3, seed=0, dtype=dtype, **kw)


# ============================================================================ learning
def test_learns_a_tiny_problem(dtype):
    x, t = blobs(dtype=dtype)
    net = small_net(dtype)
    before = net.loss(x, t)
    tr = Trainer(net, PlainSGD(0.1), epochs=15, batch_size=16, progress=False, seed=0)
    h = tr.fit(x, t)
    assert h is tr.history and len(h) == 15
    assert h.loss[-1] < 0.5 * h.loss[0] and h.loss[0] < before
    assert h.accuracy[-1] > max(0.95, h.accuracy[0] - 1e-12)
    assert net.accuracy(x, t) == pytest.approx(h.accuracy[-1])


def test_eval_train_false_skips_the_training_set_metrics_only():
    """eval_train=False: the same training (evaluation changes no state), only batch_loss logged
    for the training set; monitors of the unmeasured metrics are refused."""
    x, t = blobs()
    runs = []
    for ev in (True, False):
        net = small_net(batchnorm=True, dropout=0.2)
        tr = Trainer(net, PlainSGD(0.1), epochs=3, batch_size=16, progress=False, seed=0,
                     eval_train=ev)
        runs.append((net, tr.fit(x, t)))
    (a, ha), (b, hb) = runs
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k], err_msg=k)
    assert ha.batch_loss == hb.batch_loss and len(ha.loss) == 3 and hb.loss == hb.accuracy == []
    with pytest.raises(ValueError, match="eval_train=False"):
        Trainer(small_net(), PlainSGD(0.1), epochs=2, progress=False, eval_train=False,
                early_stopping=EarlyStopping(1, monitor="loss")).fit(x, t)
    with pytest.raises(TypeError, match="eval_train"):
        Trainer(small_net(), PlainSGD(0.1), eval_train="no")


def test_counters_history_and_batches():
    x, t = blobs(n=100)
    seen = []
    tr = Trainer(small_net(), PlainSGD(), epochs=3, batch_size=32, progress=False, seed=1,
                 callbacks=[LambdaCallback(on_step_end=lambda tr, s, logs: seen.append(logs["batch"]))])
    h = tr.fit(x, t)
    # 100 rows in batches of 32: 32, 32, 32, 4 (only a final batch of ONE row is merged)
    assert tr.epoch == 3 and tr.step == 12 and h.steps == [4, 4, 4]
    assert seen == [1, 2, 3, 4] * 3
    assert h.epoch == [1, 2, 3] and len(h.lr) == 3 and all(s > 0 for s in h.time)
    assert h.val_loss == [] and h.val_accuracy == []
    d = h.as_dict()
    assert set(d) == set(History.KEYS)
    d["loss"].append(99)
    assert len(h.loss) == 3                                  # as_dict returns copies
    # a second fit continues the counters and the history
    tr.fit(x, t)
    assert tr.epoch == 6 and tr.step == 24 and h.epoch == [1, 2, 3, 4, 5, 6]


def test_single_row_final_batch_is_merged_for_batchnorm():
    x, t = blobs(n=65)
    sizes = []
    net = small_net(batchnorm=True)
    orig = net.loss_and_gradient

    def spy(xb, tb):
        sizes.append(len(xb))
        return orig(xb, tb)

    net.loss_and_gradient = spy
    Trainer(net, PlainSGD(), epochs=1, batch_size=32, progress=False).fit(x, t)
    assert sizes == [32, 33]


def test_one_hot_targets_and_chunked_evaluation():
    x, t = blobs(n=50)
    net = small_net()
    tr = Trainer(net, PlainSGD(), epochs=2, batch_size=10, progress=False, eval_batch_size=7)
    tr.fit(x, D.to_one_hot(t, 3))
    loss, acc = tr.evaluate(x, t)
    assert loss == pytest.approx(net.loss(x, t), rel=1e-5)
    assert acc == pytest.approx(net.accuracy(x, t))
    assert tr.history.loss[-1] == pytest.approx(loss, rel=1e-5)


def test_same_seed_same_run_different_seed_different_order():
    x, t = blobs()

    def run(seed):
        net = small_net(dropout=0.2)
        Trainer(net, PlainSGD(), epochs=3, batch_size=16, progress=False, seed=seed,
                val_split=0.2).fit(x, t)
        return net.state_dict()

    a, b, c = run(5), run(5), run(6)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


# ============================================================================ validation data
def test_val_split_comes_only_from_the_training_data():
    x_all, t_all = blobs(n=240)
    x_tr, t_tr, x_test, t_test = D.train_test_split(x_all, t_all, 0.25, seed=0, stratify=True)
    test_rows = {r.tobytes() for r in x_test}
    net = small_net()
    trained_rows = set()
    orig = net.loss_and_gradient

    def spy(xb, tb):
        trained_rows.update(r.tobytes() for r in xb)
        return orig(xb, tb)

    net.loss_and_gradient = spy
    tr = Trainer(net, PlainSGD(), epochs=2, batch_size=16, progress=False, val_split=0.2,
                 stratify=True, seed=0)
    tr.fit(x_tr, t_tr)
    # the validation set is a stratified 20% of x_tr, disjoint from the rows trained on
    assert len(tr.val_indices) == 36 and len(tr.train_indices) == 144
    np.testing.assert_array_equal(np.sort(np.concatenate([tr.train_indices, tr.val_indices])),
                                  np.arange(180))
    np.testing.assert_array_equal(tr.x_val, x_tr[tr.val_indices])
    np.testing.assert_array_equal(np.bincount(tr.t_val), [12, 12, 12])
    val_rows = {r.tobytes() for r in tr.x_val}
    assert trained_rows == {r.tobytes() for r in x_tr[tr.train_indices]}
    assert not trained_rows & val_rows
    assert not (trained_rows | val_rows) & test_rows         # the test set is never seen
    assert len(tr.history.val_loss) == 2
    first = tr.val_indices.copy()
    tr.fit(x_tr, t_tr)                                      # a second fit keeps the same split
    np.testing.assert_array_equal(tr.val_indices, first)
    assert not trained_rows & val_rows


def test_explicit_validation_set():
    x, t = blobs(n=90)
    tr = Trainer(small_net(), PlainSGD(), epochs=2, progress=False)
    h = tr.fit(x[:60], t[:60], x[60:], t[60:])
    assert len(h.val_accuracy) == 2 and tr.val_indices is None
    assert h.val_loss[-1] == pytest.approx(tr.evaluate(x[60:], t[60:])[0])


def test_bad_arguments():
    x, t = blobs(n=20)
    net = small_net()
    with pytest.raises(ValueError, match="epochs"):
        Trainer(net, PlainSGD(), epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(net, PlainSGD(), batch_size=0)
    with pytest.raises(ValueError, match="schedule_per"):
        Trainer(net, PlainSGD(), schedule_per="batch")
    with pytest.raises(ValueError, match="val_split"):
        Trainer(net, PlainSGD(), val_split=1.0)
    with pytest.raises(TypeError, match="optimizer"):
        Trainer(net, object())
    with pytest.raises(TypeError, match="model"):
        Trainer(object(), PlainSGD())
    with pytest.raises(TypeError, match="schedule"):
        Trainer(net, PlainSGD(), schedule=3.0)
    with pytest.raises(ValueError, match="seed"):
        Trainer(net, PlainSGD(), seed=-1)
    with pytest.raises(TypeError, match="seed"):
        Trainer(net, PlainSGD(), seed=1.5)
    tr = Trainer(net, PlainSGD(), progress=False)
    with pytest.raises(ValueError, match="same number of samples"):
        tr.fit(x, t[:5])
    with pytest.raises(ValueError, match="both x_val and t_val"):
        tr.fit(x, t, x_val=x)
    with pytest.raises(TypeError, match="float64 but the model is float32"):
        tr.fit(x.astype(np.float64), t)
    with pytest.raises(ValueError, match="not both"):
        Trainer(net, PlainSGD(), val_split=0.2, progress=False).fit(x, t, x, t)
    with pytest.raises(ValueError, match="no validation set"):
        Trainer(net, PlainSGD(), early_stopping=2, progress=False).fit(x, t)


# ============================================================================ schedules
def test_epoch_schedule_drives_lr():
    x, t = blobs(n=40)
    opt = PlainSGD(1.0)
    seen = []
    tr = Trainer(small_net(), opt, epochs=4, batch_size=10, progress=False,
                 schedule=lambda e: 0.1 / (1 + e),
                 callbacks=[LambdaCallback(on_step_end=lambda tr, s, logs: seen.append(logs["lr"]))])
    h = tr.fit(x, t)
    assert h.lr == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025])
    assert seen == pytest.approx(np.repeat(h.lr, 4))


def test_step_schedule_drives_lr():
    x, t = blobs(n=40)
    seen = []
    tr = Trainer(small_net(), PlainSGD(), epochs=2, batch_size=10, progress=False,
                 schedule=lambda s: 0.5 ** s, schedule_per="step",
                 callbacks=[LambdaCallback(on_step_end=lambda tr, s, logs: seen.append(logs["lr"]))])
    tr.fit(x, t)
    assert seen == pytest.approx([0.5 ** s for s in range(8)])


def test_schedule_apply_method_is_used():
    calls = []

    class Sched:
        def __call__(self, t):
            return 0.01

        def apply(self, optimizer, t):
            calls.append(t)
            optimizer.lr = 0.2 * (t + 1)

    x, t = blobs(n=20)
    h = Trainer(small_net(), PlainSGD(), epochs=3, batch_size=10, progress=False,
                schedule=Sched()).fit(x, t)
    assert calls == [0, 1, 2] and h.lr == pytest.approx([0.2, 0.4, 0.6])


def test_metric_schedule_gets_the_monitored_value():
    got = []

    class Plateau:
        def step(self, metric):
            got.append(metric)
            return 0.01 * len(got)

    x, t = blobs(n=60)
    h = Trainer(small_net(), PlainSGD(), epochs=3, progress=False, val_split=0.25,
                schedule=Plateau()).fit(x, t)
    assert got == h.val_loss and h.lr == pytest.approx([0.01, 0.02, 0.03])
    got.clear()
    h = Trainer(small_net(), PlainSGD(), epochs=2, progress=False, schedule=Plateau(),
                schedule_monitor="accuracy").fit(x, t)
    assert got == h.accuracy


def test_bad_schedule_value():
    x, t = blobs(n=20)
    with pytest.raises(ValueError, match="invalid learning rate"):
        Trainer(small_net(), PlainSGD(), progress=False, schedule=lambda e: -1.0).fit(x, t)


# ============================================================================ callbacks
class Recorder(Callback):
    def __init__(self, stop_at_epoch=None):
        self.events = []
        self.stop_at_epoch = stop_at_epoch

    def on_train_begin(self, trainer):
        self.events.append(("begin",))

    def on_epoch_begin(self, trainer, epoch):
        self.events.append(("epoch_begin", epoch))

    def on_step_end(self, trainer, step, logs):
        self.events.append(("step", step))

    def on_epoch_end(self, trainer, epoch, logs):
        self.events.append(("epoch_end", epoch, set(logs)))
        return epoch == self.stop_at_epoch

    def on_train_end(self, trainer, history):
        self.events.append(("end", len(history)))


def test_callbacks_fire_in_order():
    x, t = blobs(n=40)
    rec = Recorder()
    Trainer(small_net(), PlainSGD(), epochs=2, batch_size=20, progress=False, val_split=0.5,
            callbacks=rec).fit(x, t)
    keys = {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "batch_loss", "lr", "time",
            "steps"}
    assert rec.events == [("begin",), ("epoch_begin", 1), ("step", 1), ("epoch_end", 1, keys),
                          ("epoch_begin", 2), ("step", 2), ("epoch_end", 2, keys), ("end", 2)]


def test_callback_stop_requests():
    x, t = blobs(n=40)
    tr = Trainer(small_net(), PlainSGD(), epochs=10, batch_size=10, progress=False,
                 callbacks=Recorder(stop_at_epoch=3))
    assert len(tr.fit(x, t)) == 3 and tr.stop_reason == "Recorder"

    def raise_at_step_6(trainer, step, logs):
        if step == 6:
            raise StopTraining("enough")

    tr = Trainer(small_net(), PlainSGD(), epochs=10, batch_size=10, progress=False,
                 callbacks=[LambdaCallback(on_step_end=raise_at_step_6)])
    h = tr.fit(x, t)
    # stops mid-epoch 2 after its second step; that epoch's metrics are still recorded
    assert tr.step == 6 and tr.epoch == 2 and h.steps == [4, 2]
    assert "enough" in tr.stop_reason

    def flag(trainer, epoch):
        if epoch == 2:
            trainer.stop_training = True

    tr = Trainer(small_net(), PlainSGD(), epochs=10, batch_size=10, progress=False,
                 callbacks=[LambdaCallback(on_epoch_begin=flag)])
    assert len(tr.fit(x, t)) == 2 and tr.step == 5      # epoch 2 stopped after one step
    with pytest.raises(TypeError, match="unknown hook"):
        LambdaCallback(on_batch=print)


# ============================================================================ early stopping
def test_early_stopping_stops_and_restores_best():
    # validation labels that disagree with the training labels: val_loss rises while training fits
    x, t = blobs(n=120)
    x_val, t_val = x[:60], (t[:60] + 1) % 3
    net = small_net()
    snaps = {}
    snap = LambdaCallback(on_epoch_end=lambda tr, e, logs: snaps.__setitem__(e, tr.model.state_dict()))
    es = EarlyStopping(patience=3)
    tr = Trainer(net, PlainSGD(0.1), epochs=50, batch_size=16, progress=False, seed=0,
                 early_stopping=es, callbacks=[snap])
    h = tr.fit(x, t, x_val, t_val)
    assert tr.epoch < 50 and es.stopped_epoch == tr.epoch == len(h)
    assert es.best_epoch == tr.epoch - 3
    assert es.best == min(h.val_loss) == h.val_loss[es.best_epoch - 1]
    assert tr.stop_reason == "EarlyStopping"
    for k, v in net.state_dict().items():                 # the best epoch's weights are back
        np.testing.assert_array_equal(v, snaps[es.best_epoch][k])
    assert tr.evaluate(x_val, t_val)[0] == pytest.approx(es.best)


def test_early_stopping_rule_min_delta_and_modes():
    class FakeModel:
        def __init__(self):
            self.w = 0

        def state_dict(self):
            return {"w": self.w}

        def load_state_dict(self, d):
            self.w = d["w"]

    class FakeTrainer:
        has_validation = True
        model = FakeModel()
        epoch = 0

    ft = FakeTrainer()
    es = EarlyStopping(patience=2, min_delta=0.1)
    es.on_train_begin(ft)
    stops = []
    for e, v in enumerate([1.0, 0.95, 0.85, 0.8, 0.78], 1):
        ft.epoch, ft.model.w = e, e
        stops.append(es.on_epoch_end(ft, e, {"val_loss": v}))
    # 0.95 is not better than 1.0 by more than 0.1; 0.85 is; 0.8 and 0.78 are not -> stop at 5
    assert stops == [False, False, False, False, True]
    assert es.best_epoch == 3 and es.best == 0.85 and es.stopped_epoch == 5
    es.on_train_end(ft, None)
    assert ft.model.w == 3
    acc = EarlyStopping(patience=1, monitor="val_accuracy")
    assert acc.mode == "max"
    acc.on_train_begin(ft)
    assert acc.on_epoch_end(ft, 1, {"val_accuracy": 0.5}) is False
    assert acc.on_epoch_end(ft, 2, {"val_accuracy": 0.4}) is True
    with pytest.raises(ValueError, match="monitor"):
        EarlyStopping(2, monitor="val_f1")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(0)
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping(1, min_delta=-1)


def test_early_stopping_on_training_loss_without_validation():
    x, t = blobs(n=40)
    es = EarlyStopping(2, monitor="loss", min_delta=10.0)        # nothing ever improves by 10
    tr = Trainer(small_net(), PlainSGD(), epochs=20, progress=False, early_stopping=es)
    assert len(tr.fit(x, t)) == 3 and es.best_epoch == 1


# ============================================================================ failures
def test_non_finite_loss_names_epoch_step_and_parameter():
    x, t = blobs(n=40)
    net = small_net()
    tr = Trainer(net, PlainSGD(), epochs=3, batch_size=10, progress=False)
    tr.fit(x, t)
    net.params["W2"][0, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"epoch 4, step 1 \(global step 13\).*'W2'") as ei:
        tr.fit(x, t)
    assert (ei.value.epoch, ei.value.step, ei.value.global_step) == (4, 1, 13)
    assert ei.value.param == "W2" and ei.value.what == "loss"


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_overflowing_loss_is_reported():
    x, t = blobs(n=40)
    net = small_net()
    net.params["W1"][...] = 1e30                  # finite weights, overflowing logits
    net.params["W2"][...] = 1e30
    with pytest.raises(NonFiniteError, match="epoch 1, step 1.*overflowed"):
        Trainer(net, PlainSGD(), progress=False).fit(x, t)


def test_non_finite_gradient_names_the_parameter_and_changes_nothing():
    x, t = blobs(n=40)
    net = small_net()
    orig = net.loss_and_gradient
    calls = [0]

    def poisoned(xb, tb):
        loss, grads = orig(xb, tb)
        calls[0] += 1
        if calls[0] == 3:
            grads["b1"][0] = np.inf
        return loss, grads

    net.loss_and_gradient = poisoned
    tr = Trainer(net, PlainSGD(), epochs=1, batch_size=10, progress=False)
    before = {}
    tr.callbacks.append(LambdaCallback(
        on_step_end=lambda tr, s, logs: before.update(tr.model.state_dict()) if s == 2 else None))
    with pytest.raises(NonFiniteError, match=r"gradient for parameter 'b1' at epoch 1, step 3") as ei:
        tr.fit(x, t)
    assert ei.value.what == "gradient" and tr.step == 2
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_optimizer_floating_point_error_is_wrapped():
    class CheckingSGD(PlainSGD):
        check_finite = True

        def update(self, params, grads):
            err = FloatingPointError("non-finite gradient for 'W1'")
            err.param = "W1"
            raise err

    x, t = blobs(n=20)
    with pytest.raises(NonFiniteError, match="'W1' at epoch 1, step 1") as ei:
        Trainer(small_net(), CheckingSGD(), progress=False).fit(x, t)
    assert ei.value.param == "W1" and isinstance(ei.value.__cause__, FloatingPointError)


# ============================================================================ Ctrl-C
def test_ctrl_c_finishes_the_step_and_raises():
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is handled by the test runner")
    x, t = blobs(n=100)
    ended = []

    def interrupt(trainer, step, logs):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    tr = Trainer(small_net(), PlainSGD(), epochs=5, batch_size=10, progress=False,
                 callbacks=[LambdaCallback(on_step_end=interrupt,
                                           on_train_end=lambda tr, h: ended.append(tr.step))])
    with pytest.raises(KeyboardInterrupt):
        tr.fit(x, t)
    assert tr.interrupted and tr.step == 3 and ended == [3] and len(tr.history) == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handler restored
    assert "interrupted" in tr.stop_reason


# ============================================================================ history and progress
def test_history_helpers():
    h = History()
    assert len(h) == 0 and "0 epochs" in repr(h)
    for e, (l, a) in enumerate([(1.0, 0.5), (0.5, 0.8), (0.7, 0.7)], 1):
        h.append({"epoch": e, "loss": l, "accuracy": a, "val_loss": l + 0.1, "val_accuracy": a})
    assert h.best("val_loss") == (2, pytest.approx(0.6)) and h.best("accuracy") == (2, 0.8)
    assert h["loss"] == [1.0, 0.5, 0.7] and "3 epochs" in repr(h)
    with pytest.raises(KeyError):
        h["f1"]
    with pytest.raises(ValueError, match="no 'lr'"):
        h.best("lr")


def test_progress_bar_shows_epoch_loss_accuracy(capsys):
    x, t = blobs(n=40)
    Trainer(small_net(), PlainSGD(), epochs=2, batch_size=10, progress=True, val_split=0.25).fit(x, t)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "loss=" in err and "acc=" in err and "val_acc=" in err


def test_plot_history_writes_png(tmp_path):
    from dlfast.plotting import plot_history
    x, t = blobs(n=40)
    h = Trainer(small_net(), PlainSGD(), epochs=3, progress=False, val_split=0.25).fit(x, t)
    p = plot_history(h, tmp_path / "h.png", title="test")
    data = open(p, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="no epochs"):
        plot_history(History(), tmp_path / "e.png")
