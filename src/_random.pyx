"""Counter-based random numbers: dropout masks, uniform and Bernoulli samples, dropout apply.

u_i = (mix64(mix64(seed) + (counter + i + 1) * 0x9E3779B97F4A7C15) >> 11) * 2^-53 (uint64 wrap-around),
mix64 = SplitMix64's finaliser; bit-identical to ``numpy_kernels.uniform01`` for any thread count.
"""
from cython.parallel cimport prange
from libc.stdint cimport uint64_t, uint8_t
from cython cimport floating

include "_parallel.pxi"

cdef enum:
    BLOCK = 4096          # elements per parallel work item


cdef inline uint64_t _mix64(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline double _u01(uint64_t key, uint64_t idx) noexcept nogil:
    """u for absolute (counter + i + 1) = idx."""
    return <double>(_mix64(key + idx * <uint64_t>0x9E3779B97F4A7C15ULL) >> 11) * 1.1102230246251565e-16


def _mask(uint8_t[::1] m, double p, uint64_t key, uint64_t base):
    cdef Py_ssize_t n = m.shape[0], nb = (n + BLOCK - 1) // BLOCK, b, i, hi
    cdef int nt = _threads(n)
    for b in prange(nb, nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        hi = min((b + 1) * BLOCK, n)
        for i in range(b * BLOCK, hi):
            m[i] = _u01(key, base + <uint64_t>i) >= p


def dropout_mask(mask, p, seed, counter):
    """mask[i] = u_i >= p (uint8, any shape)."""
    cdef uint64_t s = seed, c = counter
    _mask(mask.reshape(-1), <double>p, _mix64(s), c + 1)


def _uniform(floating[::1] o, double low, double high, uint64_t key, uint64_t base):
    cdef Py_ssize_t n = o.shape[0], nb = (n + BLOCK - 1) // BLOCK, b, i, hi
    cdef double span = high - low
    cdef int nt = _threads(n)
    for b in prange(nb, nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        hi = min((b + 1) * BLOCK, n)
        for i in range(b * BLOCK, hi):
            o[i] = <floating>(low + span * _u01(key, base + <uint64_t>i))


def random_uniform(out, low, high, seed, counter):
    """out[i] = low + (high - low) * u_i, computed in float64 and rounded to out's dtype."""
    cdef uint64_t s = seed, c = counter
    _uniform(out.reshape(-1), <double>low, <double>high, _mix64(s), c + 1)


def _bernoulli(const floating[::1] pr, floating[::1] o, uint64_t key, uint64_t base):
    cdef Py_ssize_t n = o.shape[0], nb = (n + BLOCK - 1) // BLOCK, b, i, hi
    cdef int nt = _threads(n)
    for b in prange(nb, nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        hi = min((b + 1) * BLOCK, n)
        for i in range(b * BLOCK, hi):
            o[i] = 1 if _u01(key, base + <uint64_t>i) < <double>pr[i] else 0


def bernoulli_sample(probs, out, seed, counter):
    """out[i] = 1 if u_i < probs[i] else 0 (comparison in float64)."""
    cdef uint64_t s = seed, c = counter
    _bernoulli(probs.reshape(-1), out.reshape(-1), _mix64(s), c + 1)


def _apply_mask(const floating[::1] x, const uint8_t[::1] m, floating[::1] o, double scale_):
    cdef Py_ssize_t n = o.shape[0], nb = (n + BLOCK - 1) // BLOCK, b, i, hi
    cdef floating scale = <floating>scale_
    cdef int nt = _threads(n)
    for b in prange(nb, nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        hi = min((b + 1) * BLOCK, n)
        for i in range(b * BLOCK, hi):
            o[i] = (x[i] * <floating>m[i]) * scale


def _apply_scale(const floating[::1] x, floating[::1] o, double scale_):
    cdef Py_ssize_t n = o.shape[0], nb = (n + BLOCK - 1) // BLOCK, b, i, hi
    cdef floating scale = <floating>scale_
    cdef int nt = _threads(n)
    for b in prange(nb, nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        hi = min((b + 1) * BLOCK, n)
        for i in range(b * BLOCK, hi):
            o[i] = x[i] * scale


def dropout_apply(x, mask, scale, out):
    """out = (x * mask) * scale in x's dtype (mask None: out = x * scale)."""
    if mask is None:
        _apply_scale(x.reshape(-1), out.reshape(-1), <double>scale)
    else:
        _apply_mask(x.reshape(-1), mask.reshape(-1), out.reshape(-1), <double>scale)
