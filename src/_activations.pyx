"""Elementwise activations and PReLU (parallel over fixed blocks / rows).

activation: y = act(x); dx = dout * act'(y)                     (table in dlfast.kernels)
prelu:      y = x if x > 0 else slope * x; dx = dout if x > 0 else slope * dout
            dslope = sum (dout * x)[x <= 0], reduced to slope's shape (double, fixed row blocks)
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from _op cimport dlf_op
from _act cimport (act_code, act_row, act_grad_all, act_work, ACT_BLOCK, CHEAP, buf_get,
                  buf_release, DT_F32, DT_FLOAT)

include "_parallel.pxi"

cdef extern from *:
    """
    /* PReLU's row loops, compiled for AVX-512, AVX2 and baseline (DLF_CLONES; no contraction:
       every clone gives the same bits). per: s is a row of f slopes, else one value. */
    #include "dlfast_clones.h"
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC push_options
    #pragma GCC optimize("fp-contract=off")
    #endif
    #define DLF_PRELU_ROWS(S, T)                                                                  \
    DLF_CLONES static void dlf_prelu_row##S(T* y, const T* x, const T* s, long f, int per) {    \
        long j;                                                                                 \
        if (per) { for (j = 0; j < f; j++) { T v = x[j]; y[j] = v > 0 ? v : s[j] * v; } }       \
        else { T s0 = s[0]; for (j = 0; j < f; j++) { T v = x[j]; y[j] = v > 0 ? v : s0 * v; } }\
    }                                                                                           \
    DLF_CLONES static void dlf_prelu_dx_row##S(T* dx, const T* g, const T* x, const T* s, long f,\
                                               int per) {                                       \
        long j;                                                                                 \
        if (per) { for (j = 0; j < f; j++) dx[j] = x[j] > 0 ? g[j] : s[j] * g[j]; }             \
        else { T s0 = s[0]; for (j = 0; j < f; j++) dx[j] = x[j] > 0 ? g[j] : s0 * g[j]; }      \
    }                                                                                           \
    DLF_CLONES static void dlf_prelu_contrib_row##S(double* p, const T* g, const T* x, long f) {\
        long j;                                                                                 \
        for (j = 0; j < f; j++) { T v = x[j]; T c = v > 0 ? (T)0 : g[j] * v; p[j] += (double)c; }\
    }
    DLF_PRELU_ROWS(f, float)
    DLF_PRELU_ROWS(d, double)
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    void dlf_prelu_rowf(float*, const float*, const float*, long, int) noexcept nogil
    void dlf_prelu_rowd(double*, const double*, const double*, long, int) noexcept nogil
    void dlf_prelu_dx_rowf(float*, const float*, const float*, const float*, long,
                           int) noexcept nogil
    void dlf_prelu_dx_rowd(double*, const double*, const double*, const double*, long,
                           int) noexcept nogil
    void dlf_prelu_contrib_rowf(double*, const float*, const float*, long) noexcept nogil
    void dlf_prelu_contrib_rowd(double*, const double*, const double*, long) noexcept nogil

cdef enum:
    ROWBLOCK = 64      # rows per block of the dslope reduction


def activation_forward(x, out, activation, alpha):
    """out = act(x) (out may be x)."""
    cdef int code = act_code(activation)
    cdef double a = alpha
    cdef Py_buffer v[2]
    cdef Py_ssize_t n
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = buf_get(x, &v[0], DT_FLOAT, -1, False)
        n = v[0].len // v[0].itemsize
        buf_get(out, &v[1], dt, n, True)
        with nogil:
            if dt == DT_F32:
                _act_fwd(<float*>v[1].buf, <const float*>v[0].buf, n, code, <float>a)
            else:
                _act_fwd(<double*>v[1].buf, <const double*>v[0].buf, n, code, a)
    finally:
        buf_release(v, 2)


cdef void _act_fwd(floating* y, const floating* x, Py_ssize_t n, int code,
                   floating a) noexcept nogil:
    cdef Py_ssize_t nb = (n + ACT_BLOCK - 1) // ACT_BLOCK, blk, lo
    cdef int nt = _threads(act_work(n, code))
    if nt == 1:                 # the same blocks, no parallel region (~0.5 us even on one thread)
        for blk in range(nb):
            lo = blk * ACT_BLOCK
            act_row(y + lo, x + lo, NULL, min(ACT_BLOCK, n - lo), code, a)
        return
    for blk in prange(nb, num_threads=nt, schedule="static"):
        lo = blk * ACT_BLOCK
        act_row(y + lo, x + lo, NULL, min(ACT_BLOCK, n - lo), code, a)


def activation_backward(dout, out, dx, activation, alpha):
    """dx = dout * act'(out)."""
    cdef int code = act_code(activation)
    cdef double a = alpha
    cdef Py_buffer v[3]
    cdef Py_ssize_t n
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = buf_get(out, &v[0], DT_FLOAT, -1, False)
        n = v[0].len // v[0].itemsize
        buf_get(dout, &v[1], dt, n, False)
        buf_get(dx, &v[2], dt, n, True)
        with nogil:
            if dt == DT_F32:
                _act_bwd(<float*>v[2].buf, <const float*>v[1].buf, <const float*>v[0].buf, n,
                         code, <float>a)
            else:
                _act_bwd(<double*>v[2].buf, <const double*>v[1].buf, <const double*>v[0].buf, n,
                         code, a)
    finally:
        buf_release(v, 3)


cdef inline void _act_bwd(floating* dx, const floating* dout, const floating* y, Py_ssize_t n,
                          int code, floating a) noexcept nogil:
    act_grad_all(dx, dout, y, n, code, a, _threads(n // CHEAP))


cdef int _mode(slope, x):
    """0: one shared slope (1,); 1: per feature (F,); 2: per element (N, F)."""
    if slope.ndim == 1 and slope.shape[0] == 1:
        return 0
    if slope.ndim == 1:
        return 1
    return 2


cdef inline void _prelu_row(floating* y, const floating* x, const floating* s, Py_ssize_t f,
                            int mode) noexcept nogil:
    """y = x if x > 0 else s * x; s is one value (mode 0) or a row of f values."""
    if floating is float:
        dlf_prelu_rowf(y, x, s, f, mode != 0)
    else:
        dlf_prelu_rowd(y, x, s, f, mode != 0)


cdef inline void _prelu_contrib_row(double* p, const floating* g, const floating* x,
                                    Py_ssize_t f) noexcept nogil:
    """p[j] += (0 if x > 0 else g * x), the product in floating, the sum in double."""
    if floating is float:
        dlf_prelu_contrib_rowf(p, g, x, f)
    else:
        dlf_prelu_contrib_rowd(p, g, x, f)


cdef void _prelu_fwd(floating* out, const floating* x, const floating* slope, Py_ssize_t n,
                     Py_ssize_t f, int mode) noexcept nogil:
    cdef Py_ssize_t r
    cdef int nt = _threads(n * f // CHEAP)
    if n == 0 or f == 0:
        return
    if nt == 1:
        for r in range(n):
            _prelu_row(out + r * f, x + r * f, slope + (r * f if mode == 2 else 0), f, mode)
    else:
        for r in prange(n, num_threads=nt, schedule="static"):
            _prelu_row(out + r * f, x + r * f, slope + (r * f if mode == 2 else 0), f, mode)


def _prelu_fwd_mv(const floating[:, ::1] x, const floating[::1] slope, floating[:, ::1] out,
                  int mode):
    if x.shape[0] and x.shape[1]:
        with nogil:
            _prelu_fwd(&out[0, 0], &x[0, 0], &slope[0], x.shape[0], x.shape[1], mode)


def prelu_forward(x, slope, out):
    """out = x if x > 0 else slope * x (slope (1,), (F,) or (N, F))."""
    _prelu_fwd_mv(x, slope.reshape(-1), out, _mode(slope, x))


cdef inline Py_ssize_t _prelu_part_len(Py_ssize_t n, Py_ssize_t f) noexcept nogil:
    """Doubles of the dslope partial sums: one row of f per block of ROWBLOCK rows."""
    return ((n + ROWBLOCK - 1) // ROWBLOCK) * f


cdef void _prelu_bwd(floating* dx, floating* dslope, const floating* dout, const floating* x,
                     const floating* slope, Py_ssize_t n, Py_ssize_t f, int mode,
                     double* part) noexcept nogil:
    """dx (NULL: skipped) and dslope (NULL: skipped; ``part``: _prelu_part_len doubles when
    mode != 2)."""
    cdef Py_ssize_t nb = (n + ROWBLOCK - 1) // ROWBLOCK, blk, r, j, r0, r1
    cdef int nt = _threads(n * f // CHEAP)
    cdef double* p
    cdef double s
    cdef floating v
    if n == 0 or f == 0:
        if dslope != NULL:
            for j in range(1 if mode == 0 else (f if mode == 1 else 0)):
                dslope[j] = 0
        return
    if dslope == NULL or mode == 2:
        part = NULL
    for blk in prange(nb, num_threads=nt, use_threads_if=nt > 1, schedule="static"):
        r0 = blk * ROWBLOCK
        r1 = min(r0 + ROWBLOCK, n)
        if part != NULL:
            p = part + blk * f
            for j in range(f):
                p[j] = 0
        for r in range(r0, r1):
            if dx != NULL:        # dx = dout if x > 0 else slope * dout
                _prelu_dx_row(dx + r * f, dout + r * f, x + r * f,
                              slope + (r * f if mode == 2 else 0), f, mode)
            if part != NULL:
                _prelu_contrib_row(p, dout + r * f, x + r * f, f)
            elif dslope != NULL:  # per-element slope: no reduction
                for j in range(f):
                    v = x[r * f + j]
                    dslope[r * f + j] = 0 if v > 0 else dout[r * f + j] * v
    if part != NULL:
        if mode == 1:
            for j in range(f):
                s = 0
                for blk in range(nb):
                    s = s + part[blk * f + j]
                dslope[j] = <floating>s
        else:
            s = 0
            for blk in range(nb):
                for j in range(f):
                    s = s + part[blk * f + j]
            dslope[0] = <floating>s


def _prelu_bwd_mv(const floating[:, ::1] dout, const floating[:, ::1] x,
                  const floating[::1] slope, floating[:, ::1] dx, floating[::1] dslope, int mode):
    cdef Py_ssize_t n = x.shape[0], f = x.shape[1]
    cdef double* part = NULL
    cdef floating* dxp = NULL
    cdef floating* dsp = NULL
    if dslope is not None and dslope.shape[0]:
        dsp = &dslope[0]
    if n == 0 or f == 0:                # only dslope's zeros: no array is read (slope may
        with nogil:                     # be empty: no &slope[0])
            _prelu_bwd(dxp, dsp, <const floating*>NULL, <const floating*>NULL,
                       <const floating*>NULL, n, f, mode, NULL)
        return
    if dx is not None:
        dxp = &dx[0, 0]
    if dsp != NULL and mode != 2:
        part = <double*>malloc(<size_t>_prelu_part_len(n, f) * sizeof(double))
        if part == NULL:
            raise MemoryError()
    try:
        with nogil:
            _prelu_bwd(dxp, dsp, &dout[0, 0], &x[0, 0], &slope[0], n, f, mode, part)
    finally:
        free(part)


cdef inline void _prelu_dx_row(floating* dx, const floating* g, const floating* x,
                               const floating* s, Py_ssize_t f, int mode) noexcept nogil:
    if floating is float:
        dlf_prelu_dx_rowf(dx, g, x, s, f, mode != 0)
    else:
        dlf_prelu_dx_rowd(dx, g, x, s, f, mode != 0)


def prelu_backward(dout, x, slope, dx, dslope):
    """dx = dout if x > 0 else slope * dout; dslope = sum (dout * x)[x <= 0] to slope's shape."""
    _prelu_bwd_mv(dout, x, slope.reshape(-1), dx, None if dslope is None else dslope.reshape(-1),
                  _mode(slope, x))


# ---------------------------------------------------------------------------- op (dlfast.kernels.OPS)
ctypedef struct _ActivationC:
    dlf_op op           # first: the program sees a dlf_op*
    Py_ssize_t n
    int code, dt
    double alpha


cdef int _act_op_fwd(dlf_op* p, const void* x) noexcept nogil:
    cdef _ActivationC* s = <_ActivationC*>p
    if s.dt == DT_F32:
        _act_fwd(<float*>s.op.out, <const float*>x, s.n, s.code, <float>s.alpha)
    else:
        _act_fwd(<double*>s.op.out, <const double*>x, s.n, s.code, s.alpha)
    return 0


cdef int _act_op_bwd(dlf_op* p, const void* x, const void* dout) noexcept nogil:
    cdef _ActivationC* s = <_ActivationC*>p
    if s.op.dx == NULL:
        return 0
    if s.dt == DT_F32:
        _act_bwd(<float*>s.op.dx, <const float*>dout, <const float*>s.op.out, s.n, s.code,
                 <float>s.alpha)
    else:
        _act_bwd(<double*>s.op.dx, <const double*>dout, <const double*>s.op.out, s.n, s.code,
                 s.alpha)
    return 0


cdef class ActivationOp:
    """``activation_forward(x, out, ...)`` and ``activation_backward(dout, out, dx, ...)`` of
    fixed arrays (dx None: no backward): an op of a training step (dlfast_op.h). The same checks
    as the two kernels, once; ``address()`` is the ``dlf_op*``."""
    cdef _ActivationC c
    cdef Py_buffer v[2]

    def __cinit__(self, out, dx, activation, alpha):
        memset(self.v, 0, sizeof(self.v))
        memset(&self.c, 0, sizeof(self.c))
        self.c.code = act_code(activation)
        self.c.alpha = alpha
        self.c.dt = buf_get(out, &self.v[0], DT_FLOAT, -1, True)
        self.c.n = self.v[0].len // self.v[0].itemsize
        buf_get(dx, &self.v[1], self.c.dt, self.c.n, True)
        self.c.op.out, self.c.op.dx = self.v[0].buf, self.v[1].buf
        self.c.op.fwd = _act_op_fwd
        self.c.op.bwd = _act_op_bwd

    def __dealloc__(self):
        buf_release(self.v, 2)

    def address(self):
        return <size_t>&self.c.op


ctypedef struct _PReLUC:
    dlf_op op           # first: the program sees a dlf_op*
    void* slope
    void* dslope
    double* part
    Py_ssize_t n, f
    int mode, dt


cdef int _prelu_op_fwd(dlf_op* p, const void* x) noexcept nogil:
    cdef _PReLUC* s = <_PReLUC*>p
    if s.dt == DT_F32:
        _prelu_fwd(<float*>s.op.out, <const float*>x, <const float*>s.slope, s.n, s.f, s.mode)
    else:
        _prelu_fwd(<double*>s.op.out, <const double*>x, <const double*>s.slope, s.n, s.f, s.mode)
    return 0


cdef int _prelu_op_bwd(dlf_op* p, const void* x, const void* dout) noexcept nogil:
    cdef _PReLUC* s = <_PReLUC*>p
    if s.dt == DT_F32:
        _prelu_bwd(<float*>s.op.dx, <float*>s.dslope, <const float*>dout, <const float*>x,
                   <const float*>s.slope, s.n, s.f, s.mode, s.part)
    else:
        _prelu_bwd(<double*>s.op.dx, <double*>s.dslope, <const double*>dout, <const double*>x,
                   <const double*>s.slope, s.n, s.f, s.mode, s.part)
    return 0


cdef class PReLUOp:
    """The ``prelu`` op (dlfast.kernels.OPS): ``prelu_forward(x, slope, out)`` and
    ``prelu_backward(dout, x, slope, dx, dslope)`` (either None: skipped) of fixed arrays
    (out: (N, F); slope (1,) or (F,))."""
    cdef _PReLUC c
    cdef Py_buffer v[4]

    def __cinit__(self, slope, out, dx, dslope):
        cdef Py_ssize_t ns
        memset(self.v, 0, sizeof(self.v))
        memset(&self.c, 0, sizeof(self.c))
        self.c.dt = buf_get(out, &self.v[0], DT_FLOAT, -1, True)
        if self.v[0].ndim != 2:
            raise ValueError(f"out must be 2-D, got {self.v[0].ndim}-D")
        self.c.n, self.c.f = self.v[0].shape[0], self.v[0].shape[1]
        buf_get(slope, &self.v[1], self.c.dt, -1, False)
        ns = self.v[1].len // self.v[1].itemsize
        if ns != 1 and ns != self.c.f:
            raise ValueError(f"slope must have 1 or {self.c.f} elements, got {ns}")
        self.c.mode = 0 if ns == 1 else 1
        buf_get(dx, &self.v[2], self.c.dt, self.c.n * self.c.f, True)
        buf_get(dslope, &self.v[3], self.c.dt, ns, True)
        if dslope is not None:
            self.c.part = <double*>malloc(max(_prelu_part_len(self.c.n, self.c.f), 1)
                                          * sizeof(double))
            if self.c.part == NULL:
                raise MemoryError()
        self.c.op.out, self.c.slope = self.v[0].buf, self.v[1].buf
        self.c.op.dx, self.c.dslope = self.v[2].buf, self.v[3].buf
        self.c.op.fwd = _prelu_op_fwd
        self.c.op.bwd = _prelu_op_bwd

    def __dealloc__(self):
        free(self.c.part)
        buf_release(self.v, 4)

    def slot(self, name):
        """Address of the pointer field of the gradient output ``name`` (a program points it at
        another array for one step: dlfast.kernels.PROGRAM_DOC)."""
        if name == "dslope":
            return <size_t>&self.c.dslope
        raise KeyError(name)

    def address(self):
        return <size_t>&self.c.op
