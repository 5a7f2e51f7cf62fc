"""dlfast: classic deep-learning training on the CPU from plain NumPy, correct and fast.

Backends: ``set_backend("numpy" | "cython")``, ``get_backend()``, ``available_backends()``,
``with use_backend(name): ...``, or the ``DLFAST_BACKEND`` environment variable.
Threads: ``set_num_threads(n)`` / ``get_num_threads()``.

Submodules (``dlfast.optim``, ``dlfast.net``, ``dlfast.datasets`` ... see ``SUBMODULES``) are
imported on first attribute access (PEP 562), so ``import dlfast`` stays light: it imports neither
matplotlib, tqdm nor scikit-learn (``dlfast.sklearn``, the estimators, needs the ``sklearn`` extra:
without scikit-learn its import is an ImportError saying so).
"""
from ._config import (available_backends, get_backend, get_num_threads, set_backend,
                      set_num_threads, use_backend)

__version__ = "0.1.0"

__all__ = ["available_backends", "get_backend", "get_num_threads", "set_backend",
           "set_num_threads", "use_backend", "__version__"]

#: The public submodules, each imported by its first ``dlfast.<name>``.
SUBMODULES = ("augment", "callbacks", "checkpoint", "cli", "compat", "datasets", "experiments",
              "gradcheck", "init", "io", "kernels", "layers", "net", "optim", "plotting",
              "pretrain", "regularizers", "schedules", "sklearn", "train", "tune")


def __getattr__(name):
    if name in SUBMODULES:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")   # also binds it in this module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))
