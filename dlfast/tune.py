"""Random hyperparameter search.

``space``: dict name -> distribution::

    LogUniform(low, high)   exp(U(log low, log high)), 0 < low <= high
    Uniform(low, high)      U(low, high)
    IntUniform(low, high)   an integer in [low, high], each equally likely
    Choice(options)         one of the options, each equally likely

``random_search(train_fn, space, n_trials, seed=0, executor=None, mode="max")`` draws every
trial's parameters first (one ``numpy.random.Generator`` from ``seed``, in trial order, in the
order of the space's keys), then evaluates ``train_fn(params) -> score`` (a float, or a dict
with a "score" key whose other entries are kept) serially, or through ``executor`` (any
``concurrent.futures.Executor``: ``executor.submit(train_fn, params)``); the draws and so the
trials do not depend on the executor. Returns the ``Trial`` list sorted best first (``mode``
"max": highest score first; "min": lowest); a NaN score (diverged run) sorts last.

``narrow(space, trials, k)``: the space spanned by the best k trials (per dimension: the
[min, max] of their values, log scale kept; for a Choice, the options they used).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LogUniform", "Uniform", "IntUniform", "Choice", "Trial", "random_search", "narrow",
           "sample"]


def _real(name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
        raise ValueError(f"{name} must be a finite real number, got {v!r}")
    return float(v)


class Uniform:
    """U(low, high), low <= high."""

    def __init__(self, low, high):
        self.low, self.high = _real("low", low), _real("high", high)
        if self.low > self.high:
            raise ValueError(f"low must be <= high, got low={self.low}, high={self.high}")

    def sample(self, rng):
        return float(rng.uniform(self.low, self.high))

    def narrow(self, values):
        return type(self)(min(values), max(values))

    def __eq__(self, other):
        return type(self) is type(other) and vars(self) == vars(other)

    def __repr__(self):
        return f"{type(self).__name__}({self.low!r}, {self.high!r})"


class LogUniform(Uniform):
    """exp(U(log low, log high)), 0 < low <= high."""

    def __init__(self, low, high):
        super().__init__(low, high)
        if self.low <= 0:
            raise ValueError(f"LogUniform needs low > 0, got {self.low}")

    def sample(self, rng):
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


class IntUniform(Uniform):
    """An integer in [low, high] (both included)."""

    def __init__(self, low, high):
        for n, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{n} must be an integer, got {v!r}")
        super().__init__(low, high)
        self.low, self.high = int(low), int(high)

    def sample(self, rng):
        return int(rng.integers(self.low, self.high, endpoint=True))


class Choice:
    """One of ``options`` (a non-empty sequence), each equally likely."""

    def __init__(self, options):
        self.options = list(options)
        if not self.options:
            raise ValueError("Choice needs at least one option")

    def sample(self, rng):
        return self.options[int(rng.integers(len(self.options)))]

    def narrow(self, values):
        return Choice([o for o in self.options if o in values])

    def __eq__(self, other):
        return type(self) is type(other) and self.options == other.options

    def __repr__(self):
        return f"Choice({self.options!r})"


_DISTS = (Uniform, Choice)


def _check_space(space):
    if not isinstance(space, dict) or not space:
        raise TypeError("space must be a non-empty dict name -> LogUniform/Uniform/IntUniform/Choice")
    for k, d in space.items():
        if not isinstance(d, _DISTS):
            raise TypeError(f"space[{k!r}] must be a LogUniform, Uniform, IntUniform or Choice, "
                            f"got {type(d).__name__}")
    return space


def sample(space, rng):
    """One dict of parameters drawn from ``space`` (keys in the space's order)."""
    return {k: d.sample(rng) for k, d in _check_space(space).items()}


@dataclass
class Trial:
    """One evaluated configuration: ``index`` (draw order), ``params``, ``score``, ``info``
    (the other entries of a dict result)."""
    index: int
    params: dict
    score: float
    info: dict = field(default_factory=dict)


def _result(i, params, r):
    info = {}
    if isinstance(r, dict):
        if "score" not in r:
            raise ValueError(f"train_fn returned a dict without 'score' for trial {i}")
        info = {k: v for k, v in r.items() if k != "score"}
        r = r["score"]
    try:
        score = float(r)
    except (TypeError, ValueError):
        raise TypeError(f"train_fn must return a number or a dict with 'score', got "
                        f"{type(r).__name__} for trial {i}") from None
    return Trial(i, params, score, info)


def random_search(train_fn, space, n_trials, seed=0, executor=None, mode="max"):
    """Evaluate ``n_trials`` random configurations; the trials sorted best first (see module)."""
    if not callable(train_fn):
        raise TypeError(f"train_fn must be callable, got {type(train_fn).__name__}")
    _check_space(space)
    if isinstance(n_trials, bool) or not isinstance(n_trials, numbers.Integral) or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError(f"executor must have submit(fn, arg) (a concurrent.futures.Executor), "
                        f"got {type(executor).__name__}")
    rng = np.random.default_rng(seed)
    configs = [sample(space, rng) for _ in range(int(n_trials))]
    if executor is None:
        results = [train_fn(dict(p)) for p in configs]
    else:
        futures = [executor.submit(train_fn, dict(p)) for p in configs]
        results = [f.result() for f in futures]
    trials = [_result(i, p, r) for i, (p, r) in enumerate(zip(configs, results))]
    sign = -1.0 if mode == "max" else 1.0
    return sorted(trials, key=lambda t: (math.isnan(t.score), sign * t.score
                                         if not math.isnan(t.score) else 0.0, t.index))


def narrow(space, trials, k):
    """The space spanned by the best ``k`` trials (``trials`` sorted best first, as
    ``random_search`` returns them; NaN-scored trials are skipped)."""
    _check_space(space)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    best = [t for t in trials if not math.isnan(t.score)][:int(k)]
    if not best:
        raise ValueError("no trial with a finite score to narrow the space with")
    out = {}
    for name, d in space.items():
        vals = [t.params[name] for t in best if name in t.params]
        if not vals:
            raise KeyError(f"the trials have no value for {name!r}")
        out[name] = d.narrow(vals)
    return out
