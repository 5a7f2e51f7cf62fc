"""The classic experiments of the textbook, on dlfast: ``dlfast experiment NAME`` or
``dlfast.experiments.run(NAME, out_dir)``.

Each experiment is ``run(out_dir, quick=False, seed=0, backend=None, progress=False,
dataset=None) -> dict`` registered by name; it writes ``<out_dir>/<name>.png`` and returns::

    {"name", "title", "columns": [...], "rows": [{column: value}, ...], "png": path, ...}

plus experiment-specific data (curves, histograms ...). ``quick`` is a reduced budget (tests,
CI); ``seed`` fixes every weight, batch order and dropout mask; ``backend`` ("numpy" |
"cython") is used for the run only; ``dataset`` ("digits", the default, "mnist" or
"fashion-mnist", downloaded once: ``dlfast.datasets``) is the data of the experiments that train
on data (all but optimizers-path and init-histograms). ``format_table(result)`` renders the rows.

=================== ==================================================================
optimizers-path     SGD ... Adam minimising x^2/20 + y^2 from (-7, 2): paths on the contours
optimizers          the same optimisers training an MLP [100]*4 on the digits: loss curves
init-histograms     activations of 5 layers for std 1 / 0.01 / Xavier / He x sigmoid/tanh/ReLU
init                training curves of a ReLU net for std 0.01, Xavier and He
batchnorm           with vs without batch norm over a grid of initial weight scales
overfit             300 samples, deep net: train/validation gap, weight decay, dropout
hyperparams         random search of lr and weight decay (``dlfast.tune``), then narrowed
multitask           shared trunk + two heads (digit, digit >= 5) vs two separate nets
augment             200 training digits: validation accuracy with vs without augmentation
pretrain            deep sigmoid net: greedy RBM pre-training vs Xavier / He init
convnet             SimpleConvNet (conv 30 5x5, max pool, dense 100): accuracy, filters
=================== ==================================================================
"""
from __future__ import annotations

import functools
import importlib
import math
import numbers
import os
import sys

__all__ = ["EXPERIMENTS", "register", "run", "format_table", "names", "uses_data"]

EXPERIMENTS = {}      # name -> (run function, one-line description)
_NO_DATA = set()      # the experiments that take no dataset

_MODULES = ("optimizers_path", "optimizers", "init_histograms", "init_compare", "batchnorm",
            "overfit", "hyperparams", "multitask", "augment", "pretrain", "convnet")


def register(name, description, uses_data=True):
    """Decorator: register ``run(out_dir, quick, seed, progress, dataset)`` as experiment
    ``name`` (``uses_data=False``: ``run(out_dir, quick, seed, progress)``, no data set). The
    wrapper validates the arguments, creates ``out_dir``, selects ``backend`` for the run and adds
    ``name`` (and ``dataset``) to the result."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(out_dir, quick=False, seed=0, backend=None, progress=False, dataset=None):
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
                raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
            extra = ()
            if not uses_data:
                if dataset is not None:
                    raise ValueError(f"experiment {name!r} uses no data set; dataset must be None, "
                                     f"got {dataset!r}")
            else:
                from ..datasets import DATASETS
                dataset = "digits" if dataset is None else dataset
                if dataset not in DATASETS:
                    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
                extra = (dataset,)
            out_dir = os.fspath(out_dir)
            os.makedirs(out_dir, exist_ok=True)
            import dlfast
            if backend is None:
                result = fn(out_dir, bool(quick), int(seed), bool(progress), *extra)
            else:
                with dlfast.use_backend(backend):
                    result = fn(out_dir, bool(quick), int(seed), bool(progress), *extra)
            result.setdefault("name", name)
            if uses_data:
                result.setdefault("dataset", dataset)
            return result

        if name in EXPERIMENTS:
            raise ValueError(f"experiment {name!r} is already registered")
        EXPERIMENTS[name] = (wrapper, description)
        if not uses_data:
            _NO_DATA.add(name)
        return wrapper

    return deco


def _load_all():
    for m in _MODULES:
        importlib.import_module(f"{__name__}.{m}")


def names():
    """The registered experiment names."""
    _load_all()
    return list(EXPERIMENTS)


def uses_data(name):
    """Whether experiment ``name`` trains on a data set (and so takes ``dataset``)."""
    _load_all()
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return name not in _NO_DATA


def _fmt(v):
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, numbers.Integral):
        return str(v)
    if isinstance(v, numbers.Real):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4f}"
    return str(v)


def format_table(result):
    """The result's rows as a fixed-width text table (title first)."""
    cols = list(result["columns"])
    cells = [[_fmt(r.get(c)) for c in cols] for r in result["rows"]]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = []
    if result.get("title"):
        lines.append(result["title"])
    lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(cols, widths))))
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def run(name, out_dir="out", quick=False, seed=0, backend=None, progress=False, verbose=True,
        dataset=None):
    """Run experiment ``name`` (on ``dataset``, default the digits, if it uses data); prints its
    table (and the PNG path) when ``verbose``."""
    _load_all()
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    result = EXPERIMENTS[name][0](out_dir, quick=quick, seed=seed, backend=backend,
                                  progress=progress, dataset=dataset)
    if verbose:
        print(format_table(result))
        print(f"figure: {result['png']}")
        sys.stdout.flush()
    return result


# ============================================================================ command line
def _cli_configure(p):
    p.add_argument("name", nargs="?", help="experiment name (omit with --list)")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--out", default="out", metavar="DIR", help="folder for the PNG (default ./out)")
    p.add_argument("--quick", action="store_true", help="reduced budget (seconds, for CI)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--backend", choices=("numpy", "cython"), default=None,
                   help="kernel backend for the run (default: the active one)")
    p.add_argument("--progress", action="store_true", help="progress bars on stderr")
    from ..datasets import DATASETS
    p.add_argument("--dataset", choices=DATASETS,
                   help="the data of the experiments that train on data (default: digits; mnist "
                        "and fashion-mnist are downloaded once, see dlfast train --dataset)")


def _cli_run(args):
    _load_all()
    if args.list or not args.name:
        for n, (_, desc) in EXPERIMENTS.items():
            print(f"{n:<17}{desc}")
        return 0 if args.list else 2
    if args.name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {args.name!r}; choose one of {', '.join(EXPERIMENTS)}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.dataset is not None and not uses_data(args.name):
        raise ValueError(f"--dataset does not apply to experiment {args.name!r} (it uses no data "
                         f"set)")
    run(args.name, args.out, quick=args.quick, seed=args.seed, backend=args.backend,
        progress=args.progress, dataset=args.dataset)
    return 0
