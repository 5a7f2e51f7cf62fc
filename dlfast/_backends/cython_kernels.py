"""The compiled backend: gathers the primitives of the private extension modules built from
``src/_*.pyx`` under the names of ``dlfast.kernels.KERNELS``.

Module map (one ``.pyx`` each): ``_dense`` (affine + activation, Maxout, GEMMs), ``_activations``
(elementwise activations, PReLU), ``_softmax`` (softmax, softmax cross-entropy),
``_batchnorm``, ``_random`` (counter-based generator: dropout, uniform, Bernoulli, RReLU), ``_optim``
(optimiser updates, norms, penalties, max-norm), ``_rbm`` (contrastive-divergence update).
``_info`` reports OpenMP and threads; ``_program`` runs a training step's ops.
``_conv``: convolution and pooling (its GEMMs run on ``_dense``'s BLAS entry, ``src/_gemm.pxd``).
``_losses``: the value losses (mse, mae, huber, sigmoid_bce) and their ops.
"""
import ctypes
import importlib
import os
import time
from types import SimpleNamespace

import numpy as np

from ..kernels import KERNELS
from . import _tuning

NAME = "cython"
MODULES = ("_dense", "_activations", "_softmax", "_batchnorm", "_random", "_optim", "_rbm",
           "_conv", "_losses")

_info = importlib.import_module("dlfast._backends._info")
_mods = [importlib.import_module(f"dlfast._backends.{m}") for m in MODULES]

_found = {}
for _m in _mods:
    for _name in KERNELS:
        if hasattr(_m, _name):
            _found[_name] = getattr(_m, _name)
_missing = [n for n in KERNELS if n not in _found]
if _missing:
    raise ImportError(f"compiled backend lacks kernels: {', '.join(_missing)}")
globals().update(_found)


def _private_blas():
    """dlfast's own OpenBLAS for the GEMMs: the ``scipy-openblas32`` wheel's library (symbols
    prefixed ``scipy_``), loaded privately and pinned to one thread: (ctypes library, real path,
    version), or None when it is missing, cannot load, or ``DLFAST_GEMM_BLAS=scipy``.

    SciPy's bundled OpenBLAS (0.3.30 in SciPy 1.16) runs the GEMMs of small row blocks up to
    1.6x slower than current OpenBLAS (16x784x100 float32, 1 thread: 48.4 vs 29.9 us), and a
    library of dlfast's own can stay pinned to one thread without slowing the user's SciPy."""
    if os.environ.get("DLFAST_GEMM_BLAS", "").strip().lower() == "scipy":
        return None
    try:
        import scipy_openblas32 as sob
        path = os.path.realpath(os.path.join(sob.get_lib_dir(), sob.get_library(fullname=True)))
        lib = ctypes.CDLL(path)
        fns = [ctypes.cast(getattr(lib, f"scipy_{n}"), ctypes.c_void_p).value
               for n in ("sgemm_", "dgemm_", "sgemv_", "dgemv_", "openblas_get_num_threads",
                         "openblas_set_num_threads")]
    except (ImportError, OSError, AttributeError, IndexError):
        return None
    lib.scipy_openblas_set_num_threads(1)
    _mods[0]._set_gemm_blas(*fns[:4])
    _mods[0]._set_blas_pin(*fns[4:])
    return lib, path, getattr(sob, "__version__", "?")


def _pin_gemm_blas():
    """Choose the GEMM BLAS (``_private_blas``, else the one behind scipy.linalg.cython_blas),
    pin it to one thread; return the library object (or None), its file paths and a description.

    The GEMMs of ``_dense`` are cut into fixed row blocks that OpenMP shares out; each block must
    be computed the same way whatever the thread count (a multi-threaded BLAS call partitions
    differently and changes the last bits). The parallelism comes from the blocks instead.
    NumPy's own BLAS (the NumPy backend's matmul) is left alone when it is a separate library.
    An OpenBLAS (pthreads) is also re-pinned by every dense kernel call if a threadpoolctl limit
    or ``openblas_set_num_threads`` raised it since (``_dense._set_blas_pin``)."""
    from threadpoolctl import ThreadpoolController
    private = _private_blas()
    if private is not None:
        controllers = [lib for lib in ThreadpoolController().lib_controllers
                       if os.path.realpath(lib.filepath) == private[1]]
        for lib in controllers:
            lib.set_num_threads(1)
        paths = tuple(lib.filepath for lib in controllers) or (private[1],)
        return private[0], paths, f"scipy-openblas32 {private[2]} (dlfast's own)"
    _mods[0]._set_gemm_blas(0, 0, 0, 0)                # SciPy's (loads scipy.linalg)
    pinned = []
    for lib in ThreadpoolController().lib_controllers:
        path = lib.filepath.replace("\\", "/")
        if lib.user_api == "blas" and ("scipy.libs" in path or "/scipy/" in path):
            lib.set_num_threads(1)
            pinned.append(lib.filepath)
            fns = _openblas_thread_fns(lib)
            if fns is not None:
                _mods[0]._set_blas_pin(*(ctypes.cast(f, ctypes.c_void_p).value for f in fns))
    return None, tuple(pinned), "SciPy's (scipy.linalg.cython_blas)"


def _openblas_thread_fns(lib):
    """(get, set) num_threads functions of a pthreads OpenBLAS controller, else None."""
    if getattr(lib, "internal_api", None) != "openblas" or \
            getattr(lib, "threading_layer", None) == "openmp":
        return None
    try:
        prefix, suffix = lib._find_affixes()
        fns = [getattr(lib.dynlib, f"{prefix}openblas_{w}_num_threads{suffix}") for w in ("get", "set")]
    except (AttributeError, TypeError):
        return None
    return fns


_GEMM_LIB, PINNED_BLAS, GEMM_BLAS = _pin_gemm_blas()   # _GEMM_LIB: keeps the library loaded


def _gemm_blas_facts():
    """The GEMM BLAS as the tuning cache's key names it: description, version and core (the
    kernels OpenBLAS runs, which OPENBLAS_CORETYPE changes), from threadpoolctl."""
    from threadpoolctl import ThreadpoolController
    facts = {"library": GEMM_BLAS, "version": None, "core": None}
    paths = {os.path.realpath(p) for p in PINNED_BLAS}
    for lib in ThreadpoolController().lib_controllers:
        if os.path.realpath(lib.filepath) in paths:
            facts.update(version=lib.version, core=getattr(lib, "architecture", None))
            break
    return facts


def _probe(own_isa=None):
    """What ``_tuning.decide`` measures with: the facts of this machine and three timers, each
    running compiled code: ``time_gemm(own, m, n, k, calls)`` (``_dense._sgemm_run``: C(m, n)
    = A(m, k) B(k, n), own kernel or BLAS, this thread), ``time_threads(threads, size, calls)``
    (``_optim._sgd_probe``) and ``time_conv(dtype, wino, calls)`` (``_conv.conv2d_forward`` of
    ``_tuning.WINO_SHAPE``, direct or Winograd, on the default threads, or on one where threads
    cannot be timed; ``conv_counted(dtype)``: their counted work's ratio). `own_isa` (tests):
    time "the own kernel" even where the CPU has none (dlf_sgemm then declines every call: the
    BLAS runs both sides)."""
    from .. import _config
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    why = ("the kernels were built without OpenMP" if not _info.openmp_enabled() else
           "1 CPU available to this process" if cpus < 2 else
           "in a child made by os.fork (see dlfast._config)" if _config._forked[0] else None)
    rng = np.random.default_rng(0)
    arrays = {}

    def get(name, *shape):
        if (name, shape) not in arrays:
            arrays[name, shape] = rng.random(shape, dtype=np.float32) + np.float32(0.5)
        return arrays[name, shape]

    def time_gemm(own, m, n, k, calls):
        a, b, c = get("a", m, k), get("b", k, n), get("c", m, n)
        t0 = time.perf_counter()
        _mods[0]._sgemm_run(own, a, b, c, calls)
        return time.perf_counter() - t0

    def time_threads(threads, size, calls):
        w, g = get("w", size), get("g", size)
        t0 = time.perf_counter()
        _mods[5]._sgd_probe(w, g, threads, calls)
        return time.perf_counter() - t0

    conv = _mods[7]
    n, c, h, w, f = _tuning.WINO_SHAPE

    if why is not None:             # no parallel region here (a forked child: libgomp may hang)
        conv._set_num_threads(1)

    def time_conv(dtype, wino, calls):
        key = ("conv", dtype)
        if key not in arrays:
            arrays[key] = [get(*a).astype(dtype) for a in (("x", n, c, h, w), ("k", f, c, 3, 3),
                                                          ("o", n, f, h, w),
                                                          ("col", n, c * 9, h * w))]
        x, k, out, col = arrays[key]
        prev = conv._set_winograd(2 if wino else 1)
        try:
            t0 = time.perf_counter()
            for _ in range(calls):
                conv.conv2d_forward(x, k, None, out, col, (1, 1), (1, 1))
            return time.perf_counter() - t0
        finally:
            conv._set_winograd(prev)

    def conv_counted(dtype):
        return conv._wino_counted(f, c, h, w, 1, dtype == "float64")

    return SimpleNamespace(
        own_isa=_mods[0].sgemm_isa() if own_isa is None else own_isa,
        cpus=cpus, l2_bytes=_info.cache_bytes(2) or _tuning.L2_FALLBACK, threads_why=why,
        blas=_gemm_blas_facts(), time_gemm=time_gemm, time_threads=time_threads,
        time_conv=time_conv, conv_counted=conv_counted)


def _apply(tuning):
    """Put a Tuning in force: the float32 GEMM mask in _dense, Winograd's mode and efficiency in
    _conv, the parallel threshold in every compiled module."""
    _mods[0]._set_own_sgemm(tuning.sgemm_mask)
    _mods[7]._set_winograd(tuning.wino_mode)
    _mods[7]._set_winograd_efficiency(tuning.wino_eff["float32"], tuning.wino_eff["float64"])
    for m in (_info, *_mods):
        m._set_min_work(tuning.min_work)


# The float32 GEMMs' kernel per shape class, Winograd's efficiency and the parallel threshold:
# measured once per machine and cached (_tuning.py; DLFAST_SGEMM, DLFAST_WINOGRAD,
# DLFAST_PARALLEL_MIN_WORK override). float64 GEMMs and GEMVs always run on the GEMM BLAS above.
TUNING = _tuning.decide(_probe())
_apply(TUNING)
SGEMM = TUNING.sgemm_summary()


def set_num_threads(n):
    """Push the thread count (0 = OpenMP's current maximum) to every compiled module."""
    for m in (_info, *_mods):
        m._set_num_threads(int(n))


def max_threads():
    return _info.max_threads()


def openmp_enabled():
    return _info.openmp_enabled()


def openmp_version():
    return _info.openmp_version()


def threads_for(work):
    return _info.threads_for(work)


# The training engine's ops (dlfast.kernels.OPS: one compiled class each, src/dlfast_op.h) and the
# program that runs a step's ops with the GIL released once (src/_program.pyx).
from .numpy_kernels import LayerOp  # noqa: E402  (a layer's own forward/backward: Python)

OPS = {"dense": _mods[0].DenseOp, "maxout": _mods[0].MaxoutOp,
       "activation": _mods[1].ActivationOp, "prelu": _mods[1].PReLUOp,
       "softmax": _mods[2].SoftmaxOp, "softmax_xent": _mods[2].SoftmaxXentOp,
       "batchnorm": _mods[3].BatchNormOp, "dropout": _mods[4].DropoutOp,
       "rrelu": _mods[4].RReLUOp, "conv2d": _mods[7].Conv2DOp,
       "maxpool2d": _mods[7].MaxPool2DOp, "avgpool2d": _mods[7].AvgPool2DOp,
       "flatten": _mods[7].FlattenOp, "mse": _mods[8].MSEOp, "mae": _mods[8].MAEOp,
       "huber": _mods[8].HuberOp, "sigmoid_bce": _mods[8].SigmoidBCEOp, "layer": LayerOp}
Program = importlib.import_module("dlfast._backends._program").Program
