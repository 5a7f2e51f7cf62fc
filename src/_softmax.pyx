"""Row-wise softmax and the fused softmax + cross-entropy loss (parallel over rows).

softmax:   out = exp(x - max x) / sum exp(x - max x)           (sum in double)
backward:  dx = y * (dout - sum_c dout * y)
xent:      probs = softmax(logits); l_n = log sum exp(logits_n - m_n) + m_n - logits[n, t_n];
           L = mean_n l_n, or with sample weights sum_n w_n l_n / sum_n w_n
           (row terms in double, summed in row order: independent of the thread count)
xent back: dlogits = (probs - onehot(t)) * k_n, k_n = (dtype)(scale / N) or (dtype)(scale w_n / sum w)
Both losses check every label against [0, C) first (ValueError; no element is read or written
through an out-of-range label, checked call or not).
On one thread the rows run in a plain loop (no OpenMP region).
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport log
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from _op cimport dlf_op, dlf_loss_op, DLF_OP_ERR_LABELS
from _act cimport (exp_shift_sum, exp_rows, dlf_sum4, row_max, CHEAP, aligned_doubles, buf_get,
                   buf_release, line_doubles, DT_F32, DT_F64, DT_I64, DT_FLOAT)
from _targets cimport check_weights, weight_sum

include "_parallel.pxi"


cdef int _get_2d(object a, Py_buffer* v, int dt, bint out) except -2:
    """buf_get of a 2-D array."""
    dt = buf_get(a, v, dt, -1, out)
    if v.ndim != 2:
        raise ValueError(f"expected a 2-D array, got {v.ndim}-D")
    return dt


def softmax_forward(x, out):
    """out = softmax(x) row-wise."""
    cdef Py_buffer v[2]
    cdef Py_ssize_t n, c
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = _get_2d(x, &v[0], DT_FLOAT, False)
        n = v[0].shape[0]
        c = v[0].shape[1]
        buf_get(out, &v[1], dt, n * c, True)
        if c == 0:
            return
        with nogil:
            if dt == DT_F32:
                _softmax(<const float*>v[0].buf, <float*>v[1].buf, n, c)
            else:
                _softmax(<const double*>v[0].buf, <double*>v[1].buf, n, c)
    finally:
        buf_release(v, 2)


cdef inline void _softmax_row(const floating* x, floating* out, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating m = row_max(x, c)
    cdef floating fs = <floating>exp_shift_sum(out, x, c, m)
    for j in range(c):
        out[j] = out[j] / fs


cdef void _softmax(const floating* x, floating* out, Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t r
    cdef int nt = _threads(n * c)
    if nt == 1:
        for r in range(n):
            _softmax_row(x + r * c, out + r * c, c)
    else:
        for r in prange(n, num_threads=nt, schedule="static"):
            _softmax_row(x + r * c, out + r * c, c)


def softmax_backward(dout, y, dx):
    """dx = y * (dout - sum(dout * y)) row-wise."""
    cdef Py_buffer v[3]
    cdef Py_ssize_t n, c
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = _get_2d(y, &v[0], DT_FLOAT, False)
        n = v[0].shape[0]
        c = v[0].shape[1]
        buf_get(dout, &v[1], dt, n * c, False)
        buf_get(dx, &v[2], dt, n * c, True)
        with nogil:
            if dt == DT_F32:
                _softmax_back(<const float*>v[1].buf, <const float*>v[0].buf,
                              <float*>v[2].buf, n, c)
            else:
                _softmax_back(<const double*>v[1].buf, <const double*>v[0].buf,
                              <double*>v[2].buf, n, c)
    finally:
        buf_release(v, 3)


cdef inline void _softmax_back_row(const floating* dout, const floating* y, floating* dx,
                                   Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t j
    cdef double s = 0
    cdef floating fs
    for j in range(c):
        s = s + dout[j] * y[j]
    fs = <floating>s
    for j in range(c):
        dx[j] = y[j] * (dout[j] - fs)


cdef void _softmax_back(const floating* dout, const floating* y, floating* dx, Py_ssize_t n,
                        Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t r
    cdef int nt = _threads(n * c // CHEAP)
    if nt == 1:
        for r in range(n):
            _softmax_back_row(dout + r * c, y + r * c, dx + r * c, c)
    else:
        for r in prange(n, num_threads=nt, schedule="static"):
            _softmax_back_row(dout + r * c, y + r * c, dx + r * c, c)


cdef inline Py_ssize_t _bad_label(const int64_t* t, Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    """The first row r with t[r] outside [0, c), or -1."""
    cdef Py_ssize_t r
    for r in range(n):
        if t[r] < 0 or t[r] >= c:
            return r
    return -1


cdef int _check_labels(const int64_t* t, Py_ssize_t n, Py_ssize_t c) except -1:
    """ValueError unless every t[r] lies in [0, c)."""
    cdef Py_ssize_t bad
    with nogil:
        bad = _bad_label(t, n, c)
    if bad >= 0:
        raise ValueError(f"labels must lie in [0, {c}), got {t[bad]} in row {bad}")
    return 0


def softmax_xent_forward(logits, labels, probs, w=None):
    """probs = softmax(logits); returns the batch-mean (or sample-weighted mean) cross-entropy."""
    cdef Py_buffer v[4]
    cdef Py_ssize_t n, c
    cdef int dt, nt
    cdef double total
    # per row: its loss term; per thread: a block's exp(logit - max) in double and row maxima
    cdef double* rowloss = NULL
    cdef double* scratch = NULL
    memset(v, 0, sizeof(v))
    try:
        dt = _get_2d(logits, &v[0], DT_FLOAT, False)
        n = v[0].shape[0]
        c = v[0].shape[1]
        buf_get(labels, &v[1], DT_I64, n, False)
        buf_get(probs, &v[2], dt, n * c, True)
        buf_get(w, &v[3], DT_F64, n, False)
        if c == 0:
            raise ValueError("logits must have at least one column")
        _check_labels(<const int64_t*>v[1].buf, n, c)
        if w is not None:
            check_weights(<const double*>v[3].buf, n)
        nt = _threads(n * c * XENT_WORK)
        rowloss = <double*>malloc(max(n, 1) * sizeof(double))
        if rowloss == NULL:
            raise MemoryError()
        scratch = aligned_doubles(max(nt, 1) * _xent_scratch(c))    # a block per thread
        with nogil:
            if dt == DT_F32:
                total = _xent(<const float*>v[0].buf, <const int64_t*>v[1].buf,
                              <float*>v[2].buf, n, c, nt, rowloss, scratch)
            else:
                total = _xent(<const double*>v[0].buf, <const int64_t*>v[1].buf,
                              <double*>v[2].buf, n, c, nt, rowloss, scratch)
            if v[3].buf != NULL:
                total = _weighted(rowloss, <const double*>v[3].buf, n)
    finally:
        free(rowloss)
        free(scratch)
        buf_release(v, 4)
    return total if w is not None else total / n


cdef inline double _weighted(const double* rowloss, const double* w, Py_ssize_t n) noexcept nogil:
    """sum_n w_n rowloss_n / sum_n w_n (both in row order)."""
    cdef Py_ssize_t r
    cdef double total = 0
    for r in range(n):
        total = total + w[r] * rowloss[r]
    return total / weight_sum(w, n)


cdef enum:
    # Units of parallel work per logit of the loss forward (_threads counts a memory-bound
    # element as 1): a double exp (a rational polynomial with a division), a division and a
    # share of a log; one core, 1000 x 10 float32: ~3.8 ns a logit against ~0.3 ns an SGD
    # element. (Was 4: the b=1000 steps' 1000 x 10 loss then stayed on one core.)
    XENT_WORK = 8


cdef inline Py_ssize_t _xent_rows(Py_ssize_t c) noexcept nogil:
    """Rows per block of the loss forward: ~256 exps at a time, at least one row."""
    return max(1, 256 // c)


cdef inline Py_ssize_t _xent_scratch(Py_ssize_t c) noexcept nogil:
    """Doubles of scratch per thread: a block's exps and row maxima, in whole lines."""
    cdef Py_ssize_t r = _xent_rows(c)
    return line_doubles(r * c + r)


cdef inline double _small_max(const floating* x, Py_ssize_t c) noexcept nogil:
    """row_max of a short row (no call): max_j x[j], NaN when any x[j] is NaN."""
    cdef Py_ssize_t j
    cdef floating m = x[0], v
    for j in range(1, c):
        v = x[j]
        if v > m or v != v:
            m = v
    return m


cdef void _xent_block(const floating* x, const int64_t* labels, floating* probs, Py_ssize_t r0,
                      Py_ssize_t r1, Py_ssize_t c, double* rowloss, double* e) noexcept nogil:
    """Rows [r0, r1) (at most _xent_rows(c)): probs = softmax(x), rowloss = log sum exp(x - m)
    + m - x[t] (e: _xent_scratch(c) doubles: the exps, then the row maxima m)."""
    cdef Py_ssize_t r, j, rows = r1 - r0
    cdef double* m = e + _xent_rows(c) * c
    cdef double s
    cdef const floating* xr
    for r in range(rows):
        m[r] = _small_max(x + (r0 + r) * c, c) if c <= 16 else row_max(x + (r0 + r) * c, c)
    exp_rows(e, x + r0 * c, m, rows, c)
    for r in range(rows):
        s = dlf_sum4(e + r * c, c)
        xr = x + (r0 + r) * c
        for j in range(c):
            probs[(r0 + r) * c + j] = <floating>(e[r * c + j] / s)
        rowloss[r0 + r] = log(s) + m[r] - <double>xr[labels[r0 + r]]


cdef double _xent(const floating* x, const int64_t* labels, floating* probs, Py_ssize_t n,
                  Py_ssize_t c, int nt, double* rowloss, double* scratch) noexcept nogil:
    """The rows' losses into rowloss (blocks of _xent_rows(c) rows; scratch: _xent_scratch(c)
    doubles per thread); returns their sum in row order."""
    cdef Py_ssize_t r, b, R = _xent_rows(c), nb = (n + R - 1) // R, stride = _xent_scratch(c)
    cdef double total = 0
    if nt == 1:
        for b in range(nb):
            _xent_block(x, labels, probs, b * R, min(n, b * R + R), c, rowloss, scratch)
    else:
        for b in prange(nb, num_threads=nt, schedule="static"):
            _xent_block(x, labels, probs, b * R, min(n, b * R + R), c, rowloss,
                        scratch + <Py_ssize_t>threadid() * stride)
    for r in range(n):
        total = total + rowloss[r]
    return total


def softmax_xent_backward(probs, labels, dlogits, double scale, w=None):
    """dlogits = (probs - onehot(labels)) * k_n (k_n: scale / N, or scale * w_n / sum w)."""
    cdef Py_buffer v[4]
    cdef Py_ssize_t n, c
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = _get_2d(probs, &v[0], DT_FLOAT, False)
        n = v[0].shape[0]
        c = v[0].shape[1]
        buf_get(labels, &v[1], DT_I64, n, False)
        buf_get(dlogits, &v[2], dt, n * c, True)
        buf_get(w, &v[3], DT_F64, n, False)
        _check_labels(<const int64_t*>v[1].buf, n, c)
        if w is not None:
            check_weights(<const double*>v[3].buf, n)
        with nogil:
            if dt == DT_F32:
                _xent_back(<const float*>v[0].buf, <const int64_t*>v[1].buf, <float*>v[2].buf,
                           n, c, scale, <const double*>v[3].buf)
            else:
                _xent_back(<const double*>v[0].buf, <const int64_t*>v[1].buf,
                           <double*>v[2].buf, n, c, scale, <const double*>v[3].buf)
    finally:
        buf_release(v, 4)


cdef inline void _xent_back_row(const floating* p, int64_t t, floating* dl, Py_ssize_t c,
                                floating k) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(c):
        dl[j] = p[j] * k
    dl[t] = (p[t] - 1) * k


cdef void _xent_back(const floating* probs, const int64_t* labels, floating* dl, Py_ssize_t n,
                     Py_ssize_t c, double scale, const double* w) noexcept nogil:
    """k_n = (dtype)(scale / n), or with weights w (not NULL) (dtype)(scale * w_n / sum w)."""
    cdef Py_ssize_t r
    cdef floating k = <floating>(scale / n)
    cdef double den = weight_sum(w, n) if w != NULL else 1.0
    cdef int nt = _threads(n * c // CHEAP)
    if nt == 1:
        for r in range(n):
            _xent_back_row(probs + r * c, labels[r], dl + r * c, c,
                           k if w == NULL else <floating>(scale * w[r] / den))
    else:
        for r in prange(n, num_threads=nt, schedule="static"):
            _xent_back_row(probs + r * c, labels[r], dl + r * c, c,
                           k if w == NULL else <floating>(scale * w[r] / den))


# ---------------------------------------------------------------------------- op (dlfast.kernels.OPS)
ctypedef struct _XentC:
    dlf_loss_op op      # first: the program sees a dlf_loss_op*
    void* probs
    double* rowloss
    double* scratch     # _xent_scratch(c) doubles per thread, for up to cap threads
    Py_ssize_t n, c
    int dt, cap


cdef int _xent_op_fwd(dlf_loss_op* p, const void* logits, double* loss) noexcept nogil:
    cdef _XentC* s = <_XentC*>p
    cdef int nt = _threads(s.n * s.c * XENT_WORK)
    cdef double total
    if _bad_label(s.op.labels, s.n, s.c) >= 0:
        return DLF_OP_ERR_LABELS
    if nt > s.cap:
        nt = s.cap
    if s.dt == DT_F32:
        total = _xent(<const float*>logits, s.op.labels, <float*>s.probs, s.n, s.c, nt,
                      s.rowloss, s.scratch)
    else:
        total = _xent(<const double*>logits, s.op.labels, <double*>s.probs, s.n, s.c, nt,
                      s.rowloss, s.scratch)
    loss[0] = total / s.n if s.op.sw == NULL else _weighted(s.rowloss, s.op.sw, s.n)
    return 0


cdef int _xent_op_bwd(dlf_loss_op* p, const void* logits) noexcept nogil:
    cdef _XentC* s = <_XentC*>p
    if s.dt == DT_F32:
        _xent_back(<const float*>s.probs, s.op.labels, <float*>s.op.dlogits, s.n, s.c,
                   s.op.weight, s.op.sw)
    else:
        _xent_back(<const double*>s.probs, s.op.labels, <double*>s.op.dlogits, s.n, s.c,
                   s.op.weight, s.op.sw)
    return 0


cdef class SoftmaxXentOp:
    """The ``softmax_xent`` op (dlfast.kernels.OPS): ``softmax_xent_forward(logits, labels,
    probs, w)`` and ``softmax_xent_backward(probs, labels, dlogits, weight, w)`` of fixed arrays
    (probs: (N, C), N, C >= 1; labels: the int64 (N,) buffer and sw the float64 (N,) buffer the
    program fills each step; w = sw or none, as the program sets ``op.sw``). A label outside
    [0, C) makes the forward return DLF_OP_ERR_LABELS. ``address()`` is the ``dlf_loss_op*``."""
    cdef _XentC c
    cdef Py_buffer v[4]

    def __cinit__(self, probs, labels, sw, dlogits, double weight):
        cdef Py_ssize_t n, c
        memset(self.v, 0, sizeof(self.v))
        memset(&self.c, 0, sizeof(self.c))
        self.c.dt = _get_2d(probs, &self.v[0], DT_FLOAT, True)
        n, c = self.v[0].shape[0], self.v[0].shape[1]
        if n < 1 or c < 1:
            raise ValueError(f"probs must have at least one row and column, got ({n}, {c})")
        buf_get(labels, &self.v[1], DT_I64, n, True)
        buf_get(dlogits, &self.v[2], self.c.dt, n * c, True)
        buf_get(sw, &self.v[3], DT_F64, n, True)
        if self.v[3].buf == NULL:
            raise TypeError("sw is required (a float64 (N,) buffer)")
        self.c.n, self.c.c = n, c
        self.c.cap = max(_threads(n * c * XENT_WORK), dlfast_omp_max_threads(),
                         _requested_threads, 1)
        self.c.rowloss = <double*>malloc(n * sizeof(double))
        if self.c.rowloss == NULL:
            raise MemoryError()
        self.c.scratch = aligned_doubles(self.c.cap * _xent_scratch(c))
        self.c.probs, self.c.op.labels = self.v[0].buf, <int64_t*>self.v[1].buf
        self.c.op.dlogits = self.v[2].buf
        self.c.op.targets = NULL
        self.c.op.sw_buf, self.c.op.sw = <double*>self.v[3].buf, NULL
        self.c.op.n, self.c.op.width, self.c.op.weight = n, c, weight
        self.c.op.fwd = _xent_op_fwd
        self.c.op.bwd = _xent_op_bwd

    def __dealloc__(self):
        free(self.c.rowloss)
        free(self.c.scratch)
        buf_release(self.v, 4)

    def address(self):
        return <size_t>&self.c.op


ctypedef struct _SoftmaxC:
    dlf_op op           # first: the program sees a dlf_op*
    Py_ssize_t n, c
    int dt


cdef int _softmax_op_fwd(dlf_op* p, const void* x) noexcept nogil:
    cdef _SoftmaxC* s = <_SoftmaxC*>p
    if s.dt == DT_F32:
        _softmax(<const float*>x, <float*>s.op.out, s.n, s.c)
    else:
        _softmax(<const double*>x, <double*>s.op.out, s.n, s.c)
    return 0


cdef int _softmax_op_bwd(dlf_op* p, const void* x, const void* dout) noexcept nogil:
    cdef _SoftmaxC* s = <_SoftmaxC*>p
    if s.op.dx == NULL:
        return 0
    if s.dt == DT_F32:
        _softmax_back(<const float*>dout, <const float*>s.op.out, <float*>s.op.dx, s.n, s.c)
    else:
        _softmax_back(<const double*>dout, <const double*>s.op.out, <double*>s.op.dx, s.n, s.c)
    return 0


cdef class SoftmaxOp:
    """The ``softmax`` op (dlfast.kernels.OPS): ``softmax_forward(x, out)`` and
    ``softmax_backward(dout, out, dx)`` (dx None: no backward) of fixed arrays (out: (N, C))."""
    cdef _SoftmaxC c
    cdef Py_buffer v[2]

    def __cinit__(self, out, dx):
        memset(self.v, 0, sizeof(self.v))
        memset(&self.c, 0, sizeof(self.c))
        self.c.dt = _get_2d(out, &self.v[0], DT_FLOAT, True)
        self.c.n, self.c.c = self.v[0].shape[0], self.v[0].shape[1]
        if self.c.c < 1:
            raise ValueError("out must have at least one column (class)")
        buf_get(dx, &self.v[1], self.c.dt, self.c.n * self.c.c, True)
        self.c.op.out, self.c.op.dx = self.v[0].buf, self.v[1].buf
        self.c.op.fwd = _softmax_op_fwd
        self.c.op.bwd = _softmax_op_bwd

    def __dealloc__(self):
        buf_release(self.v, 2)

    def address(self):
        return <size_t>&self.c.op
