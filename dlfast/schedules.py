"""Learning-rate schedules. ``s(t)`` returns the learning rate at t (epochs or steps, the caller
chooses; t >= 0); ``s.apply(optimizer, t)`` sets ``optimizer.lr = s(t)`` and returns it.

==================== =====================================
StepDecay            lr0 * gamma^floor(t / step_size)
ExponentialDecay     lr0 * exp(-k t)
InverseTimeDecay     lr0 / (1 + k t)
ReduceOnPlateau      lr *= factor after ``patience`` epochs without improvement (``step(metric)``)
==================== =====================================

Only the metric-driven ``ReduceOnPlateau`` has a ``step`` method (the trainer uses that to tell
them apart) and state (``state_dict()`` / ``load_state_dict()``).
"""
from __future__ import annotations

import math
import numbers

__all__ = ["Schedule", "StepDecay", "ExponentialDecay", "InverseTimeDecay", "ReduceOnPlateau"]


def _real(name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _nonneg(name, v):
    v = _real(name, v)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def _positive(name, v):
    v = _real(name, v)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v


def _count(name, v, lo=0):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v}")
    return int(v)


def _t(t):
    return _nonneg("t", t)


class Schedule:
    """Base class: ``s(t)`` -> lr (implemented by ``lr_at``), ``s.apply(optimizer, t)``."""

    def __init__(self, lr0):
        self.lr0 = _nonneg("lr0", lr0)

    def __call__(self, t):
        return self.lr_at(_t(t))

    def lr_at(self, t):
        raise NotImplementedError

    def apply(self, optimizer, t):
        """``optimizer.lr = self(t)``; returns the new learning rate."""
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"optimizer must have an lr attribute, got {type(optimizer).__name__}")
        lr = self(t)
        optimizer.lr = lr
        return lr

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class StepDecay(Schedule):
    """``lr0 * gamma^floor(t / step_size)`` (step_size > 0, gamma > 0)."""

    def __init__(self, lr0, step_size, gamma=0.1):
        super().__init__(lr0)
        self.step_size = _positive("step_size", step_size)
        self.gamma = _positive("gamma", gamma)

    def lr_at(self, t):
        return self.lr0 * self.gamma ** math.floor(t / self.step_size)


class ExponentialDecay(Schedule):
    """``lr0 * exp(-k t)`` (k >= 0)."""

    def __init__(self, lr0, k):
        super().__init__(lr0)
        self.k = _nonneg("k", k)

    def lr_at(self, t):
        return self.lr0 * math.exp(-self.k * t)


class InverseTimeDecay(Schedule):
    """``lr0 / (1 + k t)`` (k >= 0)."""

    def __init__(self, lr0, k):
        super().__init__(lr0)
        self.k = _nonneg("k", k)

    def lr_at(self, t):
        return self.lr0 / (1.0 + self.k * t)


class ReduceOnPlateau(Schedule):
    """Metric-driven: ``step(metric)`` once per epoch returns the new learning rate.

    Improvement: ``metric < best - min_delta`` (mode "min") or ``metric > best + min_delta``
    (mode "max"). After ``patience`` consecutive epochs without improvement,
    ``lr = max(lr * factor, min_lr)``, the count restarts, and ``cooldown`` further epochs are
    not counted. ``s(t)`` / ``s.apply(opt, t)`` give the current lr (t is ignored).
    Defaults: factor=0.1, patience=10, min_delta=1e-4, min_lr=0, cooldown=0 (as Keras).
    """

    def __init__(self, lr0, factor=0.1, patience=10, min_delta=1e-4, min_lr=0.0, mode="min",
                 cooldown=0):
        super().__init__(lr0)
        self.factor = _positive("factor", factor)
        if self.factor >= 1.0:
            raise ValueError(f"factor must lie in (0, 1), got {self.factor}")
        self.patience = _count("patience", patience)
        self.min_delta = _nonneg("min_delta", min_delta)
        self.min_lr = _nonneg("min_lr", min_lr)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.mode = mode
        self.cooldown = _count("cooldown", cooldown)
        self.lr = self.lr0
        self.best = None              # best metric seen so far (None before the first step)
        self.num_bad = 0              # consecutive epochs without improvement
        self.cooldown_left = 0
        self.reductions = 0

    def lr_at(self, t):
        return self.lr

    def _improved(self, metric):
        if self.best is None:
            return True
        if self.mode == "min":
            return metric < self.best - self.min_delta
        return metric > self.best + self.min_delta

    def step(self, metric):
        """Record one epoch's ``metric`` (a finite number); returns the (possibly reduced) lr."""
        try:
            metric = float(metric)
        except (TypeError, ValueError):
            raise TypeError(f"metric must be a real number, got {type(metric).__name__}") from None
        if not math.isfinite(metric):
            raise ValueError(f"metric must be finite, got {metric}")
        if self._improved(metric):
            self.best = metric
            self.num_bad = 0
        elif self.cooldown_left > 0:
            self.num_bad = 0
        else:
            self.num_bad += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
        if self.num_bad > 0 and self.num_bad >= self.patience:
            new = max(self.lr * self.factor, self.min_lr)
            if new < self.lr:
                self.lr = new
                self.reductions += 1
            self.num_bad = 0
            self.cooldown_left = self.cooldown
        return self.lr

    _STATE = ("lr", "best", "num_bad", "cooldown_left", "reductions")
    _HYPER = ("lr0", "factor", "patience", "min_delta", "min_lr", "mode", "cooldown")

    def state_dict(self):
        """Hyperparameters and the running state (lr, best, counters) as a plain dict."""
        return {k: getattr(self, k) for k in self._HYPER + self._STATE}

    def load_state_dict(self, state):
        """Restore from ``state_dict()`` (validated; all-or-nothing)."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        missing = set(self._HYPER + self._STATE) - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}")
        new = ReduceOnPlateau(state["lr0"], state["factor"], state["patience"], state["min_delta"],
                              state["min_lr"], state["mode"], state["cooldown"])
        new.lr = _nonneg("lr", state["lr"])
        new.best = None if state["best"] is None else _real("best", state["best"])
        new.num_bad = _count("num_bad", state["num_bad"])
        new.cooldown_left = _count("cooldown_left", state["cooldown_left"])
        new.reductions = _count("reductions", state["reductions"])
        self.__dict__.update(new.__dict__)
