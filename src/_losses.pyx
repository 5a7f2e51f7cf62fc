"""The value losses (dlfast.kernels: mse, mae, huber, sigmoid_bce) of y, t (N, M), parallel over
rows, and their ops (dlfast.kernels.OPS).

Per element in double, d = y - t; per row l_n = sum_j e(d_nj) / M (half mse: sum_j d^2 / 2), the
sum in j order, written to a row buffer; L = sum_n w_n l_n / D in row order after the parallel
part (D = sum_n w_n, N, or 1 for reduction="sum"): results do not depend on the thread count.
Backward: dy_nj = (dtype)(k_n * g(d_nj)) (sigmoid BCE: g = (1 - t) - e/(1 + e) for z >= 0, else
e/(1 + e) - t, e = exp(-|z|)), k_n = scale * w_n / D * c (c = 2/M mse, 1 half mse,
1/M otherwise). On one thread the rows run in a plain loop (no OpenMP region).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, fabs, log1p
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from _op cimport dlf_loss_op
from _act cimport buf_get, buf_release, DT_F32, DT_F64, DT_FLOAT
from _targets cimport bad_target, check_weights, weight_sum

include "_parallel.pxi"

cdef enum:
    K_MSE = 0
    K_MAE = 1
    K_HUBER = 2
    K_BCE = 3

KINDS = {"mse": K_MSE, "mae": K_MAE, "huber": K_HUBER, "sigmoid_bce": K_BCE}
REDUCTIONS = {"mean": 0, "sum": 1}


ctypedef struct _Spec:
    int kind, half, sum_
    double delta
    Py_ssize_t n, m


cdef inline double _row(const _Spec* s, const floating* y, const floating* t) noexcept nogil:
    """l_n of one row."""
    cdef Py_ssize_t j, m = s.m
    cdef double acc = 0, d, a, z
    if s.kind == K_MSE:
        for j in range(m):
            d = <double>y[j] - <double>t[j]
            acc = acc + d * d
    elif s.kind == K_MAE:
        for j in range(m):
            acc = acc + fabs(<double>y[j] - <double>t[j])
    elif s.kind == K_HUBER:
        for j in range(m):
            d = <double>y[j] - <double>t[j]
            a = fabs(d)
            acc = acc + (0.5 * d * d if a <= s.delta else s.delta * (a - 0.5 * s.delta))
    else:
        for j in range(m):
            z = y[j]
            acc = acc + ((z if z > 0 else 0.0) - z * <double>t[j] + log1p(exp(-fabs(z))))
    return 0.5 * acc if s.half else acc / m


cdef inline int _nthreads(const _Spec* s) noexcept nogil:
    return _threads(s.n * s.m * (8 if s.kind == K_BCE else 1))


cdef double _forward(const _Spec* s, const floating* y, const floating* t, const double* w,
                     double* rows) noexcept nogil:
    """rows = l_n; returns L."""
    cdef Py_ssize_t r, n = s.n, m = s.m
    cdef int nt = _nthreads(s)
    cdef double total = 0
    if nt <= 1:
        for r in range(n):
            rows[r] = _row(s, y + r * m, t + r * m)
    else:
        for r in prange(n, num_threads=nt, schedule="static"):
            rows[r] = _row(s, y + r * m, t + r * m)
    if w == NULL:
        for r in range(n):
            total = total + rows[r]
        return total if s.sum_ else total / n
    for r in range(n):
        total = total + w[r] * rows[r]
    return total if s.sum_ else total / weight_sum(w, n)


cdef inline void _back_row(const _Spec* s, const floating* y, const floating* t, floating* dy,
                           double k) noexcept nogil:
    cdef Py_ssize_t j
    cdef double d, g, e
    for j in range(s.m):
        if s.kind == K_BCE:
            d = y[j]
            e = exp(-fabs(d))
            # sigmoid(z) - t, with sigmoid(z) = 1 - e/(1+e) for z >= 0 (no cancellation at t = 1)
            g = ((1.0 - <double>t[j]) - e / (1.0 + e) if d >= 0
                 else e / (1.0 + e) - <double>t[j])
        else:
            d = <double>y[j] - <double>t[j]
            if s.kind == K_MSE:
                g = d
            elif s.kind == K_MAE:
                g = 1.0 if d > 0 else (-1.0 if d < 0 else (d if d != d else 0.0))
            else:
                g = s.delta if d > s.delta else (-s.delta if d < -s.delta else d)
        dy[j] = <floating>(k * g)


cdef void _backward(const _Spec* s, const floating* y, const floating* t, const double* w,
                    floating* dy, double scale) noexcept nogil:
    cdef Py_ssize_t r, n = s.n, m = s.m
    cdef int nt = _nthreads(s)
    cdef double c = 1.0 if s.half else (2.0 / m if s.kind == K_MSE else 1.0 / m)
    cdef double den = 1.0 if s.sum_ else (<double>n if w == NULL else weight_sum(w, n))
    cdef double k = scale / den * c
    if nt <= 1:
        for r in range(n):
            _back_row(s, y + r * m, t + r * m, dy + r * m,
                      k if w == NULL else scale * w[r] / den * c)
    else:
        for r in prange(n, num_threads=nt, schedule="static"):
            _back_row(s, y + r * m, t + r * m, dy + r * m,
                      k if w == NULL else scale * w[r] / den * c)


# ---------------------------------------------------------------------------- checked kernels
cdef int _spec(_Spec* s, str kind, Py_buffer* vy, object half, double delta,
               str reduction) except -1:
    if vy.ndim != 2:
        raise ValueError(f"expected a 2-D array, got {vy.ndim}-D")
    s.kind = KINDS[kind]
    s.half = 1 if half else 0
    s.delta = delta
    s.sum_ = REDUCTIONS[reduction]
    s.n, s.m = vy.shape[0], vy.shape[1]
    if s.n < 1 or s.m < 1:
        raise ValueError(f"y must be non-empty (N >= 1, M >= 1), got shape ({s.n}, {s.m})")
    return 0


cdef int _check_t(const _Spec* s, int dt, const void* tp, object t) except -1:
    cdef Py_ssize_t bad
    with nogil:
        if dt == DT_F32:
            bad = bad_target(<const float*>tp, s.n, s.m, s.kind == K_BCE)
        else:
            bad = bad_target(<const double*>tp, s.n, s.m, s.kind == K_BCE)
    if bad >= 0:
        if s.kind == K_BCE:
            raise ValueError(f"t (sigmoid_bce targets) must lie in [0, 1], got "
                             f"{t[bad].tolist()} in row {bad}")
        raise ValueError(f"t must be finite, got {t[bad].tolist()} in row {bad}")
    return 0


def _value_forward(str kind, y, t, w, rows, half, double delta, str reduction):
    cdef Py_buffer v[4]
    cdef _Spec s
    cdef int dt
    cdef double total
    cdef double* rp = NULL
    cdef double* own = NULL
    memset(v, 0, sizeof(v))
    try:
        dt = buf_get(y, &v[0], DT_FLOAT, -1, False)
        _spec(&s, kind, &v[0], half, delta, reduction)
        buf_get(t, &v[1], dt, s.n * s.m, False)
        buf_get(w, &v[2], DT_F64, s.n, False)
        buf_get(rows, &v[3], DT_F64, s.n, True)
        _check_t(&s, dt, v[1].buf, t)
        if w is not None:
            check_weights(<const double*>v[2].buf, s.n)
        if rows is None:
            own = <double*>malloc(s.n * sizeof(double))
            if own == NULL:
                raise MemoryError()
            rp = own
        else:
            rp = <double*>v[3].buf
        with nogil:
            if dt == DT_F32:
                total = _forward(&s, <const float*>v[0].buf, <const float*>v[1].buf,
                                 <const double*>v[2].buf, rp)
            else:
                total = _forward(&s, <const double*>v[0].buf, <const double*>v[1].buf,
                                 <const double*>v[2].buf, rp)
    finally:
        free(own)
        buf_release(v, 4)
    return total


def _value_backward(str kind, y, t, w, dy, double scale, half, double delta, str reduction):
    cdef Py_buffer v[4]
    cdef _Spec s
    cdef int dt
    memset(v, 0, sizeof(v))
    try:
        dt = buf_get(y, &v[0], DT_FLOAT, -1, False)
        _spec(&s, kind, &v[0], half, delta, reduction)
        buf_get(t, &v[1], dt, s.n * s.m, False)
        buf_get(w, &v[2], DT_F64, s.n, False)
        buf_get(dy, &v[3], dt, s.n * s.m, True)
        _check_t(&s, dt, v[1].buf, t)
        if w is not None:
            check_weights(<const double*>v[2].buf, s.n)
        with nogil:
            if dt == DT_F32:
                _backward(&s, <const float*>v[0].buf, <const float*>v[1].buf,
                          <const double*>v[2].buf, <float*>v[3].buf, scale)
            else:
                _backward(&s, <const double*>v[0].buf, <const double*>v[1].buf,
                          <const double*>v[2].buf, <double*>v[3].buf, scale)
    finally:
        buf_release(v, 4)


def mse_forward(y, t, w, rows, half, reduction):
    """Mean squared error (dlfast.kernels.mse_forward)."""
    return _value_forward("mse", y, t, w, rows, half, 1.0, reduction)


def mse_backward(y, t, w, dy, double scale, half, reduction):
    _value_backward("mse", y, t, w, dy, scale, half, 1.0, reduction)


def mae_forward(y, t, w, rows, reduction):
    """Mean absolute error (dlfast.kernels.mae_forward)."""
    return _value_forward("mae", y, t, w, rows, False, 1.0, reduction)


def mae_backward(y, t, w, dy, double scale, reduction):
    _value_backward("mae", y, t, w, dy, scale, False, 1.0, reduction)


def huber_forward(y, t, w, rows, double delta, reduction):
    """Huber loss (dlfast.kernels.huber_forward)."""
    return _value_forward("huber", y, t, w, rows, False, delta, reduction)


def huber_backward(y, t, w, dy, double scale, double delta, reduction):
    _value_backward("huber", y, t, w, dy, scale, False, delta, reduction)


def sigmoid_bce_forward(z, t, w, rows, reduction):
    """Sigmoid binary cross-entropy on logits (dlfast.kernels.sigmoid_bce_forward)."""
    return _value_forward("sigmoid_bce", z, t, w, rows, False, 1.0, reduction)


def sigmoid_bce_backward(z, t, w, dz, double scale, reduction):
    _value_backward("sigmoid_bce", z, t, w, dz, scale, False, 1.0, reduction)


# ---------------------------------------------------------------------------- op (dlfast.kernels.OPS)
ctypedef struct _LossC:
    dlf_loss_op op      # first: the program sees a dlf_loss_op*
    _Spec s
    double* rows
    int dt


cdef int _op_fwd(dlf_loss_op* p, const void* y, double* loss) noexcept nogil:
    cdef _LossC* c = <_LossC*>p
    if c.dt == DT_F32:
        loss[0] = _forward(&c.s, <const float*>y, <const float*>c.op.targets, c.op.sw, c.rows)
    else:
        loss[0] = _forward(&c.s, <const double*>y, <const double*>c.op.targets, c.op.sw,
                           c.rows)
    return 0


cdef int _op_bwd(dlf_loss_op* p, const void* y) noexcept nogil:
    cdef _LossC* c = <_LossC*>p
    if c.dt == DT_F32:
        _backward(&c.s, <const float*>y, <const float*>c.op.targets, c.op.sw,
                  <float*>c.op.dlogits, c.op.weight)
    else:
        _backward(&c.s, <const double*>y, <const double*>c.op.targets, c.op.sw,
                  <double*>c.op.dlogits, c.op.weight)
    return 0


cdef class ValueLossOp:
    """The value-loss ops (dlfast.kernels.OPS: mse, mae, huber, sigmoid_bce):
    ``<kind>_forward(y, targets, w)`` and ``<kind>_backward(y, targets, w, dlogits, weight)`` of
    fixed arrays (targets, dlogits: (N, M), N, M >= 1; sw: float64 (N,)); the program fills
    targets and sw before each step and sets ``op.sw`` to sw or NULL. ``address()`` is the
    ``dlf_loss_op*``."""
    cdef _LossC c
    cdef Py_buffer v[3]

    def __cinit__(self, str kind, targets, sw, dlogits, double weight, half=False,
                  double delta=1.0, str reduction="mean"):
        cdef Py_ssize_t n, m
        memset(self.v, 0, sizeof(self.v))
        memset(&self.c, 0, sizeof(self.c))
        if kind not in KINDS or reduction not in REDUCTIONS:
            raise ValueError(f"unknown loss {kind!r} or reduction {reduction!r}")
        self.c.dt = buf_get(targets, &self.v[0], DT_FLOAT, -1, True)
        _spec(&self.c.s, kind, &self.v[0], half, delta, reduction)
        n, m = self.c.s.n, self.c.s.m
        buf_get(sw, &self.v[1], DT_F64, n, True)
        buf_get(dlogits, &self.v[2], self.c.dt, n * m, True)
        if self.v[1].buf == NULL:
            raise TypeError("sw is required (a float64 (N,) buffer)")
        self.c.rows = <double*>malloc(n * sizeof(double))
        if self.c.rows == NULL:
            raise MemoryError()
        self.c.op.targets = self.v[0].buf
        self.c.op.sw_buf = <double*>self.v[1].buf
        self.c.op.sw = NULL
        self.c.op.dlogits = self.v[2].buf
        self.c.op.n, self.c.op.width = n, m
        self.c.op.unit = 1 if self.c.s.kind == K_BCE else 0
        self.c.op.weight = weight
        self.c.op.fwd = _op_fwd
        self.c.op.bwd = _op_bwd

    def __dealloc__(self):
        free(self.c.rows)
        buf_release(self.v, 3)

    def address(self):
        return <size_t>&self.c.op


def MSEOp(targets, sw, dlogits, double weight, half, str reduction):
    """The ``mse`` op (``ValueLossOp``)."""
    return ValueLossOp("mse", targets, sw, dlogits, weight, half, 1.0, reduction)


def MAEOp(targets, sw, dlogits, double weight, str reduction):
    """The ``mae`` op (``ValueLossOp``)."""
    return ValueLossOp("mae", targets, sw, dlogits, weight, False, 1.0, reduction)


def HuberOp(targets, sw, dlogits, double weight, double delta, str reduction):
    """The ``huber`` op (``ValueLossOp``)."""
    return ValueLossOp("huber", targets, sw, dlogits, weight, False, delta, reduction)


def SigmoidBCEOp(targets, sw, dlogits, double weight, str reduction):
    """The ``sigmoid_bce`` op (``ValueLossOp``)."""
    return ValueLossOp("sigmoid_bce", targets, sw, dlogits, weight, False, 1.0, reduction)
