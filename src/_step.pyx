"""The compiled chain of a bound training step (dlfast._bound, dlfast_op.h): the layers' ops
forward, the loss, then the ops backward — C calls only, with the GIL released once per step.

    in_0 = x; out_k = op_k.fwd(in_k); loss = loss.fwd(out_last)         (labels: copied in first)
    d = loss.bwd(); for k = last .. first: d = op_k.bwd(in_k, d)
"""
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_STRIDES,
                             PyBUF_FORMAT)
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from _op cimport dlf_op, dlf_loss_op, DLF_OP_ERR_LABELS, DLF_OP_ERR_MEMORY
from _act cimport buf_get, buf_release, DT_I64


cdef int _run(dlf_op** ops, int nops, int first, dlf_loss_op* loss, const void* x,
              double* value) noexcept nogil:
    cdef const void* p = x
    cdef const void* d
    cdef int k, err
    for k in range(nops):
        err = ops[k].fwd(ops[k], p)
        if err:
            return err
        p = ops[k].out
    err = loss.fwd(loss, p, value)
    if err:
        return err
    err = loss.bwd(loss)
    if err:
        return err
    d = loss.dlogits
    for k in range(nops - 1, first - 1, -1):
        err = ops[k].bwd(ops[k], ops[k - 1].out if k > 0 else x, d)
        if err:
            return err
        d = ops[k].dx
    return 0


cdef class Chain:
    """``Chain(ops, loss, first, x_shape, dtype, drops)``: ``run(x, labels)`` runs the forward
    of every op (``op.address()``, a ``dlf_op*``) from x, the loss (``dlf_loss_op*``), and the
    backward of ops[first:] in reverse; returns the loss, or None when the chain is running in
    another thread (the caller then takes another path). x must have ``x_shape`` and ``dtype``
    (C-contiguous); labels int64 of shape (N,), any stride. ``drops``: (layer, op, size) of the
    dropout ops, whose ``op.set_counter(layer._take_counter(size))`` runs first;
    ``first_outs``: the arrays ``accepts(x)`` checks x against."""
    cdef dlf_op** ops
    cdef dlf_loss_op* loss
    cdef int nops, first, dt
    cdef Py_ssize_t n, count
    cdef bint busy
    cdef object keep        # the op objects: they own the structs and buffers
    cdef tuple drops
    cdef list ranges        # [start, end) addresses of the first op's arrays (accepts)

    def __cinit__(self, ops, loss, int first, x_shape, dtype, drops=(),
                  first_outs=()):
        cdef int k
        cdef Py_buffer v
        ops = tuple(ops)
        self.keep = (ops, loss)
        self.nops = len(ops)
        if not 0 <= first <= self.nops:
            raise ValueError(f"first must lie in [0, {self.nops}], got {first}")
        self.first = first
        self.n, self.count = x_shape[0], x_shape[0] * x_shape[1]
        self.drops = tuple(drops)
        self.ranges = []
        for a in first_outs:
            PyObject_GetBuffer(a, &v, PyBUF_SIMPLE)
            self.ranges.append((<size_t>v.buf, <size_t>v.buf + <size_t>v.len))
            PyBuffer_Release(&v)
        self.dt = {"float32": 0, "float64": 1}[str(dtype)]
        self.ops = <dlf_op**>malloc(max(self.nops, 1) * sizeof(dlf_op*))
        if self.ops == NULL:
            raise MemoryError()
        for k in range(self.nops):
            self.ops[k] = <dlf_op*><size_t>ops[k].address()
        self.loss = <dlf_loss_op*><size_t>loss.address()

    def __dealloc__(self):
        free(self.ops)

    def accepts(self, x):
        """x (C-contiguous) shares no memory with the first op's arrays (``first_outs``): the
        bounds test of ``numpy.may_share_memory``."""
        cdef Py_buffer v
        cdef size_t lo, hi
        PyObject_GetBuffer(x, &v, PyBUF_SIMPLE)
        lo, hi = <size_t>v.buf, <size_t>v.buf + <size_t>v.len
        PyBuffer_Release(&v)
        if hi == lo:
            return True
        for a, b in self.ranges:
            if lo < <size_t>b and <size_t>a < hi:
                return False
        return True

    def run(self, x, labels):
        cdef Py_buffer vx, vl
        cdef Py_ssize_t r, stride
        cdef const char* f
        cdef int err = 0
        cdef double value = 0.0
        if self.busy:
            return None
        memset(&vx, 0, sizeof(vx))
        memset(&vl, 0, sizeof(vl))
        self.busy = True            # (Python runs below: another thread may enter and return)
        try:
            for layer, op, size in self.drops:
                op.set_counter(layer._take_counter(size))
            buf_get(x, &vx, self.dt, self.count, False)
            PyObject_GetBuffer(labels, &vl, PyBUF_STRIDES | PyBUF_FORMAT)
            f = vl.format
            if f[0] == b"@" or f[0] == b"=":
                f += 1
            if (vl.ndim != 1 or vl.shape[0] != self.n or vl.itemsize != 8
                    or not (f[0] == b"l" or f[0] == b"q") or f[1] != 0):
                raise TypeError(f"labels must be int64 of shape ({self.n},)")
            stride = vl.strides[0]
            for r in range(self.n):
                self.loss.labels[r] = (<const int64_t*>(<const char*>vl.buf + r * stride))[0]
            with nogil:
                err = _run(self.ops, self.nops, self.first, self.loss, vx.buf, &value)
        finally:
            self.busy = False
            buf_release(&vx, 1)
            buf_release(&vl, 1)
        if err == DLF_OP_ERR_LABELS:
            self.keep[1].check_labels()         # the loss kernels' message
        if err == DLF_OP_ERR_MEMORY:
            raise MemoryError()
        if err:
            raise RuntimeError(f"compiled chain error {err}")
        return value
