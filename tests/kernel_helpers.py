"""Helpers of the compiled-vs-NumPy kernel tests (``tests/test_kernels_*.py``,
``tests/test_compiled_rbm.py``). The thread count is restored after every test by conftest."""
import contextlib

import numpy as np
import pytest

import dlfast


def layout(a, kind):
    """The same values as a C ("c") / Fortran ("f") / step-2 slice ("step") / read-only ("ro")
    array; a 0-d array stays C (``np.asfortranarray`` would make it 1-d)."""
    if kind == "f" and a.ndim:
        return np.asfortranarray(a)
    if kind == "step" and a.ndim:
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    b = a.copy()
    if kind == "ro":
        b.flags.writeable = False
    return b


def on_all(fn, quiet=False):
    """``(ref, one, two)``: fn() under the NumPy backend (floating-point warnings silenced when
    ``quiet``), then under the compiled one with 1 and with 2 threads; fn makes fresh outputs."""
    with dlfast.use_backend("numpy"), np.errstate(all="ignore" if quiet else None):
        ref = fn()
    got = []
    for nt in (1, 2):
        dlfast.set_num_threads(nt)
        try:
            with dlfast.use_backend("cython"):
                got.append(fn())
        finally:
            dlfast.set_num_threads(0)
    return ref, got[0], got[1]


GEMM_KINDS = ["avx512f", "avx2", "blas"]


@contextlib.contextmanager
def float32_gemm(kind):
    """The compiled float32 GEMMs of every shape class on dlfast's own AVX-512F kernel
    (``"avx512f"``) or AVX2 kernel (``"avx2"``; also on a CPU that has AVX-512F), each test skipped
    where the CPU lacks the kernel, or on the GEMM BLAS (``"blas"``); the import-time choice is
    restored."""
    from dlfast._backends import _dense
    was, cap = _dense.own_sgemm(), _dense.sgemm_isa()
    if kind != "blas" and _dense._cap_sgemm_isa(kind) != kind:
        _dense._cap_sgemm_isa("avx512f")
        pytest.skip(f"dlfast's own float32 GEMM kernel {kind!r}: this CPU lacks it")
    _dense._set_own_sgemm(0 if kind == "blas" else 7)
    try:
        yield kind
    finally:
        _dense._set_own_sgemm(was)
        _dense._cap_sgemm_isa("avx512f")


def assert_backends_agree(factories, x):
    """Each ``factories[name](np.float64)`` layer, made anew per backend: forward(x) and
    backward(cos(y)) on the NumPy and the compiled backend give the same output, dx and grads
    (float64, rtol 1e-12 / 1e-11)."""
    if "cython" not in dlfast.available_backends():
        pytest.skip("compiled backend not built")
    for name, make in factories.items():
        outs = []
        for be in ("numpy", "cython"):
            layer = make(np.float64)
            with dlfast.use_backend(be):
                y = layer.forward(x).copy()
                dx = layer.backward(np.cos(y)).copy()
                outs.append((y, dx, {k: g.copy() for k, g in layer.grads.items()}))
        (y0, d0, g0), (y1, d1, g1) = outs
        np.testing.assert_allclose(y0, y1, rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(d0, d1, rtol=1e-11, atol=1e-12, err_msg=name)
        for k in g0:
            np.testing.assert_allclose(g0[k], g1[k], rtol=1e-11, atol=1e-12, err_msg=name)
