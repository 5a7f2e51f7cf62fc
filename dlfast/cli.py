"""The ``dlfast`` command (also ``python -m dlfast``).

Subcommands live in one registry: a new one is a function ``run(args) -> exit code`` plus one
``register(name, run, help, configure)`` call, where ``configure(parser)`` adds its arguments.

    dlfast train [options]     train an MLP (or --arch: a convnet) on the embedded digits (or
                               --dataset mnist ..., or a CSV table: --csv FILE --target COLUMN)
    dlfast info [--json]       backend, dtype, threads, OpenMP, BLAS, available backends
    dlfast tune [options]      random / TPE search of train options, local or on Dask (dlfast.tune)

Exit codes: 0 success, 1 runtime error (bad data, diverged training ...), 2 bad arguments,
130 interrupted by Ctrl-C (``train`` saves the model first and says where).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time

import numpy as np

__all__ = ["main", "build_parser", "register", "COMMANDS", "split_data", "runtime_info"]

COMMANDS = {}          # name -> (run, help, configure)
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def register(name, run, help, configure=None):
    """Add subcommand ``name``: ``configure(subparser)`` adds its arguments, ``run(args)`` returns
    the exit code (None means 0)."""
    if name in COMMANDS:
        raise ValueError(f"command {name!r} is already registered")
    COMMANDS[name] = (run, help, configure)
    return run


class _CLIError(Exception):
    """A user-facing error: printed as ``dlfast <cmd>: error: ...`` with exit code 1."""


def _err(msg):
    print(msg, file=sys.stderr)


# ============================================================================ shared helpers
def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _nonneg_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def _fraction(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {s!r}") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {v}")
    return v


def _nonneg_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s!r}") from None
    if not v >= 0.0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {v}")
    return v


def _positive_float(s):
    v = _nonneg_float(s)
    if v == 0.0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return v


def _init(s):
    """An initialiser name of dlfast.init, or a float: the std of a normal initialiser."""
    try:
        v = float(s)
    except ValueError:
        from . import init
        try:
            init.get(s)
        except ValueError as exc:                   # names the choices
            raise argparse.ArgumentTypeError(str(exc)) from None
        return s
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"a float initialiser is a std > 0, got {s}")
    return v


ARCH_HELP = ("conv:FxK[sS][pP]  F filters of KxK, stride S (1), zero padding P (0);  "
             "pool:K[sS]  max pooling of KxK, stride S (K);  avgpool:K[sS]  average pooling;  "
             "dense:N  a hidden Dense of N units")
_ARCH_ITEM = {"conv": re.compile(r"(\d+)x(\d+)(?:s(\d+))?(?:p(\d+))?"),
              "pool": re.compile(r"(\d+)(?:s(\d+))?"), "avgpool": re.compile(r"(\d+)(?:s(\d+))?"),
              "dense": re.compile(r"(\d+)")}


def parse_arch(spec):
    """``--arch`` items, e.g. "conv:30x5,pool:2,dense:100" -> [("conv", (30, 5, 1, 0)),
    ("pool", (2, 2)), ("dense", (100,))]: conv (filters, kernel, stride, padding), pool /
    avgpool (window, stride), dense (units); image items (conv, pools) come first."""
    items = []
    for part in str(spec).split(","):
        kind, _, arg = part.strip().partition(":")
        kind = kind.lower()
        m = _ARCH_ITEM[kind].fullmatch(arg.strip()) if kind in _ARCH_ITEM else None
        if m is None:
            raise ValueError(f"--arch item {part.strip()!r} is not one of: {ARCH_HELP}")
        v = [int(g) if g is not None else None for g in m.groups()]
        if kind == "conv":
            v = [v[0], v[1], 1 if v[2] is None else v[2], 0 if v[3] is None else v[3]]
        elif kind != "dense":
            v = [v[0], v[0] if v[1] is None else v[1]]
        if min(v[:3] if kind == "conv" else v) < 1:
            raise ValueError(f"--arch item {part.strip()!r}: sizes must be positive")
        if kind != "dense" and any(k == "dense" for k, _ in items):
            raise ValueError(f"--arch item {part.strip()!r}: conv and pool items come before the "
                             f"dense items")
        items.append((kind, tuple(v)))
    return items


def _arch(s):
    try:
        parse_arch(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return s.replace(" ", "")


def _dropout(s):
    v = _nonneg_float(s)
    if v >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a dropout probability in [0, 1), got {v}")
    return v


def _apply_backend(args):
    import dlfast
    if getattr(args, "backend", None):
        try:
            dlfast.set_backend(args.backend)
        except ImportError as exc:
            raise _CLIError(f"{exc}; available backends: {', '.join(dlfast.available_backends())}") \
                from None
    if getattr(args, "threads", None) is not None:
        dlfast.set_num_threads(args.threads)


# ============================================================================ info
_OPENMP_VERSIONS = {200505: "2.5", 200805: "3.0", 201107: "3.1", 201307: "4.0", 201511: "4.5",
                    201811: "5.0", 202011: "5.1", 202111: "5.2", 202411: "6.0"}


def runtime_info():
    """A dict of what ``dlfast info`` reports."""
    import dlfast
    from dlfast import _config
    info = {"dlfast": dlfast.__version__, "python": platform.python_version(),
            "numpy": np.__version__, "platform": platform.platform()}
    available = dlfast.available_backends()
    info["available_backends"] = available
    info["unavailable_backends"] = {n: _config._import_errors.get(n, "not loaded")
                                    for n in _config.BACKEND_NAMES if n not in available}
    info["backend"] = dlfast.get_backend()
    info["default_dtype"] = "float32"
    info["threads"] = dlfast.get_num_threads()
    try:
        from dlfast._backends import _info
        enabled = bool(_info.openmp_enabled())
        date = int(_info.openmp_version())
        info["openmp"] = {"enabled": enabled, "date": date if enabled else None,
                          "version": _OPENMP_VERSIONS.get(date, str(date)) if enabled else None,
                          "max_threads": int(_info.max_threads())}
        from dlfast._backends import cython_kernels
        info["gemm_blas"] = {"library": cython_kernels.GEMM_BLAS,
                             "files": list(cython_kernels.PINNED_BLAS),
                             "float32_gemm": cython_kernels.SGEMM}
        info["tuning"] = cython_kernels.TUNING.as_dict()
    except ImportError as exc:
        info["openmp"] = {"enabled": None, "error": f"compiled extension not built ({exc})"}
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads",
                                               "threading_layer", "architecture", "filepath")}
                        for p in threadpool_info() if p.get("user_api") == "blas"]
        info["openmp_runtimes"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads",
                                                          "filepath")}
                                   for p in threadpool_info() if p.get("user_api") == "openmp"]
    except ImportError as exc:                  # pragma: no cover - threadpoolctl is a dependency
        info["blas"] = [{"error": f"threadpoolctl unavailable ({exc})"}]
        info["openmp_runtimes"] = []
    return info


def _run_info(args):
    _apply_backend(args)
    info = runtime_info()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    omp = info["openmp"]
    if omp.get("enabled") is None:
        omp_s = f"n/a ({omp['error']})"
    elif omp["enabled"]:
        omp_s = f"on (OpenMP {omp['version']}, _OPENMP={omp['date']}, max threads {omp['max_threads']})"
    else:
        omp_s = "off (compiled without OpenMP: kernels run single-threaded)"
    rows = [("dlfast", info["dlfast"]),
            ("python / numpy", f"{info['python']} / {info['numpy']}"),
            ("backend", info["backend"]),
            ("available backends", ", ".join(info["available_backends"]) or "none"),
            ("default dtype", info["default_dtype"]),
            ("threads", str(info["threads"])),
            ("OpenMP", omp_s)]
    if "gemm_blas" in info:
        rows.append(("GEMM BLAS", f"{info['gemm_blas']['library']}, pinned to 1 thread"))
        rows += _tuning_rows(info["tuning"])
    for name, why in info["unavailable_backends"].items():
        rows.append((f"{name} backend", f"unavailable: {why}"))
    blas = info["blas"] or [{"internal_api": "none found"}]
    for b in blas:
        if "error" in b:
            rows.append(("BLAS", b["error"]))
            continue
        rows.append(("BLAS", f"{b.get('internal_api')} {b.get('version') or ''}".strip()
                     + (f", {b['num_threads']} threads" if b.get("num_threads") else "")
                     + (f", {b['threading_layer']} threading" if b.get("threading_layer") else "")
                     + (f", {b['architecture']}" if b.get("architecture") else "")))
        if b.get("filepath"):
            rows.append(("BLAS library", b["filepath"]))
    for r in info["openmp_runtimes"]:
        rows.append(("OpenMP runtime", " ".join(str(v) for v in (r.get("internal_api"),
                                                                 r.get("version"), r.get("filepath"))
                                                if v)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _tuning_rows(t):
    """The float32 GEMM's kernel per shape class, the parallel threshold, where convolutions run
    on Winograd, the tuning cache."""
    from dlfast._backends._tuning import CLASS_RULES
    why = t["sgemm"]
    if len(set(why.values())) == 1:
        rows = [("float32 GEMM", next(iter(why.values())))]
    else:
        rows = [("float32 GEMM" if i == 0 else "", f"{c} ({CLASS_RULES[c]}): {w}")
                for i, (c, w) in enumerate(why.items())]
    w = t["winograd"]
    wino = w["why"] if w["mode"] != "by work" else "by work, " + w["why"]
    return rows + [("parallel threshold", f"{t['parallel_min_work']} elements of work "
                                          f"({t['parallel_min_work_why']})"),
                   ("Winograd 3x3 conv", wino),
                   ("tuning cache", t["cache"])]


def _configure_info(p):
    p.add_argument("--backend", choices=("numpy", "cython"), help="select this backend first")
    p.add_argument("--threads", type=_nonneg_int, help="set the thread count first (0 = default)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


# ============================================================================ train
ACTIVATIONS = ("relu", "leaky_relu", "elu", "sigmoid", "tanh", "identity", "prelu", "rrelu",
               "maxout")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("none", "step", "exp", "inverse", "plateau")
# Which optimiser flags apply to which optimiser (dest -> (keyword, optimisers)).
_OPT_FLAGS = {
    "momentum": ("momentum", ("momentum", "nesterov")),
    "beta1": ("beta1", ("adam", "adamw")),
    "beta2": ("beta2", ("adam", "adamw")),
    "eps": ("eps", ("adagrad", "rmsprop", "adam", "adamw")),
    "rho": ("rho", ("rmsprop",)),
    "eps_inside_sqrt": ("eps_inside_sqrt", ("adagrad", "rmsprop")),
    "eps_hat": ("eps_hat", ("adam", "adamw")),
}


def split_data(x, t, test_fraction, seed):
    """Stratified ``(x_train, t_train, x_test, t_test)`` for data without a separate test set."""
    from .datasets import train_test_split
    return train_test_split(x, t, test_fraction, seed=np.random.default_rng([seed, 0]),
                            stratify=True)


def _load_data(args, dtype):
    """``(source, x_train, t_train, x_test, t_test)`` of ``--dataset`` (default: mnist with
    ``--data-dir``, else digits); mnist / fashion-mnist without ``--data-dir`` are downloaded once
    into the data folder (``dlfast.datasets.fetch``)."""
    from . import datasets
    name = args.dataset or ("mnist" if args.data_dir else "digits")
    if name != "digits":
        title = datasets._SOURCES[name][0]
        kw = dict(dtype=dtype, download=args.data_dir is None, progress=not args.no_progress)
        try:
            x, t = datasets.load_idx_dataset(name, args.data_dir, "train", **kw)
            x_test, t_test = datasets.load_idx_dataset(name, args.data_dir, "t10k", **kw)
        except datasets.IDXFileNotFoundError as exc:
            raise _CLIError(f"--data-dir: {str(exc).replace(datasets._DOWNLOAD_HINT, '')}; without "
                            f"--data-dir, dlfast downloads {name} itself") from None
        return (f"{title} ({args.data_dir})" if args.data_dir else title), x, t, x_test, t_test
    if args.data_dir:
        raise _CLIError("--data-dir does not apply to --dataset digits (the digits are embedded)")
    x, t = datasets.load_digits(dtype=dtype)
    x_train, t_train, x_test, t_test = split_data(x, t, args.test_split, args.seed)
    return "digits", x_train, t_train, x_test, t_test


def _load_csv(args, dtype):
    """``(source, x, t, x_val, t_val, x_test, t_test, preprocess)`` of ``--csv FILE --target
    COLUMN``: rows split into test (``--test-split``), validation (``--val-split`` of the rest)
    and training rows, stratified by class to classify; features and targets fitted on the
    training rows only (``dlfast._tabular``)."""
    from . import _tabular
    from .datasets import split_indices
    for flag, bad in (("--dataset", args.dataset), ("--data-dir", args.data_dir),
                      ("--arch", args.arch), ("--augment", args.augment),
                      ("--pretrain rbm", args.pretrain == "rbm")):
        if bad:
            raise _CLIError(f"{flag} does not apply to --csv data (a table, not images)")
    if not args.target:
        raise _CLIError("--csv needs --target COLUMN (the column to predict)")
    table = _tabular.read_csv(args.csv)
    if args.target not in table.columns:
        raise _CLIError(f"--target {args.target!r} is not a column of {args.csv}; columns: "
                        f"{', '.join(table.names)}")
    task = args.task or _tabular.task_of(table, args.target)
    pre = _tabular.Preprocess(table, args.target, task, args.impute)
    labels = pre.labels if task == "classify" else None
    rng = np.random.default_rng([args.seed, 0])
    rest, test = split_indices(table.n, args.test_split, rng, labels, "--test-split")
    keep, val = split_indices(len(rest), args.val_split, rng,
                              None if labels is None else labels[rest], "--val-split")
    train, val = rest[keep], rest[val]
    pre.fit(train)
    x, t = pre.transform(train, dtype)
    x_val, t_val = pre.transform(val, dtype)
    x_test, t_test = pre.transform(test, dtype)
    kinds = [pre.kinds[h] for h in pre.features]
    source = (f"{os.path.basename(args.csv)} (target {args.target!r}, {task}, "
              f"{kinds.count('numeric')} numeric and {kinds.count('categorical')} categorical "
              f"columns -> {x.shape[1]} features)")
    return source, x, t, x_val, t_val, x_test, t_test, pre


def _make_optimizer(args):
    from . import optim
    kwargs = {}
    if args.lr is not None:
        kwargs["lr"] = args.lr
    for dest, (kw, applies) in _OPT_FLAGS.items():
        v = getattr(args, dest)
        if v is None or v is False:
            continue
        if args.optimizer not in applies:
            flag = "--" + dest.replace("_", "-")
            raise _CLIError(f"{flag} does not apply to --optimizer {args.optimizer} "
                            f"(it is for {', '.join(applies)})")
        kwargs[kw] = v
    if args.clip_norm is not None:
        kwargs["clip_norm"] = args.clip_norm
    if args.clip_value is not None:
        kwargs["clip_value"] = args.clip_value
    if args.optimizer == "adamw" and args.weight_decay:
        kwargs["weight_decay"] = args.weight_decay       # decoupled: the optimiser's job
    return optim.get(args.optimizer, **kwargs)


LOSSES = ("softmax_xent", "sigmoid_bce", "mse", "mae", "huber")


def _loss_for(args, task, n_classes=None):
    """The loss of ``--loss`` (default: softmax_xent to classify, mse to regress), checked
    against the task; returns (loss layer, its name)."""
    from .layers import HuberLoss, loss as L
    name = getattr(args, "loss", None) or ("softmax_xent" if task == "classify" else "mse")
    if task == "classify" and name in ("mse", "mae", "huber"):
        raise _CLIError(f"--loss {name} is a regression loss, but the task is classification "
                        f"(choose softmax_xent or sigmoid_bce, or --task regress for a CSV)")
    if task == "regress" and name in ("softmax_xent", "sigmoid_bce"):
        raise _CLIError(f"--loss {name} is a classification loss, but the task is regression "
                        f"(choose mse, mae or huber)")
    if name == "sigmoid_bce" and n_classes != 2:
        raise _CLIError(f"--loss sigmoid_bce needs a binary target (2 classes, one sigmoid "
                        f"output); the data has {n_classes} classes: use softmax_xent")
    delta = getattr(args, "huber_delta", None)
    if delta is not None and name != "huber":
        raise _CLIError("--huber-delta applies to --loss huber only")
    if name == "huber":
        return HuberLoss(1.0 if delta is None else delta), name
    return L.get(name), name


def _make_model(args, n_in, n_out, dtype, loss=None):
    """The MLP of the options, or with ``--arch`` the convnet on images (1, s, s), s*s = n_in;
    ``loss``: its loss layer (default softmax cross-entropy)."""
    from . import regularizers as R
    from .net import MLP
    wd = 0.0 if args.optimizer == "adamw" else args.weight_decay
    kwargs = {}
    if args.l1 and wd:
        kwargs["regularizer"] = R.ElasticNet(l1=args.l1, l2=wd)
    elif args.l1:
        kwargs["regularizer"] = R.L1(args.l1)
    else:
        kwargs["weight_decay"] = wd
    if args.max_norm is not None:
        kwargs["max_norm"] = args.max_norm
    if args.alpha is not None:
        kwargs["alpha"] = args.alpha
    if getattr(args, "arch", None):
        return _make_convnet(args, n_in, n_out, dtype, kwargs)
    if loss is not None:
        kwargs["loss"] = loss.config()
    return MLP(n_in, args.hidden, n_out, activation=args.activation, weight_init=args.init,
               batchnorm=args.batchnorm, dropout=args.dropout, seed=args.seed, dtype=dtype, **kwargs)


_ARCH_ACTIVATIONS = ("relu", "leaky_relu", "elu", "sigmoid", "tanh", "identity")


def _image_side(n_in):
    s = int(round(n_in ** 0.5))
    if s * s != n_in:
        raise _CLIError(f"--arch needs square images; the data has {n_in} features per row")
    return s


def _make_convnet(args, n_in, n_out, dtype, kwargs):
    """``Sequential`` of the ``--arch`` items on images (1, s, s): each conv and dense followed by
    [BatchNorm] and the activation, each dense by [Dropout]; Flatten before the first dense; a
    Dense of n_out closes."""
    from . import kernels
    from . import layers as L
    from . import regularizers as R
    from .net import Sequential
    if args.activation not in _ARCH_ACTIVATIONS:
        raise _CLIError(f"--activation {args.activation} does not apply to --arch (choose "
                        f"{', '.join(_ARCH_ACTIVATIONS)})")
    if args.hidden != [100, 100]:
        raise _CLIError("--hidden does not apply with --arch (give dense:N items)")
    act, alpha = args.activation, kwargs.get("alpha")
    rng = np.random.default_rng(args.seed)
    side = _image_side(n_in)
    shape = (1, 1, side, side)
    layers, width = [], None

    def after(n):                                   # [BatchNorm] -> activation
        if args.batchnorm:
            layers.append(L.BatchNorm(n, dtype=dtype))
        if act != "identity":
            layers.append(L.Activation(act, alpha, dtype=dtype))

    for i, (kind, v) in enumerate(parse_arch(args.arch)):
        try:
            if kind == "conv":
                f, k, st, pad = v
                c = shape[1]
                shape = kernels.conv2d_output_shape(shape, (f, c, k, k), st, pad)
                layers.append(L.Conv2D(c, f, k, st, pad, weight_init=args.init, dtype=dtype,
                                       rng=rng))
                after(f)
            elif kind in ("pool", "avgpool"):
                shape = kernels.pool2d_output_shape(shape, v[0], v[1])
                layers.append((L.MaxPool2D if kind == "pool" else L.AvgPool2D)(v[0], v[1],
                                                                               dtype=dtype))
            else:
                if width is None:
                    layers.append(L.Flatten(dtype=dtype))
                    width = shape[1] * shape[2] * shape[3]
                layers.append(L.Dense(width, v[0], None, weight_init=args.init, dtype=dtype,
                                      rng=rng))
                after(v[0])
                width = v[0]
                if args.dropout:
                    layers.append(L.Dropout(args.dropout, dtype=dtype))
        except ValueError as exc:
            item = args.arch.split(",")[i]
            raise _CLIError(f"--arch item {item!r} on inputs (C, H, W) = {shape[1:]}: {exc}") \
                from None
    if width is None:
        layers.append(L.Flatten(dtype=dtype))
        width = shape[1] * shape[2] * shape[3]
    layers.append(L.Dense(width, n_out, None, weight_init=args.init, dtype=dtype, rng=rng))
    reg = kwargs.get("regularizer")
    if reg is None and kwargs.get("weight_decay"):
        reg = R.L2(kwargs["weight_decay"])
    return Sequential(layers, regularizer=reg, max_norm=kwargs.get("max_norm"), dtype=dtype,
                      seed=args.seed)



def _make_schedule(args, lr0):
    from . import schedules as S
    if args.schedule == "none":
        return None
    if args.schedule == "step":
        return S.StepDecay(lr0, args.step_size, args.gamma)
    if args.schedule == "exp":
        return S.ExponentialDecay(lr0, args.decay)
    if args.schedule == "inverse":
        return S.InverseTimeDecay(lr0, args.decay)
    return S.ReduceOnPlateau(lr0, factor=args.gamma, patience=args.plateau_patience)


def _fmt_table(rows, metric="accuracy"):
    """The final table: loss and accuracy (a percentage) or R^2 per set."""
    head = ("", "loss", "accuracy" if metric == "accuracy" else "R^2")
    lines = [f"{head[0]:<12}{head[1]:>10}{head[2]:>11}"]
    for name, loss, acc in rows:
        lines.append(f"{name:<12}{loss:>10.4f}" + (f"{acc * 100:>10.2f}%" if metric == "accuracy"
                                                   else f"{acc:>11.4f}"))
    return "\n".join(lines)


def _write_outputs(out, model, trainer, meta, quiet=False):
    """Save the model, the curves and history.json in ``out``; returns their paths."""
    from . import io
    paths = {"model": io.save_model(model, os.path.join(out, "model.npz"), metadata=meta)}
    hist = trainer.history
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump({"history": hist.as_dict(), **meta}, f, indent=1)
    paths["history"] = os.path.join(out, "history.json")
    if len(hist):
        from .plotting import plot_history
        paths["plot"] = plot_history(hist, os.path.join(out, "history.png"), title=meta.get("title"))
    return paths


def _make_checkpoint(args):
    if args.checkpoint is None:
        if args.checkpoint_every is not None:
            raise _CLIError("--checkpoint-every needs --checkpoint PATH")
        return None
    from .checkpoint import Checkpoint
    return Checkpoint(args.checkpoint, every=args.checkpoint_every or 1, per=args.checkpoint_per)


def _prepare_reuse(args, model, x):
    """--pretrain rbm (on the training rows, labels unused), --freeze K, --cache-frozen and
    --augment; returns the extra Trainer keywords."""
    if args.cache_frozen and not args.freeze:
        raise _CLIError("--cache-frozen needs --freeze K")
    if args.pretrain == "rbm" and getattr(args, "arch", None):
        raise _CLIError("--pretrain rbm does not apply to --arch (RBMs pre-train Dense layers)")
    if args.pretrain == "rbm" and args.resume is None:
        from .pretrain import rbm_pretrain
        hist = rbm_pretrain(model, x, args.pretrain_epochs, lr=args.pretrain_lr,
                            batch_size=args.batch_size, seed=args.seed)
        print("RBM pre-training, reconstruction error per layer (first -> last epoch): "
              + ", ".join(f"{h[0]:.4f} -> {h[-1]:.4f}" for h in hist), flush=True)
    if args.freeze:
        n = len(model._parametrised())
        if args.freeze > n:
            raise _CLIError(f"--freeze {args.freeze} exceeds the number of layers with "
                            f"parameters ({n})")
        model.freeze(upto=args.freeze)
    transform = None
    if args.augment:
        from .augment import for_images
        transform = for_images(int(np.prod(x.shape[1:])), seed=args.seed)
    return {"cache_frozen": args.cache_frozen, "transform": transform}


def _resume(trainer, args):
    """``--resume PATH`` (``--allow-nonfinite``: also a checkpoint holding NaN or inf)."""
    from .checkpoint import NonFiniteCheckpointError, restore_checkpoint
    try:
        restore_checkpoint(trainer, args.resume, allow_nonfinite=args.allow_nonfinite)
    except NonFiniteCheckpointError as exc:
        raise _CLIError(f"{exc} (command line: --allow-nonfinite)") from None
    target = trainer._resume_last_epoch
    if target is not None and target != args.epochs:
        raise _CLIError(f"--epochs {args.epochs} does not match the run in {args.resume}, which "
                        f"trains {target} epochs ({trainer.epoch} done); a resumed run continues "
                        f"to its own end: resume with --epochs {target}, the options it began "
                        f"with")


def _run_train(args):
    from . import kernels  # noqa: F401  (selects the backend before timing)
    from .train import EarlyStopping, Trainer
    _apply_backend(args)
    if args.allow_nonfinite and args.resume is None:
        raise _CLIError("--allow-nonfinite needs --resume PATH")
    import dlfast
    dtype = np.dtype(args.dtype)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    x_val = t_val = None
    if args.csv:
        source, x, t, x_val, t_val, x_test, t_test, tab = _load_csv(args, dtype)
        task = tab.task
        n_out = len(tab.classes) if task == "classify" else 1
    else:
        if args.target or args.task or args.impute:
            raise _CLIError("--target, --task and --impute apply to --csv data")
        source, x, t, x_test, t_test = _load_data(args, dtype)
        task, n_out = "classify", int(max(t.max(), t_test.max())) + 1
    loss, loss_name = _loss_for(args, task, n_out)
    if loss_name == "sigmoid_bce":
        n_out = 1
        t, t_test = (a.astype(dtype) for a in (t, t_test))
        t_val = None if t_val is None else t_val.astype(dtype)
    metric = "accuracy" if task == "classify" else "r2"
    n_in = x.shape[1]
    model = _make_model(args, n_in, n_out, dtype, loss)
    if args.arch:                                   # rows of s*s pixels -> images (1, s, s)
        side = _image_side(n_in)
        x, x_test = (a.reshape(len(a), 1, side, side) for a in (x, x_test))
    extras = _prepare_reuse(args, model, x)
    opt = _make_optimizer(args)
    schedule = _make_schedule(args, float(opt.lr))
    es = None
    if args.early_stopping is not None:
        es = EarlyStopping(args.early_stopping, min_delta=args.min_delta)
    trainer = Trainer(model, opt, epochs=args.epochs, batch_size=args.batch_size, schedule=schedule,
                      schedule_per=args.schedule_per, early_stopping=es,
                      val_split=None if args.csv else args.val_split, stratify=True,
                      progress=not args.no_progress, seed=args.seed,
                      checkpoint=_make_checkpoint(args), **extras)
    if args.arch:
        kind, arch = "ConvNet", f"{'x'.join(map(str, x.shape[1:]))},{args.arch},{n_out}"
    else:
        kind, arch = "MLP", "-".join(str(v) for v in [n_in, *args.hidden, n_out])
    title = f"{kind} {arch} {args.activation} on {source}, {args.optimizer}"
    rows_msg = (f"{x.shape[0]} training rows, {x_val.shape[0]} validation rows" if x_val is not None
                else f"{x.shape[0]} training rows (validation {args.val_split:g} of them)")
    print(f"dlfast train: {kind} {arch} ({args.activation}, init {args.init}"
          + (", batchnorm" if args.batchnorm else "") + (f", dropout {args.dropout}" if args.dropout else "")
          + f", loss {loss_name}) on {source}: {rows_msg}, {x_test.shape[0]} test rows")
    print(f"  optimizer {args.optimizer} lr={opt.lr:g}, schedule {args.schedule}, batch {args.batch_size}, "
          f"{args.epochs} epochs, backend {dlfast.get_backend()} ({dlfast.get_num_threads()} threads), "
          f"{dtype.name}, seed {args.seed}", flush=True)
    meta = {"title": title, "command": sys.argv[1:] if args.argv is None else args.argv,
            "args": {k: v for k, v in vars(args).items() if k not in ("func", "argv")},
            "source": source, "backend": dlfast.get_backend(), "loss": loss_name, "task": task}
    if args.csv:
        meta["preprocessing"] = tab.state()
    if args.resume is not None:
        _resume(trainer, args)
    t0 = time.perf_counter()
    try:
        trainer.fit(x, t, x_val, t_val)
    except KeyboardInterrupt:
        meta.update(interrupted=True, epochs_done=trainer.epoch, steps_done=trainer.step)
        paths = _write_outputs(out, model, trainer, meta)
        _err(f"\ndlfast train: interrupted (Ctrl-C) after {trainer.epoch} epoch(s), {trainer.step} "
             f"step(s); model saved to {paths['model']}"
             + (f", curves to {paths['plot']}" if "plot" in paths else ""))
        return EXIT_INTERRUPTED
    total = time.perf_counter() - t0
    hist = trainer.history
    test_loss, test_acc = trainer.evaluate(x_test, t_test)
    final = {"train": (hist.loss[-1], hist[metric][-1]), "test": (test_loss, test_acc)}
    rows = [("train", *final["train"])]
    if hist.val_loss:
        final["validation"] = (hist.val_loss[-1], hist["val_" + metric][-1])
        rows.append(("validation", *final["validation"]))
    rows.append(("test", test_loss, test_acc))
    meta.update(interrupted=False, epochs_done=trainer.epoch, steps_done=trainer.step,
                final={k: {"loss": v[0], metric: v[1]} for k, v in final.items()},
                seconds=total, seconds_per_epoch=float(np.mean(hist.time)))
    paths = _write_outputs(out, model, trainer, meta)
    print()
    print(_fmt_table(rows, metric))
    stop = ""
    if es is not None and es.stopped_epoch:
        stop = f" (early stopping at epoch {es.stopped_epoch}, best epoch {es.best_epoch}" \
               + (" restored)" if es.restore_best else ")")
    print(f"\n{trainer.epoch} epochs{stop}, {np.mean(hist.time):.3f} s per epoch, {total:.2f} s in all")
    print(f"model:  {paths['model']}\ncurves: {paths['plot']}\nhistory: {paths['history']}")
    return 0


def _configure_train(p):
    g = p.add_argument_group("model")
    g.add_argument("--hidden", type=_positive_int, nargs="+", default=[100, 100], metavar="N",
                   help="hidden layer sizes (default: 100 100)")
    g.add_argument("--arch", type=_arch, metavar="ITEMS",
                   help="a convnet on the images instead of the MLP (rows of s*s pixels become "
                        "1 x s x s images), comma-separated items: " + ARCH_HELP + ". Each conv "
                        "and dense is followed by [--batchnorm] and --activation, each dense by "
                        "[--dropout]; a Flatten goes before the first dense, a Dense of the "
                        "classes closes. E.g. conv:30x5p2,pool:2,dense:100 (the digits' "
                        "SimpleConvNet); --hidden does not apply")
    g.add_argument("--activation", choices=ACTIVATIONS, default="relu", help="(default: relu)")
    g.add_argument("--alpha", type=_nonneg_float, help="slope of leaky_relu / scale of elu")
    g.add_argument("--init", type=_init, default="he",
                   help="weight initialiser: he, he_uniform, xavier, xavier_uniform, lecun, "
                        "orthogonal, normal, uniform, zeros ... or a float std (default: he)")
    g.add_argument("--batchnorm", action="store_true", help="batch normalisation after each hidden Dense")
    g.add_argument("--dropout", type=_dropout, default=0.0, metavar="P",
                   help="dropout probability after each hidden layer (default: 0)")
    g.add_argument("--weight-decay", type=_nonneg_float, default=0.0, metavar="LAMBDA",
                   help="L2 penalty (lambda/2)*sum W^2 on the weights; with --optimizer adamw the "
                        "decoupled weight decay instead (default: 0)")
    g.add_argument("--l1", type=_nonneg_float, default=0.0, metavar="LAMBDA",
                   help="L1 penalty lambda*sum |W| (with --weight-decay: elastic net)")
    g.add_argument("--max-norm", type=_positive_float, metavar="C",
                   help="max-norm constraint on each unit's incoming weights")
    g.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    g.add_argument("--loss", choices=LOSSES,
                   help="softmax_xent (default to classify), sigmoid_bce (binary targets: one "
                        "sigmoid output), mse (default to regress), mae, huber")
    g.add_argument("--huber-delta", type=_positive_float, metavar="DELTA",
                   help="--loss huber: quadratic within |y - t| <= DELTA (default: 1)")
    g = p.add_argument_group("pre-training, freezing, augmentation")
    g.add_argument("--pretrain", choices=("none", "rbm"), default="none",
                   help="rbm: greedy RBM pre-training (CD-1) of the hidden layers before training")
    g.add_argument("--pretrain-epochs", type=_positive_int, default=10, help="(default: 10)")
    g.add_argument("--pretrain-lr", type=_positive_float, default=0.1, help="(default: 0.1)")
    g.add_argument("--freeze", type=_nonneg_int, default=0, metavar="K",
                   help="do not train the first K parametrised layers")
    g.add_argument("--cache-frozen", action="store_true",
                   help="train on cached outputs of the frozen layers (needs --freeze)")
    g.add_argument("--augment", action="store_true",
                   help="fresh random shifts/rotations/scaling/noise of the training images each "
                        "epoch (defaults for the image size, see dlfast.augment)")
    g = p.add_argument_group("optimiser")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="(default: adam)")
    g.add_argument("--lr", type=_nonneg_float, help="learning rate (default: the optimiser's)")
    g.add_argument("--momentum", type=_nonneg_float, help="momentum / nesterov mu")
    g.add_argument("--beta1", type=_nonneg_float, help="adam beta1")
    g.add_argument("--beta2", type=_nonneg_float, help="adam beta2")
    g.add_argument("--eps", type=_positive_float, help="adagrad / rmsprop / adam epsilon")
    g.add_argument("--rho", type=_nonneg_float, help="rmsprop decay rate")
    g.add_argument("--eps-inside-sqrt", action="store_true",
                   help="adagrad/rmsprop: lr*g/sqrt(h+eps) (Keras form)")
    g.add_argument("--eps-hat", action="store_true", help="adam: the textbook/Keras folded-eps form")
    g.add_argument("--clip-norm", type=_positive_float, help="clip the global gradient norm")
    g.add_argument("--clip-value", type=_positive_float, help="clip each gradient element")
    g = p.add_argument_group("schedule and stopping")
    g.add_argument("--schedule", choices=SCHEDULES, default="none",
                   help="step: lr*gamma^floor(t/step_size); exp: lr*exp(-k t); inverse: lr/(1+k t); "
                        "plateau: lr*gamma after --plateau-patience epochs without val_loss gain")
    g.add_argument("--schedule-per", choices=("epoch", "step"), default="epoch",
                   help="t counts epochs or optimiser steps (default: epoch)")
    g.add_argument("--step-size", type=_positive_int, default=10, help="step schedule (default: 10)")
    g.add_argument("--gamma", type=_positive_float, default=0.5,
                   help="step / plateau factor (default: 0.5)")
    g.add_argument("--decay", type=_nonneg_float, default=0.05, metavar="K",
                   help="k of the exp and inverse schedules (default: 0.05)")
    g.add_argument("--plateau-patience", type=_positive_int, default=5)
    g.add_argument("--early-stopping", type=_positive_int, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without val_loss improvement; restore the best")
    g.add_argument("--min-delta", type=_nonneg_float, default=0.0, help="early stopping min_delta")
    g = p.add_argument_group("run")
    g.add_argument("--epochs", type=_positive_int, default=30, help="(default: 30)")
    g.add_argument("--batch-size", type=_positive_int, default=32, help="(default: 32)")
    g.add_argument("--val-split", type=_fraction, default=0.1,
                   help="fraction of the training data held out for validation (default: 0.1)")
    g.add_argument("--test-split", type=_fraction, default=0.2,
                   help="digits and --csv: fraction held out as the test set (default: 0.2)")
    from .datasets import DATASETS
    g.add_argument("--dataset", choices=DATASETS,
                   help="digits (embedded, the default), or mnist / fashion-mnist: downloaded "
                        "once into $DLFAST_DATA (default: the user's cache folder + dlfast)")
    g.add_argument("--csv", metavar="FILE",
                   help="train on a CSV table (header line naming the columns) instead: numeric "
                        "columns standardised and categorical ones one-hot encoded, fitted on "
                        "the training rows only; needs --target")
    g.add_argument("--target", metavar="COLUMN", help="--csv: the column to predict")
    g.add_argument("--task", choices=("classify", "regress"),
                   help="--csv: classify the target's values or regress them (default: "
                        "classify a non-numeric target or one of at most 20 integers)")
    from ._tabular import IMPUTE
    g.add_argument("--impute", choices=IMPUTE,
                   help="--csv: fill missing values with the training rows' mean / median / "
                        "most frequent value (categorical columns: most frequent); without it a "
                        "missing value is an error naming its column and row")
    g.add_argument("--data-dir", metavar="DIR",
                   help="read the IDX files (train-*/t10k-*[.gz]) of --dataset (default: mnist) "
                        "from this folder instead; nothing is downloaded")
    g.add_argument("--backend", choices=("numpy", "cython"), help="kernel backend (default: best available)")
    g.add_argument("--threads", type=_nonneg_int, help="threads for kernels and BLAS (0 = default)")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="weights, splits, shuffling (default: 0)")
    g.add_argument("--out", default="out", metavar="DIR",
                   help="folder for model.npz, history.png, history.json (default: ./out)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--checkpoint", metavar="PATH",
                   help="write a checkpoint (model, optimiser, schedule, counters, generators) here")
    g.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                   help="checkpoint every N epochs/steps (default: 1)")
    g.add_argument("--checkpoint-per", choices=("epoch", "step"), default="epoch",
                   help="what --checkpoint-every counts (default: epoch)")
    g.add_argument("--resume", metavar="PATH",
                   help="continue the run saved in this checkpoint (same options and data)")
    g.add_argument("--allow-nonfinite", action="store_true",
                   help="--resume also from a checkpoint whose weights hold NaN or inf")


register("train", _run_train, "train an MLP or a convnet (--arch) on the digits, MNIST or "
         "Fashion-MNIST", _configure_train)
register("info", _run_info, "backend, dtype, threads, OpenMP and BLAS in use", _configure_info)

from .experiments import _cli_configure as _configure_experiment, _cli_run as _run_experiment  # noqa: E402
register("experiment", _run_experiment, "run a classic experiment (--list): table + PNG",
         _configure_experiment)

from .tune import _cli_configure as _configure_tune, _cli_run as _run_tune  # noqa: E402
register("tune", _run_tune, "hyperparameter search of dlfast train options on the digits, on "
         "local processes or a Dask cluster (Best-k table, PNG, JSON)", _configure_tune)


# ============================================================================ entry point
def build_parser():
    """The argparse parser with one subparser per registered command."""
    from . import __version__
    parser = argparse.ArgumentParser(prog="dlfast", description="dlfast: classic deep-learning "
                                     "training on the CPU (NumPy / Cython + OpenMP).")
    parser.add_argument("--version", action="version", version=f"dlfast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (run, help_, configure) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if configure is not None:
            configure(p)
        p.set_defaults(func=run)
    return parser


def main(argv=None):
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_USAGE
    args.argv = None if argv is None else list(argv)
    from dlfast import _config
    saved = _config._default[0], _config._threads[0]   # --backend/--threads: this call only
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        _err(f"\ndlfast {args.command}: interrupted (Ctrl-C)")
        return EXIT_INTERRUPTED
    except BrokenPipeError:                    # e.g. `dlfast info | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except (_CLIError, ValueError, TypeError, OSError, ImportError, FloatingPointError) as exc:
        _err(f"dlfast {args.command}: error: {exc}")
        return EXIT_ERROR
    finally:
        _config._default[0] = saved[0]
        if _config._threads[0] != saved[1]:
            _config.set_num_threads(saved[1])
    return 0 if rc is None else int(rc)
