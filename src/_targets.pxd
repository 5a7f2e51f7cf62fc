# Checks of the losses' sample weights and value targets, shared by _softmax.pyx, _losses.pyx and
# _program.pyx (the messages are those of dlfast.kernels).
from cython cimport floating
from libc.math cimport fabs

cdef enum:
    _NO_ROW = -1

cdef extern from "<float.h>":
    double DBL_MAX


cdef inline Py_ssize_t bad_weight(const double* w, Py_ssize_t n) noexcept nogil:
    """The first row whose weight is not finite and >= 0, or -1."""
    cdef Py_ssize_t r
    for r in range(n):
        if not (w[r] >= 0 and w[r] <= DBL_MAX):
            return r
    return _NO_ROW


cdef inline double weight_sum(const double* w, Py_ssize_t n) noexcept nogil:
    """sum_i w_i in row order."""
    cdef Py_ssize_t r
    cdef double s = 0
    for r in range(n):
        s = s + w[r]
    return s


cdef inline int check_weights(const double* w, Py_ssize_t n) except -1:
    """ValueError unless every weight is finite and >= 0, not all 0, with a finite sum."""
    cdef Py_ssize_t bad
    cdef double s
    with nogil:
        bad = bad_weight(w, n)
        s = weight_sum(w, n) if bad < 0 else 0.0
    if bad >= 0:
        raise ValueError(f"w (sample weights) must be finite and >= 0, got {w[bad]} in row {bad}")
    if not s > 0:
        raise ValueError("w (sample weights) must not all be zero")
    if not s <= DBL_MAX:
        raise ValueError("w (sample weights) must have a finite sum")
    return 0


cdef inline bint bad_value(double v, bint unit) noexcept nogil:
    """v is not a valid target: not finite, or (unit) outside [0, 1]."""
    if unit:
        return not (v >= 0 and v <= 1)
    return not (fabs(v) <= DBL_MAX)


cdef inline Py_ssize_t bad_target(const floating* t, Py_ssize_t n, Py_ssize_t m,
                                  bint unit) noexcept nogil:
    """The first row of t (n, m) holding an invalid target (bad_value), or -1."""
    cdef Py_ssize_t r, j
    for r in range(n):
        for j in range(m):
            if bad_value(t[r * m + j], unit):
                return r
    return _NO_ROW
