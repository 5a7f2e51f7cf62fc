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

``narrow(space, trials, k)``: the space spanned by the best k trials (per dimension: the
[min, max] of their values, log scale kept; for a Choice, the options they used).
``format_table(trials, k)``: the "Best-k" table; ``plot(trials, path)``: a PNG of the best
trials' validation curves and of score over lr x weight decay (log axes).
"""
from __future__ import annotations

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
           "OptimizerBuilder", "format_table", "plot", "save_json", "process_pool"]


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


def plot(trials, path, k=5, x="lr", y="weight_decay"):
    """PNG at ``path``: left, the ``info["curve"]`` of the best ``k`` trials over epochs; right,
    every trial at (params[x], params[y]) on log axes coloured by score (failed: grey x).
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
        ok = [t for t in r if not math.isnan(t.score) and x in t.params and y in t.params]
        bad = [t for t in r if math.isnan(t.score) and x in t.params and y in t.params]
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
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.legend(fontsize=8)
    ax2.set_xlabel(x)
    ax2.set_ylabel(y)
    ax2.set_title("score over the search space")
    fig.savefig(path, format="png")
    return path


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
def _cli_configure(p):
    p.add_argument("--lr", nargs=2, type=float, default=[1e-4, 1.0], metavar=("LOW", "HIGH"),
                   help="log-uniform learning-rate range (default 1e-4 1)")
    p.add_argument("--weight-decay", nargs=2, type=float, default=[1e-8, 1e-2],
                   metavar=("LOW", "HIGH"), help="log-uniform weight-decay range (default 1e-8 1e-2)")
    p.add_argument("--n-trials", type=int, default=16, help="trials per round (default 16)")
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds; each later one searches the range of the previous best k")
    p.add_argument("-k", type=int, default=5, help="best k shown and narrowed to (default 5)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--sampler", choices=["random", "tpe"], default="random")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--hidden", type=int, nargs="+", default=[100, 100], help="hidden sizes")
    p.add_argument("--optimizer", default="sgd", help="optimiser name (default sgd)")
    p.add_argument("--val-split", type=float, default=0.2,
                   help="validation fraction of the training digits (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out", metavar="DIR", help="folder for tune.png, trials.json")


def _cli_run(args):
    from .datasets import load_digits, train_test_split
    for name in ("n_trials", "rounds", "k", "workers", "epochs", "batch_size"):
        _positive(name.replace("_", "-"), getattr(args, name))
    space = {"lr": LogUniform(*args.lr), "weight_decay": LogUniform(*args.weight_decay)}
    x, t = load_digits()
    # the test quarter is split off and never used: the search sees the validation split only
    x, t, _, _ = train_test_split(x, t, 0.25, seed=args.seed, stratify=True)
    fn = make_objective(MLPBuilder(x.shape[1], args.hidden, 10),
                        OptimizerBuilder(args.optimizer), x, t, val_split=args.val_split,
                        epochs=args.epochs, batch_size=args.batch_size, split_seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    rounds, all_trials, trials = [], [], []
    executor = process_pool(args.workers) if args.workers > 1 else None
    try:
        for r in range(args.rounds):
            if r:
                space = narrow(space, trials, args.k)
            trials = search(fn, space, args.n_trials, seed=args.seed + r, executor=executor,
                            n_jobs=args.workers, sampler=args.sampler)
            all_trials.append(trials)
            rounds.append({"round": r + 1, "space": {k: repr(d) for k, d in space.items()},
                           "trials": [asdict(t) for t in trials]})
            print(f"round {r + 1}: " + ", ".join(f"{k} in [{d.low:.3g}, {d.high:.3g}]"
                                                 for k, d in space.items()))
            print(format_table(trials, args.k))
    finally:
        if executor is not None:
            executor.shutdown()
    png = plot(all_trials, os.path.join(args.out, "tune.png"), args.k)
    path = os.path.join(args.out, "trials.json")
    with open(path, "w") as f:
        json.dump(_jsonable({"args": {k: v for k, v in vars(args).items()
                                      if k not in ("func", "argv")}, "rounds": rounds}), f, indent=1)
    print(f"wrote {png} and {path}")
    return 0
