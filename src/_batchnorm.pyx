"""Batch normalisation over the batch axis of x (N, F), row-major.

Work items are blocks of FBLOCK features; each block walks all rows in order (inner loop over the
block's contiguous features), so every per-feature sum is accumulated in double, serially over
n = 0..N-1: results are identical for any thread count. Statistics are two-pass (mean, then
sum (x - mean)^2) while the block's columns are still in cache; no E[x^2] - E[x]^2.
"""
from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport sqrt
from libc.stdlib cimport malloc, free

include "_parallel.pxi"

cdef enum:
    FBLOCK = 64           # features per parallel work item


cdef inline Py_ssize_t _nfb(Py_ssize_t f) noexcept nogil:
    return (f + FBLOCK - 1) // FBLOCK


cdef void _colstats(const floating* x, Py_ssize_t n, Py_ssize_t f, Py_ssize_t j0, Py_ssize_t j1,
                    double* mu, double* var) noexcept nogil:
    """mu[j] = sum_n x[n, j] / N; var[j] = sum_n (x[n, j] - mu[j])^2 / N for j in [j0, j1)."""
    cdef Py_ssize_t i, j
    cdef const floating* row
    cdef double d
    for j in range(j0, j1):
        mu[j] = 0.0
        var[j] = 0.0
    for i in range(n):
        row = x + i * f
        for j in range(j0, j1):
            mu[j] = mu[j] + row[j]
    for j in range(j0, j1):
        mu[j] = mu[j] / n
    for i in range(n):
        row = x + i * f
        for j in range(j0, j1):
            d = row[j] - mu[j]
            var[j] = var[j] + d * d
    for j in range(j0, j1):
        var[j] = var[j] / n


cdef double* _dbuf(Py_ssize_t k) except NULL:
    cdef double* p = <double*>malloc((k if k > 0 else 1) * sizeof(double))
    if p == NULL:
        raise MemoryError()
    return p


def batchnorm_stats(const floating[:, ::1] x, floating[::1] mean, floating[::1] var):
    """mean = sum_n x / N, var = sum_n (x - mean)^2 / N per feature (N >= 1; double, two-pass)."""
    cdef Py_ssize_t n = x.shape[0], f = x.shape[1], b, j0, j1, j
    cdef int nt = _threads(n * f)
    cdef double* buf
    if n == 0 or f == 0:
        return
    buf = _dbuf(2 * f)
    cdef const floating* xp = &x[0, 0]
    for b in prange(_nfb(f), nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        j0 = b * FBLOCK
        j1 = min(j0 + FBLOCK, f)
        _colstats(xp, n, f, j0, j1, buf, buf + f)
        for j in range(j0, j1):
            mean[j] = <floating>buf[j]
            var[j] = <floating>buf[f + j]
    free(buf)


cdef inline floating _running(floating r, double momentum, double stat) noexcept nogil:
    """(1 - momentum) * r + momentum * stat, rounded like the NumPy backend
    (the first product in the array's dtype, the sum in double)."""
    return <floating>(<double>(<floating>(1.0 - momentum) * r) + momentum * stat)


def batchnorm_forward_train(const floating[:, ::1] x, const floating[::1] gamma,
                            const floating[::1] beta, floating[:, ::1] out, floating[:, ::1] xhat,
                            floating[::1] mean, floating[::1] invstd, floating[::1] running_mean,
                            floating[::1] running_var, double momentum, double eps, bint unbiased):
    """Training batch norm (N >= 2): mean, var = batch stats; invstd = 1/sqrt(var + eps);
    xhat = (x - mean) * invstd; out = gamma * xhat + beta; running_* (if given) updated in place
    with momentum (running var unbiased by N/(N-1) when ``unbiased``)."""
    cdef Py_ssize_t n = x.shape[0], f = x.shape[1], b, i, j, j0, j1
    cdef int nt = _threads(n * f)
    cdef double* buf
    cdef double vfac = (<double>n / <double>(n - 1)) if (unbiased and n > 1) else 1.0
    cdef bint has_rm = running_mean is not None, has_rv = running_var is not None
    cdef const floating* xrow
    cdef floating* orow
    cdef floating* hrow
    cdef floating xh
    if n == 0 or f == 0:
        return
    buf = _dbuf(2 * f)
    cdef const floating* xp = &x[0, 0]
    cdef floating* op = &out[0, 0]
    cdef floating* hp = &xhat[0, 0]
    for b in prange(_nfb(f), nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        j0 = b * FBLOCK
        j1 = min(j0 + FBLOCK, f)
        _colstats(xp, n, f, j0, j1, buf, buf + f)
        for j in range(j0, j1):
            mean[j] = <floating>buf[j]
            if has_rm:
                running_mean[j] = _running(running_mean[j], momentum, buf[j])
            if has_rv:
                running_var[j] = _running(running_var[j], momentum,
                                          buf[f + j] * vfac if unbiased else buf[f + j])
            buf[f + j] = 1.0 / sqrt(buf[f + j] + eps)          # var -> invstd
            invstd[j] = <floating>buf[f + j]
        for i in range(n):
            xrow = xp + i * f
            orow = op + i * f
            hrow = hp + i * f
            for j in range(j0, j1):
                xh = <floating>((xrow[j] - buf[j]) * buf[f + j])
                hrow[j] = xh
                orow[j] = gamma[j] * xh + beta[j]
    free(buf)


def batchnorm_forward_eval(const floating[:, ::1] x, const floating[::1] gamma,
                           const floating[::1] beta, const floating[::1] running_mean,
                           const floating[::1] running_var, double eps, floating[:, ::1] out,
                           floating[:, ::1] xhat, floating[::1] invstd):
    """invstd = 1/sqrt(running_var + eps); xhat = (x - running_mean) * invstd; out = gamma*xhat + beta."""
    cdef Py_ssize_t n = x.shape[0], f = x.shape[1], i, j
    cdef int nt = _threads(n * f)
    cdef double* inv
    cdef floating xh
    if f == 0:
        return
    inv = _dbuf(f)
    with nogil:
        for j in range(f):
            inv[j] = 1.0 / sqrt(<double>running_var[j] + eps)
            invstd[j] = <floating>inv[j]
        for i in prange(n, schedule="static", num_threads=nt, use_threads_if=nt > 1):
            for j in range(f):
                xh = <floating>((<double>x[i, j] - <double>running_mean[j]) * inv[j])
                xhat[i, j] = xh
                out[i, j] = gamma[j] * xh + beta[j]
    free(inv)


def batchnorm_backward(const floating[:, ::1] dout, const floating[:, ::1] xhat,
                       const floating[::1] gamma, const floating[::1] invstd, floating[:, ::1] dx,
                       floating[::1] dgamma, floating[::1] dbeta, bint batch_stats):
    """dbeta = sum_n dout; dgamma = sum_n dout * xhat (double); dx = gamma*invstd/N *
    (N*dout - dbeta - xhat*dgamma) with batch statistics, else dx = gamma*invstd*dout."""
    cdef Py_ssize_t n = dout.shape[0], f = dout.shape[1], b, i, j, j0, j1
    cdef int nt = _threads(n * f)
    cdef bint has_dx = dx is not None, has_dg = dgamma is not None, has_db = dbeta is not None
    cdef bint sums = has_dg or has_db or (has_dx and batch_stats)
    cdef double* buf
    cdef double* sb
    cdef double* sg
    cdef double d, k, dn = <double>n
    cdef const floating* drow
    cdef const floating* hrow
    cdef floating* xrow
    if f == 0:
        return
    buf = _dbuf(2 * f)
    sb = buf
    sg = buf + f
    for b in prange(_nfb(f), nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        j0 = b * FBLOCK
        j1 = min(j0 + FBLOCK, f)
        for j in range(j0, j1):
            sb[j] = 0.0
            sg[j] = 0.0
        if sums:
            for i in range(n):
                drow = &dout[i, 0]
                hrow = &xhat[i, 0]
                for j in range(j0, j1):
                    d = drow[j]
                    sb[j] = sb[j] + d
                    sg[j] = sg[j] + d * hrow[j]
        for j in range(j0, j1):
            if has_db:
                dbeta[j] = <floating>sb[j]
            if has_dg:
                dgamma[j] = <floating>sg[j]
        if has_dx:
            for i in range(n):
                drow = &dout[i, 0]
                hrow = &xhat[i, 0]
                xrow = &dx[i, 0]
                for j in range(j0, j1):
                    k = <double>gamma[j] * <double>invstd[j]
                    if batch_stats:
                        xrow[j] = <floating>(k / dn * (dn * drow[j] - sb[j] - hrow[j] * sg[j]))
                    else:
                        xrow[j] = <floating>(k * drow[j])
    free(buf)
