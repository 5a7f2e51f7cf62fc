"""Training loop: ``Trainer`` (its ``History``, callbacks and ``EarlyStopping``: ``dlfast.callbacks``).

One epoch = one pass over the training set in shuffled mini-batches (the Trainer's own seeded
``numpy.random.Generator``); per step::

    loss, grads = model.loss_and_gradient(xb, tb)     # train mode (dropout, BN batch statistics)
    optimizer.update(model.params, grads); model.apply_constraints()

(``loss_and_gradient(xb, tb, wb)`` with ``fit(..., sample_weight=w)``). After each epoch the loss
and the metric of the whole training set and of the validation set are measured in eval mode and
appended to ``History``: accuracy for a classification loss (softmax cross-entropy, sigmoid BCE),
R^2 (``r2``) for a regression loss (mse, mae, huber). The validation set is ``x_val``/``t_val`` or a
``val_split`` fraction split off the training data given to ``fit``; nothing else is ever looked at.

Learning-rate schedules: ``schedule(t)`` (``dlfast.schedules`` or any callable t -> lr) sets
``optimizer.lr`` before each epoch (t = epochs done) or each step (t = steps done,
``schedule_per="step"``). A schedule with ``step(metric)`` (``ReduceOnPlateau``) is instead fed
``logs[schedule_monitor]`` after each epoch and its result becomes ``optimizer.lr``.

Callbacks: any objects with some of ``on_train_begin(trainer)``, ``on_epoch_begin(trainer, epoch)``,
``on_step_end(trainer, step, logs)``, ``on_epoch_end(trainer, epoch, logs)``,
``on_train_end(trainer, history)``. A hook stops training by returning ``True`` (or ``"stop"``), by
raising ``StopTraining``, or by setting ``trainer.stop_training = True``; a stop requested mid-epoch
ends that epoch early (its metrics are still measured). Epochs are numbered from 1.

Ctrl-C (SIGINT, main thread): the step in progress finishes, ``on_train_end`` runs (EarlyStopping
restores its best weights), ``trainer.interrupted`` is set, and ``KeyboardInterrupt`` is raised so
the caller can save the model (``dlfast train`` does). A second Ctrl-C interrupts at once.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time

import numpy as np

from ._validation import positive_int, real, sample_weights
from .callbacks import (Callback, EarlyStopping, History, LambdaCallback, NonFiniteError,
                        StopTraining, _is_stop)

__all__ = ["Trainer", "History", "Callback", "LambdaCallback", "EarlyStopping", "StopTraining",
           "NonFiniteError"]


# ============================================================================ helpers
def _n(name, a):
    if isinstance(a, dict):
        sizes = {k: _n(f"{name}[{k!r}]", v) for k, v in a.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{name} heads have different numbers of samples: {sizes}")
        if not sizes:
            raise ValueError(f"{name} must not be an empty dict")
        return next(iter(sizes.values()))
    if not isinstance(a, np.ndarray) or a.ndim < 1:
        raise TypeError(f"{name} must be a numpy.ndarray with a sample axis, got {type(a).__name__}")
    return a.shape[0]


def _take(a, idx):
    if isinstance(a, dict):
        return {k: v[idx] for k, v in a.items()}
    return a[idx]


def _rng_state(obj):
    rng = getattr(obj, "rng", None)
    return rng.bit_generator.state if isinstance(rng, np.random.Generator) else None


def _mean_acc(a):
    if isinstance(a, dict):
        return float(np.mean(list(a.values()))) if a else None
    return float(a)


def _one_hot(t):
    """t (N, C) holds exact one-hot rows."""
    ones = t == 1
    return bool(np.all(ones | (t == 0)) and np.all(ones.sum(axis=1) == 1))


def _tasks(model):
    """The tasks of a model's losses: a subset of {"classify", "regress"}."""
    m = getattr(model, "model", model)              # _FrozenCache
    if hasattr(m, "loss_layers") and isinstance(m.loss_layers, dict):
        return {getattr(l, "TASK", "classify") for l in m.loss_layers.values()}
    loss = getattr(m, "loss_layer", None)
    return {getattr(loss, "TASK", "classify")}


# ============================================================================ trainer
class _FrozenCache:
    """Train only the upper layers of a ``Sequential`` on the cached eval-mode outputs of its
    frozen lower layers (``Trainer(cache_frozen=True)``).

    Lower layers: every layer below the first trainable parametrised one. Caching is exact (the
    same losses and updates as the uncached path) when their output depends on the row alone and
    does not change during training, so it is refused unless: the model is a ``Sequential`` (or
    ``MLP``), at least one layer is below the first trainable parametrised layer, and none of the
    lower layers is stochastic (Dropout, RReLU) or a BatchNorm (train mode uses batch statistics).
    Unfreezing a lower layer during ``fit`` raises at the next epoch."""

    def __init__(self, model):
        from .net import MultiTaskNet, Sequential
        from .layers import BatchNorm
        if not isinstance(model, Sequential) or isinstance(model, MultiTaskNet):
            raise TypeError(f"cache_frozen needs a Sequential/MLP model, got {type(model).__name__}")
        layers = model.layers
        j = next((i for i, l in enumerate(layers) if l.trainable and l.params), None)
        if j is None:
            raise ValueError("cache_frozen: every layer is frozen, nothing to train")
        if j == 0:
            raise ValueError("cache_frozen: no frozen lower layers to cache (freeze some first, "
                             "e.g. model.freeze(upto=k))")
        for i, l in enumerate(layers[:j]):
            if l.stochastic or isinstance(l, BatchNorm):
                raise ValueError(f"cache_frozen: lower layer {i} ({type(l).__name__}) is "
                                 f"{'stochastic' if l.stochastic else 'a BatchNorm'} in training "
                                 f"mode, so its output cannot be cached")
        self.model, self.lower, self.upper = model, layers[:j], layers[j:]
        self.params, self.loss_layer, self.dtype = model.params, model.loss_layer, model.dtype

    def check_still_frozen(self):
        bad = [i for i, l in enumerate(self.lower) if l.trainable and l.params]
        if bad:
            raise RuntimeError(f"cache_frozen: lower layers {bad} were unfrozen during fit; the "
                               f"cached features are stale")

    def features(self, x, chunk):
        """Eval-mode output of the lower layers for every row of x."""
        from .net import _forward
        x = self.model._check_x(x)
        out = None
        for s in range(0, x.shape[0], chunk):
            h = _forward(self.lower, x[s:s + chunk], False)
            if out is None:
                out = np.empty((x.shape[0],) + h.shape[1:], h.dtype)
            out[s:s + chunk] = h
        return out

    def forward(self, h, train=True):
        from .net import _forward
        return _forward(self.upper, h, train)

    def penalty(self):
        return self.model.penalty()

    def loss_and_gradient(self, h, t, sample_weight=None):
        m = self.model
        loss, grads = m._step((tuple(self.upper), (((), self.loss_layer, 1.0),)), h, (t,),
                              None if sample_weight is None else (sample_weight,))
        return loss + m.penalty(), m._finish_grads(grads)

    def apply_constraints(self):
        self.model.apply_constraints()


class Trainer:
    """Mini-batch training of a dlfast net with an optimiser (see the module docstring).

    ``epochs``: epochs per ``fit`` call; ``batch_size``: rows per step (a final batch of one row is
    merged into the previous batch, so batch norm never sees a single row); ``schedule``,
    ``schedule_per`` ("epoch" | "step"), ``schedule_monitor`` (for ``step(metric)`` schedules;
    default "val_loss" with a validation set, else "loss"); ``early_stopping``: an ``EarlyStopping``
    or an int patience; ``val_split``: fraction of the training data held out for validation
    (``stratify`` per class, for classification losses; ignored for regression); ``callbacks``; ``progress``: tqdm bar on stderr; ``seed``: the
    shuffling/splitting generator (int or None); ``eval_batch_size``: rows per evaluation chunk;
    ``eval_train`` (default True): measure the loss and accuracy of the whole training set after
    each epoch (False: only ``batch_loss``, the mean of the epoch's step losses, is logged for
    the training set; ``loss``/``accuracy`` stay empty, saving a forward pass over it).
    ``cache_frozen``: compute the frozen lower layers' outputs for the training and validation
    sets once per ``fit`` and train the upper layers on them (see ``_FrozenCache`` for when this
    is allowed). ``transform``: ``x -> x'`` (same shape and dtype, e.g. ``dlfast.augment.Augment``)
    applied to the training set at the start of every epoch; validation data and the logged
    training loss/accuracy use the untransformed data. ``checkpoint``: a
    ``dlfast.checkpoint.Checkpoint`` (run after every other callback); ``fit(..., resume=path)``
    continues from one bit-identically (see ``dlfast.checkpoint``).

    Counters: ``epoch`` (epochs done) and ``step`` (optimiser steps done) keep growing over
    successive ``fit`` calls, as does ``history``.
    """

    def __init__(self, model, optimizer, epochs=10, batch_size=32, *, schedule=None,
                 schedule_per="epoch", schedule_monitor=None, early_stopping=None, val_split=None,
                 stratify=False, callbacks=(), progress=True, seed=None, shuffle=True,
                 eval_batch_size=1024, handle_interrupt=True, cache_frozen=False, transform=None,
                 checkpoint=None, eval_train=True):
        for attr in ("params", "loss_and_gradient", "state_dict", "load_state_dict"):
            if not hasattr(model, attr):
                raise TypeError(f"model must be a dlfast net (needs {attr}), got {type(model).__name__}")
        if not callable(getattr(optimizer, "update", None)) or not hasattr(optimizer, "lr"):
            raise TypeError(f"optimizer must have update(params, grads) and an lr attribute, "
                            f"got {type(optimizer).__name__}")
        self.model = model
        self.optimizer = optimizer
        self.epochs = positive_int("epochs", epochs)
        self.batch_size = positive_int("batch_size", batch_size)
        self.eval_batch_size = positive_int("eval_batch_size", eval_batch_size)
        if not isinstance(eval_train, (bool, np.bool_)):
            raise TypeError(f"eval_train must be True or False, got {type(eval_train).__name__}")
        self.eval_train = bool(eval_train)
        if schedule is not None and not callable(schedule) and not callable(getattr(schedule, "step", None)):
            raise TypeError(f"schedule must be callable (t -> lr) or have step(metric), "
                            f"got {type(schedule).__name__}")
        self.schedule = schedule
        if schedule_per not in ("epoch", "step"):
            raise ValueError(f"schedule_per must be 'epoch' or 'step', got {schedule_per!r}")
        self.schedule_per = schedule_per
        if schedule_monitor is not None and schedule_monitor not in History.KEYS:
            raise ValueError(f"schedule_monitor must be one of {History.KEYS}, got {schedule_monitor!r}")
        self.schedule_monitor = schedule_monitor
        if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
            early_stopping = EarlyStopping(early_stopping)
        self.early_stopping = early_stopping
        if val_split is not None:
            val_split = real("val_split", val_split, 0.0, 1.0, lo_open=True, hi_open=True)
        self.val_split = val_split
        self.stratify = bool(stratify)
        if callbacks is None:
            callbacks = ()
        if not isinstance(callbacks, (list, tuple)):
            callbacks = [callbacks]
        self.callbacks = list(callbacks)
        self.progress = bool(progress)
        self.shuffle = bool(shuffle)
        self.handle_interrupt = bool(handle_interrupt)
        self.cache_frozen = bool(cache_frozen)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable (x -> augmented x), got {type(transform).__name__}")
        if transform is not None and self.cache_frozen:
            raise ValueError("cache_frozen cannot be combined with a transform: the cache would "
                             "hold the features of un-augmented data")
        self.transform = transform
        if checkpoint is not None and not callable(getattr(checkpoint, "save", None)):
            raise TypeError(f"checkpoint must be a dlfast.checkpoint.Checkpoint, "
                            f"got {type(checkpoint).__name__}")
        self.checkpoint = checkpoint
        self._ep = None                        # the running epoch's batches/progress (checkpoints)
        self._resume_ep = self._resume_es = self._resume_stop = self._resume_last_epoch = None
        self._fit_model = model
        self._xv_fit = None
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        ss = np.random.SeedSequence(None if seed is None else int(seed))
        self.seed = ss.entropy                 # the seed actually used (drawn when None)
        self._split_ss, shuffle_ss = ss.spawn(2)
        self._shuffle_rng = np.random.default_rng(shuffle_ss)
        self.epoch = 0
        self.step = 0
        self.history = History()
        self.stop_training = False
        self.stop_reason = None
        self.interrupted = False
        self.has_validation = False
        self.x_val = self.t_val = self.sw_val = self._sw = None
        self.train_indices = self.val_indices = None
        self._sigint = False

    # ---------------------------------------------------------------- callbacks
    def _all_callbacks(self):
        return (self.callbacks + ([self.early_stopping] if self.early_stopping is not None else [])
                + ([self.checkpoint] if self.checkpoint is not None else []))

    def _hooked(self, hook):
        """True when a callback defines ``hook`` (other than the no-op of ``Callback``)."""
        return any(callable(getattr(cb, hook, None)) and (
            hook in vars(cb) or getattr(type(cb), hook, None) is not getattr(Callback, hook))
            for cb in self._all_callbacks())

    def _rows(self, x, idx):
        """``x[idx]`` gathered into a buffer kept per batch size (no allocation per step)."""
        bufs = self.__dict__.setdefault("_row_bufs", {})
        buf = bufs.get(len(idx))
        if buf is None or buf.shape[1:] != x.shape[1:] or buf.dtype != x.dtype:
            if len(bufs) >= 2:
                bufs.clear()
            buf = bufs[len(idx)] = np.empty((len(idx), *x.shape[1:]), x.dtype)
        return np.take(x, idx, axis=0, out=buf, mode="clip")     # idx: valid row indices

    def _call(self, hook, *args):
        for cb in self._all_callbacks():
            fn = getattr(cb, hook, None)
            if fn is None:
                continue
            try:
                r = fn(self, *args)
            except StopTraining as exc:
                r = True
                if self.stop_reason is None and str(exc):
                    self.stop_reason = f"{type(cb).__name__}: {exc}"
            if _is_stop(r):
                self.stop_training = True
                if self.stop_reason is None:
                    self.stop_reason = type(cb).__name__
        return self.stop_training

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, x, t, _model=None, sample_weight=None):
        """``(loss, metric)`` of the model on (x, t) in eval mode, in chunks of
        ``eval_batch_size`` rows: loss = the model's loss (weighted by ``sample_weight``) +
        penalty; metric = accuracy for a classification loss, R^2 for a regression loss
        (``metrics`` gives both names)."""
        m = self.metrics(x, t, _model, sample_weight)
        return m["loss"], m["accuracy"] if "accuracy" in m else m["r2"]

    def metrics(self, x, t, _model=None, sample_weight=None):
        """dict: ``loss``, and ``accuracy`` (classification losses) and/or ``r2`` (regression
        losses; a MultiTaskNet: the mean over its heads of each kind) of the model on (x, t) in
        eval mode (see ``evaluate``)."""
        model = self.model if _model is None else _model
        n = _n("x", x)
        if _n("t", t) != n:
            raise ValueError(f"x and t must have the same number of samples, got {n} and {_n('t', t)}")
        if n == 0:
            raise ValueError("cannot evaluate on an empty set")
        sw = sample_weights(sample_weight, n)
        fast = hasattr(model, "forward") and hasattr(model, "loss_layer") and not isinstance(t, dict)
        tasks = _tasks(model)
        total = 0.0 if sw is None else float(np.sum(sw))
        loss_sum = acc_sum = 0.0
        outs = []
        sum_red = getattr(getattr(model, "loss_layer", None), "reduction", "mean") == "sum"
        for s in range(0, n, self.eval_batch_size):
            sl = slice(s, s + self.eval_batch_size)
            xc, tc = x[sl], _take(t, sl)
            m = xc.shape[0]
            wc = None if sw is None else sw[sl]
            d = float(m) if wc is None else float(np.sum(wc))
            kw = {} if wc is None else {"sample_weight": wc}
            if fast:
                loss = model.loss_layer
                y = model.forward(xc, train=False)
                if d > 0:
                    loss_sum += loss.forward(y, tc, wc) * (1.0 if sum_red else d)
                if loss.TASK == "classify":
                    right = loss.correct(y, tc)
                    acc_sum += float(np.count_nonzero(right) if wc is None else np.sum(wc * right))
                else:
                    outs.append(y.copy())
            elif d > 0:
                loss_sum += d * (model.loss(xc, tc, train=False, **kw) - model.penalty())
                if "classify" in tasks:
                    acc_sum += d * _mean_acc(model.accuracy(xc, tc, **kw))
        out = {"loss": loss_sum / (1.0 if sum_red else (n if sw is None else total))
               + model.penalty()}
        if "classify" in tasks:
            out["accuracy"] = acc_sum / (n if sw is None else total)
        if "regress" in tasks:
            if fast:
                from .net import r2_score
                y = np.concatenate(outs)
                out["r2"] = r2_score(y, model.loss_layer.targets(t, n, y.shape[1]), sw)
            else:
                kw = {} if sw is None else {"sample_weight": sw}
                out["r2"] = _mean_acc(model.r2(x, t, **kw))
        return out

    # ---------------------------------------------------------------- lr
    def _metric_schedule(self):
        """True for schedules driven by a metric (``step(metric)``, e.g. ReduceOnPlateau)."""
        return self.schedule is not None and callable(getattr(self.schedule, "step", None))

    def _set_lr(self, t):
        s = self.schedule
        if s is None or self._metric_schedule():
            return
        if callable(getattr(s, "apply", None)):
            s.apply(self.optimizer, t)
        else:
            lr = float(s(t))
            if not (math.isfinite(lr) and lr >= 0):
                raise ValueError(f"schedule returned an invalid learning rate {lr} for t={t}")
            self.optimizer.lr = lr

    # ---------------------------------------------------------------- data
    def _prepare(self, x, t, x_val, t_val, sw=None, sw_val=None):
        n = _n("x", x)
        if _n("t", t) != n:
            raise ValueError(f"x and t must have the same number of samples, got {n} and {_n('t', t)}")
        if (x_val is None) != (t_val is None):
            raise ValueError("give both x_val and t_val, or neither")
        dtype = getattr(self.model, "dtype", None)
        if dtype is not None and isinstance(x, np.ndarray) and x.dtype != dtype:
            raise TypeError(f"x has dtype {x.dtype.name} but the model is {np.dtype(dtype).name} "
                            f"(cast explicitly, e.g. x.astype(np.{np.dtype(dtype).name}))")
        if x_val is not None:
            if self.val_split is not None:
                raise ValueError("give x_val/t_val or val_split, not both")
            nv = _n("x_val", x_val)
            if _n("t_val", t_val) != nv:
                raise ValueError(f"x_val and t_val must have the same number of samples, got {nv} "
                                 f"and {_n('t_val', t_val)}")
            if nv == 0:
                raise ValueError("x_val is empty")
            self.train_indices, self.val_indices = np.arange(n), None
        elif self.val_split is not None:
            from .datasets import split_indices
            labels = None
            if self.stratify and _tasks(self.model) == {"classify"}:
                if isinstance(t, dict):
                    raise ValueError("stratify needs a single label array, not a dict of heads")
                labels = t if t.ndim == 1 else (np.argmax(t, axis=1) if _one_hot(t) else None)
            # the same split on every fit call: validation rows are never trained on later
            rng = np.random.default_rng(self._split_ss)
            self.train_indices, self.val_indices = split_indices(n, self.val_split, rng, labels,
                                                                 "val_split")
            x_val, t_val = x[self.val_indices], _take(t, self.val_indices)
            x, t = x[self.train_indices], _take(t, self.train_indices)
            if sw is not None:
                sw, sw_val = sw[self.train_indices], sw[self.val_indices]
                if not sw_val.any():
                    sw_val = None                   # the held-out rows weigh nothing: unweighted
        else:
            self.train_indices, self.val_indices = np.arange(n), None
        if _n("x", x) == 0:
            raise ValueError("the training set is empty")
        self.x_val, self.t_val = x_val, t_val
        self.sw_val = sw_val
        self.has_validation = x_val is not None
        return x, t, sw

    def _bounds(self, n):
        """Batch boundaries; a final batch of one row is merged into the previous one."""
        bounds = list(range(0, n, self.batch_size)) + [n]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
            del bounds[-2]
        return bounds

    def _batches(self, n):
        order = self._shuffle_rng.permutation(n) if self.shuffle else np.arange(n)
        bounds = self._bounds(n)
        return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    # ---------------------------------------------------------------- errors
    def _nonfinite_param(self):
        from . import kernels
        for name, p in self.model.params.items():
            if p.size and not kernels.all_finite(p):
                return name
        return None

    def _raise_nonfinite_loss(self, loss, k):
        bad = self._nonfinite_param()
        where = f"epoch {self.epoch + 1}, step {k} (global step {self.step + 1})"
        msg = (f"non-finite loss {loss} at {where}; "
               + (f"parameter {bad!r} is already non-finite" if bad else
                  "every parameter is finite: the loss overflowed (learning rate too high? "
                  "unnormalised inputs?)"))
        raise NonFiniteError(msg, self.epoch + 1, k, self.step + 1, bad, "loss")

    def _check_grads(self, grads, k):
        from . import kernels
        for name, g in grads.items():
            if g.size and not kernels.all_finite(g):
                raise NonFiniteError(f"non-finite gradient for parameter {name!r} at epoch "
                                     f"{self.epoch + 1}, step {k} (global step {self.step + 1})",
                                     self.epoch + 1, k, self.step + 1, name, "gradient")

    # ---------------------------------------------------------------- SIGINT
    def _install_sigint(self):
        if not self.handle_interrupt or threading.current_thread() is not threading.main_thread():
            return None
        try:
            previous = signal.getsignal(signal.SIGINT)
        except ValueError:
            return None
        if previous is not signal.default_int_handler:
            return None                        # someone else handles Ctrl-C: leave it alone

        def handler(signum, frame):
            self._sigint = True                # finish this step, then stop
            signal.signal(signal.SIGINT, signal.default_int_handler)   # second Ctrl-C: now

        signal.signal(signal.SIGINT, handler)
        return previous

    # ---------------------------------------------------------------- state
    def state_dict(self):
        """Everything a checkpoint keeps (``dlfast.checkpoint``), as a nested dict: the model's
        and optimiser's state dicts, the schedule's, early stopping's, the counters, the history,
        the seed and generator states, and mid-epoch the epoch's batch order and progress."""
        es, sched, opt = self.early_stopping, self.schedule, self.optimizer
        ep = self._ep
        mid = ep is not None and not ep.get("done", False)
        return {
            "model": self.model.state_dict(),
            "optimizer": opt.state_dict() if callable(getattr(opt, "state_dict", None)) else None,
            "optimizer_class": type(opt).__name__,
            "lr": float(opt.lr),
            "schedule": sched.state_dict() if callable(getattr(sched, "state_dict", None)) else None,
            "schedule_class": None if sched is None else type(sched).__name__,
            "early_stopping": None if es is None else {
                "best": float(es.best), "best_epoch": int(es.best_epoch), "wait": int(es.wait),
                "stopped_epoch": int(es.stopped_epoch), "best_state": es._best_state},
            "epoch": int(self.epoch), "step": int(self.step),
            "last_epoch": int(getattr(self, "_last_epoch", self.epoch)),
            "stop_training": bool(self.stop_training), "stop_reason": self.stop_reason,
            "history": self.history.as_dict(),
            "seed": int(self.seed),
            "shuffle_rng": self._shuffle_rng.bit_generator.state,
            "transform_rng": ep["transform_rng"] if mid else _rng_state(self.transform),
            "mid_epoch": None if not mid else {
                "order": np.concatenate(ep["batches"]), "k": int(ep["k"]),
                "loss_sum": float(ep["loss_sum"]), "rows": int(ep["rows"]), "n": int(ep["n"])},
        }

    def load_state_dict(self, state):
        """Restore ``state_dict()`` output; the next ``fit`` (same data) continues that run up to
        its target epoch, bit-identically. All-or-nothing for the model and optimiser; a
        ValueError names what does not fit this trainer (optimiser, schedule, early stopping,
        transform)."""
        st, opt, sched = state, self.optimizer, self.schedule
        if st.get("optimizer_class") != type(opt).__name__:
            raise ValueError(f"the state is for optimizer {st.get('optimizer_class')!r}, the "
                             f"trainer uses {type(opt).__name__!r}")
        if st.get("schedule_class") != (None if sched is None else type(sched).__name__):
            raise ValueError(f"the state is for schedule {st.get('schedule_class')!r}, the "
                             f"trainer uses {None if sched is None else type(sched).__name__!r}")
        if (st.get("early_stopping") is None) != (self.early_stopping is None):
            raise ValueError(f"early stopping is {'absent' if st.get('early_stopping') is None else 'present'} "
                             f"in the state but not in the trainer (or vice versa)")
        if (st.get("transform_rng") is None) != (_rng_state(self.transform) is None):
            raise ValueError("the transform generator state does not fit the trainer's transform")
        mid = st["mid_epoch"]
        if mid is not None:
            order, bounds = np.asarray(mid["order"]), self._bounds(int(mid["n"]))
            if order.shape != (int(mid["n"]),) or not 0 <= int(mid["k"]) <= len(bounds) - 1:
                raise ValueError(f"damaged mid-epoch state (order of shape {order.shape} for "
                                 f"{mid['n']} rows, {mid['k']} steps done)")
            mid = {"batches": [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
                   "k": int(mid["k"]), "loss_sum": float(mid["loss_sum"]),
                   "rows": int(mid["rows"]), "n": int(mid["n"])}
        model = self.model
        old_model = model.state_dict()
        old_opt = opt.state_dict() if st["optimizer"] is not None else None
        try:
            model.load_state_dict(st["model"])
            if st["optimizer"] is not None:
                opt.load_state_dict(st["optimizer"], model.params)
            opt.lr = st["lr"]
            if st["schedule"] is not None:
                sched.load_state_dict(st["schedule"])
            ss = np.random.SeedSequence(st["seed"])
            self._shuffle_rng.bit_generator.state = st["shuffle_rng"]
            if st["transform_rng"] is not None:
                self.transform.rng.bit_generator.state = st["transform_rng"]
        except (TypeError, ValueError, KeyError) as exc:
            model.load_state_dict(old_model)
            if old_opt is not None:
                opt.load_state_dict(old_opt)
            raise ValueError(f"the state does not fit the trainer ({type(exc).__name__}: "
                             f"{exc})") from None
        self.seed = ss.entropy
        self._split_ss, _ = ss.spawn(2)
        self.epoch, self.step = int(st["epoch"]), int(st["step"])
        self._resume_last_epoch = int(st["last_epoch"])
        self._resume_stop = (bool(st["stop_training"]), st["stop_reason"])
        h = History()
        for k, v in st["history"].items():
            if k in History.KEYS:
                setattr(h, k, list(v))
        self.history = h
        self._resume_es = st["early_stopping"]      # applied by fit after on_train_begin
        self._resume_ep = mid
        return self

    def _apply_early_stopping(self, es_state):
        es = self.early_stopping
        es.best, es.best_epoch = es_state["best"], es_state["best_epoch"]
        es.wait, es.stopped_epoch = es_state["wait"], es_state["stopped_epoch"]
        es._best_state = es_state["best_state"]

    # ---------------------------------------------------------------- fit
    def resume(self, path):
        """Load the checkpoint ``path`` (``dlfast.checkpoint``); the next ``fit`` (same data)
        continues the interrupted one up to its target epoch, bit-identically."""
        from .checkpoint import restore_checkpoint
        return restore_checkpoint(self, path)

    def fit(self, x, t, x_val=None, t_val=None, resume=None, sample_weight=None,
            sample_weight_val=None):
        """Train for ``epochs`` epochs (fewer if stopped); returns ``history``.

        x (N, F) of the model's dtype, t the targets of its loss: class indices (N,) or one-hot
        rows, or values (a dict head -> targets for a MultiTaskNet). The validation set is
        (x_val, t_val) or the ``val_split`` of (x, t). ``sample_weight`` (N,): per-row weights of
        the training loss and of the metrics (split with ``val_split``; ``sample_weight_val`` for
        x_val). ``resume``: a checkpoint path; training continues from it (see ``resume``)."""
        if resume is not None:
            self.resume(resume)
        sw = sample_weights(sample_weight, _n("x", x))
        sw_val = None
        if sample_weight_val is not None:
            if x_val is None:
                raise ValueError("sample_weight_val needs x_val and t_val")
            sw_val = sample_weights(sample_weight_val, _n("x_val", x_val), "sample_weight_val")
        x, t, sw = self._prepare(x, t, x_val, t_val, sw, sw_val)
        self._sw = sw
        self._fit_model, self._xv_fit = self.model, self.x_val
        if self.cache_frozen:
            cache = _FrozenCache(self.model)
            x = cache.features(x, self.eval_batch_size)
            if self.has_validation:
                self._xv_fit = cache.features(self.x_val, self.eval_batch_size)
            self._fit_model = cache
        n = _n("x", x)
        self.stop_training = False
        self.stop_reason = None
        self.interrupted = False
        self._sigint = False
        self._post = ""
        batches_per_epoch = len(self._bounds(n)) - 1
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.epochs * batches_per_epoch, unit="step", file=sys.stderr,
                       dynamic_ncols=True, leave=True)
        previous = self._install_sigint()
        last_epoch = self.epoch + self.epochs
        if self._resume_last_epoch is not None:
            last_epoch, self._resume_last_epoch = self._resume_last_epoch, None
        self._last_epoch = last_epoch
        try:
            self._call("on_train_begin")
            if self._resume_es is not None:
                self._apply_early_stopping(self._resume_es)
                self._resume_es = None
            if self._resume_stop is not None:
                self.stop_training, self.stop_reason = self._resume_stop
                self._resume_stop = None
            while self.epoch < last_epoch and not self.stop_training:
                self._run_epoch(x, t, bar, last_epoch)
        except KeyboardInterrupt:
            self.interrupted = True
            self.stop_reason = "interrupted (Ctrl-C)"
            self._call("on_train_end", self.history)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if bar is not None:
                if bar.n < bar.total:
                    bar.total = bar.n
                bar.refresh()
                bar.close()
        self._call("on_train_end", self.history)
        return self.history

    def _run_epoch(self, x, t, bar, last_epoch):
        t0 = time.perf_counter()
        epoch = self.epoch + 1
        model, opt = self._fit_model, self.optimizer
        sw = self._sw
        if model is not self.model:
            model.check_still_frozen()
        x_fit = x
        resumed, self._resume_ep = self._resume_ep, None
        if resumed is not None and resumed["n"] != _n("x", x):
            raise ValueError(f"the checkpoint was taken mid-epoch on {resumed['n']} training rows, "
                             f"but fit got {_n('x', x)}")
        rng = getattr(self.transform, "rng", None)
        transform_rng = rng.bit_generator.state if isinstance(rng, np.random.Generator) else None
        if self.transform is not None:
            x = self.transform(x)
            if not isinstance(x, np.ndarray) or x.shape != x_fit.shape or x.dtype != x_fit.dtype:
                raise ValueError(f"transform must return an array of shape {x_fit.shape} and dtype "
                                 f"{x_fit.dtype.name}, got {getattr(x, 'shape', type(x).__name__)} "
                                 f"{getattr(getattr(x, 'dtype', None), 'name', '')}")
        if self.schedule_per == "epoch":
            self._set_lr(self.epoch)
        self._call("on_epoch_begin", epoch)
        if bar is not None:
            bar.set_description(f"epoch {epoch}/{last_epoch}", refresh=False)
        if resumed is None:
            batches, k0, loss_sum, rows = self._batches(_n("x", x)), 0, 0.0, 0
        else:
            batches, k0, loss_sum, rows = (resumed["batches"], resumed["k"], resumed["loss_sum"],
                                           resumed["rows"])
            if self.stop_training:
                batches = batches[:k0]
        ep = self._ep = {"batches": batches, "k": k0, "loss_sum": loss_sum, "rows": rows,
                         "n": _n("x", x), "transform_rng": transform_rng, "done": False}
        k = k0
        step_hooks = self._hooked("on_step_end")
        for k, idx in enumerate(batches[k0:], k0 + 1):
            if self.schedule_per == "step":
                self._set_lr(self.step)
            xb, tb = self._rows(x, idx), _take(t, idx)
            if sw is None:
                loss, grads = model.loss_and_gradient(xb, tb)
            else:
                wb = np.take(sw, idx)
                if not wb.any():                    # the batch weighs nothing: no step
                    ep["k"] = k
                    if bar is not None:
                        bar.update(1)
                    continue
                loss, grads = model.loss_and_gradient(xb, tb, wb)
            if not math.isfinite(loss):
                self._raise_nonfinite_loss(loss, k)
            if not getattr(opt, "check_finite", False):
                self._check_grads(grads, k)        # the optimiser does not check: do it here
            try:
                opt.update(model.params, grads)
            except FloatingPointError as exc:       # optim.NonFiniteGradientError names the param
                name = getattr(exc, "param", None)
                raise NonFiniteError(f"non-finite gradient for parameter {name!r} at epoch {epoch}, "
                                     f"step {k} (global step {self.step + 1}): {exc}",
                                     epoch, k, self.step + 1, name, "gradient") from exc
            if hasattr(model, "apply_constraints"):
                model.apply_constraints()
            self.step += 1
            m = len(idx)
            loss_sum += loss * m
            rows += m
            ep["k"], ep["loss_sum"], ep["rows"] = k, loss_sum, rows
            if bar is not None:
                bar.update(1)
                if k % 10 == 1:
                    bar.set_postfix_str(f"batch_loss={loss:.4f} {self._post}", refresh=False)
            if step_hooks:
                self._call("on_step_end", self.step, {"loss": loss, "epoch": epoch, "batch": k,
                                                      "lr": float(opt.lr)})
            if self._sigint:
                raise KeyboardInterrupt
            if self.stop_training:
                break
        skipped = len(self._bounds(_n("x", x))) - 1 - k
        if bar is not None and skipped > 0:
            bar.total -= skipped
        logs = {"epoch": epoch, "batch_loss": loss_sum / max(rows, 1), "steps": k}
        if self.eval_train:
            logs.update(self.metrics(x_fit, t, model, sw))
        if self.has_validation:
            logs.update({f"val_{k}": v for k, v in
                         self.metrics(self._xv_fit, self.t_val, model, self.sw_val).items()})
        self.epoch = epoch
        ep["done"] = True
        if self.schedule is not None and self._metric_schedule():
            monitor = self.schedule_monitor or ("val_loss" if self.has_validation else
                                                "loss" if self.eval_train else "batch_loss")
            if monitor not in logs:
                raise ValueError(f"schedule_monitor {monitor!r} is not available (no validation "
                                 f"set, or eval_train=False?)")
            opt.lr = float(self.schedule.step(logs[monitor]))
        logs["lr"] = float(opt.lr)
        logs["time"] = time.perf_counter() - t0
        self.history.append(logs)
        if bar is not None:
            metric = ("acc", "accuracy") if "val_accuracy" in logs or "accuracy" in logs \
                else ("r2", "r2")
            post = (f"loss={logs['loss']:.4f} {metric[0]}={logs[metric[1]]:.4f}" if self.eval_train
                    else f"batch_loss={logs['batch_loss']:.4f}")
            if self.has_validation:
                post += (f" val_loss={logs['val_loss']:.4f} "
                         f"val_{metric[0]}={logs['val_' + metric[1]]:.4f}")
            self._post = post
            bar.set_postfix_str(post, refresh=True)
        self._call("on_epoch_end", epoch, logs)
        if self._sigint:
            raise KeyboardInterrupt
