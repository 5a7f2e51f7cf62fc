"""The one place that decides the backend and the thread count.

Backend: ``DLFAST_BACKEND`` (read once, at import) or ``set_backend`` / ``use_backend``; default
``"cython"`` when the compiled extension imports, else ``"numpy"`` with one warning saying why.
``DLFAST_REQUIRE_COMPILED=1`` turns that fallback into an ImportError (CI sets it).

Threads: ``set_num_threads(n)``; by default the compiled kernels use ``omp_get_max_threads()``,
which honours ``OMP_NUM_THREADS`` and threadpoolctl limits. A child made by ``os.fork`` runs the
kernels on one thread (GNU libgomp does not survive a fork; see ``_serial_after_fork``). The
compiled backend's machine-dependent settings (``DLFAST_SGEMM``, ``DLFAST_PARALLEL_MIN_WORK``,
``DLFAST_CACHE_DIR``) are read by ``dlfast._backends._tuning``.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import warnings

BACKEND_NAMES = ("numpy", "cython")

_modules: dict = {}
_import_errors: dict = {}
_default: list = [None]          # name of the process-wide backend
_local = contextvars.ContextVar("dlfast_backend", default=None)
_threads = [0]                   # 0 = not set: follow OpenMP / threadpoolctl
_forked = [False]                # this process is a child made by os.fork


def _load(name):
    if name in _modules:
        return _modules[name]
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    if name in _import_errors:
        raise ImportError(f"dlfast backend {name!r} is not available: {_import_errors[name]}")
    try:
        mod = importlib.import_module(f"dlfast._backends.{name}_kernels")
    except ImportError as exc:  # the compiled extension was not built or cannot load
        _import_errors[name] = f"{type(exc).__name__}: {exc}"
        raise ImportError(f"dlfast backend {name!r} is not available: {exc}") from exc
    if name == "cython" and _threads[0]:
        mod.set_num_threads(_threads[0])
    _modules[name] = mod
    return mod


def _require_compiled():
    return os.environ.get("DLFAST_REQUIRE_COMPILED", "").strip().lower() in ("1", "true", "yes")


def _initial_backend():
    env = os.environ.get("DLFAST_BACKEND", "").strip().lower()
    if env:
        _load(env)
        return env
    try:
        _load("cython")
        return "cython"
    except ImportError as exc:
        if _require_compiled():
            raise ImportError(f"DLFAST_REQUIRE_COMPILED is set but the compiled backend did not import: {exc}") from exc
        warnings.warn(f"dlfast: compiled backend unavailable ({exc}); using the NumPy backend.",
                      RuntimeWarning, stacklevel=3)
        _load("numpy")
        return "numpy"


def active():
    """The active backend module (context-local override, else the process default)."""
    name = _local.get()
    if name is None:
        name = _default[0]
        if name is None:
            name = _default[0] = _initial_backend()
    return _modules[name]


def get_backend() -> str:
    """Name of the active backend: ``"numpy"`` or ``"cython"``."""
    return active().NAME


def set_backend(name: str) -> None:
    """Make `name` the process-wide backend (raises ImportError if it cannot load)."""
    _load(name)
    _default[0] = name


def available_backends() -> list:
    """Names of the backends that load on this machine, in preference order."""
    out = []
    for name in BACKEND_NAMES:
        try:
            _load(name)
            out.append(name)
        except ImportError:
            pass
    return out


class use_backend(contextlib.ContextDecorator):
    """``with use_backend("numpy"): ...`` runs the block (in this thread/context) on `name`;
    ``as`` gives the backend module; ``@use_backend("numpy")`` runs every call of a function so.
    A class, not a generator: entering and leaving cost a context-variable set and reset
    (~0.3 us), so a block around every kernel call is cheap."""

    def __init__(self, name: str):
        _load(name)
        self._name = name
        self._tokens = []

    def __enter__(self):
        self._tokens.append(_local.set(self._name))
        return _modules[self._name]

    def __exit__(self, *exc):
        _local.reset(self._tokens.pop())

    def _recreate_cm(self):             # a decorated function's call: its own instance
        return type(self)(self._name)


def set_num_threads(n: int) -> None:
    """Threads for compiled kernels and BLAS; ``n=0`` returns to the default (OpenMP's max)."""
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _threads[0] = n
    if "cython" in _modules:
        _modules["cython"].set_num_threads(n)
    _blas_limit(n)


_blas_original: dict = {}


_blas_scan: list = [None, -1]       # [threadpoolctl controllers, len(sys.modules) at the scan]


def _blas_libs():
    """threadpoolctl's controllers of the loaded libraries; scanned again only after new modules
    were imported (a scan reads the process's library list: ~6 ms)."""
    import sys
    if _blas_scan[0] is None or _blas_scan[1] != len(sys.modules):
        from threadpoolctl import ThreadpoolController
        _blas_scan[0] = ThreadpoolController().lib_controllers
        _blas_scan[1] = len(sys.modules)
    return _blas_scan[0]


def _blas_limit(n):
    """Limit every BLAS but the one the compiled backend pins to a single thread (n=0: restore)."""
    pinned = getattr(_modules.get("cython"), "PINNED_BLAS", ())
    for lib in _blas_libs():
        if lib.user_api != "blas" or lib.filepath in pinned:
            continue
        orig = _blas_original.setdefault(lib.filepath, lib.num_threads)
        lib.set_num_threads(n if n > 0 else orig)


def get_num_threads() -> int:
    """Threads the compiled kernels use for large arrays."""
    if _threads[0]:
        return _threads[0]
    try:
        return _load("cython").max_threads()
    except ImportError:
        return 1


def _serial_after_fork():
    """In a child made by ``os.fork`` (multiprocessing's "fork" start method), the compiled kernels
    run on one thread: GNU libgomp's thread pool does not survive a fork, and the child's first
    parallel region after the parent has run one waits forever for the parent's workers.
    ``set_num_threads(n)`` in the child overrides this (only safe if the parent ran no parallel
    region); "spawn" and "forkserver" children start fresh and are not affected."""
    _threads[0] = 1
    _forked[0] = True
    if "cython" in _modules:
        _modules["cython"].set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_serial_after_fork)
