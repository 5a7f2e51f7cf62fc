"""Restricted Boltzmann machine: the contrastive-divergence update (see dlfast.kernels.rbm_cd_update).

W[i, j] += lr * ((sum_n v0[n,i] h0[n,j] - vk[n,i] hk[n,j]) / N - wd * W[i, j]), sums in float64 in
row order n = 0..N-1; each row i of W is one work item (results independent of the thread count).
"""
from cython.parallel cimport prange
from cython cimport floating
from libc.stdlib cimport malloc, free

import numpy as np

include "_parallel.pxi"


def _cd(const floating[:, ::1] v0, const floating[:, ::1] h0, const floating[:, ::1] vk,
        const floating[:, ::1] hk, floating[:, ::1] W, floating[::1] bv, floating[::1] bh,
        double lr, double wd, double[::1] err_rows):
    cdef Py_ssize_t n = v0.shape[0], ni = v0.shape[1], nj = h0.shape[1], i, j, r
    cdef double a, b, d, e, s, inv_n = 1.0 / <double>n
    cdef double* acc
    # a parallel region pays off from 64 * min_work multiply-adds (2M at the default min_work)
    cdef int nt = _threads((n * ni * nj) // 64)
    for i in prange(ni, nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        acc = <double*>malloc((nj + 1) * sizeof(double))
        if acc == NULL:
            with gil:
                raise MemoryError()
        for j in range(nj):
            acc[j] = 0.0
        s = 0.0
        e = 0.0
        for r in range(n):
            a = <double>v0[r, i]
            b = <double>vk[r, i]
            d = a - b
            s = s + d
            e = e + d * d
            for j in range(nj):
                acc[j] = acc[j] + (a * <double>h0[r, j] - b * <double>hk[r, j])
        for j in range(nj):
            W[i, j] = <floating>(<double>W[i, j] + lr * (acc[j] * inv_n - wd * <double>W[i, j]))
        bv[i] = <floating>(<double>bv[i] + lr * (s * inv_n))
        err_rows[i] = e
        free(acc)
    for j in prange(nj, nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        s = 0.0
        for r in range(n):
            s = s + (<double>h0[r, j] - <double>hk[r, j])
        bh[j] = <floating>(<double>bh[j] + lr * (s * inv_n))


def rbm_cd_update(v0, h0, vk, hk, W, bv, bh, lr, wd):
    """CD update of W, bv, bh in place; returns sum (v0 - vk)^2 (float64, rows of W in order)."""
    err_rows = np.zeros(v0.shape[1], np.float64)
    _cd(v0, h0, vk, hk, W, bv, bh, <double>lr, <double>wd, err_rows)
    cdef double total = 0.0
    cdef Py_ssize_t i
    for i in range(err_rows.shape[0]):
        total += err_rows[i]
    return total
