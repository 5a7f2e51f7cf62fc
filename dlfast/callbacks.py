"""Training callbacks and records: ``History``, ``Callback``, ``LambdaCallback``,
``EarlyStopping``, and the exceptions ``StopTraining`` and ``NonFiniteError``.

A callback is any object with some of ``on_train_begin(trainer)``, ``on_epoch_begin(trainer,
epoch)``, ``on_step_end(trainer, step, logs)``, ``on_epoch_end(trainer, epoch, logs)``,
``on_train_end(trainer, history)`` (``dlfast.train.Trainer`` calls them). A hook stops training by
returning ``True`` (or ``"stop"``), by raising ``StopTraining``, or by setting
``trainer.stop_training = True``.
"""
from __future__ import annotations

import math

import numpy as np

from ._validation import positive_int, real

__all__ = ["History", "Callback", "LambdaCallback", "EarlyStopping", "StopTraining",
           "NonFiniteError"]


class StopTraining(Exception):
    """Raised by a callback hook to end training (after the current epoch's metrics)."""


class NonFiniteError(FloatingPointError):
    """The loss or a gradient became NaN/inf. Attributes ``epoch``, ``step`` (1-based step within
    the epoch), ``global_step``, ``param`` (parameter name or None) and ``what`` ("loss",
    "gradient", or "parameter" from ``dlfast.checkpoint.Checkpoint``)."""

    def __init__(self, message, epoch, step, global_step, param=None, what="loss"):
        super().__init__(message)
        self.epoch, self.step, self.global_step = epoch, step, global_step
        self.param, self.what = param, what


# ============================================================================ history
class History:
    """Per-epoch records, one list per key (index i = epoch ``epoch[i]``):

    ``epoch``, ``loss``/``accuracy`` (training set, eval mode), ``val_loss``/``val_accuracy``
    (validation set; empty lists without one), ``r2``/``val_r2`` (the same sets' R^2, for
    regression losses; ``accuracy`` is for classification losses: a model's metric fills one of
    the two, both for a MultiTaskNet mixing them), ``batch_loss`` (mean train-mode mini-batch loss),
    ``lr`` (learning rate at the end of the epoch), ``time`` (seconds of the epoch, evaluation
    included), ``steps`` (optimiser steps in the epoch)."""

    KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "batch_loss", "lr", "time",
            "steps", "r2", "val_r2")

    def __init__(self):
        for k in self.KEYS:
            setattr(self, k, [])

    def append(self, logs):
        """Add one epoch's ``logs`` (keys of ``KEYS``; missing val_* keys are skipped)."""
        for k in self.KEYS:
            if k in logs and logs[k] is not None:
                getattr(self, k).append(logs[k])

    def as_dict(self):
        """``{key: list}`` (copies) for every key in ``KEYS``."""
        return {k: list(getattr(self, k)) for k in self.KEYS}

    def __len__(self):
        return len(self.epoch)

    def __getitem__(self, key):
        if key not in self.KEYS:
            raise KeyError(f"History has no {key!r}; keys are {self.KEYS}")
        return getattr(self, key)

    def best(self, monitor="val_loss", mode="auto"):
        """``(epoch, value)`` of the best ``monitor`` value (min for losses, max for accuracies
        and R^2)."""
        vals = self[monitor]
        if not vals:
            raise ValueError(f"History has no {monitor!r} values")
        mode = _mode(monitor, mode)
        i = int(np.argmin(vals) if mode == "min" else np.argmax(vals))
        return self.epoch[i], vals[i]

    def __repr__(self):
        if not self.epoch:
            return "History(0 epochs)"
        last = {k: getattr(self, k)[-1] for k in ("loss", "accuracy", "r2", "val_loss",
                                                  "val_accuracy", "val_r2") if getattr(self, k)}
        return f"History({len(self)} epochs, last: " + ", ".join(f"{k}={v:.4g}" for k, v in
                                                                 last.items()) + ")"


def _mode(monitor, mode):
    if mode == "auto":
        return "max" if "acc" in monitor or "r2" in monitor else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    return mode


# ============================================================================ callbacks
class Callback:
    """Base class with no-op hooks (subclassing is optional: any object with some hooks works)."""

    def on_train_begin(self, trainer):
        pass

    def on_epoch_begin(self, trainer, epoch):
        pass

    def on_step_end(self, trainer, step, logs):
        pass

    def on_epoch_end(self, trainer, epoch, logs):
        pass

    def on_train_end(self, trainer, history):
        pass


class LambdaCallback(Callback):
    """Hooks from functions: ``LambdaCallback(on_epoch_end=lambda trainer, epoch, logs: ...)``."""

    _HOOKS = ("on_train_begin", "on_epoch_begin", "on_step_end", "on_epoch_end", "on_train_end")

    def __init__(self, **hooks):
        for name, fn in hooks.items():
            if name not in self._HOOKS:
                raise TypeError(f"unknown hook {name!r}; hooks are {self._HOOKS}")
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
            setattr(self, name, fn)


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without an improvement of ``monitor`` by more than
    ``min_delta`` (improvement: ``value < best - min_delta`` for "min", ``value > best + min_delta``
    for "max"; mode "auto" = max for accuracies and R^2, min otherwise). With ``restore_best`` the model's
    state (``state_dict``) of the best epoch is restored when training ends.
    After training: ``best``, ``best_epoch``, ``stopped_epoch`` (0 if it never fired)."""

    def __init__(self, patience, min_delta=0.0, restore_best=True, monitor="val_loss", mode="auto"):
        if isinstance(patience, bool):
            raise TypeError("patience must be an integer, got bool")
        self.patience = positive_int("patience", patience)
        self.min_delta = real("min_delta", min_delta, 0.0)
        self.restore_best = bool(restore_best)
        if not isinstance(monitor, str) or monitor not in History.KEYS:
            raise ValueError(f"monitor must be one of {History.KEYS}, got {monitor!r}")
        self.monitor = monitor
        self.mode = _mode(monitor, mode)
        self._reset()

    def _reset(self):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.stopped_epoch = 0
        self._best_state = None

    def on_train_begin(self, trainer):
        if self.monitor.startswith("val_") and not trainer.has_validation:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r} but there is no validation "
                             f"set; pass x_val/t_val to fit or val_split= to the Trainer")
        if self.monitor in ("loss", "accuracy", "r2") and not getattr(trainer, "eval_train", True):
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which Trainer("
                             f"eval_train=False) does not measure; monitor 'batch_loss' or a "
                             f"validation metric")
        self._reset()

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, trainer, epoch, logs):
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which this training does "
                             f"not log (logged: {sorted(k for k in logs if k in History.KEYS)}; "
                             f"accuracy is for classification losses, r2 for regression)")
        value = logs[self.monitor]
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self._best_state = trainer.model.state_dict()
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, trainer, history):
        if self.restore_best and self._best_state is not None and self.best_epoch != trainer.epoch:
            trainer.model.load_state_dict(self._best_state)

    def __repr__(self):
        return (f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, "
                f"monitor={self.monitor!r}, restore_best={self.restore_best})")


def _is_stop(r):
    return r is True or (isinstance(r, str) and r == "stop")
