# Activations shared by _dense.pyx and _activations.pyx: codes, values and derivatives.
# The derivative is written from the output y = act(z) (see dlfast.kernels for the table).
# NaN propagates as in the NumPy backend (no branch turns a NaN into a number).
# Also: buf_get, array arguments through the buffer protocol (every module; _optim's and _rbm's
# older kernels still take typed memoryviews);
# line_doubles / aligned_doubles, work buffers that threads write without sharing cache lines.
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS,
                             PyBUF_FORMAT, PyBUF_WRITABLE)
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset

cdef enum:
    # Work estimates for _threads(work): a memory-bound elementwise pass (copy, compare, multiply)
    # counts 1/CHEAP of an element needing exp/tanh, so small cheap passes stay on one thread
    # (below 2 * 32768 elements). Was 8: in a training step at batch 1000 (100 features) the
    # ReLU and dropout passes then ran on one core while the batch-norm output they read sat
    # half in the other core's cache; with 2, per step at 2 threads (step_breakdown.py, two A/B
    # rounds): ReLU forward ~105 -> ~47 us, backward ~140 -> ~66 us, dropout backward ~74 -> ~60 us.
    CHEAP = 2
    ACT_BLOCK = 4096    # elements per work item of the elementwise activation loops


cdef enum:
    ACT_IDENTITY = 0
    ACT_RELU = 1
    ACT_LEAKY = 2
    ACT_ELU = 3
    ACT_SIGMOID = 4
    ACT_TANH = 5


cdef extern from *:
    """
    /* Branch-free exp / expm1 / tanh (Cephes polynomials, Cody-Waite reduction), written so that
       loops over them vectorise at -O3 (glibc's scalar calls do not): max error about 2 ulp.
       Special values as libm: NaN -> NaN, exp(+inf) = inf, exp(-inf) = 0, overflow -> inf,
       gradual underflow to 0; tanh(+-inf) = +-1. */
    #include <stdint.h>
    #include <math.h>
    typedef union { float f; int32_t i; } dlf_u32;
    typedef union { double d; int64_t i; } dlf_u64;

    static inline float dlf_pow2f(float fn) {       /* 2^fn, fn an integer in [-127, 127] */
        dlf_u32 u; u.f = fn + 12582912.0f; u.i = (u.i - 0x4B400000 + 127) << 23; return u.f;
    }
    static inline float dlf_expf(float x) {
        float xc = x > -104.0f ? x : -104.0f;          /* NaN -> -104 (fixed up at the end) */
        xc = xc < 89.0f ? xc : 89.0f;
        float fn = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;   /* round(x/ln2) */
        float r = xc - fn * 0.693359375f;
        r = r - fn * -2.12194440e-4f;
        float z = r * r;
        float y = (((((1.9875691500E-4f * r + 1.3981999507E-3f) * r + 8.3334519073E-3f) * r
                     + 4.1665795894E-2f) * r + 1.6666665459E-1f) * r + 5.0000001201E-1f) * z + r + 1.0f;
        float f1 = (fn * 0.5f + 12582912.0f) - 12582912.0f;
        float res = y * dlf_pow2f(f1) * dlf_pow2f(fn - f1);
        res = x > 88.72283935546875f ? INFINITY : res;
        res = x < -103.972084f ? 0.0f : res;
        return x != x ? x : res;
    }
    static inline double dlf_pow2(double fn) {     /* 2^fn, fn an integer in [-1022, 1023] */
        dlf_u64 u; u.d = fn + 6755399441055744.0; u.i = (u.i - 0x4338000000000000LL + 1023) << 52;
        return u.d;
    }
    static inline double dlf_exp(double x) {
        double xc = x > -746.0 ? x : -746.0;
        xc = xc < 710.0 ? xc : 710.0;
        double fn = (xc * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0;
        double r = xc - fn * 6.93145751953125E-1;
        r = r - fn * 1.42860682030941723212E-6;
        double xx = r * r;
        double px = r * ((1.26177193074810590878E-4 * xx + 3.02994407707441961300E-2) * xx
                         + 9.99999999999999999910E-1);
        double qx = ((3.00198505138664455042E-6 * xx + 2.52448340349684104192E-3) * xx
                     + 2.27265548208155028766E-1) * xx + 2.00000000000000000009E0;
        double y = 1.0 + 2.0 * (px / (qx - px));
        double f1 = (fn * 0.5 + 6755399441055744.0) - 6755399441055744.0;
        double res = y * dlf_pow2(f1) * dlf_pow2(fn - f1);
        res = x > 709.782712893384 ? INFINITY : res;
        res = x < -745.1332191019412 ? 0.0 : res;
        return x != x ? x : res;
    }
    static inline float dlf_expm1f(float x) {      /* Taylor to x^9/9! below 1/2, else exp - 1 */
        float p = ((((((((1.0f/362880 * x + 1.0f/40320) * x + 1.0f/5040) * x + 1.0f/720) * x
                   + 1.0f/120) * x + 1.0f/24) * x + 1.0f/6) * x + 0.5f) * x) * x + x;
        float e = dlf_expf(x) - 1.0f;
        return (x < 0.5f && x > -0.5f) ? p : e;
    }
    static inline double dlf_expm1(double x) {     /* Taylor to x^17/17! below 1/2, else exp - 1 */
        double p = 1.0 / 355687428096000.0;
        p = p * x + 1.0 / 20922789888000.0;
        p = p * x + 1.0 / 1307674368000.0;
        p = p * x + 1.0 / 87178291200.0;
        p = p * x + 1.0 / 6227020800.0;
        p = p * x + 1.0 / 479001600.0;
        p = p * x + 1.0 / 39916800.0;
        p = p * x + 1.0 / 3628800.0;
        p = p * x + 1.0 / 362880.0;
        p = p * x + 1.0 / 40320.0;
        p = p * x + 1.0 / 5040.0;
        p = p * x + 1.0 / 720.0;
        p = p * x + 1.0 / 120.0;
        p = p * x + 1.0 / 24.0;
        p = p * x + 1.0 / 6.0;
        p = p * x + 0.5;
        p = p * x * x + x;
        double e = dlf_exp(x) - 1.0;
        return (x < 0.5 && x > -0.5) ? p : e;
    }
    static inline float dlf_tanhf(float x) {
        float a = x < 0 ? -x : x;
        float z = x * x;
        float p = ((((-5.70498872745E-3f * z + 2.06390887954E-2f) * z - 5.37397155531E-2f) * z
                    + 1.33314422036E-1f) * z - 3.33332819422E-1f) * z * x + x;
        float t = 1.0f - 2.0f / (dlf_expf(a + a) + 1.0f);
        t = x < 0 ? -t : t;
        return a < 0.625f ? p : t;                   /* NaN: t is NaN */
    }
    static inline double dlf_tanh(double x) {
        double a = x < 0 ? -x : x;
        double z = x * x;
        double num = (-9.64399179425052238628E-1 * z - 9.92877231001918586564E1) * z
                     - 1.61468768441708447952E3;
        double den = ((z + 1.12811678491632931402E2) * z + 2.23548839060100448583E3) * z
                     + 4.84406305325125486048E3;
        double p = x + x * z * (num / den);
        double t = 1.0 - 2.0 / (dlf_exp(a + a) + 1.0);
        t = x < 0 ? -t : t;
        return a < 0.625 ? p : t;
    }

    /* Row loops over the transcendental activations, cloned for AVX-512 / AVX2 / baseline x86-64
       (GCC picks one at load time from the CPU; the same clone runs on every thread, so results do
       not depend on the thread count). Codes as in _act.pxd: 3 elu, 4 sigmoid, 5 tanh. */
    #include "dlfast_clones.h"   /* DLF_CLONES */
    #define DLF_ACT_ROW(NAME, T, EXP, EXPM1, TANH)                                              \
    DLF_CLONES static void NAME(T* y, const T* z, long n, int code, T alpha) {                \
        long i;                                                                               \
        if (code == 3) {                                                                      \
            for (i = 0; i < n; i++) { T v = z[i]; T e = alpha * EXPM1(v); y[i] = v > 0 ? v : e; } \
        } else if (code == 4) {                                                               \
            for (i = 0; i < n; i++) {                                                         \
                T v = z[i]; T e = EXP(v < 0 ? v : -v);                                        \
                T p = 1 / (1 + e), q = e / (1 + e);                                           \
                y[i] = v >= 0 ? p : q;                                                        \
            }                                                                                 \
        } else if (code == 5) {                                                               \
            for (i = 0; i < n; i++) y[i] = TANH(z[i]);                                        \
        }                                                                                     \
    }
    DLF_ACT_ROW(dlf_act_rowf, float, dlf_expf, dlf_expm1f, dlf_tanhf)
    DLF_ACT_ROW(dlf_act_row, double, dlf_exp, dlf_expm1, dlf_tanh)

    /* out[j] = exp(x[j] - m) (in T); returns sum_j out[j] in double, four fixed interleaved
       partial sums combined as (s0 + s1) + (s2 + s3). */
    #define DLF_EXPSUM(NAME, T, EXP)                                                          \
    DLF_CLONES static double NAME(T* out, const T* x, long n, T m) {                          \
        long j;                                                                               \
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                                \
        for (j = 0; j < n; j++) out[j] = EXP(x[j] - m);                                       \
        for (j = 0; j + 4 <= n; j += 4) {                                                     \
            s0 += out[j]; s1 += out[j + 1]; s2 += out[j + 2]; s3 += out[j + 3];               \
        }                                                                                     \
        for (; j < n; j++) s0 += out[j];                                                      \
        return (s0 + s1) + (s2 + s3);                                                         \
    }
    DLF_EXPSUM(dlf_expsumf, float, dlf_expf)
    DLF_EXPSUM(dlf_expsum, double, dlf_exp)

    /* sum_j e[j] in DLF_EXPSUM's order: four interleaved partial sums, (s0 + s1) + (s2 + s3) */
    static inline double dlf_sum4(const double* e, long n) {
        long j;
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (j = 0; j + 4 <= n; j += 4) {
            s0 += e[j]; s1 += e[j + 1]; s2 += e[j + 2]; s3 += e[j + 3];
        }
        for (; j < n; j++) s0 += e[j];
        return (s0 + s1) + (s2 + s3);
    }

    /* e[r c + j] = exp((double)x[r c + j] - m[r]) in double for r < rows, j < c (the loss
       path): the shifts, then one flat exp loop, full vectors whatever c is. */
    #define DLF_EXP_ROWS(NAME, T)                                                             \
    DLF_CLONES static void NAME(double* e, const T* x, const double* m, long rows, long c) {  \
        long r, j, i;                                                                         \
        for (r = 0; r < rows; r++)                                                            \
            for (j = 0; j < c; j++) e[r * c + j] = (double)x[r * c + j] - m[r];               \
        for (i = 0; i < rows * c; i++) e[i] = dlf_exp(e[i]);                                  \
    }
    DLF_EXP_ROWS(dlf_exp_rows_df, float)
    DLF_EXP_ROWS(dlf_exp_rows_dd, double)

    /* max_j x[j] (n >= 1), NaN if any x[j] is NaN (as numpy.max); eight exact lane maxima. */
    #define DLF_ROWMAX(NAME, T)                                                               \
    DLF_CLONES static T NAME(const T* x, long n) {                                            \
        T m[8], r; int bad = 0; long j, l;                                                    \
        for (l = 0; l < 8; l++) m[l] = x[0];                                                  \
        for (j = 0; j + 8 <= n; j += 8)                                                       \
            for (l = 0; l < 8; l++) { T v = x[j + l]; m[l] = v > m[l] ? v : m[l]; bad |= v != v; } \
        for (; j < n; j++) { T v = x[j]; m[0] = v > m[0] ? v : m[0]; bad |= v != v; }        \
        r = m[0];                                                                             \
        for (l = 1; l < 8; l++) r = m[l] > r ? m[l] : r;                                      \
        return bad ? (T)NAN : r;                                                              \
    }
    DLF_ROWMAX(dlf_rowmaxf, float)
    DLF_ROWMAX(dlf_rowmax, double)

    /* The cheap activations (codes 0-2) and every derivative, cloned as above; never contracted
       to FMA. Sigmoid and tanh derivatives in double (1.0 - y), rounded once to T. y == z (in
       place) is its own case: an aliasing y, z would fail the vectoriser's overlap check. */
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("fp-contract=off")
    #endif
    #define DLF_CHEAP_ROW(NAME, T)                                                              \
    static inline __attribute__((always_inline)) void NAME##_body(T* y, const T* z, long n,    \
                                                                  int code, T alpha) {        \
        long i;                                                                               \
        if (code == 0) {                                                                      \
            if (y != z) for (i = 0; i < n; i++) y[i] = z[i];                                  \
        } else if (code == 1) {                                                               \
            for (i = 0; i < n; i++) { T v = z[i]; y[i] = v <= 0 ? 0 : v; }                    \
        } else if (code == 2) {                                                               \
            for (i = 0; i < n; i++) { T v = z[i]; y[i] = v > 0 ? v : alpha * v; }            \
        }                                                                                     \
    }                                                                                         \
    DLF_CLONES static void NAME(T* y, const T* z, const T* b, long n, int code, T alpha) {    \
        long i;                                                                               \
        if (b != NULL) {                                                                      \
            if (y == z) for (i = 0; i < n; i++) y[i] = y[i] + b[i];                           \
            else for (i = 0; i < n; i++) y[i] = z[i] + b[i];                                  \
            z = y;                                                                            \
        }                                                                                     \
        if (y == z) NAME##_body(y, y, n, code, alpha);                                        \
        else NAME##_body(y, z, n, code, alpha);                                               \
    }
    DLF_CHEAP_ROW(dlf_cheap_rowf, float)
    DLF_CHEAP_ROW(dlf_cheap_row, double)

    #define DLF_GRAD_ROW(NAME, T)                                                               \
    DLF_CLONES static void NAME(T* dz, const T* dout, const T* y, long n, int code, T alpha) { \
        long i;                                                                               \
        if (code == 0) for (i = 0; i < n; i++) dz[i] = dout[i];                               \
        else if (code == 1) for (i = 0; i < n; i++) dz[i] = dout[i] * (y[i] > 0 ? (T)1 : (T)0); \
        else if (code == 2) for (i = 0; i < n; i++) dz[i] = dout[i] * (y[i] > 0 ? (T)1 : alpha); \
        else if (code == 3)                                                                   \
            for (i = 0; i < n; i++) dz[i] = dout[i] * (y[i] > 0 ? (T)1 : y[i] + alpha);       \
        else if (code == 4) for (i = 0; i < n; i++) dz[i] = dout[i] * (y[i] * (1.0 - y[i]));  \
        else if (code == 5) for (i = 0; i < n; i++) dz[i] = dout[i] * (1.0 - y[i] * y[i]);    \
    }
    DLF_GRAD_ROW(dlf_grad_rowf, float)
    DLF_GRAD_ROW(dlf_grad_row, double)
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    float dlf_expf(float) noexcept nogil
    double dlf_exp(double) noexcept nogil
    float dlf_expm1f(float) noexcept nogil
    double dlf_expm1(double) noexcept nogil
    float dlf_tanhf(float) noexcept nogil
    double dlf_tanh(double) noexcept nogil
    void dlf_act_rowf(float*, const float*, long, int, float) noexcept nogil
    void dlf_act_row(double*, const double*, long, int, double) noexcept nogil
    double dlf_expsumf(float*, const float*, long, float) noexcept nogil
    double dlf_expsum(double*, const double*, long, double) noexcept nogil
    double dlf_sum4(const double*, long) noexcept nogil
    void dlf_exp_rows_df(double*, const float*, const double*, long, long) noexcept nogil
    void dlf_exp_rows_dd(double*, const double*, const double*, long, long) noexcept nogil
    float dlf_rowmaxf(const float*, long) noexcept nogil
    double dlf_rowmax(const double*, long) noexcept nogil
    void dlf_cheap_rowf(float*, const float*, const float*, long, int, float) noexcept nogil
    void dlf_cheap_row(double*, const double*, const double*, long, int, double) noexcept nogil
    void dlf_grad_rowf(float*, const float*, const float*, long, int, float) noexcept nogil
    void dlf_grad_row(double*, const double*, const double*, long, int, double) noexcept nogil


cdef inline floating row_max(const floating* x, Py_ssize_t n) noexcept nogil:
    """max_j x[j] for n >= 1; NaN when any element is NaN (like numpy.max)."""
    if floating is float:
        return dlf_rowmaxf(x, n)
    else:
        return dlf_rowmax(x, n)


cdef inline double exp_shift_sum(floating* out, const floating* x, Py_ssize_t n,
                                 floating m) noexcept nogil:
    """out[j] = exp(x[j] - m); returns sum_j out[j] (double, fixed order)."""
    if floating is float:
        return dlf_expsumf(out, x, n, m)
    else:
        return dlf_expsum(out, x, n, m)


cdef inline void exp_rows(double* e, const floating* x, const double* m, Py_ssize_t rows,
                         Py_ssize_t c) noexcept nogil:
    """e[r c + j] = exp(double(x[r c + j]) - m[r]) in double."""
    if floating is float:
        dlf_exp_rows_df(e, x, m, rows, c)
    else:
        dlf_exp_rows_dd(e, x, m, rows, c)


cdef inline Py_ssize_t act_work(Py_ssize_t n, int code) noexcept nogil:
    """Work estimate of act_row over n elements (elu/sigmoid/tanh full, the others 1/CHEAP)."""
    return n if code >= ACT_ELU else n // CHEAP


cdef inline void act_row(floating* y, const floating* z, const floating* b, Py_ssize_t n,
                         int code, floating alpha) noexcept nogil:
    """y[i] = act(z[i] + b[i]) (b may be NULL; y may be z)."""
    if code <= ACT_LEAKY:
        if floating is float:
            dlf_cheap_rowf(y, z, b, n, code, alpha)
        else:
            dlf_cheap_row(y, z, b, n, code, alpha)
        return
    cdef Py_ssize_t i
    if b != NULL:
        for i in range(n):
            y[i] = z[i] + b[i]
        z = y
    if floating is float:
        dlf_act_rowf(y, z, n, code, alpha)
    else:
        dlf_act_row(y, z, n, code, alpha)


cdef inline void act_grad_row(floating* dz, const floating* dout, const floating* y, Py_ssize_t n,
                              int code, floating alpha) noexcept nogil:
    """dz[i] = dout[i] * act'(y[i]), from the output y."""
    if floating is float:
        dlf_grad_rowf(dz, dout, y, n, code, alpha)
    else:
        dlf_grad_row(dz, dout, y, n, code, alpha)


cdef inline void act_grad_all(floating* dz, const floating* dout, const floating* y, Py_ssize_t n,
                              int code, floating alpha, int nt) noexcept nogil:
    """act_grad_row over n elements in blocks of ACT_BLOCK, on nt threads (the caller's
    _threads(n // CHEAP)); the bits do not depend on nt."""
    cdef Py_ssize_t nb = (n + ACT_BLOCK - 1) // ACT_BLOCK, blk, lo
    if nt == 1:
        for blk in range(nb):
            lo = blk * ACT_BLOCK
            act_grad_row(dz + lo, dout + lo, y + lo, min(<Py_ssize_t>ACT_BLOCK, n - lo), code,
                         alpha)
        return
    for blk in prange(nb, num_threads=nt, schedule="static"):
        lo = blk * ACT_BLOCK
        act_grad_row(dz + lo, dout + lo, y + lo, min(<Py_ssize_t>ACT_BLOCK, n - lo), code,
                     alpha)


cdef inline int act_code(str name) except -1:
    """The code of an activation name (validated upstream by dlfast.kernels)."""
    if name == "identity":
        return ACT_IDENTITY
    if name == "relu":
        return ACT_RELU
    if name == "leaky_relu":
        return ACT_LEAKY
    if name == "elu":
        return ACT_ELU
    if name == "sigmoid":
        return ACT_SIGMOID
    if name == "tanh":
        return ACT_TANH
    raise ValueError(f"unknown activation {name!r}")


# ============================================================================ array arguments
# A fused-type memoryview argument costs ~0.3 us per call (signature dispatch, format parsing,
# a memoryview object) and reshape(-1) another 0.1 us; a Py_buffer costs ~0.04 us.
cdef enum:
    DT_F32 = 0
    DT_F64 = 1
    DT_U8 = 2
    DT_I64 = 3
    DT_FLOAT = -1         # buf_get: float32 or float64


cdef inline str _dt_name(int dt):
    return ("float32", "float64", "uint8", "int64")[dt] if dt >= 0 else "float32 or float64"


cdef inline int buf_get(object a, Py_buffer* v, int dt, Py_ssize_t count, bint out) except -2:
    """Acquire a's buffer into v (free with PyBuffer_Release): C-contiguous, dtype dt, ``count``
    elements (-1: any), writeable if ``out``. Returns the dtype; None gives v.buf = v.obj = NULL."""
    cdef const char* f
    cdef int got = -1
    memset(v, 0, sizeof(Py_buffer))
    if a is None:
        return dt
    PyObject_GetBuffer(a, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (PyBUF_WRITABLE if out else 0))
    f = v.format
    if f[0] == b"@" or f[0] == b"=":
        f += 1
    if f[0] != 0 and f[1] == 0:
        if f[0] == b"f" and v.itemsize == 4:
            got = DT_F32
        elif f[0] == b"d" and v.itemsize == 8:
            got = DT_F64
        elif f[0] == b"B" and v.itemsize == 1:
            got = DT_U8
        elif (f[0] == b"l" or f[0] == b"q") and v.itemsize == 8:
            got = DT_I64
    if got < 0 or (got != dt and not (dt == DT_FLOAT and got <= DT_F64)):
        PyBuffer_Release(v)
        raise TypeError(f"array of dtype {getattr(a, 'dtype', type(a).__name__)} where "
                        f"{_dt_name(dt)} is expected")
    if count >= 0 and v.len != count * v.itemsize:
        got = v.len // v.itemsize
        PyBuffer_Release(v)
        raise ValueError(f"array of {got} elements where {count} are expected")
    return got


cdef inline void buf_release(Py_buffer* v, int k) noexcept:
    """PyBuffer_Release of v[0..k) (no-op for the unacquired, zeroed ones)."""
    cdef int i
    for i in range(k):
        PyBuffer_Release(&v[i])


# ---------------------------------------------------------------------------- work buffers
cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)


cdef inline Py_ssize_t line_doubles(Py_ssize_t k) noexcept nogil:
    """k rounded up to whole 64-byte lines of doubles: the stride of the per-thread or
    per-feature regions of a work buffer, so that threads writing different regions share no
    cache line (with aligned_doubles)."""
    return (k + 7) & ~7


cdef inline double* aligned_doubles(Py_ssize_t k) except NULL:
    """k doubles (at least one), 64-byte aligned; free with free()."""
    cdef void* p = NULL
    if posix_memalign(&p, 64, (k if k > 0 else 1) * sizeof(double)) != 0:
        raise MemoryError()
    return <double*>p
