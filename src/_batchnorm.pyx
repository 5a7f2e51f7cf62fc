"""Batch normalisation over the batch axis of x (N, F), row-major.

Two work decompositions, chosen from the shape only (so results never depend on the thread count):
* wide (F > FBLOCK or N <= RCHUNK): work items are blocks of FBLOCK features; each walks all rows in
  order (inner loop over the block's contiguous features), so every per-feature sum is accumulated
  in double serially over n = 0..N-1, and the block's columns are reused while still in cache;
* narrow (F <= FBLOCK and N > RCHUNK): work items are fixed chunks of RCHUNK rows with per-chunk
  double partial sums, combined in chunk order.
Statistics are two-pass (mean, then sum (x - mean)^2 / N); no E[x^2] - E[x]^2.
"""
from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport sqrt
from libc.stdlib cimport malloc, free

include "_parallel.pxi"

cdef enum:
    FBLOCK = 64           # features per work item (wide shapes)
    RCHUNK = 2048         # rows per work item (narrow shapes)


cdef inline Py_ssize_t _nfb(Py_ssize_t f) noexcept nogil:
    return (f + FBLOCK - 1) // FBLOCK


cdef inline Py_ssize_t _nrc(Py_ssize_t n) noexcept nogil:
    return (n + RCHUNK - 1) // RCHUNK


cdef inline bint _narrow(Py_ssize_t n, Py_ssize_t f) noexcept nogil:
    return f <= FBLOCK and n > RCHUNK


cdef double* _dbuf(Py_ssize_t k) except NULL:
    cdef double* p = <double*>malloc((k if k > 0 else 1) * sizeof(double))
    if p == NULL:
        raise MemoryError()
    return p


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


cdef void _combine(const double* part, Py_ssize_t nrc, Py_ssize_t f, double* out,
                   double n) noexcept nogil:
    """out[j] = (sum over chunks c in order of part[c, j]) / n."""
    cdef Py_ssize_t c, j
    for j in range(f):
        out[j] = 0.0
    for c in range(nrc):
        for j in range(f):
            out[j] = out[j] + part[c * f + j]
    for j in range(f):
        out[j] = out[j] / n


cdef void _rowstats(const floating* x, Py_ssize_t n, Py_ssize_t f, double* mu, double* var,
                    double* part, int nt) noexcept nogil:
    """Narrow shapes: mu, var (length f) from RCHUNK-row partial sums (part: nrc * f doubles)."""
    cdef Py_ssize_t nrc = _nrc(n), c, i, j
    cdef double* pc
    cdef const floating* row
    cdef double d
    for c in prange(nrc, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        pc = part + c * f
        for j in range(f):
            pc[j] = 0.0
        for i in range(c * RCHUNK, min((c + 1) * RCHUNK, n)):
            row = x + i * f
            for j in range(f):
                pc[j] = pc[j] + row[j]
    _combine(part, nrc, f, mu, <double>n)
    for c in prange(nrc, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        pc = part + c * f
        for j in range(f):
            pc[j] = 0.0
        for i in range(c * RCHUNK, min((c + 1) * RCHUNK, n)):
            row = x + i * f
            for j in range(f):
                d = row[j] - mu[j]
                pc[j] = pc[j] + d * d
    _combine(part, nrc, f, var, <double>n)


def batchnorm_stats(const floating[:, ::1] x, floating[::1] mean, floating[::1] var):
    """mean = sum_n x / N, var = sum_n (x - mean)^2 / N per feature (N >= 1; double, two-pass)."""
    cdef Py_ssize_t n = x.shape[0], f = x.shape[1], b, j0, j1, j
    cdef int nt = _threads(n * f)
    cdef double* buf
    if n == 0 or f == 0:
        return
    cdef bint narrow = _narrow(n, f)
    buf = _dbuf(2 * f + (_nrc(n) * f if narrow else 0))
    cdef const floating* xp = &x[0, 0]
    with nogil:
        if narrow:
            _rowstats(xp, n, f, buf, buf + f, buf + 2 * f, nt)
            for j in range(f):
                mean[j] = <floating>buf[j]
                var[j] = <floating>buf[f + j]
        else:
            for b in prange(_nfb(f), schedule="static", num_threads=nt, use_threads_if=nt > 1):
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


cdef inline void _normalise_rows(const floating* x, floating* xhat, floating* out,
                                 const floating* gamma, const floating* beta, const double* mu,
                                 const double* inv, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t f,
                                 Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """xhat = (x - mu) * inv (double, rounded); out = gamma * xhat + beta (dtype); rows [i0, i1),
    features [j0, j1)."""
    cdef Py_ssize_t i, j
    cdef floating xh
    for i in range(i0, i1):
        for j in range(j0, j1):
            xh = <floating>((x[i * f + j] - mu[j]) * inv[j])
            xhat[i * f + j] = xh
            out[i * f + j] = gamma[j] * xh + beta[j]


def batchnorm_forward_train(const floating[:, ::1] x, const floating[::1] gamma,
                            const floating[::1] beta, floating[:, ::1] out, floating[:, ::1] xhat,
                            floating[::1] mean, floating[::1] invstd, floating[::1] running_mean,
                            floating[::1] running_var, double momentum, double eps, bint unbiased):
    """Training batch norm (N >= 2): mean, var = batch stats; invstd = 1/sqrt(var + eps);
    xhat = (x - mean) * invstd; out = gamma * xhat + beta; running_* (if given) updated in place
    with momentum (running var unbiased by N/(N-1) when ``unbiased``)."""
    cdef Py_ssize_t n = x.shape[0], f = x.shape[1], b, c, j, j0, j1
    cdef int nt = _threads(n * f)
    cdef double* buf
    cdef double vfac = (<double>n / <double>(n - 1)) if (unbiased and n > 1) else 1.0
    cdef bint has_rm = running_mean is not None, has_rv = running_var is not None
    if n == 0 or f == 0:
        return
    cdef bint narrow = _narrow(n, f)
    buf = _dbuf(2 * f + (_nrc(n) * f if narrow else 0))
    cdef const floating* xp = &x[0, 0]
    cdef floating* op = &out[0, 0]
    cdef floating* hp = &xhat[0, 0]
    cdef const floating* gp = &gamma[0]
    cdef const floating* bp = &beta[0]
    with nogil:
        if narrow:
            _rowstats(xp, n, f, buf, buf + f, buf + 2 * f, nt)
        for b in prange(1 if narrow else _nfb(f), schedule="static", num_threads=nt,
                        use_threads_if=nt > 1):
            j0 = b * FBLOCK
            j1 = min(j0 + FBLOCK, f)
            if not narrow:
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
            if not narrow:
                _normalise_rows(xp, hp, op, gp, bp, buf, buf + f, 0, n, f, j0, j1)
        if narrow:
            for c in prange(_nrc(n), schedule="static", num_threads=nt, use_threads_if=nt > 1):
                _normalise_rows(xp, hp, op, gp, bp, buf, buf + f, c * RCHUNK,
                                min((c + 1) * RCHUNK, n), f, 0, f)
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


cdef inline void _bwd_sums(const floating* dout, const floating* xhat, Py_ssize_t i0, Py_ssize_t i1,
                           Py_ssize_t f, Py_ssize_t j0, Py_ssize_t j1, double* sb,
                           double* sg) noexcept nogil:
    """sb[j] = sum_i dout[i, j]; sg[j] = sum_i dout[i, j] * xhat[i, j] over rows [i0, i1)."""
    cdef Py_ssize_t i, j
    cdef double d
    for j in range(j0, j1):
        sb[j] = 0.0
        sg[j] = 0.0
    for i in range(i0, i1):
        for j in range(j0, j1):
            d = dout[i * f + j]
            sb[j] = sb[j] + d
            sg[j] = sg[j] + d * xhat[i * f + j]


cdef inline void _bwd_dx(const floating* dout, const floating* xhat, const floating* gamma,
                         const floating* invstd, floating* dx, Py_ssize_t n, Py_ssize_t i0,
                         Py_ssize_t i1, Py_ssize_t f, Py_ssize_t j0, Py_ssize_t j1, const double* sb,
                         const double* sg, bint batch_stats) noexcept nogil:
    """dx = k/N * (N*dout - sb - xhat*sg) (batch stats) or k * dout, k = gamma*invstd (double)."""
    cdef Py_ssize_t i, j
    cdef double k, dn = <double>n
    for i in range(i0, i1):
        for j in range(j0, j1):
            k = <double>gamma[j] * <double>invstd[j]
            if batch_stats:
                dx[i * f + j] = <floating>(k / dn * (dn * dout[i * f + j] - sb[j]
                                                     - xhat[i * f + j] * sg[j]))
            else:
                dx[i * f + j] = <floating>(k * dout[i * f + j])


def batchnorm_backward(const floating[:, ::1] dout, const floating[:, ::1] xhat,
                       const floating[::1] gamma, const floating[::1] invstd, floating[:, ::1] dx,
                       floating[::1] dgamma, floating[::1] dbeta, bint batch_stats):
    """dbeta = sum_n dout; dgamma = sum_n dout * xhat (double); dx = gamma*invstd/N *
    (N*dout - dbeta - xhat*dgamma) with batch statistics, else dx = gamma*invstd*dout."""
    cdef Py_ssize_t n = dout.shape[0], f = dout.shape[1], b, c, j, j0, j1, nrc
    cdef int nt = _threads(n * f)
    cdef bint has_dx = dx is not None, has_dg = dgamma is not None, has_db = dbeta is not None
    cdef bint sums = has_dg or has_db or (has_dx and batch_stats)
    cdef double* buf
    cdef double* sb
    cdef double* sg
    cdef double* part
    if f == 0:
        return
    if n == 0:                                   # empty batch: zero sums, no dx rows
        for j in range(f):
            if has_db:
                dbeta[j] = 0
            if has_dg:
                dgamma[j] = 0
        return
    cdef bint narrow = _narrow(n, f)
    nrc = _nrc(n)
    buf = _dbuf(2 * f + (2 * nrc * f if narrow else 0))
    sb = buf
    sg = buf + f
    part = buf + 2 * f
    cdef const floating* dp = &dout[0, 0]
    cdef const floating* hp = &xhat[0, 0]
    cdef const floating* gp = &gamma[0]
    cdef const floating* ip = &invstd[0]
    cdef floating* xp = &dx[0, 0] if has_dx else NULL
    with nogil:
        if narrow:
            if sums:
                for c in prange(nrc, schedule="static", num_threads=nt, use_threads_if=nt > 1):
                    _bwd_sums(dp, hp, c * RCHUNK, min((c + 1) * RCHUNK, n), f, 0, f,
                              part + c * f, part + (nrc + c) * f)
                _combine(part, nrc, f, sb, 1.0)
                _combine(part + nrc * f, nrc, f, sg, 1.0)
            else:
                for j in range(f):
                    sb[j] = 0.0
                    sg[j] = 0.0
            if has_dx:
                for c in prange(nrc, schedule="static", num_threads=nt, use_threads_if=nt > 1):
                    _bwd_dx(dp, hp, gp, ip, xp, n, c * RCHUNK, min((c + 1) * RCHUNK, n), f, 0, f,
                            sb, sg, batch_stats)
        else:
            for b in prange(_nfb(f), schedule="static", num_threads=nt, use_threads_if=nt > 1):
                j0 = b * FBLOCK
                j1 = min(j0 + FBLOCK, f)
                if sums:
                    _bwd_sums(dp, hp, 0, n, f, j0, j1, sb, sg)
                if has_dx:
                    _bwd_dx(dp, hp, gp, ip, xp, n, 0, n, f, j0, j1, sb, sg, batch_stats)
        for j in range(f):
            if has_db:
                dbeta[j] = <floating>sb[j]
            if has_dg:
                dgamma[j] = <floating>sg[j]
    free(buf)
