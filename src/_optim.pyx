"""Optimiser updates (in place, one pass), norms and penalties.

Effective gradient, per element, in the array's dtype (scalars rounded to it, as the NumPy backend):
    g' = clip(grad_scale * g, -clip_value, clip_value) + wd * w
(the decay term is skipped when wd == 0, as in the NumPy backend).
Reductions accumulate in double over fixed BLOCK-element chunks combined in order: the result does
not depend on the thread count.
"""
cimport numpy as cnp
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_New
from cpython.ref cimport PyObject
from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport sqrt, sqrtf, pow, fabs, INFINITY
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport malloc, free

from _act cimport buf_get, buf_release, DT_F32, DT_FLOAT

include "_parallel.pxi"

cnp.import_array()

cdef enum:
    BLOCK = 4096          # elements per parallel work item / reduction chunk
    COLBLOCK = 64         # columns per work item in max_norm


cdef inline Py_ssize_t _nblocks(Py_ssize_t n) noexcept nogil:
    return (n + BLOCK - 1) // BLOCK


# ----------------------------------------------------------------------------- optimisers
# Each loop is flat C over one block (below), one copy per (update, dtype, decay flag) so the
# compiler vectorises it, cloned per instruction set with contraction off (same bits on every
# clone and thread count); each *_blk picks the specialisation once per block.
cdef extern from *:
    """
    #include <stdint.h>
    #include "dlfast_clones.h"   /* DLF_CLONES */
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("fp-contract=off")
    #endif
    /* g' = clip(gs * g, -cv, cv) (+ wd * w when DECAY); a NaN passes the clip, as np.clip */
    #define DLF_GEFF(DECAY) ge = g[i] * gs; ge = ge < -cv ? -cv : ge; ge = ge > cv ? cv : ge;     \\
                            if (DECAY) ge = ge + wd * w[i];
    #define DLF_OPT_LOOPS(S, T, SQRT, DECAY, D)                                                  \\
    /* w -= lr * g' */                                                                         \\
    DLF_CLONES static void dlf_sgd##S##D(T* w, const T* g, long n, T lr, T gs, T cv, T wd) {   \\
        T ge;                                                                                  \\
        for (long i = 0; i < n; i++) { DLF_GEFF(DECAY) w[i] = w[i] - lr * ge; }                \\
    }                                                                                          \\
    /* v = mu*v - lr*g'; w += v (nesterov: w += mu*v - lr*g') */                               \\
    DLF_CLONES static void dlf_mom##S##D(T* w, const T* g, T* v, long n, T lr, T mu, T gs,     \\
                                         T cv, T wd, int nesterov) {                          \\
        T ge, vi;                                                                              \\
        if (nesterov) for (long i = 0; i < n; i++) {                                           \\
            DLF_GEFF(DECAY) vi = v[i] * mu; vi = vi - lr * ge; v[i] = vi;                      \\
            w[i] = w[i] + (mu * vi - lr * ge); }                                               \\
        else for (long i = 0; i < n; i++) {                                                    \\
            DLF_GEFF(DECAY) vi = v[i] * mu; vi = vi - lr * ge; v[i] = vi; w[i] = w[i] + vi; }  \\
    }                                                                                          \\
    /* h = rho*h + ((1-rho)*g')*g'; w -= (lr*g') / (sqrt(h) + eps)  (inside: sqrt(h + eps)) */ \\
    DLF_CLONES static void dlf_ada##S##D(T* w, const T* g, T* h, long n, T lr, T rho, T omr,   \\
                                         T eps, T gs, T cv, T wd, int inside) {               \\
        T ge, hh;                                                                              \\
        if (inside) for (long i = 0; i < n; i++) {                                             \\
            DLF_GEFF(DECAY) hh = h[i] * rho; hh = hh + (omr * ge) * ge; h[i] = hh;             \\
            w[i] = w[i] - (lr * ge) / SQRT(hh + eps); }                                        \\
        else for (long i = 0; i < n; i++) {                                                    \\
            DLF_GEFF(DECAY) hh = h[i] * rho; hh = hh + (omr * ge) * ge; h[i] = hh;             \\
            w[i] = w[i] - (lr * ge) / (SQRT(hh) + eps); }                                      \\
    }                                                                                          \\
    /* m = b1*m + (1-b1)*g'; v = b2*v + ((1-b2)*g')*g';                                        \\
       w = w*shrink - (step_size*m) / (sqrt(v)/sbc2 + eps) */                                  \\
    DLF_CLONES static void dlf_adam##S##D(T* w, const T* g, T* m, T* v, long n, T b1, T omb1,  \\
                                          T b2, T omb2, T eps, T step_size, T sbc2, T shrink, \\
                                          T gs, T cv, T wd) {                                 \\
        T ge, mi, vi, wi;                                                                      \\
        for (long i = 0; i < n; i++) {                                                         \\
            wi = w[i]; DLF_GEFF(DECAY) mi = m[i] * b1; mi = mi + omb1 * ge; m[i] = mi;         \\
            vi = v[i] * b2; vi = vi + (omb2 * ge) * ge; v[i] = vi;                             \\
            w[i] = wi * shrink - (step_size * mi) / (SQRT(vi) / sbc2 + eps); }                 \\
    }
    /* sum x^2 in 32 double lanes, each over x[j], x[j + 32], ... in order, then a fixed tree.
       float: (double)x * (double)x is exact, so a fused multiply-add (allowed for it alone,
       FAST) rounds each step as the multiply and add would: the same bits, ~20% faster. */
    #define DLF_SUMSQ(S, T, FAST)                                                                \\
    DLF_CLONES FAST static double dlf_sumsq##S(const T* x, long n) {                           \\
        double a[32], t;                                                                       \\
        long i = 0, j, h;                                                                      \\
        for (j = 0; j < 32; j++) a[j] = 0;                                                     \\
        for (; i + 32 <= n; i += 32)                                                           \\
            for (j = 0; j < 32; j++) { t = (double)x[i + j]; a[j] = a[j] + t * t; }            \\
        for (j = 0; i < n; i++, j++) { t = (double)x[i]; a[j] = a[j] + t * t; }                \\
        for (h = 16; h >= 1; h /= 2)                                                           \\
            for (j = 0; j < h; j++) a[j] = a[j] + a[j + h];                                    \\
        return a[0];                                                                           \\
    }
    #if defined(__GNUC__) && !defined(__clang__)
    DLF_SUMSQ(f, float, __attribute__((optimize("fp-contract=fast"))))
    #else
    DLF_SUMSQ(f, float, )
    #endif
    DLF_SUMSQ(d, double, )
    /* 1 if some element's exponent bits are all ones (inf or NaN) */
    #define DLF_NONFINITE(B, U, E)                                                               \\
    DLF_CLONES static int dlf_nonfinite##B(const U* x, long n) {                               \\
        int bad = 0;                                                                           \\
        for (long i = 0; i < n; i++) bad |= (x[i] & E) == E;                                   \\
        return bad;                                                                            \\
    }
    DLF_NONFINITE(32, uint32_t, 0x7F800000U)
    DLF_NONFINITE(64, uint64_t, 0x7FF0000000000000ULL)
    DLF_OPT_LOOPS(f, float, sqrtf, 0, _nd)
    DLF_OPT_LOOPS(f, float, sqrtf, 1, _wd)
    DLF_OPT_LOOPS(d, double, sqrt, 0, _nd)
    DLF_OPT_LOOPS(d, double, sqrt, 1, _wd)
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    int dlf_nonfinite32(const uint32_t*, long) noexcept nogil
    int dlf_nonfinite64(const uint64_t*, long) noexcept nogil
    double dlf_sumsqf(const float*, long) noexcept nogil
    double dlf_sumsqd(const double*, long) noexcept nogil
    void dlf_sgdf_nd(float*, const float*, long, float, float, float, float) noexcept nogil
    void dlf_sgdf_wd(float*, const float*, long, float, float, float, float) noexcept nogil
    void dlf_sgdd_nd(double*, const double*, long, double, double, double, double) noexcept nogil
    void dlf_sgdd_wd(double*, const double*, long, double, double, double, double) noexcept nogil
    void dlf_momf_nd(float*, const float*, float*, long, float, float, float, float, float,
                     int) noexcept nogil
    void dlf_momf_wd(float*, const float*, float*, long, float, float, float, float, float,
                     int) noexcept nogil
    void dlf_momd_nd(double*, const double*, double*, long, double, double, double, double,
                     double, int) noexcept nogil
    void dlf_momd_wd(double*, const double*, double*, long, double, double, double, double,
                     double, int) noexcept nogil
    void dlf_adaf_nd(float*, const float*, float*, long, float, float, float, float, float,
                     float, float, int) noexcept nogil
    void dlf_adaf_wd(float*, const float*, float*, long, float, float, float, float, float,
                     float, float, int) noexcept nogil
    void dlf_adad_nd(double*, const double*, double*, long, double, double, double, double,
                     double, double, double, int) noexcept nogil
    void dlf_adad_wd(double*, const double*, double*, long, double, double, double, double,
                     double, double, double, int) noexcept nogil
    void dlf_adamf_nd(float*, const float*, float*, float*, long, float, float, float, float,
                      float, float, float, float, float, float, float) noexcept nogil
    void dlf_adamf_wd(float*, const float*, float*, float*, long, float, float, float, float,
                      float, float, float, float, float, float, float) noexcept nogil
    void dlf_adamd_nd(double*, const double*, double*, double*, long, double, double, double,
                      double, double, double, double, double, double, double, double) noexcept nogil
    void dlf_adamd_wd(double*, const double*, double*, double*, long, double, double, double,
                      double, double, double, double, double, double, double, double) noexcept nogil


cdef void _sgd_blk(floating* w, const floating* g, Py_ssize_t n, floating lr, floating gs,
                   floating cv, floating wd, bint decay) noexcept nogil:
    if floating is float:
        if decay:
            dlf_sgdf_wd(w, g, n, lr, gs, cv, wd)
        else:
            dlf_sgdf_nd(w, g, n, lr, gs, cv, wd)
    else:
        if decay:
            dlf_sgdd_wd(w, g, n, lr, gs, cv, wd)
        else:
            dlf_sgdd_nd(w, g, n, lr, gs, cv, wd)


def _sgd(floating[::1] w, const floating[::1] g, double lr, double wd, double gs, double cv):
    cdef Py_ssize_t n = w.shape[0], b, lo
    cdef int nt = _threads(n)
    if n == 0:
        return
    cdef floating* wp = &w[0]
    cdef const floating* gp = &g[0]
    for b in prange(_nblocks(n), nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        lo = b * BLOCK
        _sgd_blk(wp + lo, gp + lo, min(BLOCK, n - lo), <floating>lr, <floating>gs, <floating>cv,
                 <floating>wd, wd != 0.0)


def sgd_update(w, g, lr, wd, grad_scale, clip_value):
    """w -= lr * g'."""
    _sgd(w.reshape(-1), g.reshape(-1), lr, wd, grad_scale, clip_value)


def _sgd_probe(float[::1] w, const float[::1] g, int threads, int calls):
    """`calls` SGD updates of w (lr 1e-6) on `threads` threads whatever the parallel threshold:
    the memory-bound kernel that the threshold's calibration times (dlfast/_backends/_tuning.py)."""
    cdef Py_ssize_t n = w.shape[0], b, lo
    cdef int r
    if n == 0 or g.shape[0] != n:
        raise ValueError("_sgd_probe: w and g of one size >= 1")
    cdef float* wp = &w[0]
    cdef const float* gp = &g[0]
    for r in range(calls):
        for b in prange(_nblocks(n), nogil=True, schedule="static", num_threads=threads,
                        use_threads_if=threads > 1):
            lo = b * BLOCK
            _sgd_blk(wp + lo, gp + lo, min(BLOCK, n - lo), <float>1e-6, <float>1, <float>INFINITY,
                     <float>0, False)


cdef void _mom_blk(floating* w, const floating* g, floating* v, Py_ssize_t n, floating lr,
                   floating mu, floating gs, floating cv, floating wd, bint decay,
                   bint nesterov) noexcept nogil:
    if floating is float:
        if decay:
            dlf_momf_wd(w, g, v, n, lr, mu, gs, cv, wd, nesterov)
        else:
            dlf_momf_nd(w, g, v, n, lr, mu, gs, cv, wd, nesterov)
    else:
        if decay:
            dlf_momd_wd(w, g, v, n, lr, mu, gs, cv, wd, nesterov)
        else:
            dlf_momd_nd(w, g, v, n, lr, mu, gs, cv, wd, nesterov)


def _momentum(floating[::1] w, const floating[::1] g, floating[::1] v, double lr, double mu,
              double wd, double gs, double cv, bint nesterov):
    cdef Py_ssize_t n = w.shape[0], b, lo
    cdef int nt = _threads(n)
    if n == 0:
        return
    cdef floating* wp = &w[0]
    cdef const floating* gp = &g[0]
    cdef floating* vp = &v[0]
    for b in prange(_nblocks(n), nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        lo = b * BLOCK
        _mom_blk(wp + lo, gp + lo, vp + lo, min(BLOCK, n - lo), <floating>lr, <floating>mu,
                 <floating>gs, <floating>cv, <floating>wd, wd != 0.0, nesterov)


def momentum_update(w, g, v, lr, mu, wd, grad_scale, clip_value):
    """v = mu * v - lr * g'; w += v."""
    _momentum(w.reshape(-1), g.reshape(-1), v.reshape(-1), lr, mu, wd, grad_scale, clip_value, False)


def nesterov_update(w, g, v, lr, mu, wd, grad_scale, clip_value):
    """v = mu * v - lr * g'; w += mu * v - lr * g'."""
    _momentum(w.reshape(-1), g.reshape(-1), v.reshape(-1), lr, mu, wd, grad_scale, clip_value, True)


cdef void _ada_blk(floating* w, const floating* g, floating* h, Py_ssize_t n, floating lr,
                   floating rho, floating omr, floating eps, floating gs, floating cv,
                   floating wd, bint decay, bint eps_inside) noexcept nogil:
    # AdaGrad is rho = omr = 1 (exact: h*1 == h, 1*g' == g')
    if floating is float:
        if decay:
            dlf_adaf_wd(w, g, h, n, lr, rho, omr, eps, gs, cv, wd, eps_inside)
        else:
            dlf_adaf_nd(w, g, h, n, lr, rho, omr, eps, gs, cv, wd, eps_inside)
    else:
        if decay:
            dlf_adad_wd(w, g, h, n, lr, rho, omr, eps, gs, cv, wd, eps_inside)
        else:
            dlf_adad_nd(w, g, h, n, lr, rho, omr, eps, gs, cv, wd, eps_inside)


def _adaptive(floating[::1] w, const floating[::1] g, floating[::1] h, double lr, double rho,
              double omr, double eps, bint eps_inside, double wd, double gs, double cv):
    cdef Py_ssize_t n = w.shape[0], b, lo
    cdef int nt = _threads(n)
    if n == 0:
        return
    cdef floating* wp = &w[0]
    cdef const floating* gp = &g[0]
    cdef floating* hp = &h[0]
    for b in prange(_nblocks(n), nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        lo = b * BLOCK
        _ada_blk(wp + lo, gp + lo, hp + lo, min(BLOCK, n - lo), <floating>lr, <floating>rho,
                 <floating>omr, <floating>eps, <floating>gs, <floating>cv, <floating>wd, wd != 0.0,
                 eps_inside)


def adagrad_update(w, g, h, lr, eps, eps_inside, wd, grad_scale, clip_value):
    """h += g'^2; w -= lr * g' / (sqrt(h) + eps)  (eps_inside: / sqrt(h + eps))."""
    _adaptive(w.reshape(-1), g.reshape(-1), h.reshape(-1), lr, 1.0, 1.0, eps, eps_inside, wd,
              grad_scale, clip_value)


def rmsprop_update(w, g, h, lr, rho, eps, eps_inside, wd, grad_scale, clip_value):
    """h = rho * h + (1 - rho) * g'^2; w -= lr * g' / (sqrt(h) + eps)  (eps_inside: / sqrt(h + eps))."""
    _adaptive(w.reshape(-1), g.reshape(-1), h.reshape(-1), lr, rho, 1.0 - rho, eps, eps_inside, wd,
              grad_scale, clip_value)


cdef void _adam_blk(floating* w, const floating* g, floating* m, floating* v, Py_ssize_t n,
                    floating b1, floating omb1, floating b2, floating omb2, floating eps,
                    floating step_size, floating sbc2, floating shrink, floating gs,
                    floating cv, floating wd, bint decay) noexcept nogil:
    if floating is float:
        if decay:
            dlf_adamf_wd(w, g, m, v, n, b1, omb1, b2, omb2, eps, step_size, sbc2, shrink, gs, cv, wd)
        else:
            dlf_adamf_nd(w, g, m, v, n, b1, omb1, b2, omb2, eps, step_size, sbc2, shrink, gs, cv, wd)
    else:
        if decay:
            dlf_adamd_wd(w, g, m, v, n, b1, omb1, b2, omb2, eps, step_size, sbc2, shrink, gs, cv, wd)
        else:
            dlf_adamd_nd(w, g, m, v, n, b1, omb1, b2, omb2, eps, step_size, sbc2, shrink, gs, cv, wd)


def _adam(floating[::1] w, const floating[::1] g, floating[::1] m, floating[::1] v, double lr,
          double beta1, double beta2, double eps, double step, bint eps_hat, double wd,
          bint decoupled, double gs, double cv):
    cdef double bc1 = 1.0 - pow(beta1, step), bc2 = 1.0 - pow(beta2, step)
    # eps_hat: (lr*sqrt(bc2)/bc1) * m / (sqrt(v) + eps); else (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
    # (sqrt(v)/1 == sqrt(v) exactly; AdamW shrinks w by 1 - lr*wd, Adam by exactly 1)
    cdef floating step_size = <floating>(lr * sqrt(bc2) / bc1 if eps_hat else lr / bc1)
    cdef floating sbc2 = <floating>(1.0 if eps_hat else sqrt(bc2))
    cdef floating shrink = <floating>(1.0 - lr * wd if decoupled else 1.0)
    cdef bint decay = (not decoupled) and wd != 0.0
    cdef Py_ssize_t n = w.shape[0], b, lo
    cdef int nt = _threads(n)
    if n == 0:
        return
    cdef floating* wp = &w[0]
    cdef const floating* gp = &g[0]
    cdef floating* mp = &m[0]
    cdef floating* vp = &v[0]
    for b in prange(_nblocks(n), nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        lo = b * BLOCK
        _adam_blk(wp + lo, gp + lo, mp + lo, vp + lo, min(BLOCK, n - lo), <floating>beta1,
                  <floating>(1.0 - beta1), <floating>beta2, <floating>(1.0 - beta2), <floating>eps,
                  step_size, sbc2, shrink, <floating>gs, <floating>cv, <floating>wd, decay)


def adam_update(w, g, m, v, lr, beta1, beta2, eps, step, eps_hat, wd, decoupled_wd, grad_scale,
                clip_value):
    """Adam / AdamW step t (see dlfast.kernels.adam_update), one pass; 1 - beta^t in double."""
    _adam(w.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), lr, beta1, beta2, eps,
          float(step), eps_hat, wd, decoupled_wd, grad_scale, clip_value)


# ----------------------------------------------------------------------------- reductions
cdef inline double _block_sumsq(const floating* x, Py_ssize_t n) noexcept nogil:
    """sum x^2 in double over n elements: 32 interleaved accumulators (a[j] takes the elements
    i = j mod 32: four independent vector chains with AVX-512, vectorisable without
    reassociation), folded in halves (a[j] += a[j + h], h = 16, 8, ..., 1): a fixed order."""
    if floating is float:
        return dlf_sumsqf(x, n)
    else:
        return dlf_sumsqd(x, n)


cdef inline double _block_sumabs(const floating* x, Py_ssize_t n) noexcept nogil:
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        a0 = a0 + fabs(<double>x[i])
        a1 = a1 + fabs(<double>x[i + 1])
        a2 = a2 + fabs(<double>x[i + 2])
        a3 = a3 + fabs(<double>x[i + 3])
        i = i + 4
    while i < n:
        a0 = a0 + fabs(<double>x[i])
        i = i + 1
    return (a0 + a1) + (a2 + a3)


cdef int _sums(const floating[::1] x, double* ss, double* sa) except -1:
    """ss = sum x^2 (and sa = sum |x| when sa != NULL), chunked, combined in chunk order."""
    cdef Py_ssize_t n = x.shape[0], nb = _nblocks(n), b, lo
    cdef int nt = _threads(n)
    cdef double* part
    ss[0] = 0.0
    if sa != NULL:
        sa[0] = 0.0
    if n == 0:
        return 0
    part = <double*>malloc(2 * nb * sizeof(double))
    if part == NULL:
        raise MemoryError()
    cdef const floating* p = &x[0]
    for b in prange(nb, nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        lo = b * BLOCK
        part[b] = _block_sumsq(p + lo, min(BLOCK, n - lo))
        if sa != NULL:
            part[nb + b] = _block_sumabs(p + lo, min(BLOCK, n - lo))
    with nogil:
        for b in range(nb):
            ss[0] += part[b]
            if sa != NULL:
                sa[0] += part[nb + b]
    free(part)
    return 0


def _sumsq(const floating[::1] x):
    cdef double ss
    _sums(x, &ss, NULL)
    return ss


def sumsq(x):
    """sum x^2 as a Python float (float64 accumulation, fixed chunk order)."""
    return _sumsq(x.reshape(-1))


def _penalty(const floating[::1] w, double l1, double l2):
    cdef double ss, sa
    _sums(w, &ss, &sa)
    return 0.5 * l2 * ss + l1 * sa


def penalty(w, l1, l2):
    """(l2/2) * sum w^2 + l1 * sum |w| (float64)."""
    return _penalty(w.reshape(-1), l1, l2)


cdef inline int _nonfinite_blk(const floating* x, Py_ssize_t n) noexcept nogil:
    """1 if an element of x[:n] has an all-ones exponent (inf or NaN): an integer test (C, above)."""
    if floating is float:
        return dlf_nonfinite32(<const uint32_t*>x, n)
    else:
        return dlf_nonfinite64(<const uint64_t*>x, n)


cdef int _any_nonfinite(const floating* p, Py_ssize_t n) noexcept nogil:
    """1 if an element of p[:n] is NaN or infinite, else 0."""
    cdef Py_ssize_t b, lo
    cdef int nt = _threads(n), bad = 0
    if nt > 1:
        for b in prange(_nblocks(n), schedule="static", num_threads=nt):
            lo = b * BLOCK
            bad += _nonfinite_blk(p + lo, min(BLOCK, n - lo))
    else:                     # serial: stop at the first bad block
        lo = 0
        while lo < n and not bad:
            bad = _nonfinite_blk(p + lo, min(BLOCK, n - lo))
            lo = lo + BLOCK
    return bad != 0


cdef int _any_nonfinite_f(const float* p, Py_ssize_t n) noexcept nogil:
    return _any_nonfinite(p, n)


cdef int _any_nonfinite_d(const double* p, Py_ssize_t n) noexcept nogil:
    return _any_nonfinite(p, n)


def _finite_entries():
    """Addresses of the float and double scans of all_finite (1: a NaN or inf; this module's
    thread setting), for the training-step program's check of x (_program.pyx)."""
    return <size_t>&_any_nonfinite_f, <size_t>&_any_nonfinite_d


def all_finite(x):
    """True when no element of x (C-contiguous float32 or float64, through the buffer protocol)
    is NaN or infinite."""
    cdef Py_buffer v
    cdef Py_ssize_t n
    cdef int bad = 0
    cdef int dt = buf_get(x, &v, DT_FLOAT, -1, False)
    try:
        n = v.len // v.itemsize
        with nogil:
            if dt == DT_F32:
                bad = _any_nonfinite(<const float*>v.buf, n)
            else:
                bad = _any_nonfinite(<const double*>v.buf, n)
    finally:
        buf_release(&v, 1)
    return bad == 0


def _penalty_grad(const floating[::1] w, floating[::1] g, double l1_, double l2_):
    cdef floating l1 = <floating>l1_, l2 = <floating>l2_, s, wi, gi
    cdef bint do1 = l1_ != 0.0, do2 = l2_ != 0.0
    cdef Py_ssize_t n = w.shape[0], b, i, hi
    cdef int nt = _threads(n)
    if not (do1 or do2):
        return
    for b in prange(_nblocks(n), nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        hi = min((b + 1) * BLOCK, n)
        for i in range(b * BLOCK, hi):
            wi = w[i]
            gi = g[i]
            if do2:
                gi = gi + l2 * wi
            if do1:
                if wi > 0:
                    s = 1
                elif wi < 0:
                    s = -1
                elif wi == 0:
                    s = 0
                else:
                    s = wi      # NaN, like np.sign
                gi = gi + l1 * s
            g[i] = gi


def penalty_grad(w, g, l1, l2):
    """In place: g += l2 * w, then g += l1 * sign(w) (each skipped when its coefficient is 0)."""
    _penalty_grad(w.reshape(-1), g.reshape(-1), l1, l2)


def max_norm(floating[:, ::1] W, double c):
    """In place, W (in, out): column j with ||W[:, j]|| > c (norm in double) is scaled by c/||W[:, j]||.
    Each column's sum runs over the rows in order (independent of threads)."""
    cdef Py_ssize_t n = W.shape[0], f = W.shape[1], nb = (f + COLBLOCK - 1) // COLBLOCK
    cdef Py_ssize_t b, i, j, j0, j1
    cdef int nt = _threads(n * f)
    cdef double* nrm
    cdef floating* fac
    cdef double t
    cdef bint any_over = False
    if n == 0 or f == 0:
        return
    nrm = <double*>malloc(f * sizeof(double))
    fac = <floating*>malloc(f * sizeof(floating))
    if nrm == NULL or fac == NULL:
        free(nrm)
        free(fac)
        raise MemoryError()
    for b in prange(nb, nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        j0 = b * COLBLOCK
        j1 = min(j0 + COLBLOCK, f)
        for j in range(j0, j1):
            nrm[j] = 0.0
        for i in range(n):
            for j in range(j0, j1):
                t = W[i, j]
                nrm[j] = nrm[j] + t * t
    with nogil:
        for j in range(f):
            t = sqrt(nrm[j])
            if t > c:
                fac[j] = <floating>(c / t)
                any_over = True
            else:
                fac[j] = 1
        if any_over:
            for i in prange(n, schedule="static", num_threads=nt, use_threads_if=nt > 1):
                for j in range(f):
                    if fac[j] != 1:
                        W[i, j] = W[i, j] * fac[j]
    free(nrm)
    free(fac)


# ----------------------------------------------------------------------------- bound multi-tensor update
# One optimiser step over K tensors in two calls instead of 2K: the arrays are bound once (their
# data pointers kept, the arrays referenced so they stay alive), then each step
#   sumsq()  = sum_k sumsq(g_k): tensor by tensor, each over its BLOCK chunks in order -- the same
#              additions, in the same order, as summing the single-tensor sumsq results;
#   update() = for every k, the single-tensor rule update of (w_k, g_k, states_k) with wd_k,
#              run as one parallel region over all BLOCK chunks of all tensors (same per-element
#              arithmetic as the single-tensor kernels: identical results).
cdef enum:
    RULE_SGD = 0
    RULE_MOMENTUM = 1
    RULE_NESTEROV = 2
    RULE_ADAGRAD = 3
    RULE_RMSPROP = 4
    RULE_ADAM = 5

_RULES = {"sgd": (RULE_SGD, 0), "momentum": (RULE_MOMENTUM, 1), "nesterov": (RULE_NESTEROV, 1),
          "adagrad": (RULE_ADAGRAD, 1), "rmsprop": (RULE_RMSPROP, 1), "adam": (RULE_ADAM, 2)}
_SNAMES = {"sgd": (), "momentum": ("v",), "nesterov": ("v",), "adagrad": ("h",),
           "rmsprop": ("h",), "adam": ("m", "v")}      # dlfast.kernels.RULES


cdef inline Py_ssize_t _fused_work(int rule, Py_ssize_t total) noexcept nogil:
    """_threads work of a fused update (and its norm pass) over total elements. SGD, Momentum and
    Nesterov (a few multiply-adds per element, memory-bound) count 1/8 per element: a training
    step's gradients sit in the cache of the core that just wrote them, and a second core only
    adds cross-core traffic below ~2^18 elements (SGD, batch 1, 110k parameters, 2 threads: the
    update 30-41 us in parallel, 19-21 us on one core). AdaGrad, RMSProp and Adam (a square root
    and a division per element: about 4x the time per element of the SGD step that measures the
    threshold) count 4: two cores win from ~16k elements (Adam over the 60k parameters of a
    100-256-128-10 MLP: 50 -> 34 us)."""
    if rule == RULE_SGD or rule == RULE_MOMENTUM or rule == RULE_NESTEROV:
        return total // 8
    return total * 4


cdef void _bound_sumsq(floating* dummy, char** g, Py_ssize_t* item_k, Py_ssize_t* item_lo,
                       Py_ssize_t* item_n, Py_ssize_t* first, Py_ssize_t nk, Py_ssize_t nitems,
                       Py_ssize_t work, double* part, double* out) noexcept nogil:
    cdef int nt = _threads(work)
    cdef Py_ssize_t it, k
    cdef double s, ss = 0.0
    if nt == 1:                 # no region: a false if() clause still starts a team (~0.85 us)
        for it in range(nitems):
            part[it] = _block_sumsq(<const floating*>g[item_k[it]] + item_lo[it], item_n[it])
    else:
        for it in prange(nitems, schedule="static", num_threads=nt):
            part[it] = _block_sumsq(<const floating*>g[item_k[it]] + item_lo[it], item_n[it])
    for k in range(nk):
        s = 0.0
        for it in range(first[k], first[k + 1]):
            s = s + part[it]
        ss = ss + s
    out[0] = ss


cdef void _bound_update(floating* dummy, int rule, char** w, char** g, char** s1, char** s2,
                        double* wd, Py_ssize_t* item_k, Py_ssize_t* item_lo, Py_ssize_t* item_n,
                        Py_ssize_t nitems, Py_ssize_t work, double lr, double h1, double h2,
                        double eps, bint flag, bint decoupled, double step, double gs,
                        double cv) noexcept nogil:
    cdef int nt = _threads(work)
    cdef Py_ssize_t t, q, r, lo
    if nt == 1:                 # no region: a false if() clause still starts a team (~0.85 us)
        _bound_items(dummy, rule, w, g, s1, s2, wd, item_k, item_lo, item_n, 0, nitems, lr, h1,
                     h2, eps, flag, decoupled, step, gs, cv)
    else:
        # one call per thread (its scalars derived once), over the contiguous items a static
        # schedule gives it: the first nitems % nt threads take one item more
        q = nitems // nt
        r = nitems % nt
        for t in prange(nt, schedule="static", num_threads=nt):
            lo = t * q + min(t, r)
            _bound_items(dummy, rule, w, g, s1, s2, wd, item_k, item_lo, item_n, lo,
                         lo + q + (1 if t < r else 0), lr, h1, h2, eps, flag, decoupled, step,
                         gs, cv)


cdef inline void _bound_items(floating* dummy, int rule, char** w, char** g, char** s1,
                              char** s2, double* wd, Py_ssize_t* item_k, Py_ssize_t* item_lo,
                              Py_ssize_t* item_n, Py_ssize_t it0, Py_ssize_t it1, double lr,
                              double h1, double h2, double eps, bint flag, bint decoupled,
                              double step, double gs, double cv) noexcept nogil:
    """Work items [it0, it1) of _bound_update (the scalars derived here are the same for every
    item)."""
    cdef Py_ssize_t it, k, lo, n
    cdef double bc1 = 1.0, bc2 = 1.0
    cdef floating step_size = 0, sbc2 = 1, shrink
    cdef floating flr = <floating>lr, fgs = <floating>gs, fcv = <floating>cv, feps = <floating>eps
    cdef floating fh1 = <floating>h1, fh2 = <floating>h2
    cdef floating omh1 = <floating>(1.0 - h1), omh2 = <floating>(1.0 - h2)
    cdef floating fwd
    if rule == RULE_ADAM:
        bc1 = 1.0 - pow(h1, step)
        bc2 = 1.0 - pow(h2, step)
        step_size = <floating>(lr * sqrt(bc2) / bc1 if flag else lr / bc1)
        sbc2 = <floating>(1.0 if flag else sqrt(bc2))
    elif rule == RULE_ADAGRAD:
        fh1 = 1
        omh1 = 1
    for it in range(it0, it1):
        k = item_k[it]
        lo = item_lo[it]
        n = item_n[it]
        fwd = <floating>wd[k]
        if rule == RULE_SGD:
            _sgd_blk(<floating*>w[k] + lo, <const floating*>g[k] + lo, n, flr, fgs, fcv, fwd,
                     wd[k] != 0.0)
        elif rule == RULE_MOMENTUM or rule == RULE_NESTEROV:
            _mom_blk(<floating*>w[k] + lo, <const floating*>g[k] + lo, <floating*>s1[k] + lo, n,
                     flr, fh1, fgs, fcv, fwd, wd[k] != 0.0, rule == RULE_NESTEROV)
        elif rule == RULE_ADAGRAD or rule == RULE_RMSPROP:
            _ada_blk(<floating*>w[k] + lo, <const floating*>g[k] + lo, <floating*>s1[k] + lo, n,
                     flr, fh1, omh1, feps, fgs, fcv, fwd, wd[k] != 0.0, flag)
        else:
            shrink = <floating>(1.0 - lr * wd[k] if decoupled else 1.0)
            _adam_blk(<floating*>w[k] + lo, <const floating*>g[k] + lo, <floating*>s1[k] + lo,
                      <floating*>s2[k] + lo, n, fh1, omh1, fh2, omh2, feps, step_size, sbc2,
                      shrink, fgs, fcv, fwd, (not decoupled) and wd[k] != 0.0)


cdef double _EMPTY[1]


cdef char* _data(a) except NULL:
    """Address of a C-contiguous array's first element (a 1-element scratch for size 0)."""
    cdef const unsigned char[::1] mv = a.reshape(-1).view("u1")
    if mv.shape[0] == 0:
        return <char*>_EMPTY
    return <char*>&mv[0]


cdef class BoundUpdate:
    """``bind_update(rule, ws, gs, states, wds, hyper)``: see ``dlfast.kernels.bind_update``.
    Arrays must already be validated (C-contiguous, one dtype, shapes, writeable, disjoint)."""
    cdef readonly object rule, arrays
    cdef tuple snames               # the rule's state names (RULES)
    cdef list grads                 # the gradients of the last take
    cdef tuple held                 # ws and state arrays (writeable checks of take)
    cdef size_t* starts             # their [start, end) byte spans, sorted (overlap tests)
    cdef size_t* ends
    cdef Py_ssize_t nspans
    cdef int code, is_double
    cdef Py_ssize_t nk, nitems, work
    cdef char** w
    cdef char** g
    cdef char** s1
    cdef char** s2
    cdef double* wd
    cdef Py_ssize_t* item_k
    cdef Py_ssize_t* item_lo
    cdef Py_ssize_t* item_n
    cdef Py_ssize_t* first
    cdef double* part
    cdef double h1, h2, eps
    cdef bint flag, decoupled

    def __cinit__(self, rule, ws, gs, states, wds, hyper):
        cdef Py_ssize_t k, it, n, lo
        code, nstate = _RULES[rule]
        self.rule, self.code = rule, code
        self.snames = _SNAMES[rule]
        self.arrays = (tuple(ws), tuple(gs), tuple(tuple(s) for s in states))
        self.nk = nk = len(ws)
        self.is_double = nk > 0 and ws[0].dtype.itemsize == 8
        self.h1, self.h2, self.eps, self.flag, self.decoupled = hyper
        sizes = [w.size for w in ws]
        self.work = _fused_work(code, sum(sizes))
        self.nitems = sum(_nblocks(n) for n in sizes)
        self.w = <char**>malloc((nk + 1) * sizeof(char*))
        self.g = <char**>malloc((nk + 1) * sizeof(char*))
        self.s1 = <char**>malloc((nk + 1) * sizeof(char*))
        self.s2 = <char**>malloc((nk + 1) * sizeof(char*))
        self.wd = <double*>malloc((nk + 1) * sizeof(double))
        self.first = <Py_ssize_t*>malloc((nk + 1) * sizeof(Py_ssize_t))
        self.item_k = <Py_ssize_t*>malloc((self.nitems + 1) * sizeof(Py_ssize_t))
        self.item_lo = <Py_ssize_t*>malloc((self.nitems + 1) * sizeof(Py_ssize_t))
        self.item_n = <Py_ssize_t*>malloc((self.nitems + 1) * sizeof(Py_ssize_t))
        self.part = <double*>malloc((self.nitems + 1) * sizeof(double))
        if (self.w == NULL or self.g == NULL or self.s1 == NULL or self.s2 == NULL
                or self.wd == NULL or self.first == NULL or self.item_k == NULL
                or self.item_lo == NULL or self.item_n == NULL or self.part == NULL):
            raise MemoryError()
        it = 0
        for k in range(nk):
            self.w[k] = _data(ws[k])
            self.g[k] = _data(gs[k])
            self.s1[k] = _data(states[k][0]) if nstate >= 1 else NULL
            self.s2[k] = _data(states[k][1]) if nstate >= 2 else NULL
            self.wd[k] = wds[k]
            self.first[k] = it
            n = sizes[k]
            lo = 0
            while lo < n:
                self.item_k[it], self.item_lo[it], self.item_n[it] = k, lo, min(BLOCK, n - lo)
                it += 1
                lo += BLOCK
        self.first[nk] = it
        self.held = tuple(ws) + tuple(a for st in states for a in st[:nstate])
        spans = sorted((<size_t>_data(a), <size_t>a.nbytes) for a in self.held if a.size)
        self.nspans = len(spans)
        self.starts = <size_t*>malloc((self.nspans + 1) * sizeof(size_t))
        self.ends = <size_t*>malloc((self.nspans + 1) * sizeof(size_t))
        if self.starts == NULL or self.ends == NULL:
            raise MemoryError()
        for k, (p0, nb) in enumerate(spans):
            self.starts[k], self.ends[k] = p0, p0 + nb

    def step(self, tuple names, params, grads, state, tuple sts, double lr, bint norm,
             double clip_norm, double clip_eps, double clip_value, counter):
        """One optimiser step with this binding, its checks in C: -1.0 when it does not apply
        (params not a dict, grads or state not exact dicts, grads' keys not ``names``,
        params[names[k]] not ws[k], state[names[k]] not the dict sts[k], sts[k] not holding the
        bound state arrays under ``snames``, per-tensor counters sts[k][counter] not one int, a
        gradient that ``take`` refuses); NaN when ``norm`` and the sum of squares is not finite (nothing
        updated); else update(lr, grad_scale, clip_value, step) with grad_scale = clip_norm /
        (n + clip_eps) when 0 < clip_norm < n, n = sqrt(sumsq()) (when ``norm``), step = t + 1
        and every sts[k][counter] = t + 1 (``counter`` None: step = 1), and return n (0.0
        without ``norm``)."""
        cdef Py_ssize_t k, j, nst = len(self.snames)
        cdef double total, n = 0.0, gs = 1.0, stepv = 1.0
        cdef PyObject* c
        if not isinstance(params, dict) or type(grads) is not dict or type(state) is not dict:
            return -1.0
        if len(<dict>grads) != self.nk or len(names) != self.nk or len(sts) != self.nk:
            return -1.0
        ws, states = self.arrays[0], self.arrays[2]
        gl = PyList_New(0)
        t = None
        for k in range(self.nk):
            name = names[k]
            g = PyDict_GetItem(grads, name)
            st = sts[k]
            if (g == NULL or PyDict_GetItem(params, name) != <PyObject*>ws[k]
                    or PyDict_GetItem(state, name) != <PyObject*>st or type(st) is not dict):
                return -1.0
            for j in range(nst):
                if PyDict_GetItem(st, self.snames[j]) != <PyObject*>states[k][j]:
                    return -1.0
            if counter is not None:
                c = PyDict_GetItem(st, counter)
                if c == NULL or type(<object>c) is not int:
                    return -1.0
                if t is None:
                    t = <object>c
                elif not (<object>c == t):
                    return -1.0
            gl.append(<object>g)
        if t is not None:
            if not 0 <= t < 2 ** 52:
                return -1.0
            t = t + 1
            stepv = <double>t
        if self._take(gl) >= 0:
            return -1.0
        if norm:
            total = self._sumsq()
            if not (total - total == 0.0):
                return float("nan")
            n = sqrt(total)
            if clip_norm > 0.0 and n > clip_norm:
                gs = clip_norm / (n + clip_eps)
        self._update(lr, gs, clip_value, stepv)
        if t is not None:
            for k in range(self.nk):
                (<dict>sts[k])[counter] = t
        return n

    def take(self, list gs):
        """-1 and the next sumsq()/update() read gs, when every gs[k] is an ndarray of ws[k]'s
        shape and dtype, C-contiguous, sharing no memory with a bound array, and every bound
        array is writeable; else the index of the first that is not (nothing taken)."""
        return self._take(gs)

    cdef Py_ssize_t _take(self, list gs) except -2:
        cdef Py_ssize_t k, lo, hi, mid
        cdef size_t p0, p1
        cdef cnp.ndarray g, w
        if len(gs) != self.nk:
            return 0
        for k in range(len(self.held)):
            if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>self.held[k]):
                return 0
        ws = self.arrays[0]
        for k in range(self.nk):
            if not isinstance(gs[k], cnp.ndarray):
                return k
            g, w = gs[k], ws[k]
            if (cnp.PyArray_TYPE(g) != cnp.PyArray_TYPE(w) or not cnp.PyArray_IS_C_CONTIGUOUS(g)
                    or not cnp.PyArray_SAMESHAPE(g, w)):
                return k
            if cnp.PyArray_SIZE(g) == 0:
                continue
            p0 = <size_t>cnp.PyArray_DATA(g)
            p1 = p0 + <size_t>cnp.PyArray_NBYTES(g)
            lo, hi = 0, self.nspans          # the last span starting before p1 is the one to test
            while lo < hi:
                mid = (lo + hi) // 2
                if self.starts[mid] < p1:
                    lo = mid + 1
                else:
                    hi = mid
            if lo > 0 and self.ends[lo - 1] > p0:
                return k
        for k in range(self.nk):
            g = gs[k]
            self.g[k] = <char*>cnp.PyArray_DATA(g) if cnp.PyArray_SIZE(g) else <char*>_EMPTY
        self.grads = gs                 # keeps them alive while bound
        return -1

    def __dealloc__(self):
        free(self.starts)
        free(self.ends)
        free(self.w)
        free(self.g)
        free(self.s1)
        free(self.s2)
        free(self.wd)
        free(self.first)
        free(self.item_k)
        free(self.item_lo)
        free(self.item_n)
        free(self.part)

    def set_hyper(self, hyper):
        self.h1, self.h2, self.eps, self.flag, self.decoupled = hyper

    def sumsq(self):
        """sum_k sumsq(g_k) (float64; the single-tensor sums added in order)."""
        return self._sumsq()

    def update(self, double lr, double grad_scale, double clip_value, double step):
        """Every tensor's rule update with these scalars (step: Adam's t)."""
        self._update(lr, grad_scale, clip_value, step)

    cdef double _sumsq(self) noexcept:
        cdef double out = 0.0
        with nogil:
            if self.is_double:
                _bound_sumsq(<double*>NULL, self.g, self.item_k, self.item_lo, self.item_n,
                             self.first, self.nk, self.nitems, self.work, self.part, &out)
            else:
                _bound_sumsq(<float*>NULL, self.g, self.item_k, self.item_lo, self.item_n,
                             self.first, self.nk, self.nitems, self.work, self.part, &out)
        return out

    cdef void _update(self, double lr, double grad_scale, double clip_value,
                      double step) noexcept:
        with nogil:
            if self.is_double:
                _bound_update(<double*>NULL, self.code, self.w, self.g, self.s1, self.s2, self.wd,
                              self.item_k, self.item_lo, self.item_n, self.nitems, self.work, lr,
                              self.h1, self.h2, self.eps, self.flag, self.decoupled, step,
                              grad_scale, clip_value)
            else:
                _bound_update(<float*>NULL, self.code, self.w, self.g, self.s1, self.s2, self.wd,
                              self.item_k, self.item_lo, self.item_n, self.nitems, self.work, lr,
                              self.h1, self.h2, self.eps, self.flag, self.decoupled, step,
                              grad_scale, clip_value)


def bind_update(rule, ws, gs, states, wds, hyper):
    return BoundUpdate(rule, ws, gs, states, wds, hyper)
