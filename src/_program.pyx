"""The program of a training step (dlfast._engine; its steps: dlfast.kernels.PROGRAM_DOC): the
ops' C functions (dlfast_op.h) in schedule order, one call per step with the GIL released once.
An op without ``address()`` (a ``layer`` op: a layer's own forward/backward) is called with the
GIL taken for it.
"""
cimport numpy as cnp
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_STRIDES,
                             PyBUF_FORMAT)
from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK, NOWAIT_LOCK)
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

import importlib

import numpy as np

from _op cimport dlf_op, dlf_loss_op, DLF_OP_ERR_LABELS, DLF_OP_ERR_MEMORY, DLF_OP_ERR_PYTHON
from _act cimport buf_get, buf_release, DT_F32
from _targets cimport bad_value, DBL_MAX

cnp.import_array()

cdef enum:
    FWD = 0
    BWD = 1
    LOSS = 2
    LOSS_BWD = 3
    COPY = 4
    ADD = 5

ctypedef struct _Step:
    int code
    void* op            # dlf_op* (FWD, BWD), dlf_loss_op* (LOSS, LOSS_BWD); NULL: a Python op
    const void* src     # NULL: the step's x
    const void* dsrc
    void* dst           # COPY, ADD
    Py_ssize_t n        # COPY, ADD: elements; a Python op: its index in ``py``
    int slot            # LOSS: the value's index


cdef int _py_call(void* prog, Py_ssize_t k) noexcept with gil:
    """Step k of the Python ops; an exception is kept for ``run`` to raise."""
    try:
        (<Program>prog)._py_step(k)
        return 0
    except BaseException as exc:
        (<Program>prog).error = exc
        return DLF_OP_ERR_PYTHON


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + 1e-9 * ts.tv_nsec


cdef int _run(_Step* steps, Py_ssize_t nsteps, const void* x, double* values, double* total,
              int dt, void* prog, double* times) noexcept nogil:
    cdef Py_ssize_t k, i
    cdef _Step* s
    cdef const void* src
    cdef dlf_op* op
    cdef dlf_loss_op* lop
    cdef double v, t0 = 0.0
    cdef int err = 0
    for k in range(nsteps):
        if times != NULL:
            t0 = _now()
        s = &steps[k]
        src = x if s.src == NULL else s.src
        if s.code == FWD or s.code == BWD:
            op = <dlf_op*>s.op
            if op == NULL:
                err = _py_call(prog, s.n)
            elif s.code == FWD:
                err = op.fwd(op, src)
            else:
                err = op.bwd(op, src, s.dsrc)
        elif s.code == LOSS:
            lop = <dlf_loss_op*>s.op
            err = lop.fwd(lop, src, &v)
            values[s.slot] = v
            total[0] += lop.weight * v
        elif s.code == LOSS_BWD:
            lop = <dlf_loss_op*>s.op
            err = lop.bwd(lop, src)
        elif s.code == COPY:
            memcpy(s.dst, s.src, s.n * (4 if dt == DT_F32 else 8))
        elif dt == DT_F32:              # ADD
            for i in range(s.n):
                (<float*>s.dst)[i] += (<const float*>s.src)[i]
        else:
            for i in range(s.n):
                (<double*>s.dst)[i] += (<const double*>s.src)[i]
        if times != NULL:
            times[k] += _now() - t0
        if err:
            return err
    return 0


# x's finiteness scan: _optim's all_finite scan (blocks over the threads of dlfast's setting)
ctypedef int (*_scan_f_t)(const float*, Py_ssize_t) noexcept nogil
ctypedef int (*_scan_d_t)(const double*, Py_ssize_t) noexcept nogil
cdef _scan_f_t _nonfinite_f = NULL
cdef _scan_d_t _nonfinite_d = NULL


cdef _bind_scans():
    global _nonfinite_f, _nonfinite_d
    cdef size_t a, b
    a, b = importlib.import_module("dlfast._backends._optim")._finite_entries()
    _nonfinite_f, _nonfinite_d = <_scan_f_t>a, <_scan_d_t>b


_bind_scans()


cdef size_t _address(a) except? 0:
    """The first byte of a C-contiguous array (through the buffer protocol)."""
    cdef Py_buffer v
    PyObject_GetBuffer(a, &v, PyBUF_SIMPLE)
    cdef size_t p = <size_t>v.buf
    PyBuffer_Release(&v)
    return p


cdef class Program:
    """``Program(steps, losses, x_shape, dtype, written, hooks)``: see
    dlfast.kernels.PROGRAM_DOC."""
    cdef _Step* steps
    cdef Py_ssize_t nsteps, n, count, nwritten
    cdef dlf_loss_op** losses
    cdef int nlosses, dt, typenum, ndim
    cdef cnp.npy_intp shape[8]
    cdef size_t* spans              # [start, end) of every written array
    cdef double* vals               # the losses of the last run
    cdef PyThread_type_lock lock    # one step at a time
    cdef object keep                # the ops and arrays the pointers point into
    cdef list py                    # Python op steps: (code, op, src, dsrc)
    cdef tuple written
    cdef tuple names, drops, recs, xrecs, loss_recs
    cdef object convert, convert_w
    cdef void*** gslots             # pointer fields of the gradient outputs (step's fresh)
    cdef void** gsaved
    cdef Py_ssize_t ngrads
    cdef object x                   # the step's x while it runs (for Python ops)
    cdef public object error

    def __cinit__(self, steps, losses, x_shape, dtype, written, hooks=None):
        cdef Py_ssize_t k
        cdef _Step* s
        steps, losses, written = list(steps), list(losses), tuple(written)
        if hooks is None:
            hooks = ((), (), (), (), tuple(({}, {}, None) for _ in losses), None, None, ())
        (self.names, self.drops, self.recs, self.xrecs, self.loss_recs, self.convert,
         self.convert_w) = (tuple(hooks[0]), tuple(hooks[1]), tuple(hooks[2]), tuple(hooks[3]),
                            tuple(hooks[4]), hooks[5], hooks[6])
        gs = tuple(hooks[7])
        self.ngrads = len(gs)
        self.gslots = <void***>malloc(max(self.ngrads, 1) * sizeof(void**))
        self.gsaved = <void**>malloc(max(self.ngrads, 1) * sizeof(void*))
        if self.gslots == NULL or self.gsaved == NULL:
            raise MemoryError()
        for k in range(self.ngrads):
            self.gslots[k] = <void**><size_t>gs[k]
        self.ndim = len(x_shape)
        if not 1 <= self.ndim <= 8:
            raise ValueError(f"x_shape must have 1 to 8 dimensions, got {tuple(x_shape)}")
        for k in range(self.ndim):
            self.shape[k] = x_shape[k]
        self.typenum = np.dtype(dtype).num
        self.keep = (steps, losses)
        self.written = written
        self.py = []
        self.n, self.count = x_shape[0], int(np.prod(x_shape))
        self.dt = 0 if np.dtype(dtype) == np.float32 else 1
        self.nsteps, self.nlosses, self.nwritten = len(steps), len(losses), len(written)
        self.steps = <_Step*>malloc(max(self.nsteps, 1) * sizeof(_Step))
        self.losses = <dlf_loss_op**>malloc(max(self.nlosses, 1) * sizeof(dlf_loss_op*))
        self.spans = <size_t*>malloc(max(2 * self.nwritten, 1) * sizeof(size_t))
        self.vals = <double*>malloc(max(self.nlosses, 1) * sizeof(double))
        self.lock = PyThread_allocate_lock()
        if (self.steps == NULL or self.losses == NULL or self.spans == NULL or self.vals == NULL
                or self.lock == NULL):
            raise MemoryError()
        memset(self.steps, 0, max(self.nsteps, 1) * sizeof(_Step))
        memset(self.vals, 0, max(self.nlosses, 1) * sizeof(double))
        for k, a in enumerate(written):
            self.spans[2 * k] = _address(a)
            self.spans[2 * k + 1] = self.spans[2 * k] + a.nbytes
        for k, lop in enumerate(losses):
            self.losses[k] = <dlf_loss_op*><size_t>lop.address()
        for k, (code, a, b, c, d) in enumerate(steps):
            s = &self.steps[k]
            s.code = code
            if code in (FWD, BWD):
                if hasattr(a, "address"):
                    s.op = <void*><size_t>a.address()
                else:
                    s.n = len(self.py)
                    self.py.append((code, a, b, c))
                s.src = NULL if b is None else <void*>_address(b)
                s.dsrc = NULL if c is None else <void*>_address(c)
            elif code in (LOSS, LOSS_BWD):
                s.op = <void*><size_t>a.address()
                s.src = NULL if b is None else <void*>_address(b)
                s.slot = d
            else:
                s.dst = <void*>_address(a)
                s.src = <void*>_address(b)
                s.n = a.size

    def __dealloc__(self):
        free(self.steps)
        free(self.losses)
        free(self.spans)
        free(self.vals)
        free(self.gslots)
        free(self.gsaved)
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    @property
    def values(self):
        """The losses of the last run (float64 array)."""
        return np.array([self.vals[j] for j in range(self.nlosses)])

    def _py_step(self, Py_ssize_t k):
        code, op, src, dsrc = self.py[k]
        if code == FWD:
            op.forward(self.x if src is None else src)
        else:
            op.backward(self.x if src is None else src, dsrc)

    cdef Py_ssize_t _readonly(self):
        cdef Py_ssize_t k
        for k in range(self.nwritten):
            if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>self.written[k]):
                return k
        return -1

    def readonly(self):
        """Index of the first written array that is not writeable, or -1."""
        return self._readonly()

    cdef bint _accepts(self, size_t lo, size_t hi) noexcept:
        cdef Py_ssize_t k
        if hi == lo:
            return True
        for k in range(self.nwritten):
            if lo < self.spans[2 * k + 1] and self.spans[2 * k] < hi:
                return False
        return True

    def accepts(self, x):
        """x shares no memory with an array the step writes (the bounds test of
        ``numpy.may_share_memory``)."""
        cdef Py_buffer v
        PyObject_GetBuffer(x, &v, PyBUF_SIMPLE)
        lo, hi = <size_t>v.buf, <size_t>v.buf + <size_t>v.len
        PyBuffer_Release(&v)
        return self._accepts(lo, hi)

    cdef int _targets_fast(self, list targets, list weights) except -1:
        """Check every loss's targets (labels in [0, C), or values finite, in [0, 1] for a
        ``unit`` loss) and sample weights (finite, >= 0, a positive finite sum), then copy them
        into the ops' buffers (any strides) and point ``op.sw`` at the weights or NULL. Returns
        1 when one is bad (nothing copied), else 0. The arrays have the forms ``_fits`` takes."""
        cdef Py_ssize_t r, c, j, m, s0, s1
        cdef int64_t t
        cdef double v, wsum
        cdef const char* p
        cdef dlf_loss_op* lop
        cdef cnp.ndarray a
        for copy in range(2):
            for j in range(self.nlosses):
                lop = self.losses[j]
                a = targets[j]
                p = <const char*>cnp.PyArray_DATA(a)
                s0 = cnp.PyArray_STRIDES(a)[0]
                if lop.labels != NULL:
                    for r in range(lop.n):
                        t = (<const int64_t*>(p + r * s0))[0]
                        if copy:
                            lop.labels[r] = t
                        elif t < 0 or t >= lop.width:
                            return 1
                else:
                    m = lop.width
                    s1 = cnp.PyArray_STRIDES(a)[1] if cnp.PyArray_NDIM(a) == 2 else 0
                    for r in range(lop.n):
                        for c in range(m):
                            if self.dt == 0:
                                v = (<const float*>(p + r * s0 + c * s1))[0]
                                if copy:
                                    (<float*>lop.targets)[r * m + c] = <float>v
                            else:
                                v = (<const double*>(p + r * s0 + c * s1))[0]
                                if copy:
                                    (<double*>lop.targets)[r * m + c] = v
                            if not copy and bad_value(v, lop.unit):
                                return 1
                if weights is None or weights[j] is None:
                    if copy:
                        lop.sw = NULL
                    continue
                a = weights[j]
                p = <const char*>cnp.PyArray_DATA(a)
                s0 = cnp.PyArray_STRIDES(a)[0]
                wsum = 0.0
                for r in range(lop.n):
                    v = (<const double*>(p + r * s0))[0]
                    if copy:
                        lop.sw_buf[r] = v
                    elif not (v >= 0 and v <= DBL_MAX):
                        return 1
                    wsum = wsum + v
                if copy:
                    lop.sw = lop.sw_buf
                elif not (wsum > 0 and wsum <= DBL_MAX):
                    return 1
        return 0

    cdef bint _fits(self, int j, object a) noexcept:
        """a is an array ``_targets_fast`` takes for loss j: int64 (N,) labels, or values of the
        program's dtype (N, M) (or (N,) when M = 1); aligned, native byte order."""
        cdef dlf_loss_op* lop = self.losses[j]
        cdef cnp.ndarray t
        if type(a) is not np.ndarray:
            return False
        t = a
        if (cnp.PyArray_NDIM(t) < 1 or cnp.PyArray_DIMS(t)[0] != lop.n
                or not cnp.PyArray_ISBEHAVED_RO(t)):
            return False
        if lop.labels != NULL:
            return cnp.PyArray_TYPE(t) == cnp.NPY_INT64 and cnp.PyArray_NDIM(t) == 1
        if cnp.PyArray_TYPE(t) != self.typenum:
            return False
        if cnp.PyArray_NDIM(t) == 2:
            return cnp.PyArray_DIMS(t)[1] == lop.width
        return cnp.PyArray_NDIM(t) == 1 and lop.width == 1

    cdef bint _fits_w(self, int j, object a) noexcept:
        """a is float64 (N,) sample weights, aligned, native byte order."""
        cdef cnp.ndarray w
        if type(a) is not np.ndarray:
            return False
        w = a
        return (cnp.PyArray_TYPE(w) == cnp.NPY_FLOAT64 and cnp.PyArray_NDIM(w) == 1
                and cnp.PyArray_DIMS(w)[0] == self.losses[j].n and cnp.PyArray_ISBEHAVED_RO(w))

    def load_targets(self, targets, weights=None):
        """Copy one target array per loss (int64 (N,) labels, or values (N, M) of the dtype; any
        strides) and its sample weights (None, or float64 (N,)) into the op's buffers, each
        checked first (ValueError naming the row: nothing copied)."""
        cdef Py_ssize_t j, r
        targets = list(targets)
        if len(targets) != self.nlosses:
            raise ValueError(f"expected {self.nlosses} target arrays, got {len(targets)}")
        weights = None if weights is None else list(weights)
        if weights is not None and len(weights) != self.nlosses:
            raise ValueError(f"expected {self.nlosses} sample-weight entries, got {len(weights)}")
        for j in range(self.nlosses):
            lop = self.losses[j]
            if not self._fits(j, targets[j]):
                raise TypeError(f"targets[{j}] must be " + (
                    f"int64 labels of shape ({lop.n},)" if lop.labels != NULL else
                    f"{np.dtype(self.typenum).name} values of shape ({lop.n}, {lop.width})"))
            if weights is not None and weights[j] is not None and not self._fits_w(j, weights[j]):
                raise TypeError(f"weights[{j}] must be None or float64 of shape ({lop.n},)")
        if not self._targets_fast(targets, weights):
            return
        for j in range(self.nlosses):
            lop = self.losses[j]
            a = np.asarray(targets[j])
            for r in range(lop.n):
                if lop.labels != NULL and not 0 <= a[r] < lop.width:
                    raise ValueError(f"labels must lie in [0, {lop.width}), got {a[r]} in row {r}")
                if lop.labels == NULL and not (np.all((a[r] >= 0) & (a[r] <= 1)) if lop.unit
                                               else np.all(np.isfinite(a[r]))):
                    raise ValueError(f"targets must be {'in [0, 1]' if lop.unit else 'finite'}, "
                                     f"got {np.atleast_1d(a[r]).tolist()} in row {r}")
            if weights is None or weights[j] is None:
                continue
            w = np.asarray(weights[j])
            for r in range(lop.n):
                if not (w[r] >= 0 and np.isfinite(w[r])):
                    raise ValueError(f"sample weights must be finite and >= 0, got {w[r]} in "
                                     f"row {r}")
            raise ValueError("sample weights must not all be zero and must have a finite sum")

    cdef double _run(self, const void* xp, double* times) except? -1.0:
        cdef int err
        cdef double total = 0.0
        with nogil:
            err = _run(self.steps, self.nsteps, xp, self.vals, &total, self.dt, <void*>self, times)
        if err == DLF_OP_ERR_PYTHON:
            exc, self.error = self.error, None
            raise exc
        if err == DLF_OP_ERR_MEMORY:
            raise MemoryError()
        if err:
            raise RuntimeError(f"training step error {err}")
        return total

    cdef int _check_x(self, x, bint finite) except -1:
        """0 when x is an ndarray of x_shape and dtype, C-contiguous and finite (``finite``: the
        caller has checked that, no scan), else 1."""
        cdef cnp.ndarray xa
        cdef Py_ssize_t k
        cdef bint ok
        if type(x) is not np.ndarray:
            return 1
        xa = x
        if (cnp.PyArray_TYPE(xa) != self.typenum or cnp.PyArray_NDIM(xa) != self.ndim
                or not cnp.PyArray_IS_C_CONTIGUOUS(xa)):
            return 1
        for k in range(self.ndim):
            if cnp.PyArray_DIMS(xa)[k] != self.shape[k]:
                return 1
        if finite:
            return 0
        with nogil:
            ok = not (_nonfinite_f(<const float*>cnp.PyArray_DATA(xa), self.count)
                      if self.dt == 0
                      else _nonfinite_d(<const double*>cnp.PyArray_DATA(xa), self.count))
        return 0 if ok else 1

    def step(self, x, targets, weights=None, fresh=None, bint finite=False):
        """The whole training step (dlfast.kernels.PROGRAM_DOC's ``step``); None when x is not an
        ndarray of x_shape and dtype, C-contiguous and finite (``finite``: known, not scanned)."""
        cdef Py_ssize_t k, j
        cdef size_t lo
        cdef double total
        if self._check_x(x, finite):
            return None
        lo = <size_t>cnp.PyArray_DATA(<cnp.ndarray>x)
        if not self._accepts(lo, lo + <size_t>cnp.PyArray_NBYTES(<cnp.ndarray>x)):
            raise ValueError("x shares memory with an array the training step writes (a layer's "
                             "output or gradient buffer); pass a copy")
        ts = list(targets)
        if len(ts) != self.nlosses:
            raise ValueError(f"expected {self.nlosses} target arrays, got {len(ts)}")
        for j in range(self.nlosses):
            if not self._fits(j, ts[j]):
                ts[j] = self.convert(j, ts[j])
        ws = None
        if weights is not None:
            ws = list(weights)
            if len(ws) != self.nlosses:
                raise ValueError(f"expected {self.nlosses} sample-weight entries, got {len(ws)}")
            for j in range(self.nlosses):
                if ws[j] is not None and not self._fits_w(j, ws[j]):
                    ws[j] = self.convert_w(j, ws[j])
        if not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            with nogil:                             # another thread runs this step: wait
                PyThread_acquire_lock(self.lock, WAIT_LOCK)
        try:
            k = self._readonly()
            if k >= 0:
                raise ValueError(f"{self.names[k]} is not writeable; a training step writes it")
            if self._targets_fast(ts, ws):
                for j in range(self.nlosses):       # the messages naming t and sample_weight
                    self.convert(j, targets[j])
                    if ws is not None and weights[j] is not None:
                        self.convert_w(j, weights[j])
                self.load_targets(ts, ws)           # (arrays converted by convert: its message)
            for layer, op, size in self.drops:
                op.set_counter(layer._take_counter(size))
            self.x = x
            if fresh is not None:
                if len(fresh) != self.ngrads:
                    raise ValueError(f"fresh must hold {self.ngrads} arrays, got {len(fresh)}")
                for k in range(self.ngrads):
                    self.gsaved[k] = self.gslots[k][0]
                for k in range(self.ngrads):
                    self.gslots[k][0] = cnp.PyArray_DATA(<cnp.ndarray>fresh[k])
            try:
                total = self._run(cnp.PyArray_DATA(<cnp.ndarray>x), NULL)
            finally:
                self.x = None
                if fresh is not None:
                    for k in range(self.ngrads):
                        self.gslots[k][0] = self.gsaved[k]
            for d, rec in self.recs:
                (<dict>d)["_fwd"] = rec
            for rec in self.xrecs:
                (<dict>rec)["x"] = x
            for j in range(self.nlosses):
                d, rec, sw = self.loss_recs[j]
                (<dict>rec)["sw"] = sw if self.losses[j].sw != NULL else None
                (<dict>d)["_fwd"] = rec
                (<dict>d)["loss"] = self.vals[j]
        finally:
            PyThread_release_lock(self.lock)
        return total

    def run(self, x, times=None):
        """One step on x (C-contiguous, x_shape, dtype) with the targets loaded; returns
        sum_j weight_j * L_j (``values``: the L_j). ``times``: float64 (nsteps,), each step's
        seconds added."""
        cdef Py_buffer vx
        cdef double* tp = NULL
        cdef cnp.ndarray tarr
        if times is not None:
            tarr = times
            if (tarr.dtype != np.float64 or tarr.ndim != 1 or tarr.shape[0] != self.nsteps
                    or not cnp.PyArray_ISCARRAY(tarr)):
                raise ValueError(f"times must be a writeable C-contiguous float64 array of "
                                 f"{self.nsteps} elements")
            tp = <double*>cnp.PyArray_DATA(tarr)
        memset(&vx, 0, sizeof(vx))
        buf_get(x, &vx, self.dt, self.count, False)
        if not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self.lock, WAIT_LOCK)
        self.x = x
        try:
            return self._run(vx.buf, tp)
        finally:
            self.x = None
            PyThread_release_lock(self.lock)
            buf_release(&vx, 1)
