"""Counter-based random numbers: dropout masks, uniform and Bernoulli samples, dropout apply, and the
dropout and RReLU ops.

uniform, bernoulli (53 bits per element; bit-identical to ``numpy_kernels.uniform01``):
    u_i = (mix64(mix64(seed) + j * 0x9E3779B97F4A7C15) >> 11) * 2^-53,  j = counter + i + 1
dropout masks (32 bits per element in 32-bit lanes; bit-identical to ``numpy_kernels.bits32``):
    K = mix64(mix64(seed) + (j >> 32) * 0x9E3779B97F4A7C15)
    m_i = [hash32(j mod 2^32, K) >= ceil(p * 2^32)]
(uint64 wrap-around; mix64 = SplitMix64's finaliser; hash32 below). Every element is independent:
the loops are C (below), vectorised and cloned per instruction set; any thread count, same bits.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport ceil
from libc.stdint cimport uint64_t, uint32_t, uint8_t
from libc.string cimport memset

from _op cimport dlf_op
from _act cimport buf_get, buf_release, DT_F32, DT_U8, DT_FLOAT

include "_parallel.pxi"

cdef enum:
    BLOCK = 4096          # elements per parallel work item


cdef extern from *:
    """
    #include <stdint.h>
    #include "dlfast_clones.h"   /* DLF_CLONES */
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("fp-contract=off")      /* low + span * u: no FMA, as NumPy */
    #endif
    static inline uint64_t dlf_mix64(uint64_t z) {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    /* k_i = u_i * 2^53 = mix64(key + (base + i) * golden) >> 11, an integer < 2^53 */
    #define DLF_K(i) ((int64_t)(dlf_mix64(key + (base + (uint64_t)(i)) * 0x9E3779B97F4A7C15ULL) >> 11))
    #define DLF_U(i) ((double)DLF_K(i) * 1.1102230246251565e-16)

    /* hash32(l, K) (K = k1 * 2^32 + k0): three multiply-xorshift rounds (the constants of
       Wellons' "triple32"), k0 added before and k1 xored after the first: eight lanes per AVX2
       instruction, where mix64's 64-bit products have no vector form before AVX-512. */
    static inline uint32_t dlf_h32(uint32_t h, uint32_t k0, uint32_t k1) {
        h += k0;
        h ^= h >> 17; h *= 0xED5AD4BBu; h ^= k1;
        h ^= h >> 11; h *= 0xAC4C1B51u;
        h ^= h >> 15; h *= 0x31848BABu;
        return h ^ (h >> 14);
    }
    /* m[t] = hash32(l + t, K) >= thr, t in [0, len), len <= 512: a 32-bit induction (a long
       one costs a 64-to-32-bit narrowing per vector) */
    static inline void dlf_mask_chunk(uint8_t* m, int len, uint32_t l, uint32_t k0, uint32_t k1,
                                      uint32_t thr) {
        for (int t = 0; t < len; t++) m[t] = dlf_h32(l + (uint32_t)t, k0, k1) >= thr;
    }
    /* m[i] = hash32(l0 + i, K) >= thr for i in [i0, i1) (the caller keeps j >> 32 fixed there) */
    DLF_CLONES static void dlf_mask32(uint8_t* m, long i0, long i1, uint32_t l0, uint32_t k0,
                                       uint32_t k1, uint32_t thr) {
        for (long c = i0; c < i1; c += 512)
            dlf_mask_chunk(m + c, (int)(c + 512 < i1 ? 512 : i1 - c), l0 + (uint32_t)c, k0, k1,
                           thr);
    }
    #define DLF_RANDOM_ROWS(SUF, T)                                                            \\
    DLF_CLONES static void dlf_uniform##SUF(T* o, long i0, long i1, uint64_t key, uint64_t base, \\
                                             double low, double span) {                       \\
        for (long i = i0; i < i1; i++) o[i] = (T)(low + span * DLF_U(i));                      \\
    }                                                                                          \\
    DLF_CLONES static void dlf_bernoulli##SUF(T* o, const T* pr, long i0, long i1,            \\
                                               uint64_t key, uint64_t base) {                 \\
        for (long i = i0; i < i1; i++) o[i] = DLF_U(i) < (double)pr[i] ? 1 : 0;                \\
    }                                                                                          \\
    DLF_CLONES static void dlf_apply##SUF(T* o, const T* x, const uint8_t* m, long i0, long i1, \\
                                           T scale) {                                         \\
        if (m == NULL) for (long i = i0; i < i1; i++) o[i] = x[i] * scale;                     \\
        else for (long i = i0; i < i1; i++) o[i] = (x[i] * (T)m[i]) * scale;                   \\
    }                                                                                          \\
    /* dlf_mask32's mask, then o = (x * m) * scale, 512 elements at a time (in L1) */          \\
    DLF_CLONES static void dlf_drop##SUF(T* o, const T* x, uint8_t* m, long i0, long i1,      \\
                                          uint32_t l0, uint32_t k0, uint32_t k1, uint32_t thr, \\
                                          T scale) {                                          \\
        for (long c = i0; c < i1; c += 512) {                                                  \\
            long e = c + 512 < i1 ? c + 512 : i1;                                              \\
            dlf_mask_chunk(m + c, (int)(e - c), l0 + (uint32_t)c, k0, k1, thr);               \\
            for (long i = c; i < e; i++) o[i] = (x[i] * (T)m[i]) * scale;                      \\
        }                                                                                      \\
    }
    DLF_RANDOM_ROWS(f, float)
    DLF_RANDOM_ROWS(d, double)
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    void dlf_mask32(uint8_t*, long, long, uint32_t, uint32_t, uint32_t, uint32_t) noexcept nogil
    void dlf_dropf(float*, const float*, uint8_t*, long, long, uint32_t, uint32_t, uint32_t,
                   uint32_t, float) noexcept nogil
    void dlf_dropd(double*, const double*, uint8_t*, long, long, uint32_t, uint32_t, uint32_t,
                   uint32_t, double) noexcept nogil
    void dlf_uniformf(float*, long, long, uint64_t, uint64_t, double, double) noexcept nogil
    void dlf_uniformd(double*, long, long, uint64_t, uint64_t, double, double) noexcept nogil
    void dlf_bernoullif(float*, const float*, long, long, uint64_t, uint64_t) noexcept nogil
    void dlf_bernoullid(double*, const double*, long, long, uint64_t, uint64_t) noexcept nogil
    void dlf_applyf(float*, const float*, const uint8_t*, long, long, float) noexcept nogil
    void dlf_applyd(double*, const double*, const uint8_t*, long, long, double) noexcept nogil


cdef inline uint64_t _mix64(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline uint64_t _threshold32(double p) noexcept nogil:
    """ceil(p * 2^32) clipped to [0, 2^32]: m = hash32 >= it (2^32: nothing passes; NaN too)."""
    cdef double t = ceil(p * 4294967296.0)
    if t <= 0:
        return 0
    if not t < 4294967296.0:
        return (<uint64_t>1) << 32
    return <uint64_t>t


cdef void _drop_range(uint8_t* m, void* o, const void* x, Py_ssize_t lo, Py_ssize_t hi, int dt,
                      uint64_t key, uint64_t base, uint64_t thr, double scale) noexcept nogil:
    """Mask elements [lo, hi) of the dropout stream (o NULL), or mask and o = (x * m) * scale,
    in runs of fixed j >> 32 (j = base + i)."""
    cdef uint64_t j, k, run, two32 = (<uint64_t>1) << 32
    cdef Py_ssize_t end
    cdef uint32_t l0 = <uint32_t>base
    while lo < hi:
        j = base + <uint64_t>lo
        run = two32 - (j & (two32 - 1))         # elements before j mod 2^32 wraps
        end = hi if <uint64_t>(hi - lo) <= run else lo + <Py_ssize_t>run
        if thr >= two32:        # nothing passes: m = 0, o = (x * 0) * scale (NaN stays)
            memset(m + lo, 0, end - lo)
            if o != NULL:
                _apply_range(o, x, m, lo, end, dt, scale)
        else:
            k = _mix64(key + (j >> 32) * <uint64_t>0x9E3779B97F4A7C15ULL)
            if o == NULL:
                dlf_mask32(m, lo, end, l0, <uint32_t>k, <uint32_t>(k >> 32), <uint32_t>thr)
            elif dt == DT_F32:
                dlf_dropf(<float*>o, <const float*>x, m, lo, end, l0, <uint32_t>k,
                          <uint32_t>(k >> 32), <uint32_t>thr, <float>scale)
            else:
                dlf_dropd(<double*>o, <const double*>x, m, lo, end, l0, <uint32_t>k,
                          <uint32_t>(k >> 32), <uint32_t>thr, scale)
        lo = end


cdef void _drop_items(uint8_t* m, void* o, const void* x, Py_ssize_t n, int dt, uint64_t key,
                      uint64_t base, uint64_t thr, double scale) noexcept nogil:
    """_drop_range over [0, n): one call on one thread, else fixed BLOCKs shared by the
    threads (o NULL: the mask alone, 1 byte per element, so 4 BLOCKs per item)."""
    cdef int nt = _threads(n if o != NULL else n // 4)
    cdef Py_ssize_t b, lo, step = BLOCK if o != NULL else 4 * BLOCK
    if nt == 1:
        _drop_range(m, o, x, 0, n, dt, key, base, thr, scale)
        return
    for b in prange((n + step - 1) // step, schedule="static", num_threads=nt):
        lo = b * step
        _drop_range(m, o, x, lo, min(lo + step, n), dt, key, base, thr, scale)


cdef inline Py_ssize_t _nblocks(Py_ssize_t n) noexcept nogil:
    return (n + BLOCK - 1) // BLOCK


cdef void _rand_items(int what, void* o, const void* pr, Py_ssize_t n, int dt, uint64_t key,
                      uint64_t base, double low, double span) noexcept nogil:
    """Elements [0, n) of a draw (what: 1 uniform, 2 bernoulli): one C call on one thread, else
    fixed BLOCKs shared by the threads."""
    cdef int nt = _threads(n)
    cdef Py_ssize_t b, lo
    if nt == 1:
        _rand_range(what, o, pr, 0, n, dt, key, base, low, span)
        return
    for b in prange(_nblocks(n), schedule="static", num_threads=nt):
        lo = b * BLOCK
        _rand_range(what, o, pr, lo, min(lo + BLOCK, n), dt, key, base, low, span)


cdef inline void _rand_range(int what, void* o, const void* pr, Py_ssize_t lo, Py_ssize_t hi,
                             int dt, uint64_t key, uint64_t base, double low,
                             double span) noexcept nogil:
    if what == 1:
        if dt == DT_F32:
            dlf_uniformf(<float*>o, lo, hi, key, base, low, span)
        else:
            dlf_uniformd(<double*>o, lo, hi, key, base, low, span)
    elif dt == DT_F32:
        dlf_bernoullif(<float*>o, <const float*>pr, lo, hi, key, base)
    else:
        dlf_bernoullid(<double*>o, <const double*>pr, lo, hi, key, base)


def dropout_mask(mask, p, seed, counter):
    """mask[i] = hash32(j mod 2^32, K) >= ceil(p 2^32) (uint8, any shape; the module's doc)."""
    cdef uint64_t key = _mix64(<uint64_t>seed), base = <uint64_t>counter + 1
    cdef uint64_t thr = _threshold32(<double>p)
    cdef Py_buffer v[1]
    memset(v, 0, sizeof(v))
    try:
        buf_get(mask, &v[0], DT_U8, -1, True)
        with nogil:
            _drop_items(<uint8_t*>v[0].buf, NULL, NULL, v[0].len, DT_U8, key, base, thr, 0.0)
    finally:
        buf_release(v, 1)


def random_uniform(out, low, high, seed, counter):
    """out[i] = low + (high - low) * u_i, computed in float64 and rounded to out's dtype."""
    cdef uint64_t key = _mix64(<uint64_t>seed), base = <uint64_t>counter + 1
    cdef double lo = low, span = <double>high - lo
    cdef Py_buffer v[1]
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = buf_get(out, &v[0], DT_FLOAT, -1, True)
        with nogil:
            _rand_items(1, v[0].buf, NULL, v[0].len // v[0].itemsize, dt, key, base, lo, span)
    finally:
        buf_release(v, 1)


def bernoulli_sample(probs, out, seed, counter):
    """out[i] = 1 if u_i < probs[i] else 0 (comparison in float64)."""
    cdef uint64_t key = _mix64(<uint64_t>seed), base = <uint64_t>counter + 1
    cdef Py_buffer v[2]
    cdef Py_ssize_t n
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = buf_get(out, &v[0], DT_FLOAT, -1, True)
        n = v[0].len // v[0].itemsize
        buf_get(probs, &v[1], dt, n, False)
        with nogil:
            _rand_items(2, v[0].buf, v[1].buf, n, dt, key, base, 0.0, 0.0)
    finally:
        buf_release(v, 2)


def dropout_apply(x, mask, scale, out):
    """out = (x * mask) * scale in x's dtype (mask None: out = x * scale)."""
    cdef double s = scale
    cdef Py_buffer v[3]
    cdef Py_ssize_t n
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = buf_get(x, &v[0], DT_FLOAT, -1, False)
        n = v[0].len // v[0].itemsize
        buf_get(mask, &v[1], DT_U8, n, False)
        buf_get(out, &v[2], dt, n, True)
        with nogil:
            _apply(v[2].buf, v[0].buf, <const uint8_t*>v[1].buf, n, dt, s)
    finally:
        buf_release(v, 3)


cdef void _apply(void* o, const void* x, const uint8_t* m, Py_ssize_t n, int dt,
                 double scale) noexcept nogil:
    """o = (x * m) * scale (m NULL: x * scale): one C call on one thread, else fixed BLOCKs."""
    cdef int nt = _threads(n)
    cdef Py_ssize_t b, lo
    if nt == 1:
        _apply_range(o, x, m, 0, n, dt, scale)
        return
    for b in prange(_nblocks(n), schedule="static", num_threads=nt):
        lo = b * BLOCK
        _apply_range(o, x, m, lo, min(lo + BLOCK, n), dt, scale)


cdef inline void _apply_range(void* o, const void* x, const uint8_t* m, Py_ssize_t lo,
                              Py_ssize_t hi, int dt, double scale) noexcept nogil:
    if dt == DT_F32:
        dlf_applyf(<float*>o, <const float*>x, m, lo, hi, <float>scale)
    else:
        dlf_applyd(<double*>o, <const double*>x, m, lo, hi, scale)


# ---------------------------------------------------------------------------- op (dlfast.kernels.OPS)
ctypedef struct _DropoutC:
    dlf_op op           # first: the program sees a dlf_op*
    uint8_t* mask
    Py_ssize_t n
    uint64_t key, base
    uint64_t thr
    int dt
    double scale


cdef int _drop_op_fwd(dlf_op* p, const void* x) noexcept nogil:
    cdef _DropoutC* s = <_DropoutC*>p
    _drop_items(s.mask, s.op.out, x, s.n, s.dt, s.key, s.base, s.thr, s.scale)
    return 0


cdef int _drop_op_bwd(dlf_op* p, const void* x, const void* dout) noexcept nogil:
    cdef _DropoutC* s = <_DropoutC*>p
    if s.op.dx != NULL:
        _apply(s.op.dx, dout, s.mask, s.n, s.dt, s.scale)
    return 0


cdef class DropoutOp:
    """``dropout_mask(mask, p, seed, counter)`` then ``dropout_apply(x, mask, scale, out)``, and
    ``dropout_apply(dout, mask, scale, dx)`` (dx None: no backward), of fixed arrays: an op of a
    training step (dlfast_op.h); ``set_counter`` before each forward. The same checks as the
    kernels, once; ``address()`` is the ``dlf_op*``."""
    cdef _DropoutC c
    cdef Py_buffer v[3]

    def __cinit__(self, out, mask, dx, p, seed, scale):
        memset(self.v, 0, sizeof(self.v))
        memset(&self.c, 0, sizeof(self.c))
        self.c.dt = buf_get(out, &self.v[0], DT_FLOAT, -1, True)
        self.c.n = self.v[0].len // self.v[0].itemsize
        buf_get(mask, &self.v[1], DT_U8, self.c.n, True)
        buf_get(dx, &self.v[2], self.c.dt, self.c.n, True)
        self.c.key = _mix64(<uint64_t>seed)
        self.c.thr = _threshold32(<double>p)
        self.c.scale = scale
        self.c.op.out, self.c.op.dx = self.v[0].buf, self.v[2].buf
        self.c.mask = <uint8_t*>self.v[1].buf
        self.c.op.fwd = _drop_op_fwd
        self.c.op.bwd = _drop_op_bwd

    def set_counter(self, counter):
        """The next forward draws the mask of ``counter`` (as ``dropout_mask``)."""
        self.c.base = <uint64_t>counter + 1

    def __dealloc__(self):
        buf_release(self.v, 3)

    def address(self):
        return <size_t>&self.c.op


ctypedef struct _RReLUC:
    dlf_op op           # first: the program sees a dlf_op*
    void* slopes
    Py_ssize_t n
    uint64_t key, base
    double lower, span
    int dt


cdef inline void _leaky(floating* y, const floating* x, const floating* s, Py_ssize_t lo,
                        Py_ssize_t hi) noexcept nogil:
    """y = x if x > 0 else s * x (as prelu_forward with per-element slopes)."""
    cdef Py_ssize_t i
    cdef floating v
    for i in range(lo, hi):
        v = x[i]
        y[i] = v if v > 0 else s[i] * v


cdef inline void _leaky_dx(floating* dx, const floating* g, const floating* x,
                           const floating* s, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """dx = g if x > 0 else s * g (as prelu_backward with per-element slopes)."""
    cdef Py_ssize_t i
    for i in range(lo, hi):
        dx[i] = g[i] if x[i] > 0 else s[i] * g[i]


cdef void _leaky_all(floating* y, const floating* x, const floating* s, const floating* g,
                     Py_ssize_t n) noexcept nogil:
    """g NULL: y = leaky(x); else y = leaky_dx(g), in fixed blocks."""
    cdef int nt = _threads(n)
    cdef Py_ssize_t b, lo
    for b in prange(_nblocks(n), schedule="static", num_threads=nt, use_threads_if=nt > 1):
        lo = b * BLOCK
        if g == NULL:
            _leaky(y, x, s, lo, min(lo + BLOCK, n))
        else:
            _leaky_dx(y, g, x, s, lo, min(lo + BLOCK, n))


cdef int _rrelu_op_fwd(dlf_op* p, const void* x) noexcept nogil:
    cdef _RReLUC* s = <_RReLUC*>p
    _rand_items(1, s.slopes, NULL, s.n, s.dt, s.key, s.base, s.lower, s.span)
    if s.dt == DT_F32:
        _leaky_all(<float*>s.op.out, <const float*>x, <const float*>s.slopes, NULL, s.n)
    else:
        _leaky_all(<double*>s.op.out, <const double*>x, <const double*>s.slopes, NULL, s.n)
    return 0


cdef int _rrelu_op_bwd(dlf_op* p, const void* x, const void* dout) noexcept nogil:
    cdef _RReLUC* s = <_RReLUC*>p
    if s.op.dx == NULL:
        return 0
    if s.dt == DT_F32:
        _leaky_all(<float*>s.op.dx, <const float*>x, <const float*>s.slopes,
                   <const float*>dout, s.n)
    else:
        _leaky_all(<double*>s.op.dx, <const double*>x, <const double*>s.slopes,
                   <const double*>dout, s.n)
    return 0


cdef class RReLUOp:
    """The ``rrelu`` op (dlfast.kernels.OPS): ``random_uniform(slopes, lower, upper, seed,
    counter)``, ``prelu_forward(x, slopes, out)``; ``prelu_backward(dout, x, slopes, dx, None)``
    (dx None: no backward) of fixed arrays; ``set_counter`` before each forward."""
    cdef _RReLUC c
    cdef Py_buffer v[3]

    def __cinit__(self, slopes, out, dx, lower, upper, seed):
        memset(self.v, 0, sizeof(self.v))
        memset(&self.c, 0, sizeof(self.c))
        self.c.dt = buf_get(out, &self.v[0], DT_FLOAT, -1, True)
        self.c.n = self.v[0].len // self.v[0].itemsize
        buf_get(slopes, &self.v[1], self.c.dt, self.c.n, True)
        buf_get(dx, &self.v[2], self.c.dt, self.c.n, True)
        self.c.key = _mix64(<uint64_t>seed)
        self.c.lower = lower
        self.c.span = <double>upper - self.c.lower
        self.c.op.out, self.c.slopes, self.c.op.dx = self.v[0].buf, self.v[1].buf, self.v[2].buf
        self.c.op.fwd = _rrelu_op_fwd
        self.c.op.bwd = _rrelu_op_bwd

    def set_counter(self, counter):
        """The next forward draws the slopes of ``counter`` (as ``random_uniform``)."""
        self.c.base = <uint64_t>counter + 1

    def __dealloc__(self):
        buf_release(self.v, 3)

    def address(self):
        return <size_t>&self.c.op
