"""Random (or Optuna TPE) hyperparameter search, serial, on a local process pool or on any
``concurrent.futures.Executor`` (e.g. Dask distributed's ``Client.get_executor()``).

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

Trial ``i`` gets the seed ``trial_seed(seed, i)`` (from ``SeedSequence([seed, i])``); a
``train_fn`` with a ``seed`` parameter is called ``train_fn(params, seed=...)`` so every trial is
reproducible alone. ``n_jobs > 1`` (no executor): a spawn ``ProcessPoolExecutor`` whose workers
use ``max(1, cores // n_jobs)`` threads each. A trial that raises or scores NaN is kept with
``error`` set and score NaN (sorted last); the search goes on.

``make_objective(build_model, build_optimizer, x, t, ...)``: a picklable ``train_fn`` that fits
``build_model(params, seed)`` with ``build_optimizer(params)`` by ``Trainer`` and scores it on
the validation data (given, or a fixed stratified ``val_split`` of (x, t)).

``TrainObjective(x, t, x_val, t_val, options)``: the same for `dlfast train`'s options: each
trial is a `dlfast train` configuration (its defaults, ``options``, then the trial's params),
built by `dlfast train`'s own model / optimiser / schedule builders. ``parse_param("NAME=SPEC")``
turns ``dropout=uniform:0:0.5`` (``log:``, ``uniform:``, ``int:``, ``choice:A,B,C``) into
``("dropout", Uniform(0, 0.5))``, checked against `dlfast train`'s parser.

``connect(address, timeout)``: a ``distributed.Client`` of a Dask scheduler (ConnectionError
naming the address if it cannot be reached); ``executor=client.get_executor(pure=False)`` runs
the trials on its workers.

``narrow(space, trials, k)``: the space spanned by the best k trials (per dimension: the
[min, max] of their values, log scale kept; for a Choice, the options they used).
``format_table(trials, k)``: the "Best-k" table; ``plot(trials, path)``: a PNG of the best
trials' validation curves and of score over two parameters (lr x weight decay by default).

``dlfast tune``: ``--param NAME=SPEC`` (repeatable) over any `dlfast train` option, trials
serial, on ``--workers N`` local processes or on ``--scheduler tcp://HOST:PORT`` (docs/tune.md).
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import multiprocessing
import numbers
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["LogUniform", "Uniform", "IntUniform", "Choice", "Trial", "random_search", "search",
           "narrow", "sample", "trial_seed", "make_objective", "Objective", "MLPBuilder",
           "OptimizerBuilder", "TrainObjective", "parse_param", "connect", "format_table", "plot",
           "save_json", "process_pool"]


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
    (the other entries of a dict result), ``seed`` (its trial seed), ``error`` (None, or
    "ExceptionType: message" of a failed trial, whose score is NaN)."""
    index: int
    params: dict
    score: float
    info: dict = field(default_factory=dict)
    seed: int | None = None
    error: str | None = None


def trial_seed(seed, index):
    """The seed of trial ``index`` of a search seeded ``seed``: a 31-bit int from
    ``SeedSequence([seed, index])``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] >> 1)


def _takes_seed(fn):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "seed" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _run_trial(train_fn, params, seed, pass_seed):
    """``("ok", result)`` or ``("error", "Type: message")``: runs in the worker, so an exception
    there comes back as a value."""
    try:
        return "ok", (train_fn(dict(params), seed=seed) if pass_seed else train_fn(dict(params)))
    except Exception as exc:                   # noqa: BLE001 - recorded on the Trial
        return "error", f"{type(exc).__name__}: {exc}"


def _result(i, params, r, seed=None):
    status, r = r
    if status == "error":
        return Trial(i, params, math.nan, {}, seed, r)
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
    error = None if math.isfinite(score) else f"non-finite score {score}"
    return Trial(i, params, score if error is None else math.nan, info, seed, error)


def _worker_init(threads, backend):
    from threadpoolctl import threadpool_limits

    from . import _config
    _config.set_backend(backend)               # loads the compiled modules (and their OpenMP)
    threadpool_limits(threads)                 # every OpenMP / BLAS loaded by now
    _config.set_num_threads(threads)


def process_pool(n_jobs):
    """A spawn ``ProcessPoolExecutor`` of ``n_jobs`` workers, each limited to
    ``max(1, cores // n_jobs)`` threads (OpenMP, BLAS) and the parent's backend."""
    from . import _config
    n_jobs = _positive("n_jobs", n_jobs)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init,
                               initargs=(max(1, (cores or 1) // n_jobs), _config.get_backend()))


def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return int(v)


def _evaluate(train_fn, jobs, executor):
    """``jobs``: [(index, params, seed)] -> Trials, in the same order."""
    pass_seed = _takes_seed(train_fn)
    if executor is None:
        results = [_run_trial(train_fn, p, s, pass_seed) for _, p, s in jobs]
    else:
        futures = [executor.submit(_run_trial, train_fn, p, s, pass_seed) for _, p, s in jobs]
        results = []
        for f in futures:
            try:
                results.append(f.result())
            except Exception as exc:           # noqa: BLE001 - e.g. a worker process died
                results.append(("error", f"{type(exc).__name__}: {exc}"))
    return [_result(i, p, r, s) for (i, p, s), r in zip(jobs, results)]


def _sort(trials, mode):
    sign = -1.0 if mode == "max" else 1.0
    return sorted(trials, key=lambda t: (math.isnan(t.score), sign * t.score
                                         if not math.isnan(t.score) else 0.0, t.index))


def _check_args(train_fn, space, n_trials, mode, executor, n_jobs):
    if not callable(train_fn):
        raise TypeError(f"train_fn must be callable, got {type(train_fn).__name__}")
    _check_space(space)
    _positive("n_trials", n_trials)
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError(f"executor must have submit(fn, arg) (a concurrent.futures.Executor), "
                        f"got {type(executor).__name__}")
    _positive("n_jobs", n_jobs)


def random_search(train_fn, space, n_trials, seed=0, executor=None, mode="max", n_jobs=1):
    """Evaluate ``n_trials`` random configurations; the trials sorted best first (see module).
    ``n_jobs > 1`` without ``executor``: a local spawn process pool of ``n_jobs`` workers."""
    return search(train_fn, space, n_trials, seed, executor, mode, n_jobs, sampler="random")


def search(train_fn, space, n_trials, seed=0, executor=None, mode="max", n_jobs=1,
           sampler="random"):
    """``random_search`` with a choice of ``sampler``: "random" (all draws first, from one
    Generator) or "tpe" (Optuna's seeded TPESampler, ask/tell in batches of ``n_jobs`` trials,
    or of 1 when serial)."""
    _check_args(train_fn, space, n_trials, mode, executor, n_jobs)
    if sampler not in ("random", "tpe"):
        raise ValueError(f"sampler must be 'random' or 'tpe', got {sampler!r}")
    own = executor is None and n_jobs > 1
    if own:
        executor = process_pool(n_jobs)
    try:
        if sampler == "tpe":
            return _sort(_tpe(train_fn, space, int(n_trials), seed, executor, mode, n_jobs), mode)
        rng = np.random.default_rng(seed)
        jobs = [(i, sample(space, rng), trial_seed(seed, i)) for i in range(int(n_trials))]
        return _sort(_evaluate(train_fn, jobs, executor), mode)
    finally:
        if own:
            executor.shutdown()


def _optuna_distribution(optuna, d):
    fd = optuna.distributions
    if isinstance(d, Choice):
        return fd.CategoricalDistribution(d.options)
    if isinstance(d, IntUniform):
        return fd.IntDistribution(d.low, d.high)
    return fd.FloatDistribution(d.low, d.high, log=isinstance(d, LogUniform))


def _tpe(train_fn, space, n_trials, seed, executor, mode, n_jobs):
    try:
        import optuna
    except ImportError:
        raise ImportError("sampler='tpe' needs Optuna: pip install optuna "
                          "(or pip install 'dlfast[tune]')") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {k: _optuna_distribution(optuna, d) for k, d in space.items()}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=int(seed)))
    batch = n_jobs if executor is not None else 1
    trials = []
    while len(trials) < n_trials:
        asked = [study.ask(dists) for _ in range(min(batch, n_trials - len(trials)))]
        jobs = [(ot.number, {k: ot.params[k] for k in space}, trial_seed(seed, ot.number))
                for ot in asked]
        for ot, tr in zip(asked, _evaluate(train_fn, jobs, executor)):
            if tr.error is None:
                study.tell(ot, tr.score)
            else:
                study.tell(ot, state=optuna.trial.TrialState.FAIL)
            trials.append(tr)
    return trials


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


# ============================================================================ model-factory objective
class Objective:
    """``objective(params, seed) -> {"score", "curve", "val_loss", "train_accuracy", "epochs"}``:
    ``build_model(params, seed)`` trained with ``build_optimizer(params)`` by ``Trainer``
    (``epochs``, ``batch_size``, shuffling seeded by ``seed``) on (x, t), scored by the last
    epoch's ``metric`` ("val_accuracy" or "val_loss") on the validation data; ``curve``: that
    metric per epoch. Trials run on ``backend`` (default: the backend active where the
    objective is made), in any process: a Dask worker gives the serial run's numbers. A
    module-level class: picklable (spawn, Dask) when its builders are."""

    def __init__(self, build_model, build_optimizer, x, t, x_val, t_val, epochs, batch_size,
                 metric="val_accuracy", trainer_kwargs=None, backend=None):
        for name, f in (("build_model", build_model), ("build_optimizer", build_optimizer)):
            if not callable(f):
                raise TypeError(f"{name} must be callable, got {type(f).__name__}")
        if metric not in ("val_accuracy", "val_loss"):
            raise ValueError(f"metric must be 'val_accuracy' or 'val_loss', got {metric!r}")
        self.build_model, self.build_optimizer = build_model, build_optimizer
        self.x, self.t, self.x_val, self.t_val = x, t, x_val, t_val
        self.epochs = _positive("epochs", epochs)
        self.batch_size = _positive("batch_size", batch_size)
        self.metric = metric
        self.trainer_kwargs = dict(trainer_kwargs or {})
        from . import _config
        self.backend = _config.get_backend() if backend is None else backend
        _config._load(self.backend)            # an unknown / unbuilt backend fails here

    def __call__(self, params, seed=0):
        from . import _config
        from .train import Trainer
        with _config.use_backend(self.backend):
            model = self.build_model(params, seed)
            trainer = Trainer(model, self.build_optimizer(params), self.epochs, self.batch_size,
                              progress=False, seed=int(seed), handle_interrupt=False,
                              **self.trainer_kwargs)
            hist = trainer.fit(self.x, self.t, self.x_val, self.t_val)
        curve = [float(v) for v in getattr(hist, self.metric)]
        return {"score": curve[-1], "curve": curve,
                "val_loss": [float(v) for v in hist.val_loss],
                "train_accuracy": float(hist.accuracy[-1]), "epochs": len(curve)}


def make_objective(build_model, build_optimizer, x, t, x_val=None, t_val=None, val_split=None,
                   epochs=10, batch_size=32, metric="val_accuracy", split_seed=0, backend=None,
                   **trainer_kwargs):
    """An ``Objective`` on (x, t) scored on (x_val, t_val), or on a stratified ``val_split``
    fraction of (x, t) held out once (seeded ``split_seed``, the same for every trial). Pass the
    training data only: the test set is never part of a search."""
    if (x_val is None) != (t_val is None):
        raise ValueError("give both x_val and t_val, or neither")
    if x_val is None:
        if val_split is None:
            raise ValueError("give validation data (x_val, t_val) or a val_split fraction")
        from .datasets import train_val_split
        x, t, x_val, t_val = train_val_split(x, t, val_split, seed=split_seed, stratify=True)
    elif val_split is not None:
        raise ValueError("give either (x_val, t_val) or val_split, not both")
    return Objective(build_model, build_optimizer, x, t, x_val, t_val, epochs, batch_size, metric,
                     trainer_kwargs, backend)


class MLPBuilder:
    """``builder(params, seed) -> MLP(n_in, hidden, n_out, weight_decay=params["weight_decay"]
    (0 if absent), seed=seed, **kwargs)`` (picklable)."""

    def __init__(self, n_in, hidden, n_out, **kwargs):
        self.n_in, self.hidden, self.n_out, self.kwargs = n_in, list(hidden), n_out, kwargs

    def __call__(self, params, seed=None):
        from .net import MLP
        return MLP(self.n_in, self.hidden, self.n_out,
                   weight_decay=params.get("weight_decay", 0.0), seed=seed, **self.kwargs)


class OptimizerBuilder:
    """``builder(params) -> optim.get(name, lr=params["lr"], **kwargs)`` (picklable)."""

    def __init__(self, name="sgd", **kwargs):
        self.name, self.kwargs = name, kwargs

    def __call__(self, params):
        from . import optim
        if "lr" not in params:
            raise KeyError("the search space needs an 'lr' parameter for OptimizerBuilder")
        return optim.get(self.name, lr=params["lr"], **self.kwargs)


# ==================================================================== `dlfast train` options
# Options of `dlfast train` that are not training settings: a search cannot vary them.
_NOT_SEARCHABLE = frozenset({"val_split", "test_split", "data_dir", "dataset", "backend", "threads",
                             "seed", "out", "no_progress", "checkpoint", "checkpoint_every",
                             "checkpoint_per", "resume", "allow_nonfinite", "help"})


def _train_parser():
    from . import cli
    p = argparse.ArgumentParser(prog="dlfast train", add_help=False)
    cli._configure_train(p)
    return p


def _train_actions():
    """dest -> the argparse action of each searchable `dlfast train` option."""
    return {a.dest: a for a in _train_parser()._actions
            if a.option_strings and a.dest not in _NOT_SEARCHABLE}


def _option_kind(action):
    """"flag", "list", "enum", "int", "float" or "text"."""
    from . import cli
    if isinstance(action, argparse._StoreTrueAction):
        return "flag"
    if action.nargs in ("+", "*"):
        return "list"
    if action.choices is not None:
        return "enum"
    if action.type in (int, cli._positive_int, cli._nonneg_int):
        return "int"
    if action.type in (float, cli._nonneg_float, cli._positive_float, cli._fraction, cli._dropout):
        return "float"
    return "text"


_EXPECTED = {
    "flag": "choice:true,false (or one of them)",
    "list": "choice:A,B,... where each is a list of layer sizes joined by x, "
            "e.g. choice:100,100x100,200x50",
    "int": "int:LOW:HIGH or choice:A,B,... of integers",
    "float": "log:LOW:HIGH, uniform:LOW:HIGH, int:LOW:HIGH or choice:A,B,...",
    "text": "choice:A,B,...",
}


def _convert(action, kind, s):
    """One value of option ``action`` from the string ``s`` (as `dlfast train` would take it)."""
    s = s.strip()
    if kind == "flag":
        if s.lower() not in ("true", "false"):
            raise ValueError(f"{s!r} is not true or false")
        return s.lower() == "true"
    if kind == "list":
        sizes = s.split("x")
        try:
            [action.type(v) for v in sizes]
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise ValueError(f"{s!r} is not a list of layer sizes ({exc})") from None
        return "x".join(str(int(v)) for v in sizes)
    try:
        v = action.type(s) if action.type is not None else s
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise ValueError(f"{s!r}: {exc}") from None
    if action.choices is not None and v not in action.choices:
        raise ValueError(f"{s!r} is not one of {', '.join(map(str, action.choices))}")
    if action.dest == "init":
        from . import init
        try:
            init.get(v)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    return v


def parse_param(text):
    """``"NAME=SPEC"`` -> ``(dest, distribution)`` for a search of `dlfast train` option NAME
    (``weight-decay``, ``weight_decay`` or ``--weight-decay``; dest ``"weight_decay"``).

    SPEC: ``log:LOW:HIGH`` (LogUniform), ``uniform:LOW:HIGH`` (Uniform), ``int:LOW:HIGH``
    (IntUniform) or ``choice:A,B,C`` (Choice). Values are checked as `dlfast train` checks them;
    flags (``batchnorm``) take ``choice:true,false``; ``hidden`` takes layer lists such as
    ``choice:100,100x100`` (kept as those strings: "100x100" is the list [100, 100]).
    Raises ValueError naming the option and what it expects."""
    import difflib
    if not isinstance(text, str):
        raise TypeError(f"a search parameter must be a string NAME=SPEC, got {type(text).__name__}")
    name, sep, spec = text.partition("=")
    name = name.strip().lstrip("-")
    if not sep or not name or not spec.strip():
        raise ValueError(f"expected NAME=SPEC, e.g. lr=log:1e-4:1 or hidden=choice:100,100x100, "
                         f"got {text!r}")
    dest = name.replace("-", "_")
    actions = _train_actions()
    flag = "--" + dest.replace("_", "-")
    if dest not in actions:
        if dest in _NOT_SEARCHABLE:
            raise ValueError(f"{flag} cannot be searched (it does not change how a model trains)")
        close = difflib.get_close_matches(flag, ["--" + d.replace("_", "-") for d in actions], 1)
        raise ValueError(f"{flag} is not a dlfast train option"
                         + (f" (did you mean {close[0]}?)" if close else "")
                         + "; searchable: "
                         + ", ".join(sorted(d.replace("_", "-") for d in actions)))
    action = actions[dest]
    kind = _option_kind(action)
    expected = _EXPECTED.get(kind) or f"choice:A,B,... of {', '.join(map(str, action.choices))}"
    where = f"{flag} ({text.strip()})"
    method, _, rest = spec.strip().partition(":")
    method = method.lower()
    allowed = {"flag": ("choice",), "list": ("choice",), "enum": ("choice",), "text": ("choice",),
               "int": ("int", "choice"), "float": ("log", "uniform", "int", "choice")}[kind]
    if method not in ("log", "uniform", "int", "choice"):
        raise ValueError(f"{where}: unknown kind {method!r}; expected {expected}")
    if method not in allowed:
        what = {"flag": "a flag", "list": "a list of layer sizes", "enum": "a choice of names",
                "int": "an integer option", "text": "a name"}[kind]
        raise ValueError(f"{where}: {method}: does not apply to {what}; expected {expected}")
    try:
        if method == "choice":
            values = rest.split(",")
            if not rest.strip() or any(not v.strip() for v in values):
                raise ValueError("empty option")
            opts = []
            for v in values:
                v = _convert(action, kind, v)
                if v not in opts:
                    opts.append(v)
            return dest, Choice(opts)
        bounds = rest.split(":")
        if len(bounds) != 2:
            raise ValueError("needs LOW:HIGH")
        num = int if method == "int" else float
        try:
            low, high = (num(b) for b in bounds)
        except ValueError:
            raise ValueError(f"bounds {rest!r} are not {'integers' if num is int else 'numbers'}") \
                from None
        for b in bounds:
            _convert(action, kind, b)
        cls = {"log": LogUniform, "uniform": Uniform, "int": IntUniform}[method]
        return dest, cls(low, high)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}; expected {expected}") from None


def _train_value(default, v):
    """A searched value in the form `dlfast train` holds it: "100x100" -> [100, 100] for a list
    option (``hidden``)."""
    if isinstance(default, list):
        if isinstance(v, str):
            return [int(s) for s in v.split("x")]
        return [int(s) for s in v] if isinstance(v, (list, tuple)) else [int(v)]
    return v


class TrainObjective:
    """``objective(params, seed) -> {"score", "curve", "val_loss", "train_accuracy", "epochs"}``:
    one `dlfast train` run on (x, t) scored on (x_val, t_val) by the last epoch's ``metric``
    (after early stopping that restores the best weights: the best epoch's).

    The configuration is `dlfast train`'s defaults, then ``options`` (dest -> value, e.g.
    ``{"optimizer": "sgd", "epochs": 10}``), then ``params``, with ``seed`` as the run's seed
    (weights, shuffling, augmentation); the model, optimiser, schedule and early stopping come
    from `dlfast train`'s own builders. An optimiser option in ``params`` that the trial's
    optimiser does not take (``momentum`` for adam) is left out of that trial. Trials run on
    ``backend`` (default: the one active here); picklable, so it runs on any process or Dask
    worker with dlfast installed."""

    def __init__(self, x, t, x_val, t_val, options=None, n_out=None, metric="val_accuracy",
                 backend=None):
        if metric not in ("val_accuracy", "val_loss"):
            raise ValueError(f"metric must be 'val_accuracy' or 'val_loss', got {metric!r}")
        defaults = vars(_train_parser().parse_args([]))
        options = dict(options or {})
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise KeyError(f"not dlfast train options: {', '.join(unknown)}")
        self.options = {**defaults, **options}
        self.x, self.t, self.x_val, self.t_val = x, t, x_val, t_val
        self.n_out = int(max(np.max(t), np.max(t_val))) + 1 if n_out is None else int(n_out)
        self.metric = metric
        from . import _config
        self.backend = _config.get_backend() if backend is None else backend
        _config._load(self.backend)            # an unknown / unbuilt backend fails here

    def config(self, params, seed=0):
        """The ``argparse.Namespace`` a `dlfast train` run of this trial would have."""
        from . import cli

        args = argparse.Namespace(**self.options)
        for k, v in params.items():
            if k not in self.options:
                raise KeyError(f"{k!r} is not a dlfast train option")
            setattr(args, k, _train_value(self.options[k], v))
        for dest, (_, applies) in cli._OPT_FLAGS.items():
            if dest in params and args.optimizer not in applies:
                setattr(args, dest, self.options[dest])
        args.seed = int(seed)
        return args

    def __call__(self, params, seed=0):
        from . import _config, cli
        from .train import EarlyStopping, Trainer
        args = self.config(params, seed)
        with _config.use_backend(self.backend):
            dtype = np.dtype(args.dtype)
            x, x_val = self.x.astype(dtype, copy=False), self.x_val.astype(dtype, copy=False)
            model = cli._make_model(args, x.shape[1], self.n_out, dtype)
            extras = cli._prepare_reuse(args, model, x)
            opt = cli._make_optimizer(args)
            es = None if args.early_stopping is None else \
                EarlyStopping(args.early_stopping, min_delta=args.min_delta)
            trainer = Trainer(model, opt, args.epochs, args.batch_size,
                              schedule=cli._make_schedule(args, float(opt.lr)),
                              schedule_per=args.schedule_per, early_stopping=es, progress=False,
                              seed=args.seed, handle_interrupt=False, **extras)
            hist = trainer.fit(x, self.t, x_val, self.t_val)
        curve = [float(v) for v in getattr(hist, self.metric)]
        best = es.best_epoch if es is not None and es.restore_best and es.best_epoch else len(curve)
        return {"score": curve[best - 1], "curve": curve,
                "val_loss": [float(v) for v in hist.val_loss],
                "train_accuracy": float(hist.accuracy[-1]), "epochs": len(curve)}


# ============================================================================ Dask cluster
def connect(address, timeout=10.0):
    """A ``distributed.Client`` of the Dask scheduler at ``address`` (``tcp://HOST:PORT``), or
    ConnectionError naming the address when it cannot be reached within ``timeout`` seconds.
    Search with ``executor=client.get_executor(pure=False)``; close the client when done."""
    try:
        from distributed import Client
    except ImportError:
        raise ImportError("a Dask cluster needs dask.distributed: pip install 'dlfast[tune]' "
                          "(or pip install 'dask[distributed]')") from None
    timeout = _real("timeout", timeout)
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    host, port = _tcp_address(address)
    if host is not None:                       # a quick, clean failure for the common mistakes
        import socket
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            raise ConnectionError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    # Client() can wait forever for the handshake of a server that is not a Dask scheduler (e.g.
    # the dashboard's port): it is made in a thread that is given up on after the timeout
    import threading
    box, lock = {}, threading.Lock()

    def make():
        try:
            client = Client(address, timeout=timeout, set_as_default=False)
        except BaseException as exc:           # noqa: BLE001 - handed to the caller
            box["error"] = exc
            return
        with lock:
            box["client"] = client
            late = box.get("given_up", False)
        if late:
            client.close()

    thread = threading.Thread(target=make, name="dlfast-dask-connect", daemon=True)
    thread.start()
    thread.join(timeout + 5.0)
    with lock:
        box["given_up"] = "client" not in box
    if "client" in box:
        return box["client"]
    why = f": {box['error']}" if "error" in box else " (is it the scheduler's address?)"
    raise ConnectionError(f"cannot connect to the Dask scheduler at {address} within "
                          f"{timeout:g} s{why}")


def _tcp_address(address):
    """(host, port) of a ``[tcp://]HOST:PORT`` address, (None, None) for another protocol;
    ValueError if it has no port."""
    if not isinstance(address, str):
        raise TypeError(f"address must be a string like tcp://HOST:PORT, "
                        f"got {type(address).__name__}")
    scheme, sep, rest = address.strip().partition("://")
    if not sep:
        scheme, rest = "tcp", address.strip()
    if scheme != "tcp":
        return None, None
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected a scheduler address tcp://HOST:PORT, got {address!r}")
    return host, int(port)


# ============================================================================ output
def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4) else f"{v:.4f}"
    return str(v)


def format_table(trials, k=5):
    """The "Best-k" table: rank, trial, score, the parameters, and the failed-trial count."""
    k = _positive("k", k)
    names = list(trials[0].params) if trials else []
    head = ["rank", "trial", "score"] + names
    rows = [[str(r), str(t.index), "failed" if t.error else f"{t.score:.4f}"]
            + [_fmt(t.params.get(n)) for n in names] for r, t in enumerate(trials[:k], 1)]
    widths = [max(len(c) for c in col) for col in zip(head, *rows)]
    lines = [f"Best-{min(k, len(trials))} of {len(trials)} trials"]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [head] + rows]
    failed = [t for t in trials if t.error]
    if failed:
        lines.append(f"{len(failed)} failed, e.g. trial {failed[0].index}: {failed[0].error}")
    return "\n".join(lines)


def plot(trials, path, k=5, x="lr", y="weight_decay", log=(True, True)):
    """PNG at ``path``: left, the ``info["curve"]`` of the best ``k`` trials over epochs; right,
    every trial at (params[x], params[y]) coloured by score (failed: grey x), on log axes where
    ``log`` says so and every value is positive (trials without numbers there are left out).
    ``trials``: one sorted list, or a list of rounds (lists): curves of the last round, one
    marker per round in the scatter."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rounds = trials if trials and isinstance(trials[0], list) else [trials]
    last = rounds[-1]
    fig = Figure(figsize=(10, 4), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    for t in last[:_positive("k", k)]:
        curve = t.info.get("curve")
        if curve:
            ax1.plot(range(1, len(curve) + 1), curve, label=f"#{t.index} ({t.score:.3f})")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation score")
    ax1.set_title(f"best {min(k, len(last))} trials" + (" of the last round" if len(rounds) > 1
                                                          else ""))
    if ax1.lines:
        ax1.legend(fontsize=8)
    scores = [t.score for r in rounds for t in r if not math.isnan(t.score)]
    lo, hi = (min(scores), max(scores)) if scores else (0.0, 1.0)
    s = None
    for n, (r, marker) in enumerate(zip(rounds, "os^Dv<>p*h" * 10), 1):
        tag = f"round {n}: " if len(rounds) > 1 else ""
        ok = [t for t in r if not math.isnan(t.score) and _xy(t, x, y)]
        bad = [t for t in r if math.isnan(t.score) and _xy(t, x, y)]
        if ok:
            s = ax2.scatter([t.params[x] for t in ok], [t.params[y] for t in ok], marker=marker,
                            c=[t.score for t in ok], cmap="viridis", vmin=lo, vmax=hi,
                            edgecolors="k", label=f"{tag}{len(ok)} trials")
        if bad:
            ax2.scatter([t.params[x] for t in bad], [t.params[y] for t in bad], c="grey",
                        marker="x", label=f"{tag}{len(bad)} failed")
    if s is not None:
        fig.colorbar(s, ax=ax2, label="score")
    if ax2.collections:
        for name, use_log, set_scale in ((x, log[0], ax2.set_xscale), (y, log[1], ax2.set_yscale)):
            if use_log and all(t.params[name] > 0 for r in rounds for t in r if _xy(t, x, y)):
                set_scale("log")
        ax2.legend(fontsize=8)
    ax2.set_xlabel(x)
    ax2.set_ylabel(y)
    ax2.set_title("score over the search space")
    fig.savefig(path, format="png")
    return path


def _xy(trial, x, y):
    """Whether ``trial`` has numbers for ``x`` and ``y`` (a scatter point)."""
    return all(isinstance(trial.params.get(n), numbers.Real)
               and not isinstance(trial.params.get(n), bool) for n in (x, y))


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)


def save_json(trials, path, **meta):
    """All trials (``asdict``; NaN written as null) plus ``meta`` as JSON at ``path``."""
    with open(path, "w") as f:
        json.dump(_jsonable({**meta, "trials": [asdict(t) for t in trials]}), f, indent=1)
    return path


# ============================================================================ `dlfast tune`
_DEFAULT_SPACE = {"lr": LogUniform(1e-4, 1.0), "weight_decay": LogUniform(1e-8, 1e-2)}


class _SpaceAction(argparse.Action):
    """--param NAME=SPEC, and the shorthands --lr / --weight-decay LOW HIGH (``const``: the option
    they search on a log scale): appends (dest, distribution) to ``namespace.space``; a bad spec
    or an option searched twice is a usage error."""

    def __call__(self, parser, namespace, values, option_string=None):
        text = values if self.const is None else f"{self.const}=log:{values[0]!r}:{values[1]!r}"
        try:
            name, dist = parse_param(text)
        except (ValueError, TypeError) as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        space = list(getattr(namespace, self.dest, None) or [])
        if any(n == name for n, _ in space):
            raise argparse.ArgumentError(self, f"--{name.replace('_', '-')} is searched twice "
                                               f"(by --param, --lr or --weight-decay)")
        setattr(namespace, self.dest, space + [(name, dist)])


def _scheduler_address(s):
    try:
        _tcp_address(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return s


def _cli_configure(p):
    from .cli import OPTIMIZERS, _fraction, _nonneg_int, _positive_float, _positive_int
    g = p.add_argument_group("search space (lr and weight decay are searched unless given)")
    g.add_argument("--param", action=_SpaceAction, dest="space", metavar="NAME=SPEC",
                   help="search dlfast train option NAME (repeatable): log:LOW:HIGH, "
                        "uniform:LOW:HIGH, int:LOW:HIGH or choice:A,B,C; e.g. "
                        "dropout=uniform:0:0.5, "
                        "hidden=choice:100,100x100, batchnorm=choice:true,false, "
                        "optimizer=choice:sgd,adam")
    g.add_argument("--lr", nargs=2, type=float, action=_SpaceAction, dest="space", const="lr",
                   metavar=("LOW", "HIGH"), help="= --param lr=log:LOW:HIGH (default 1e-4 1)")
    g.add_argument("--weight-decay", nargs=2, type=float, action=_SpaceAction, dest="space",
                   const="weight_decay", metavar=("LOW", "HIGH"),
                   help="= --param weight-decay=log:LOW:HIGH (default 1e-8 1e-2)")
    g = p.add_argument_group("fixed settings (unless searched)")
    g.add_argument("--epochs", type=_positive_int, default=10, help="(default 10)")
    g.add_argument("--batch-size", type=_positive_int, default=100, help="(default 100)")
    g.add_argument("--hidden", type=_positive_int, nargs="+", default=[100, 100], metavar="N",
                   help="hidden sizes (default 100 100)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="(default sgd)")
    g = p.add_argument_group("search")
    g.add_argument("--n-trials", type=_positive_int, default=16,
                   help="trials per round (default 16)")
    g.add_argument("--rounds", type=_positive_int, default=1,
                   help="rounds; each later one searches the range of the previous best k")
    g.add_argument("-k", type=_positive_int, default=5,
                   help="best k shown and narrowed to (default 5)")
    g.add_argument("--sampler", choices=["random", "tpe"], default="random")
    g.add_argument("--val-split", type=_fraction, default=0.2,
                   help="validation fraction of the training digits (default 0.2)")
    g.add_argument("--seed", type=_nonneg_int, default=0)
    g.add_argument("--out", default="out", metavar="DIR", help="folder for tune.png, trials.json")
    g = p.add_argument_group("where the trials run")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, default=1,
                       help="local worker processes (default 1: serial)")
    where.add_argument("--scheduler", type=_scheduler_address, metavar="tcp://HOST:PORT",
                       help="run the trials on the workers of this Dask scheduler")
    g.add_argument("--connect-timeout", type=_positive_float, default=10.0, metavar="S",
                   help="seconds to reach the scheduler (default 10)")


def _describe(name, d):
    if isinstance(d, Choice):
        opts = (f"{v:.3g}" if isinstance(v, float) else str(v) for v in d.options)
        return f"{name} in {{{', '.join(opts)}}}"
    kind = {LogUniform: " (log)", IntUniform: " (int)"}.get(type(d), "")
    return f"{name} in [{d.low:.3g}, {d.high:.3g}]{kind}"


def _cli_space(args):
    """The default lr / weight-decay ranges, each replaced where given, then the other --param
    options in the order given."""
    from .cli import _OPT_FLAGS
    given = dict(args.space or [])
    space = {k: given.pop(k, d) for k, d in _DEFAULT_SPACE.items()}
    space.update(given)
    optimizers = set(space["optimizer"].options) if "optimizer" in space else {args.optimizer}
    for name in space:
        if name in _OPT_FLAGS and not optimizers & set(_OPT_FLAGS[name][1]):
            raise ValueError(f"--param {name.replace('_', '-')} applies to --optimizer "
                             f"{', '.join(_OPT_FLAGS[name][1])}; this search uses "
                             f"{', '.join(sorted(optimizers))}")
    return space


def _cli_run(args):
    from .datasets import load_digits, train_test_split, train_val_split
    space = _cli_space(args)
    x, t = load_digits()
    # the test quarter is split off and never used: the search sees the validation split only
    x, t, _, _ = train_test_split(x, t, 0.25, seed=args.seed, stratify=True)
    x, t, x_val, t_val = train_val_split(x, t, args.val_split, seed=args.seed, stratify=True)
    fn = TrainObjective(x, t, x_val, t_val, n_out=10,
                        options={"hidden": args.hidden, "optimizer": args.optimizer,
                                 "epochs": args.epochs, "batch_size": args.batch_size})
    os.makedirs(args.out, exist_ok=True)
    rounds, all_trials, trials = [], [], []
    client = executor = None
    n_jobs = args.workers
    try:
        if args.scheduler:
            client = connect(args.scheduler, args.connect_timeout)
            # a trial whose worker dies is rerun on another worker by the scheduler (up to
            # distributed.scheduler.allowed-failures times), then recorded as failed
            executor = client.get_executor(pure=False)
            n_jobs = max(1, sum(client.nthreads().values()))
            print(f"Dask scheduler {args.scheduler}: {len(client.nthreads())} workers, "
                  f"{n_jobs} threads" + ("" if client.nthreads() else
                                         " (the trials wait for workers to join)"), flush=True)
        elif args.workers > 1:
            executor = process_pool(args.workers)
        for r in range(args.rounds):
            if r:
                space = narrow(space, trials, args.k)
            trials = search(fn, space, args.n_trials, seed=args.seed + r, executor=executor,
                            n_jobs=n_jobs, sampler=args.sampler)
            all_trials.append(trials)
            rounds.append({"round": r + 1, "space": {k: repr(d) for k, d in space.items()},
                           "trials": [asdict(t) for t in trials]})
            print(f"round {r + 1}: " + ", ".join(_describe(k, d) for k, d in space.items()))
            print(format_table(trials, args.k), flush=True)
    finally:
        if client is not None:
            client.close()
        elif executor is not None:
            executor.shutdown()
    axes = [k for k, d in space.items() if isinstance(d, Uniform)][:2]
    axes += [k for k in ("lr", "weight_decay") if k not in axes][:2 - len(axes)]
    png = plot(all_trials, os.path.join(args.out, "tune.png"), args.k, *axes,
               log=tuple(isinstance(space.get(a), LogUniform) for a in axes))
    path = os.path.join(args.out, "trials.json")
    with open(path, "w") as f:
        json.dump(_jsonable({"args": {k: v for k, v in vars(args).items()
                                      if k not in ("func", "argv", "space")},
                             "space": [f"{k}={d!r}" for k, d in (args.space or [])],
                             "rounds": rounds}), f, indent=1)
    print(f"wrote {png} and {path}")
    return 0
