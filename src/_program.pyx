"""The program of a training step (dlfast._engine; its steps: dlfast.kernels.PROGRAM_DOC): the
ops' C functions (dlfast_op.h) in schedule order, one call per step with the GIL released once.
An op without ``address()`` (a ``layer`` op: a layer's own forward/backward) is called with the
GIL taken for it.
"""
cimport numpy as cnp
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_STRIDES,
                             PyBUF_FORMAT)
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

import numpy as np

from _op cimport dlf_op, dlf_loss_op, DLF_OP_ERR_LABELS, DLF_OP_ERR_MEMORY, DLF_OP_ERR_PYTHON
from _act cimport buf_get, buf_release, DT_F32

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
            err = lop.bwd(lop)
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


cdef size_t _address(a) except? 0:
    """The first byte of a C-contiguous array (through the buffer protocol)."""
    cdef Py_buffer v
    PyObject_GetBuffer(a, &v, PyBUF_SIMPLE)
    cdef size_t p = <size_t>v.buf
    PyBuffer_Release(&v)
    return p


cdef class Program:
    """``Program(steps, losses, x_shape, dtype, written)``: see dlfast.kernels.PROGRAM_DOC."""
    cdef _Step* steps
    cdef Py_ssize_t nsteps, n, count, nwritten
    cdef dlf_loss_op** losses
    cdef int nlosses, dt
    cdef size_t* spans              # [start, end) of every written array
    cdef bint busy
    cdef object keep                # the ops and arrays the pointers point into
    cdef list py                    # Python op steps: (code, op, src, dsrc)
    cdef tuple written
    cdef object x                   # the step's x while it runs (for Python ops)
    cdef public object error
    cdef readonly object values

    def __cinit__(self, steps, losses, x_shape, dtype, written):
        cdef Py_ssize_t k
        cdef _Step* s
        steps, losses, written = list(steps), list(losses), tuple(written)
        self.keep = (steps, losses)
        self.written = written
        self.py = []
        self.n, self.count = x_shape[0], int(np.prod(x_shape))
        self.dt = 0 if np.dtype(dtype) == np.float32 else 1
        self.values = np.zeros(len(losses))
        self.nsteps, self.nlosses, self.nwritten = len(steps), len(losses), len(written)
        self.steps = <_Step*>malloc(max(self.nsteps, 1) * sizeof(_Step))
        self.losses = <dlf_loss_op**>malloc(max(self.nlosses, 1) * sizeof(dlf_loss_op*))
        self.spans = <size_t*>malloc(max(2 * self.nwritten, 1) * sizeof(size_t))
        if self.steps == NULL or self.losses == NULL or self.spans == NULL:
            raise MemoryError()
        memset(self.steps, 0, max(self.nsteps, 1) * sizeof(_Step))
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

    def _py_step(self, Py_ssize_t k):
        code, op, src, dsrc = self.py[k]
        if code == FWD:
            op.forward(self.x if src is None else src)
        else:
            op.backward(self.x if src is None else src, dsrc)

    def readonly(self):
        """Index of the first written array that is not writeable, or -1."""
        cdef Py_ssize_t k
        for k in range(self.nwritten):
            if not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>self.written[k]):
                return k
        return -1

    def accepts(self, x):
        """x shares no memory with an array the step writes (the bounds test of
        ``numpy.may_share_memory``)."""
        cdef Py_buffer v
        cdef size_t lo, hi
        cdef Py_ssize_t k
        PyObject_GetBuffer(x, &v, PyBUF_SIMPLE)
        lo, hi = <size_t>v.buf, <size_t>v.buf + <size_t>v.len
        PyBuffer_Release(&v)
        if hi == lo:
            return True
        for k in range(self.nwritten):
            if lo < self.spans[2 * k + 1] and self.spans[2 * k] < hi:
                return False
        return True

    def load_labels(self, labels):
        """Copy one int64 (N,) array per loss (any stride) into its label buffer, each label
        checked to lie in [0, C) first (ValueError: nothing copied)."""
        cdef Py_buffer vl
        cdef Py_ssize_t r, j, stride
        cdef int64_t t
        cdef const char* f
        cdef dlf_loss_op* lop
        if len(labels) != self.nlosses:
            raise ValueError(f"expected {self.nlosses} label arrays, got {len(labels)}")
        for copy in (False, True):
            for j in range(self.nlosses):
                lop = self.losses[j]
                PyObject_GetBuffer(labels[j], &vl, PyBUF_STRIDES | PyBUF_FORMAT)
                try:
                    f = vl.format
                    if f[0] == b"@" or f[0] == b"=":
                        f += 1
                    if (vl.ndim != 1 or vl.shape[0] != lop.n or vl.itemsize != 8
                            or not (f[0] == b"l" or f[0] == b"q") or f[1] != 0):
                        raise TypeError(f"labels must be int64 of shape ({lop.n},)")
                    stride = vl.strides[0]
                    for r in range(lop.n):
                        t = (<const int64_t*>(<const char*>vl.buf + r * stride))[0]
                        if copy:
                            lop.labels[r] = t
                        elif t < 0 or t >= lop.classes:
                            raise ValueError(f"labels must lie in [0, {lop.classes}), got {t} "
                                             f"in row {r}")
                finally:
                    PyBuffer_Release(&vl)

    def run(self, x, times=None):
        """One step on x (C-contiguous, x_shape, dtype) with the labels loaded; returns
        sum_j weight_j * L_j (``values``: the L_j). ``times``: float64 (nsteps,), each step's
        seconds added."""
        cdef Py_buffer vx
        cdef int err = 0
        cdef double total = 0.0
        cdef cnp.ndarray values = self.values
        cdef double* tp = NULL
        cdef cnp.ndarray tarr
        if times is not None:
            tarr = times
            if (tarr.dtype != np.float64 or tarr.ndim != 1 or tarr.shape[0] != self.nsteps
                    or not cnp.PyArray_ISCARRAY(tarr)):
                raise ValueError(f"times must be a writeable C-contiguous float64 array of "
                                 f"{self.nsteps} elements")
            tp = <double*>cnp.PyArray_DATA(tarr)
        if self.busy:
            raise RuntimeError("this training step is running in another thread")
        memset(&vx, 0, sizeof(vx))
        self.busy = True
        try:
            buf_get(x, &vx, self.dt, self.count, False)
            self.x = x
            with nogil:
                err = _run(self.steps, self.nsteps, vx.buf, <double*>cnp.PyArray_DATA(values),
                           &total, self.dt, <void*>self, tp)
        finally:
            self.busy = False
            self.x = None
            buf_release(&vx, 1)
        if err == DLF_OP_ERR_PYTHON:
            exc, self.error = self.error, None
            raise exc
        if err == DLF_OP_ERR_MEMORY:
            raise MemoryError()
        if err:
            raise RuntimeError(f"training step error {err}")
        return total
