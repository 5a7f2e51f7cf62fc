"""Fused affine + activation (row-major; float32 GEMMs on dlfast's own AVX-512 kernel,
dlfast_sgemm.h, where the CPU has it, else and for float64 on a BLAS).

forward:  out = act(x @ W + b)            per block of rows: GEMM, then bias + activation in cache
backward: dz = dout * act'(out), db = sum_n dz (one parallel pass, fixed row blocks)
          dW = x.T @ dz, dx = dz @ W.T    GEMM
maxout:   out[n, o] = max_j z[n, o*k + j], argmax = first j attaining it (NaN wins, as np.argmax);
          dz[n, o*k + argmax[n, o]] = dout[n, o], 0 elsewhere
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer

from _op cimport dlf_op
from _act cimport (act_code, act_row, act_grad_row, ACT_IDENTITY, CHEAP, buf_get, buf_release,
                  DT_F32, DT_FLOAT, DT_I64)

include "_parallel.pxi"

import os

cdef enum:
    ROWBLOCK = 64      # rows per block of the db reduction (fixed: thread-count independent)
    GEMMBLOCK = 16     # least output rows per BLAS call
    COLSPLIT = 64      # below this many rows per block, a GEMM is cut by columns instead
    PANEL = 16         # column blocks are multiples of this (the own kernel's panel width)

# Determinism: every GEMM of m output rows is cut into blocks of gemm_rows(m) rows, each one
# single-threaded BLAS call (dlfast pins the GEMM BLAS, see _set_gemm_blas, to one thread),
# shared out to the threads; each output element is computed by the same call whatever the thread
# count. (A BLAS's result for a row does depend on the rows called with it, so the blocks must not.)
#   gemm_rows(m) = max(GEMMBLOCK, roundup4(ceil(m / P)))
# (the backward's dW and dx, when both are wanted and batch and outputs are within 2x, share
# one region, each cut with P // 2 in place of P)
# P = processors this process may run on, fixed at import (1 without OpenMP): one block per core,
# so each core packs the shared operand once (blocks of 64 rows repacked it m/64 times: +20% at
# 1024x784x100) and the cores get near-equal shares (100 rows on 2: 52 + 48, where rounding to 16
# with 64 at least gave 64 + 36); the blocks, hence the bits, are the same for 1 and N threads.
# A forward or dx GEMM whose row blocks would have fewer than COLSPLIT rows (a small batch), with
# fewer rows than columns, is cut into P column blocks instead, when n's 16-column panels split
# into P equal shares: each block
# then packs 1/P of W once, where row blocks of a batch of 32 each packed all of W (1024x1024: 15%
# of the product).
cdef Py_ssize_t _GEMM_PARTS = 1
if DLFAST_HAVE_OPENMP:
    _GEMM_PARTS = max(1, min(256, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else (os.cpu_count() or 1)))


# The GEMM BLAS: Fortran sgemm/dgemm/sgemv/dgemv (pointer arguments, no hidden lengths), installed
# by _set_gemm_blas: dlfast's own OpenBLAS from scipy-openblas32 (cython_kernels._private_blas),
# or SciPy's cython_blas. None at import: importing scipy.linalg costs ~0.4 s, so SciPy's is
# loaded only when chosen, or by the first kernel call of a process that chose none (_pin_blas).
ctypedef void (*_sgemm_t)(char*, char*, int*, int*, int*, float*, float*, int*, float*, int*,
                          float*, float*, int*) noexcept nogil
ctypedef void (*_dgemm_t)(char*, char*, int*, int*, int*, double*, double*, int*, double*, int*,
                          double*, double*, int*) noexcept nogil
ctypedef void (*_sgemv_t)(char*, int*, int*, float*, float*, int*, float*, int*, float*, float*,
                          int*) noexcept nogil
ctypedef void (*_dgemv_t)(char*, int*, int*, double*, double*, int*, double*, int*, double*,
                          double*, int*) noexcept nogil
cdef _sgemm_t sgemm = NULL
cdef _dgemm_t dgemm = NULL
cdef _sgemv_t sgemv = NULL
cdef _dgemv_t dgemv = NULL


cdef size_t _capi(dict capi, str name) except 0:
    """The address behind SciPy's cython_blas export `name` (a capsule of __pyx_capi__)."""
    cap = capi[name]
    return <size_t>PyCapsule_GetPointer(cap, PyCapsule_GetName(cap))


def _set_gemm_blas(size_t s_gemm, size_t d_gemm, size_t s_gemv, size_t d_gemv):
    """Install the addresses of a BLAS's sgemm_, dgemm_, sgemv_, dgemv_ (all 0: SciPy's
    cython_blas, imported here). Called once by the backend at import, before any kernel runs."""
    global sgemm, dgemm, sgemv, dgemv
    if not (s_gemm and d_gemm and s_gemv and d_gemv):
        from scipy.linalg import cython_blas
        capi = cython_blas.__pyx_capi__
        s_gemm, d_gemm = _capi(capi, "sgemm"), _capi(capi, "dgemm")
        s_gemv, d_gemv = _capi(capi, "sgemv"), _capi(capi, "dgemv")
    sgemm, dgemm = <_sgemm_t>s_gemm, <_dgemm_t>d_gemm
    sgemv, dgemv = <_sgemv_t>s_gemv, <_dgemv_t>d_gemv


cdef void _scipy_blas() noexcept with gil:
    if sgemm == NULL:
        _set_gemm_blas(0, 0, 0, 0)


# The outer product C(m, n) = a (m) b (n)^T of a one-deep GEMM (a batch-1 dW): one rounded product
# per element (no sums, so every clone and stride gives the same bits), vectorised over a row.
cdef extern from *:
    """
    #include "dlfast_clones.h"   /* DLF_CLONES */
    #define DLF_OUTER(S, T)                                                                    \\
    /* c[r * ldc + j] = a[r * as] * b[j * bs] */                                               \\
    DLF_CLONES static void dlf_outer##S(T* c, long ldc, const T* a, long as, const T* b,      \\
                                         long bs, long m, long n) {                            \\
        long r, j;                                                                             \\
        for (r = 0; r < m; r++) {                                                              \\
            T av = a[r * as];                                                                  \\
            T* cr = c + r * ldc;                                                               \\
            if (bs == 1)                                                                       \\
                for (j = 0; j < n; j++) cr[j] = av * b[j];                                     \\
            else                                                                               \\
                for (j = 0; j < n; j++) cr[j] = av * b[j * bs];                                \\
        }                                                                                      \\
    }
    DLF_OUTER(f, float)
    DLF_OUTER(d, double)
    """
    void dlf_outerf(float*, long, const float*, long, const float*, long, long,
                    long) noexcept nogil
    void dlf_outerd(double*, long, const double*, long, const double*, long, long,
                    long) noexcept nogil


cdef extern from "dlfast_sgemm.h" nogil:
    int dlf_sgemm_available()
    int dlf_sgemm_cap
    int dlf_sgemm(char ta, char tb, int m, int n, int k, const float* a, int lda,
                  const float* b, int ldb, float* c, int ldc)

# The float32 GEMM calls of >= 2 rows, >= 2 columns and inner size >= 2 run on dlf_sgemm where the
# bit of their shape class is set in _sgemm_mask (chosen at import per machine: see
# dlfast/_backends/_tuning.py):
#   class(m, n, k) = 0 "small"   if m n k < 2^18
#                  = 1 "skinny"  else if min(n, k) <= 128
#                  = 2 "large"   otherwise
# (m, n, k: the sizes of one block call: C(m, n) = op(A)(m, k) op(B)(k, n)). A pure function of
# the call's shape: the blocks, hence the classes and the bits, are the same for any thread count.
cdef enum:
    SGEMM_SMALL_MNK = 262144   # 2^18
    SGEMM_SKINNY = 128
    SGEMM_ALL = 7              # one bit per class

cdef int _sgemm_mask = 0


cdef inline int _sgemm_class(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    if m * n * k < SGEMM_SMALL_MNK:
        return 0
    if n <= SGEMM_SKINNY or k <= SGEMM_SKINNY:
        return 1
    return 2


def sgemm_class(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k):
    """The shape class (0 small, 1 skinny, 2 large) of a float32 GEMM call
    C(m, n) = op(A)(m, k) op(B)(k, n)."""
    return _sgemm_class(m, n, k)


_SGEMM_ISA = ("", "avx2", "avx512f")


def sgemm_available():
    """True when the CPU runs dlf_sgemm (AVX-512F, or AVX2 + FMA)."""
    return dlf_sgemm_available() != 0


def sgemm_isa():
    """The kernel dlf_sgemm runs here: "avx512f", "avx2" (AVX2 + FMA) or "" (none)."""
    return _SGEMM_ISA[dlf_sgemm_available()]


def _cap_sgemm_isa(isa):
    """Tests only: run dlf_sgemm's kernels up to `isa` ("avx512f" or "avx2"), e.g. the AVX2
    kernel on an AVX-512F CPU. Returns the kernel now in force ("" where the CPU has neither)."""
    global dlf_sgemm_cap
    dlf_sgemm_cap = _SGEMM_ISA.index(isa)
    return sgemm_isa()


def _set_own_sgemm(int mask):
    """Run the float32 GEMM calls of the classes in `mask` (bit c: class c) on dlf_sgemm; none
    where the CPU has neither kernel. Returns the mask now in force."""
    global _sgemm_mask
    _sgemm_mask = mask & SGEMM_ALL if dlf_sgemm_available() else 0
    return _sgemm_mask


def _force_own_sgemm(int mask):
    """Tests only: set the mask even without a kernel (dlf_sgemm then declines every call and the
    BLAS runs it, as when its packing buffer cannot be allocated). Returns the mask."""
    global _sgemm_mask
    _sgemm_mask = mask & SGEMM_ALL
    return _sgemm_mask


def own_sgemm():
    """The mask of the shape classes whose float32 GEMM calls run on dlf_sgemm (0: none)."""
    return _sgemm_mask


def _sgemm_run(bint own, const float[:, ::1] a, const float[:, ::1] b, float[:, ::1] c,
               int calls):
    """c = a @ b, `calls` times on this thread: on dlf_sgemm (own; the BLAS where it declines)
    or on the GEMM BLAS. What the calibration times (dlfast/_backends/_tuning.py)."""
    cdef int m = a.shape[0], k = a.shape[1], n = b.shape[1], r
    cdef float one = 1, zero = 0
    cdef char tr = c'N'
    if b.shape[0] != k or c.shape[0] != m or c.shape[1] != n or m < 1 or n < 1 or k < 1:
        raise ValueError("_sgemm_run: shapes (m, k) @ (k, n) -> (m, n), all >= 1")
    with nogil:
        _pin_blas()
        for r in range(calls):
            if own and dlf_sgemm(tr, tr, m, n, k, &a[0, 0], k, &b[0, 0], n, &c[0, 0], n) == 0:
                continue
            sgemm(&tr, &tr, &n, &m, &k, &one, <float*>&b[0, 0], &n, <float*>&a[0, 0], &k,
                  &zero, &c[0, 0], &n)


ctypedef int (*_blas_get_t)() noexcept nogil
ctypedef void (*_blas_set_t)(int) noexcept nogil
cdef _blas_get_t _blas_get = NULL
cdef _blas_set_t _blas_set = NULL


def _set_blas_pin(size_t get_threads, size_t set_threads):
    """Addresses of the GEMM BLAS's openblas_get/set_num_threads (0, 0: none). Every kernel call
    re-pins that BLAS to one thread if something (e.g. a threadpoolctl limit) raised it: a
    threaded BLAS call inside the OpenMP blocks would oversubscribe the cores and change the
    bits."""
    global _blas_get, _blas_set
    _blas_get = <_blas_get_t>get_threads if get_threads and set_threads else NULL
    _blas_set = <_blas_set_t>set_threads if get_threads and set_threads else NULL


def _blas_pin_installed():
    return _blas_get != NULL


cdef inline void _pin_blas() noexcept nogil:
    """Before a kernel call's GEMMs: SciPy's BLAS if none was installed (this module used
    without the backend, e.g. by a test), then the BLAS re-pinned to one thread."""
    if sgemm == NULL:
        _scipy_blas()
    if _blas_get != NULL and _blas_get() != 1:
        _blas_set(1)


def gemm_parts():
    """P of gemm_rows(m) = max(16, roundup4(ceil(m / P))): the GEMM row-block count target."""
    return _GEMM_PARTS


cdef inline Py_ssize_t _gemm_rows_of(Py_ssize_t m, Py_ssize_t parts) noexcept nogil:
    """max(GEMMBLOCK, roundup4(ceil(m / parts))); parts < 1 counts as 1."""
    cdef Py_ssize_t r
    if parts < 1:
        parts = 1
    r = (m + parts - 1) // parts
    r = (r + 3) // 4 * 4
    return r if r > GEMMBLOCK else GEMMBLOCK


cdef inline Py_ssize_t _gemm_rows(Py_ssize_t m) noexcept nogil:
    return _gemm_rows_of(m, _GEMM_PARTS)


cdef inline Py_ssize_t _gemm_cols_of(Py_ssize_t m, Py_ssize_t n, Py_ssize_t parts) noexcept nogil:
    """Columns per block when a GEMM of m rows and n columns is cut by columns (0: by rows):
    its row blocks would be several, of fewer than COLSPLIT rows; m < n (each column block packs
    the left operand, m x k, where each row block packs the right one, k x n); and n's panels of
    PANEL columns split into `parts` equal shares (else one core would get a panel more: 4 + 3
    of 100 columns does 57% of the work where rows split 52% / 48%)."""
    cdef Py_ssize_t r = _gemm_rows_of(m, parts), panels = (n + PANEL - 1) // PANEL
    if r >= m or r >= COLSPLIT or m >= n or parts < 2 or panels < parts or panels % parts:
        return 0
    return panels // parts * PANEL

cdef Py_ssize_t _INT_MAX = 2147483647


cdef inline void _gemv(char t, int rows, int cols, const floating* A, int lda,
                       const floating* x, int incx, floating* y, int incy) noexcept nogil:
    """y = op(A) x (BLAS GEMV): A column-major (rows, cols) with leading dimension lda, op
    the transpose when t is T."""
    cdef floating one = 1, zero = 0
    if floating is float:
        sgemv(&t, &rows, &cols, &one, <float*>A, &lda, <float*>x, &incx, &zero, y, &incy)
    else:
        dgemv(&t, &rows, &cols, &one, <double*>A, &lda, <double*>x, &incx, &zero, y, &incy)


cdef void _gemm(char ta, char tb, int m, int n, int k, const floating* a, int lda,
                const floating* b, int ldb, floating* c, int ldc) noexcept nogil:
    """Row-major C(m, n) = op(A)(m, k) @ op(B)(k, n); lda/ldb/ldc are the stored row lengths.
    Column-major BLAS sees the transposes: C^T = op(B)^T op(A)^T. One row (m == 1) or one column
    (n == 1) goes to GEMV and an outer product (k == 1) to dlf_outer: a GEMM costs microseconds
    of set-up there (and the own kernel pads one column to a 16-column panel)."""
    cdef floating one = 1, zero = 0
    cdef int inc = 1 if ta == c'N' else lda
    cdef int incb = ldb if tb == c'N' else 1
    if m == 0 or n == 0:
        return
    if k == 0:
        memset(c, 0, <size_t>m * n * sizeof(floating))
        return
    if k == 1:
        if floating is float:
            dlf_outerf(c, ldc, a, lda if ta == c'N' else 1, b, 1 if tb == c'N' else ldb, m, n)
        else:
            dlf_outerd(c, ldc, a, lda if ta == c'N' else 1, b, 1 if tb == c'N' else ldb, m, n)
        return
    if m == 1:
        # c(n) = a(k) @ op(B): GEMV on B's storage, column-major (n, k) when tb is N, else (k, n)
        if tb == c'N':
            _gemv(c'N', n, k, b, ldb, a, inc, c, 1)
        else:
            _gemv(c'T', k, n, b, ldb, a, inc, c, 1)
        return
    if n == 1:
        # c(m) (stride ldc) = op(A) @ b(k) (stride incb): GEMV on A's storage, column-major
        # (k, m) when ta is N, else (m, k)
        if ta == c'N':
            _gemv(c'T', k, m, a, lda, b, incb, c, ldc)
        else:
            _gemv(c'N', m, k, a, lda, b, incb, c, ldc)
        return
    if floating is float:
        if _sgemm_mask and (_sgemm_mask >> _sgemm_class(m, n, k)) & 1 and \
                dlf_sgemm(ta, tb, m, n, k, a, lda, b, ldb, c, ldc) == 0:
            return
        sgemm(&tb, &ta, &n, &m, &k, &one, <float*>b, &ldb, <float*>a, &lda, &zero, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &one, <double*>b, &ldb, <double*>a, &lda, &zero, c, &ldc)


cdef inline int _gemm_threads(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    # a multiply-add costs about as much as 1/16 of an elementwise pass element
    return _threads(m * n * k // 16)


cdef inline bint _own_span(Py_ssize_t total, Py_ssize_t bsize, Py_ssize_t other, Py_ssize_t k,
                           bint by_rows) noexcept nogil:
    """True when every block of a float32 GEMM cut into blocks of bsize of its `total` rows
    (by_rows) or columns, `other` columns or rows and inner size k, runs on dlf_sgemm: each block
    at least 2 x 2 with k >= 2 (no GEMV or outer product) and each block shape's class in
    _sgemm_mask. Then one dlf_sgemm call may run several blocks: it computes every C[i][j] by
    the same chain of fused multiply-adds whatever rows and columns the call covers, so the bits
    are the blocks' (tests/test_sgemm.py: a row is the same alone or in a batch)."""
    cdef Py_ssize_t full = bsize if total > bsize else total
    cdef Py_ssize_t last = total - (total - 1) // full * full if full > 0 else 0
    if not _sgemm_mask or k < 2 or other < 2 or last < 2:
        return False
    if by_rows:
        return ((_sgemm_mask >> _sgemm_class(full, other, k)) & 1 and
                (_sgemm_mask >> _sgemm_class(last, other, k)) & 1)
    return ((_sgemm_mask >> _sgemm_class(other, full, k)) & 1 and
            (_sgemm_mask >> _sgemm_class(other, last, k)) & 1)


# One thread runs the blocks in a plain loop: an OpenMP region with a false if() clause still
# starts a team of one (about 1 us per region, the cost of a whole small-batch GEMV); and where
# every block runs on the own kernel, as one call (_own_span): the blocks' bits, with op(B)
# packed once instead of once per block (784 -> 100 at batch 32: W packed once, not twice).
cdef void _fwd(const floating* x, const floating* W, const floating* bp, floating* out, int n,
               int i, int o, int code, floating a) noexcept nogil:
    cdef Py_ssize_t rows = _gemm_rows(n), cols = _gemm_cols_of(n, o, _GEMM_PARTS), nblk, blk
    cdef int nt = _gemm_threads(n, o, max(i, 1))
    if n == 0 or o == 0:
        return
    nblk = (o + cols - 1) // cols if cols else (n + rows - 1) // rows
    _pin_blas()
    if nt == 1:
        if floating is float:
            if nblk > 1 and (_own_span(o, cols, n, i, False) if cols else
                             _own_span(n, rows, o, i, True)):
                if dlf_sgemm(c'N', c'N', n, o, i, x, i, W, o, out, o) == 0:
                    for blk in range(nblk):         # the epilogue as the blocks run it
                        _fwd_block(x, W, bp, out, n, i, o, code, a, blk, rows, cols, False)
                    return
        for blk in range(nblk):
            _fwd_block(x, W, bp, out, n, i, o, code, a, blk, rows, cols, True)
    else:
        for blk in prange(nblk, num_threads=nt, schedule="static"):
            _fwd_block(x, W, bp, out, n, i, o, code, a, blk, rows, cols, True)


cdef inline void _fwd_block(const floating* x, const floating* W, const floating* bp,
                            floating* out, int n, int i, int o, int code, floating a,
                            Py_ssize_t blk, Py_ssize_t rows, Py_ssize_t cols,
                            bint gemm) noexcept nogil:
    """Block blk of out = act(x @ W + b): rows [blk*rows, +rows), or with cols > 0 columns
    [blk*cols, +cols); gemm False: the bias and activation only (x @ W is in out)."""
    cdef Py_ssize_t r, r0 = 0, r1 = n, c0 = 0, c1 = o
    if cols:
        c0 = blk * cols
        c1 = min(c0 + cols, o)
    else:
        r0 = blk * rows
        r1 = min(r0 + rows, n)
    if gemm:
        _gemm(c'N', c'N', <int>(r1 - r0), <int>(c1 - c0), i, x + r0 * i if i else NULL,
              max(i, 1), W + c0 if i else NULL, o, out + r0 * o + c0, o)
    if bp != NULL or code != ACT_IDENTITY:
        for r in range(r0, r1):
            act_row(out + r * o + c0, out + r * o + c0, bp + c0 if bp != NULL else NULL,
                    c1 - c0, code, a)


cdef int _mat(object a, Py_buffer* v, int dt, str name, Py_ssize_t rows, Py_ssize_t cols,
              bint required, bint out) except -2:
    """Acquire a (None allowed unless required) into v: a C-contiguous 2-D array of dtype dt
    (DT_FLOAT: either float), shape (rows, cols) (-1 matches any size), writeable if out.
    Returns its dtype."""
    if a is None and required:
        raise ValueError(f"{name} must be an array, got None")
    dt = buf_get(a, v, dt, -1, out)
    if a is None:
        return dt
    if v.ndim != 2 or (rows >= 0 and v.shape[0] != rows) or (cols >= 0 and v.shape[1] != cols):
        raise ValueError(f"{name} must be a 2-D array of shape "
                         f"({rows if rows >= 0 else 'any'}, {cols if cols >= 0 else 'any'}), "
                         f"got {v.ndim}-D {tuple(v.shape[k] for k in range(v.ndim))}")
    if v.shape[0] > _INT_MAX or v.shape[1] > _INT_MAX:
        raise ValueError(f"dimension of {name} exceeds the BLAS int limit")
    return dt


cdef int _x_and_W(object x, object W, Py_buffer* vx, Py_buffer* vw, int* n, int* i,
                  int* o) except -2:
    """Acquire x (n, i) and W (i, o) of one float dtype; returns it and sets n, i, o."""
    cdef int dt = _mat(x, vx, DT_FLOAT, "x", -1, -1, True, False)
    n[0], i[0] = vx.shape[0], vx.shape[1]
    _mat(W, vw, dt, "W", i[0], -1, True, False)
    o[0] = vw.shape[1]
    return dt


def dense_forward(x, W, b, out, activation, alpha):
    """out = act(x @ W + b): x (n, i), W (i, o), b (o,) or None, out (n, o); C-contiguous,
    one float dtype (array arguments through the buffer protocol)."""
    cdef int code = act_code(activation)
    cdef double al = alpha
    cdef Py_buffer v[4]
    cdef int dt, n, i, o
    memset(v, 0, sizeof(v))
    try:
        dt = _x_and_W(x, W, &v[0], &v[1], &n, &i, &o)
        buf_get(b, &v[2], dt, o, False)
        _mat(out, &v[3], dt, "out", n, o, True, True)
        with nogil:
            if dt == DT_F32:
                _fwd(<const float*>v[0].buf, <const float*>v[1].buf, <const float*>v[2].buf,
                     <float*>v[3].buf, n, i, o, code, <float>al)
            else:
                _fwd(<const double*>v[0].buf, <const double*>v[1].buf, <const double*>v[2].buf,
                     <double*>v[3].buf, n, i, o, code, al)
    finally:
        buf_release(v, 4)


cdef void _bwd(const floating* dout, const floating* x, const floating* W, const floating* out,
               floating* dz, floating* dx, floating* dW, floating* db, double* part, int n, int i,
               int o, int code, floating a) noexcept nogil:
    """part: nblk * o doubles when db != NULL (the db partial sums of the row blocks)."""
    cdef Py_ssize_t nblk = (n + ROWBLOCK - 1) // ROWBLOCK, blk, c, rows, xrows
    cdef Py_ssize_t nbw, nbx, pw, phase, lo, hi, xcols
    cdef bint shared
    cdef int nt = _threads(<Py_ssize_t>n * o)
    cdef double s
    # the gradient w.r.t. z that the GEMMs read
    cdef const floating* g = dz if code != ACT_IDENTITY else dout
    if n == 0 or o == 0:
        if dW != NULL and i and o:
            memset(dW, 0, <size_t>i * o * sizeof(floating))
        if db != NULL and o:
            memset(db, 0, <size_t>o * sizeof(floating))
        if dx != NULL and n and i:
            memset(dx, 0, <size_t>n * i * sizeof(floating))
        return
    _pin_blas()
    if code != ACT_IDENTITY or db != NULL:
        if nt == 1:
            for blk in range(nblk):
                _bwd_rows(dout, out, dz, g, db != NULL, part, n, o, code, a, blk)
        else:
            for blk in prange(nblk, num_threads=nt, schedule="static"):
                _bwd_rows(dout, out, dz, g, db != NULL, part, n, o, code, a, blk)
        if db != NULL:
            for c in range(o):
                s = 0
                for blk in range(nblk):
                    s = s + part[blk * o + c]
                db[c] = <floating>s
    # dW = x.T @ g and dx = g @ W.T, 2 n i o flops each. When both are wanted and their inner
    # sizes (n, o) are within 4x (alike speed), one parallel region runs both, each cut for
    # P // 2 cores (on 2: one whole GEMM per core, each operand packed once: 10-15% faster at
    # batch 100; 784 -> 100 at batch 32 and 256, against NumPy's x.T @ g and g @ W.T: 1.04 ->
    # 0.89x and 1.06 -> 0.98x, where the bound was 2x); else one region each, cut for P cores.
    if i == 0:
        return
    shared = dW != NULL and dx != NULL and n <= 4 * o and o <= 4 * n
    pw = _GEMM_PARTS // 2 if shared else _GEMM_PARTS
    rows = _gemm_rows_of(i, pw)
    xrows = _gemm_rows_of(n, pw)
    xcols = _gemm_cols_of(n, i, pw)
    nbw = (i + rows - 1) // rows if dW != NULL else 0
    if dx == NULL:
        nbx = 0
    elif xcols:
        nbx = (i + xcols - 1) // xcols
    else:
        nbx = (n + xrows - 1) // xrows
    nt = _gemm_threads(n, i, o * (2 if shared else 1))
    # blocks 0..nbw-1 are dW's, nbw..nbw+nbx-1 dx's: one region over both (shared), else two
    for phase in range(1 if shared else 2):
        lo = 0 if shared or phase == 0 else nbw
        hi = nbw if not shared and phase == 0 else nbw + nbx
        if nt == 1:
            _bwd_span(x, W, g, dx, dW, n, i, o, lo, min(hi, nbw), nbw, rows, xrows, xcols)
            _bwd_span(x, W, g, dx, dW, n, i, o, max(lo, nbw), hi, nbw, rows, xrows, xcols)
        else:
            for blk in prange(lo, hi, num_threads=nt, schedule="static"):
                _bwd_gemm(x, W, g, dx, dW, n, i, o, blk, nbw, rows, xrows, xcols)


cdef inline void _bwd_rows(const floating* dout, const floating* out, floating* dz,
                           const floating* g, bint want_db, double* part, int n, int o,
                           int code, floating a, Py_ssize_t blk) noexcept nogil:
    """Row block blk (ROWBLOCK rows): dz = dout * act'(out); the block's db partial sums of g."""
    cdef Py_ssize_t r, c, r0 = blk * ROWBLOCK, r1 = min(r0 + ROWBLOCK, n)
    cdef double* p
    if code != ACT_IDENTITY:
        for r in range(r0, r1):
            act_grad_row(dz + r * o, dout + r * o, out + r * o, o, code, a)
    if want_db:
        p = part + blk * o
        for c in range(o):
            p[c] = 0
        for r in range(r0, r1):
            for c in range(o):
                p[c] = p[c] + g[r * o + c]


cdef void _bwd_span(const floating* x, const floating* W, const floating* g, floating* dx,
                    floating* dW, int n, int i, int o, Py_ssize_t lo, Py_ssize_t hi,
                    Py_ssize_t nbw, Py_ssize_t rows, Py_ssize_t xrows,
                    Py_ssize_t xcols) noexcept nogil:
    """Blocks [lo, hi) of one GEMM (all dW's, or all dx's) on this thread: as one dlf_sgemm call
    where every block runs on the own kernel (_own_span: the same bits), else block by block."""
    cdef Py_ssize_t blk, r0, r1
    cdef int done = 1
    if hi - lo < 1:
        return
    if floating is float:
        if hi - lo > 1:
            if lo < nbw:                                # dW rows [r0, r1) = x[:, r0:r1].T @ g
                r0, r1 = lo * rows, min(hi * rows, i)
                if _own_span(i, rows, o, n, True):
                    done = dlf_sgemm(c'T', c'N', <int>(r1 - r0), o, n, x + r0, i, g, o,
                                     dW + r0 * o, o)
            elif xcols:                                 # dx columns [r0, r1)
                r0, r1 = (lo - nbw) * xcols, min((hi - nbw) * xcols, i)
                if _own_span(i, xcols, n, o, False):
                    done = dlf_sgemm(c'N', c'T', n, <int>(r1 - r0), o, g, o, W + r0 * o, o,
                                     dx + r0, i)
            else:                                       # dx rows [r0, r1) = g[r0:r1] @ W.T
                r0, r1 = (lo - nbw) * xrows, min((hi - nbw) * xrows, n)
                if _own_span(n, xrows, i, o, True):
                    done = dlf_sgemm(c'N', c'T', <int>(r1 - r0), i, o, g + r0 * o, o, W, o,
                                     dx + r0 * i, i)
    if done != 0:
        for blk in range(lo, hi):
            _bwd_gemm(x, W, g, dx, dW, n, i, o, blk, nbw, rows, xrows, xcols)


cdef inline void _bwd_gemm(const floating* x, const floating* W, const floating* g,
                           floating* dx, floating* dW, int n, int i, int o, Py_ssize_t blk,
                           Py_ssize_t nbw, Py_ssize_t rows, Py_ssize_t xrows,
                           Py_ssize_t xcols) noexcept nogil:
    """Block blk: blk < nbw, rows of dW = x.T @ g; else rows of dx = g @ W.T, or its columns
    [c0, c0 + xcols) = g @ W[c0:c0 + xcols].T when xcols > 0."""
    cdef Py_ssize_t r0, r1
    if blk < nbw:
        r0 = blk * rows
        r1 = min(r0 + rows, i)
        _gemm(c'T', c'N', <int>(r1 - r0), o, n, x + r0, i, g, o, dW + r0 * o, o)
    elif xcols:
        r0 = (blk - nbw) * xcols
        r1 = min(r0 + xcols, i)
        _gemm(c'N', c'T', n, <int>(r1 - r0), o, g, o, W + r0 * o, o, dx + r0, i)
    else:
        r0 = (blk - nbw) * xrows
        r1 = min(r0 + xrows, n)
        _gemm(c'N', c'T', <int>(r1 - r0), i, o, g + r0 * o, o, W, o, dx + r0 * i, i)


def dense_backward(dout, x, W, out, dz, dx, dW, db, activation, alpha):
    """dz = dout * act'(out); dW = x.T @ dz; db = sum_n dz; dx = dz @ W.T (dx, dW, db: None to
    skip). Shapes dout, out, dz (n, o), x, dx (n, i), W, dW (i, o), db (o,); ``out`` and ``dz``
    may be None with the identity activation (then dz is not written: the GEMMs read dout)."""
    cdef int code = act_code(activation)
    cdef double al = alpha
    cdef Py_buffer v[8]
    cdef int dt, n, i, o
    cdef double* part = NULL
    memset(v, 0, sizeof(v))
    try:
        dt = _x_and_W(x, W, &v[1], &v[2], &n, &i, &o)
        if code != ACT_IDENTITY and (out is None or dz is None):
            raise ValueError(f"out and dz are needed with the {activation} activation")
        _mat(dout, &v[0], dt, "dout", n, o, True, False)
        _mat(out, &v[3], dt, "out", n, o, False, False)
        _mat(dz, &v[4], dt, "dz", n, o, False, True)
        _mat(dx, &v[5], dt, "dx", n, i, False, True)
        _mat(dW, &v[6], dt, "dW", i, o, False, True)
        buf_get(db, &v[7], dt, o, True)
        if db is not None and n and o:
            part = <double*>malloc(<size_t>((n + ROWBLOCK - 1) // ROWBLOCK) * o * sizeof(double))
            if part == NULL:
                raise MemoryError()
        with nogil:
            if dt == DT_F32:
                _bwd(<const float*>v[0].buf, <const float*>v[1].buf, <const float*>v[2].buf,
                     <const float*>v[3].buf, <float*>v[4].buf, <float*>v[5].buf,
                     <float*>v[6].buf, <float*>v[7].buf, part, n, i, o, code, <float>al)
            else:
                _bwd(<const double*>v[0].buf, <const double*>v[1].buf, <const double*>v[2].buf,
                     <const double*>v[3].buf, <double*>v[4].buf, <double*>v[5].buf,
                     <double*>v[6].buf, <double*>v[7].buf, part, n, i, o, code, al)
    finally:
        free(part)
        buf_release(v, 8)


# ---------------------------------------------------------------------------- op (dlfast.kernels.OPS)
ctypedef struct _DenseC:
    dlf_op op           # first: the program sees a dlf_op*
    const void* W
    const void* b
    void* dz
    void* dW
    void* db
    double* part
    int n, i, o, code, dt
    double alpha


cdef int _dense_op_fwd(dlf_op* p, const void* x) noexcept nogil:
    cdef _DenseC* s = <_DenseC*>p
    if s.dt == DT_F32:
        _fwd(<const float*>x, <const float*>s.W, <const float*>s.b, <float*>s.op.out, s.n, s.i,
             s.o, s.code, <float>s.alpha)
    else:
        _fwd(<const double*>x, <const double*>s.W, <const double*>s.b, <double*>s.op.out, s.n,
             s.i, s.o, s.code, s.alpha)
    return 0


cdef int _dense_op_bwd(dlf_op* p, const void* x, const void* dout) noexcept nogil:
    cdef _DenseC* s = <_DenseC*>p
    if s.dt == DT_F32:
        _bwd(<const float*>dout, <const float*>x, <const float*>s.W, <const float*>s.op.out,
             <float*>s.dz, <float*>s.op.dx, <float*>s.dW, <float*>s.db, s.part, s.n, s.i, s.o,
             s.code, <float>s.alpha)
    else:
        _bwd(<const double*>dout, <const double*>x, <const double*>s.W, <const double*>s.op.out,
             <double*>s.dz, <double*>s.op.dx, <double*>s.dW, <double*>s.db, s.part, s.n, s.i,
             s.o, s.code, s.alpha)
    return 0


cdef int _dense_fill(_DenseC* c, Py_buffer* v, W, b, out, dz, dx, dW, db, activation,
                     double alpha) except -1:
    """Acquire the arrays of a dense op into v[0..7) and fill c (the checks of the kernels)."""
    cdef int dt, n, i, o
    c.code = act_code(activation)
    c.alpha = alpha
    dt = _mat(W, &v[0], DT_FLOAT, "W", -1, -1, True, False)
    i, o = v[0].shape[0], v[0].shape[1]
    buf_get(b, &v[1], dt, o, False)
    _mat(out, &v[2], dt, "out", -1, o, True, True)
    n = v[2].shape[0]
    if c.code != ACT_IDENTITY and dz is None:
        raise ValueError(f"dz is needed with the {activation} activation")
    _mat(dz, &v[3], dt, "dz", n, o, False, True)
    _mat(dx, &v[4], dt, "dx", n, i, False, True)
    _mat(dW, &v[5], dt, "dW", i, o, False, True)
    buf_get(db, &v[6], dt, o, True)
    if db is not None and n and o:
        c.part = <double*>malloc(<size_t>((n + ROWBLOCK - 1) // ROWBLOCK) * o * sizeof(double))
        if c.part == NULL:
            raise MemoryError()
    c.n, c.i, c.o, c.dt = n, i, o, dt
    c.W, c.b = v[0].buf, v[1].buf
    c.op.out, c.dz, c.op.dx = v[2].buf, v[3].buf, v[4].buf
    c.dW, c.db = v[5].buf, v[6].buf
    c.op.fwd = _dense_op_fwd
    c.op.bwd = _dense_op_bwd
    return 0


cdef class DenseOp:
    """The ``dense`` op (dlfast.kernels.OPS): ``dense_forward(x, W, b, out, ...)`` and
    ``dense_backward(dout, x, W, out, dz, dx, dW, db, ...)`` of fixed arrays (src/dlfast_op.h).
    The same checks as the two kernels, once; ``address()`` is the ``dlf_op*``."""
    cdef _DenseC c
    cdef Py_buffer v[7]

    def __cinit__(self, W, b, out, dz, dx, dW, db, activation, alpha):
        memset(self.v, 0, sizeof(self.v))
        memset(&self.c, 0, sizeof(self.c))
        _dense_fill(&self.c, self.v, W, b, out, dz, dx, dW, db, activation, alpha)

    def __dealloc__(self):
        free(self.c.part)
        buf_release(self.v, 7)

    def slot(self, name):
        """Address of the pointer field of the gradient output ``name`` (a program points it at
        another array for one step: dlfast.kernels.PROGRAM_DOC)."""
        if name == "dW":
            return <size_t>&self.c.dW
        if name == "db":
            return <size_t>&self.c.db
        raise KeyError(name)

    def address(self):
        return <size_t>&self.c.op


# ---------------------------------------------------------------------------- maxout
cdef void _maxout_fwd(const floating* z, floating* out, int64_t* argmax, Py_ssize_t n,
                      Py_ssize_t o, Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t r
    cdef int nt = _threads(n * o * k // CHEAP)
    if n == 0 or o == 0:
        return
    if nt == 1:
        for r in range(n):
            _maxout_row(z + r * o * k, out + r * o, argmax + r * o, o, k)
    else:
        for r in prange(n, num_threads=nt, schedule="static"):
            _maxout_row(z + r * o * k, out + r * o, argmax + r * o, o, k)


cdef inline void _maxout_row(const floating* z, floating* out, int64_t* argmax, Py_ssize_t o,
                             Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t u, j
    cdef const floating* p
    cdef floating best, v
    cdef int64_t arg
    for u in range(o):
        p = z + u * k
        best = p[0]
        arg = 0
        for j in range(1, k):
            v = p[j]
            # a larger value, or the first NaN (then nothing replaces it: NaN > . is false)
            if v > best or (v != v and best == best):
                best = v
                arg = j
        out[u] = best
        argmax[u] = arg


cdef void _maxout_bwd(const floating* dout, const int64_t* argmax, floating* dz, Py_ssize_t n,
                      Py_ssize_t o, Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t r, u, j
    cdef int nt = _threads(n * o * k // CHEAP)
    for r in prange(n, num_threads=nt, use_threads_if=nt > 1, schedule="static"):
        for j in range(o * k):
            dz[r * o * k + j] = 0
        for u in range(o):
            dz[r * o * k + u * k + argmax[r * o + u]] = dout[r * o + u]


def maxout_forward(z, out, argmax):
    """out[n, o] = max_j z[n, o*k + j]; argmax = first j attaining it."""
    cdef Py_buffer v[3]
    cdef Py_ssize_t n, o, k
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = _mat(out, &v[1], DT_FLOAT, "out", -1, -1, True, True)
        n, o = v[1].shape[0], v[1].shape[1]
        _mat(z, &v[0], dt, "z", n, -1, True, False)
        k = v[0].shape[1] // max(o, 1)
        buf_get(argmax, &v[2], DT_I64, n * o, True)
        with nogil:
            if dt == DT_F32:
                _maxout_fwd(<const float*>v[0].buf, <float*>v[1].buf, <int64_t*>v[2].buf, n, o, k)
            else:
                _maxout_fwd(<const double*>v[0].buf, <double*>v[1].buf, <int64_t*>v[2].buf, n, o,
                            k)
    finally:
        buf_release(v, 3)


def maxout_backward(dout, argmax, dz):
    """dz[n, o*k + argmax[n, o]] = dout[n, o], zero elsewhere."""
    cdef Py_buffer v[3]
    cdef Py_ssize_t n, o, k
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = _mat(dout, &v[0], DT_FLOAT, "dout", -1, -1, True, False)
        n, o = v[0].shape[0], v[0].shape[1]
        buf_get(argmax, &v[1], DT_I64, n * o, False)
        _mat(dz, &v[2], dt, "dz", n, -1, True, True)
        k = v[2].shape[1] // max(o, 1)
        with nogil:
            if dt == DT_F32:
                _maxout_bwd(<const float*>v[0].buf, <const int64_t*>v[1].buf, <float*>v[2].buf,
                            n, o, k)
            else:
                _maxout_bwd(<const double*>v[0].buf, <const int64_t*>v[1].buf,
                            <double*>v[2].buf, n, o, k)
    finally:
        buf_release(v, 3)


ctypedef struct _MaxoutC:
    dlf_op op           # first: the program sees a dlf_op*
    _DenseC dense       # z = x @ W + b; its backward from dz (dz2: its own dz workspace)
    int64_t* argmax
    void* dz
    Py_ssize_t n, o, k


cdef int _maxout_op_fwd(dlf_op* p, const void* x) noexcept nogil:
    cdef _MaxoutC* s = <_MaxoutC*>p
    _dense_op_fwd(&s.dense.op, x)
    if s.dense.dt == DT_F32:
        _maxout_fwd(<const float*>s.dense.op.out, <float*>s.op.out, s.argmax, s.n, s.o, s.k)
    else:
        _maxout_fwd(<const double*>s.dense.op.out, <double*>s.op.out, s.argmax, s.n, s.o, s.k)
    return 0


cdef int _maxout_op_bwd(dlf_op* p, const void* x, const void* dout) noexcept nogil:
    cdef _MaxoutC* s = <_MaxoutC*>p
    if s.dense.dt == DT_F32:
        _maxout_bwd(<const float*>dout, s.argmax, <float*>s.dz, s.n, s.o, s.k)
    else:
        _maxout_bwd(<const double*>dout, s.argmax, <double*>s.dz, s.n, s.o, s.k)
    return _dense_op_bwd(&s.dense.op, x, s.dz)


cdef class MaxoutOp:
    """The ``maxout`` op (dlfast.kernels.OPS): ``dense_forward(x, W, b, z)``,
    ``maxout_forward(z, out, argmax)``; ``maxout_backward(dout, argmax, dz)``,
    ``dense_backward(dz, x, W, z, dz2, dx, dW, db)`` (dx, dW, db: None to skip) of fixed arrays."""
    cdef _MaxoutC c
    cdef Py_buffer v[10]

    def __cinit__(self, W, b, z, out, argmax, dz, dz2, dx, dW, db):
        cdef Py_ssize_t n, width, o
        memset(self.v, 0, sizeof(self.v))
        memset(&self.c, 0, sizeof(self.c))
        _dense_fill(&self.c.dense, self.v, W, b, z, dz2, dx, dW, db, "identity", 0.0)
        n, width = self.c.dense.n, self.c.dense.o
        _mat(out, &self.v[7], self.c.dense.dt, "out", n, -1, True, True)
        o = self.v[7].shape[1]
        if o < 1 or width % o:
            raise ValueError(f"out must have a width dividing {width}, got {o}")
        buf_get(argmax, &self.v[8], DT_I64, n * o, True)
        _mat(dz, &self.v[9], self.c.dense.dt, "dz", n, width, True, True)
        self.c.n, self.c.o, self.c.k = n, o, width // o
        self.c.op.out, self.c.argmax, self.c.dz = self.v[7].buf, <int64_t*>self.v[8].buf, self.v[9].buf
        self.c.op.dx = self.c.dense.op.dx
        self.c.op.fwd = _maxout_op_fwd
        self.c.op.bwd = _maxout_op_bwd

    def __dealloc__(self):
        free(self.c.dense.part)
        buf_release(self.v, 10)

    def slot(self, name):
        """Address of the pointer field of the gradient output ``name`` (a program points it at
        another array for one step: dlfast.kernels.PROGRAM_DOC)."""
        if name == "dW":
            return <size_t>&self.c.dense.dW
        if name == "db":
            return <size_t>&self.c.dense.db
        raise KeyError(name)

    def address(self):
        return <size_t>&self.c.op


# ---------------------------------------------------------------------------- shared GEMM entry
# The GEMMs above for other kernel modules (_conv), through the function types of _gemm.pxd:
# each wrapper reads this module's BLAS choice at call time (_set_gemm_blas, _set_own_sgemm).
cdef void _gemm_f32(char ta, char tb, int m, int n, int k, const float* a, int lda,
                    const float* b, int ldb, float* c, int ldc) noexcept nogil:
    _gemm(ta, tb, m, n, k, a, lda, b, ldb, c, ldc)


cdef void _gemm_f64(char ta, char tb, int m, int n, int k, const double* a, int lda,
                    const double* b, int ldb, double* c, int ldc) noexcept nogil:
    _gemm(ta, tb, m, n, k, a, lda, b, ldb, c, ldc)


cdef void _gemm_acc_f32(char ta, char tb, int m, int n, int k, const float* a, int lda,
                        const float* b, int ldb, float* c, int ldc) noexcept nogil:
    """Row-major C += op(A) @ op(B) (BLAS sgemm, beta 1)."""
    cdef float one = 1
    if m == 0 or n == 0 or k == 0:
        return
    sgemm(&tb, &ta, &n, &m, &k, &one, <float*>b, &ldb, <float*>a, &lda, &one, c, &ldc)


cdef void _gemm_acc_f64(char ta, char tb, int m, int n, int k, const double* a, int lda,
                        const double* b, int ldb, double* c, int ldc) noexcept nogil:
    """Row-major C += op(A) @ op(B) (BLAS dgemm, beta 1)."""
    cdef double one = 1
    if m == 0 or n == 0 or k == 0:
        return
    dgemm(&tb, &ta, &n, &m, &k, &one, <double*>b, &ldb, <double*>a, &lda, &one, c, &ldc)


cdef void _pin_blas_entry() noexcept nogil:
    _pin_blas()


def _gemm_entries():
    """Addresses (gemm f32, gemm f64, gemm_acc f32, gemm_acc f64, pin) of the functions that
    _gemm.pxd types; valid while this module is loaded (for good, once imported)."""
    return (<size_t><void*>_gemm_f32, <size_t><void*>_gemm_f64, <size_t><void*>_gemm_acc_f32,
            <size_t><void*>_gemm_acc_f64, <size_t><void*>_pin_blas_entry)
