"""Row-wise softmax and the fused softmax + cross-entropy loss (parallel over rows).

softmax:   out = exp(x - max x) / sum exp(x - max x)           (sum in double)
backward:  dx = y * (dout - sum_c dout * y)
xent:      probs = softmax(logits); L = mean_n (log sum exp(logits_n - m_n) + m_n - logits[n, t_n])
           (row terms in double, summed in row order: independent of the thread count)
xent back: dlogits = (probs - onehot(t)) * (scale / N)
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, log
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free

from _act cimport _exp

include "_parallel.pxi"


def _softmax(const floating[:, ::1] x, floating[:, ::1] out):
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], r, j
    cdef floating m
    cdef double s
    cdef floating inv
    cdef int nt = _threads(n * c)
    with nogil:
        for r in prange(n, num_threads=nt, use_threads_if=nt > 1, schedule="static"):
            m = x[r, 0]
            for j in range(1, c):
                if x[r, j] > m or x[r, j] != x[r, j]:
                    m = x[r, j]
            s = 0
            for j in range(c):
                out[r, j] = _exp(x[r, j] - m)
                s = s + out[r, j]
            for j in range(c):
                out[r, j] = out[r, j] / <floating>s


def softmax_forward(x, out):
    """out = softmax(x) row-wise."""
    _softmax(x, out)


def _softmax_back(const floating[:, ::1] dout, const floating[:, ::1] y, floating[:, ::1] dx):
    cdef Py_ssize_t n = y.shape[0], c = y.shape[1], r, j
    cdef double s
    cdef floating fs
    cdef int nt = _threads(n * c)
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
    cdef int nt = _threads(n * c)
    cdef double* rowloss = <double*>malloc(max(n, 1) * sizeof(double))
    if rowloss == NULL:
        raise MemoryError()
    try:
        with nogil:
            for r in prange(n, num_threads=nt, use_threads_if=nt > 1, schedule="static"):
                m = logits[r, 0]
                for j in range(1, c):
                    if logits[r, j] > m or logits[r, j] != logits[r, j]:
                        m = logits[r, j]
                s = 0
                for j in range(c):
                    s = s + exp(<double>logits[r, j] - m)
                for j in range(c):
                    probs[r, j] = <floating>(exp(<double>logits[r, j] - m) / s)
                rowloss[r] = log(s) + m - <double>logits[r, labels[r]]
            for r in range(n):
                total = total + rowloss[r]
    finally:
        free(rowloss)
    return total / n


def softmax_xent_forward(logits, labels, probs):
    """probs = softmax(logits); returns the batch-mean cross-entropy (float)."""
    return _xent(logits, labels, probs)


def _xent_back(const floating[:, ::1] probs, const int64_t[::1] labels, floating[:, ::1] dl,
               double scale):
    cdef Py_ssize_t n = probs.shape[0], c = probs.shape[1], r, j
    cdef floating k = <floating>(scale / n)
    cdef int nt = _threads(n * c)
    with nogil:
        for r in prange(n, num_threads=nt, use_threads_if=nt > 1, schedule="static"):
            for j in range(c):
                dl[r, j] = probs[r, j] * k
            dl[r, labels[r]] = (probs[r, labels[r]] - 1) * k


def softmax_xent_backward(probs, labels, dlogits, scale):
    """dlogits = (probs - onehot(labels)) * (scale / N)."""
    _xent_back(probs, labels, dlogits, scale)
