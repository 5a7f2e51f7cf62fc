# Ops of the compiled backend (dlfast_op.h): the structs a kernel module's op object fills once and
# _program.pyx runs at every step. Each module's op keeps its arrays' buffers acquired (Py_buffer,
# released when the op is freed), so the pointers stay valid and the arrays cannot be resized.
from libc.stdint cimport int64_t

cdef extern from "dlfast_op.h" nogil:
    enum:
        DLF_OP_ERR_LABELS
        DLF_OP_ERR_MEMORY
        DLF_OP_ERR_PYTHON
    ctypedef struct dlf_op:
        int (*fwd)(dlf_op*, const void*) noexcept nogil
        int (*bwd)(dlf_op*, const void*, const void*) noexcept nogil
        void* out
        void* dx
    ctypedef struct dlf_loss_op:
        int (*fwd)(dlf_loss_op*, const void*, double*) noexcept nogil
        int (*bwd)(dlf_loss_op*, const void*) noexcept nogil
        int64_t* labels
        void* targets
        double* sw_buf
        const double* sw
        void* dlogits
        int64_t n, width
        int unit
        double weight
