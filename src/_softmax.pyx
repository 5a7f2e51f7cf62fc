"""Row-wise softmax and the fused softmax + cross-entropy loss (parallel over rows).

softmax:   out = exp(x - max x) / sum exp(x - max x)           (sum in double)
backward:  dx = y * (dout - sum_c dout * y)
xent:      probs = softmax(logits); L = mean_n (log sum exp(logits_n - m_n) + m_n - logits[n, t_n])
           (row terms in double, summed in row order: independent of the thread count)
xent back: dlogits = (probs - onehot(t)) * (scale / N)
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport log
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free

from _act cimport exp_shift_sum, exp_shift_sum_d, row_max, CHEAP

include "_parallel.pxi"


def _softmax(const floating[:, ::1] x, floating[:, ::1] out):
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], r, j
    cdef floating m, fs
    cdef int nt = _threads(n * c)
    with nogil:
        for r in prange(n, num_threads=nt, use_threads_if=nt > 1, schedule="static"):
            m = row_max(&x[r, 0], c)
            fs = <floating>exp_shift_sum(&out[r, 0], &x[r, 0], c, m)
            for j in range(c):
                out[r, j] = out[r, j] / fs


def softmax_forward(x, out):
    """out = softmax(x) row-wise."""
    _softmax(x, out)


def _softmax_back(const floating[:, ::1] dout, const floating[:, ::1] y, floating[:, ::1] dx):
    cdef Py_ssize_t n = y.shape[0], c = y.shape[1], r, j
    cdef double s
    cdef floating fs
    cdef int nt = _threads(n * c // CHEAP)
    with nogil:
        for r in prange(n, num_threads=nt, use_threads_if=nt > 1, schedule="static"):
            s = 0
            for j in range(c):
                s = s + dout[r, j] * y[r, j]
            fs = <floating>s
            for j in range(c):
                dx[r, j] = y[r, j] * (dout[r, j] - fs)


def softmax_backward(dout, y, dx):
    """dx = y * (dout - sum(dout * y)) row-wise."""
    _softmax_back(dout, y, dx)


def _xent(const floating[:, ::1] logits, const int64_t[::1] labels, floating[:, ::1] probs):
    cdef Py_ssize_t n = logits.shape[0], c = logits.shape[1], r, j
    cdef double m, s, total = 0
    cdef double* e
    cdef int nt = _threads(n * c)
    # per row: its loss term; per thread: a row of exp(logit - max) in double
    cdef double* rowloss = <double*>malloc(max(n, 1) * sizeof(double))
    cdef double* scratch = <double*>malloc(<size_t>max(nt, 1) * max(c, 1) * sizeof(double))
    if rowloss == NULL or scratch == NULL:
        free(rowloss)
        free(scratch)
        raise MemoryError()
    try:
        with nogil:
            for r in prange(n, num_threads=nt, use_threads_if=nt > 1, schedule="static"):
                e = scratch + <Py_ssize_t>threadid() * c
                m = row_max(&logits[r, 0], c)
                s = exp_shift_sum_d(e, &logits[r, 0], c, m)
                for j in range(c):
                    probs[r, j] = <floating>(e[j] / s)
                rowloss[r] = log(s) + m - <double>logits[r, labels[r]]
            for r in range(n):
                total = total + rowloss[r]
    finally:
        free(rowloss)
        free(scratch)
    return total / n


def softmax_xent_forward(logits, labels, probs):
    """probs = softmax(logits); returns the batch-mean cross-entropy (float)."""
    return _xent(logits, labels, probs)


def _xent_back(const floating[:, ::1] probs, const int64_t[::1] labels, floating[:, ::1] dl,
               double scale):
    cdef Py_ssize_t n = probs.shape[0], c = probs.shape[1], r, j
    cdef floating k = <floating>(scale / n)
    cdef int nt = _threads(n * c // CHEAP)
    with nogil:
        for r in prange(n, num_threads=nt, use_threads_if=nt > 1, schedule="static"):
            for j in range(c):
                dl[r, j] = probs[r, j] * k
            dl[r, labels[r]] = (probs[r, labels[r]] - 1) * k


def softmax_xent_backward(probs, labels, dlogits, scale):
    """dlogits = (probs - onehot(labels)) * (scale / N)."""
    _xent_back(probs, labels, dlogits, scale)
