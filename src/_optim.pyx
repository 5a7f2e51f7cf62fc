"""Optimiser updates (in place, one pass), norms and penalties.

Effective gradient, per element, in the array's dtype (scalars rounded to it, as the NumPy backend):
    g' = clip(grad_scale * g, -clip_value, clip_value) + wd * w
(the scale is skipped when grad_scale == 1, the clip when clip_value is inf, the decay when wd == 0).
Reductions accumulate in double over fixed BLOCK-element chunks combined in order: the result does
not depend on the thread count.
"""
from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport sqrt, sqrtf, pow, fabs, INFINITY
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport malloc, free

include "_parallel.pxi"

cdef enum:
    BLOCK = 4096          # elements per parallel work item / reduction chunk
    COLBLOCK = 64         # columns per work item in max_norm


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _geff(floating g, floating w, floating gs, floating cv, floating wd,
                           bint scale, bint clip, bint decay) noexcept nogil:
    """g' = clip(gs * g, -cv, cv) + wd * w (NaN propagates through the clip)."""
    cdef floating ge = g * gs if scale else g
    if clip:
        if ge < -cv:
            ge = -cv
        elif ge > cv:
            ge = cv
    if decay:
        ge = ge + wd * w
    return ge


cdef inline Py_ssize_t _nblocks(Py_ssize_t n) noexcept nogil:
    return (n + BLOCK - 1) // BLOCK


# ----------------------------------------------------------------------------- optimisers
def _sgd(floating[::1] w, const floating[::1] g, double lr_, double wd_, double gs_, double cv_):
    cdef floating lr = <floating>lr_, wd = <floating>wd_, gs = <floating>gs_, cv = <floating>cv_
    cdef bint scale = gs_ != 1.0, clip = cv_ != INFINITY, decay = wd_ != 0.0
    cdef Py_ssize_t n = w.shape[0], b, i, hi
    cdef floating ge
    cdef int nt = _threads(n)
    for b in prange(_nblocks(n), nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        hi = min((b + 1) * BLOCK, n)
        for i in range(b * BLOCK, hi):
            ge = _geff(g[i], w[i], gs, cv, wd, scale, clip, decay)
            w[i] = w[i] - lr * ge


def sgd_update(w, g, lr, wd, grad_scale, clip_value):
    """w -= lr * g'."""
    _sgd(w.reshape(-1), g.reshape(-1), lr, wd, grad_scale, clip_value)


def _momentum(floating[::1] w, const floating[::1] g, floating[::1] v, double lr_, double mu_,
              double wd_, double gs_, double cv_, bint nesterov):
    cdef floating lr = <floating>lr_, mu = <floating>mu_, wd = <floating>wd_
    cdef floating gs = <floating>gs_, cv = <floating>cv_
    cdef bint scale = gs_ != 1.0, clip = cv_ != INFINITY, decay = wd_ != 0.0
    cdef Py_ssize_t n = w.shape[0], b, i, hi
    cdef floating ge, vi
    cdef int nt = _threads(n)
    for b in prange(_nblocks(n), nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        hi = min((b + 1) * BLOCK, n)
        for i in range(b * BLOCK, hi):
            ge = _geff(g[i], w[i], gs, cv, wd, scale, clip, decay)
            vi = v[i] * mu
            vi = vi - lr * ge
            v[i] = vi
            if nesterov:
                w[i] = w[i] + (mu * vi - lr * ge)
            else:
                w[i] = w[i] + vi


def momentum_update(w, g, v, lr, mu, wd, grad_scale, clip_value):
    """v = mu * v - lr * g'; w += v."""
    _momentum(w.reshape(-1), g.reshape(-1), v.reshape(-1), lr, mu, wd, grad_scale, clip_value, False)


def nesterov_update(w, g, v, lr, mu, wd, grad_scale, clip_value):
    """v = mu * v - lr * g'; w += mu * v - lr * g'."""
    _momentum(w.reshape(-1), g.reshape(-1), v.reshape(-1), lr, mu, wd, grad_scale, clip_value, True)


def _adaptive(floating[::1] w, const floating[::1] g, floating[::1] h, double lr_, double rho_,
              double eps_, bint eps_inside, double wd_, double gs_, double cv_, bint rms):
    """AdaGrad (rms False: h += g'^2) or RMSProp (h = rho*h + (1-rho)*g'^2); w -= lr*g'/denom."""
    cdef floating lr = <floating>lr_, rho = <floating>rho_, omr = <floating>(1.0 - rho_)
    cdef floating eps = <floating>eps_, wd = <floating>wd_, gs = <floating>gs_, cv = <floating>cv_
    cdef bint scale = gs_ != 1.0, clip = cv_ != INFINITY, decay = wd_ != 0.0
    cdef Py_ssize_t n = w.shape[0], b, i, hi
    cdef floating ge, hi_, den
    cdef int nt = _threads(n)
    for b in prange(_nblocks(n), nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        hi = min((b + 1) * BLOCK, n)
        for i in range(b * BLOCK, hi):
            ge = _geff(g[i], w[i], gs, cv, wd, scale, clip, decay)
            if rms:
                hi_ = h[i] * rho
                hi_ = hi_ + (omr * ge) * ge
            else:
                hi_ = h[i] + ge * ge
            h[i] = hi_
            if eps_inside:
                den = _sqrt(hi_ + eps)
            else:
                den = _sqrt(hi_) + eps
            w[i] = w[i] - (lr * ge) / den


def adagrad_update(w, g, h, lr, eps, eps_inside, wd, grad_scale, clip_value):
    """h += g'^2; w -= lr * g' / (sqrt(h) + eps)  (eps_inside: / sqrt(h + eps))."""
    _adaptive(w.reshape(-1), g.reshape(-1), h.reshape(-1), lr, 0.0, eps, eps_inside, wd, grad_scale,
              clip_value, False)


def rmsprop_update(w, g, h, lr, rho, eps, eps_inside, wd, grad_scale, clip_value):
    """h = rho * h + (1 - rho) * g'^2; w -= lr * g' / (sqrt(h) + eps)  (eps_inside: / sqrt(h + eps))."""
    _adaptive(w.reshape(-1), g.reshape(-1), h.reshape(-1), lr, rho, eps, eps_inside, wd, grad_scale,
              clip_value, True)


def _adam(floating[::1] w, const floating[::1] g, floating[::1] m, floating[::1] v, double lr_,
          double beta1_, double beta2_, double eps_, long long step, bint eps_hat, double wd_,
          bint decoupled, double gs_, double cv_):
    cdef double bc1 = 1.0 - pow(beta1_, <double>step), bc2 = 1.0 - pow(beta2_, <double>step)
    cdef floating b1 = <floating>beta1_, omb1 = <floating>(1.0 - beta1_)
    cdef floating b2 = <floating>beta2_, omb2 = <floating>(1.0 - beta2_)
    cdef floating eps = <floating>eps_, gs = <floating>gs_, cv = <floating>cv_
    cdef floating wd = <floating>(0.0 if decoupled else wd_)
    cdef floating shrink = <floating>(1.0 - lr_ * wd_)
    # eps_hat: w -= (lr*sqrt(bc2)/bc1) * m / (sqrt(v) + eps); else w -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
    cdef floating step_size = <floating>(lr_ * sqrt(bc2) / bc1 if eps_hat else lr_ / bc1)
    cdef floating sbc2 = <floating>sqrt(bc2)
    cdef bint scale = gs_ != 1.0, clip = cv_ != INFINITY, decay = (not decoupled) and wd_ != 0.0
    cdef Py_ssize_t n = w.shape[0], b, i, hi
    cdef floating ge, mi, vi, wi, den
    cdef int nt = _threads(n)
    for b in prange(_nblocks(n), nogil=True, schedule="static", num_threads=nt, use_threads_if=nt > 1):
        hi = min((b + 1) * BLOCK, n)
        for i in range(b * BLOCK, hi):
            wi = w[i]
            ge = _geff(g[i], wi, gs, cv, wd, scale, clip, decay)
            if decoupled:
                wi = wi * shrink
            mi = m[i] * b1
            mi = mi + omb1 * ge
            m[i] = mi
            vi = v[i] * b2
            vi = vi + (omb2 * ge) * ge
            v[i] = vi
            if eps_hat:
                den = _sqrt(vi) + eps
            else:
                den = _sqrt(vi) / sbc2 + eps
            w[i] = wi - (step_size * mi) / den


def adam_update(w, g, m, v, lr, beta1, beta2, eps, step, eps_hat, wd, decoupled_wd, grad_scale,
                clip_value):
    """Adam / AdamW step t (see dlfast.kernels.adam_update), one pass."""
    _adam(w.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), lr, beta1, beta2, eps, step,
          eps_hat, wd, decoupled_wd, grad_scale, clip_value)


# ----------------------------------------------------------------------------- reductions
cdef inline double _block_sumsq(const floating* x, Py_ssize_t n) noexcept nogil:
    """sum x^2 in double over n elements: 4 interleaved accumulators, fixed order."""
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0, t
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        t = x[i]; a0 = a0 + t * t
        t = x[i + 1]; a1 = a1 + t * t
        t = x[i + 2]; a2 = a2 + t * t
        t = x[i + 3]; a3 = a3 + t * t
        i = i + 4
    while i < n:
        t = x[i]; a0 = a0 + t * t
        i = i + 1
    return (a0 + a1) + (a2 + a3)


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


def _all_finite(const floating[::1] x):
    """No element has an all-ones exponent (inf or NaN): integer test per chunk, early exit."""
    cdef Py_ssize_t n = x.shape[0], i, lo, hi
    cdef const uint32_t* p32
    cdef const uint64_t* p64
    cdef uint32_t e32 = 0x7F800000U
    cdef uint64_t e64 = 0x7FF0000000000000ULL
    cdef int bad = 0
    if n == 0:
        return True
    with nogil:
        lo = 0
        while lo < n and not bad:
            hi = min(lo + BLOCK, n)
            if floating is float:
                p32 = <const uint32_t*>&x[0]
                for i in range(lo, hi):
                    bad |= (p32[i] & e32) == e32
            else:
                p64 = <const uint64_t*>&x[0]
                for i in range(lo, hi):
                    bad |= (p64[i] & e64) == e64
            lo = hi
    return not bad


def all_finite(x):
    """True when no element of x is NaN or infinite."""
    return _all_finite(x.reshape(-1))


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
