# Activations shared by _dense.pyx and _activations.pyx: codes, values and derivatives.
# The derivative is written from the output y = act(z) (see dlfast.kernels for the table).
# NaN propagates as in the NumPy backend (no branch turns a NaN into a number).
from cython cimport floating
from libc.math cimport exp, expf, expm1, expm1f, tanh, tanhf, fabs, fabsf

cdef enum:
    ACT_IDENTITY = 0
    ACT_RELU = 1
    ACT_LEAKY = 2
    ACT_ELU = 3
    ACT_SIGMOID = 4
    ACT_TANH = 5


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _expm1(floating x) noexcept nogil:
    if floating is float:
        return expm1f(x)
    else:
        return expm1(x)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating _abs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating _sigmoid(floating z) noexcept nogil:
    cdef floating e = _exp(-_abs(z))
    if z >= 0:
        return 1 / (1 + e)
    return e / (1 + e)


cdef inline void act_row(floating* y, const floating* z, const floating* b, Py_ssize_t n,
                         int code, floating alpha) noexcept nogil:
    """y[i] = act(z[i] + b[i]) (b may be NULL; y may be z). One loop per code so each vectorises."""
    cdef Py_ssize_t i
    cdef floating v
    if b != NULL:
        for i in range(n):
            y[i] = z[i] + b[i]
        z = y
    if code == ACT_IDENTITY:
        if y != z:
            for i in range(n):
                y[i] = z[i]
    elif code == ACT_RELU:
        for i in range(n):
            v = z[i]
            y[i] = 0 if v <= 0 else v
    elif code == ACT_LEAKY:
        for i in range(n):
            v = z[i]
            y[i] = v if v > 0 else alpha * v
    elif code == ACT_ELU:
        for i in range(n):
            v = z[i]
            y[i] = v if v > 0 else alpha * _expm1(v)
    elif code == ACT_SIGMOID:
        for i in range(n):
            y[i] = _sigmoid(z[i])
    elif code == ACT_TANH:
        for i in range(n):
            y[i] = _tanh(z[i])


cdef inline void act_grad_row(floating* dz, const floating* dout, const floating* y, Py_ssize_t n,
                              int code, floating alpha) noexcept nogil:
    """dz[i] = dout[i] * act'(y[i]), from the output y."""
    cdef Py_ssize_t i
    if code == ACT_IDENTITY:
        for i in range(n):
            dz[i] = dout[i]
    elif code == ACT_RELU:
        for i in range(n):
            dz[i] = dout[i] * (<floating>1 if y[i] > 0 else <floating>0)
    elif code == ACT_LEAKY:
        for i in range(n):
            dz[i] = dout[i] * (<floating>1 if y[i] > 0 else alpha)
    elif code == ACT_ELU:
        for i in range(n):
            dz[i] = dout[i] * (<floating>1 if y[i] > 0 else y[i] + alpha)
    elif code == ACT_SIGMOID:
        for i in range(n):
            dz[i] = dout[i] * (y[i] * (1 - y[i]))
    elif code == ACT_TANH:
        for i in range(n):
            dz[i] = dout[i] * (1 - y[i] * y[i])


cdef inline int act_code(str name) except -1:
    """The code of an activation name (validated upstream by dlfast.kernels)."""
    if name == "identity":
        return ACT_IDENTITY
    if name == "relu":
        return ACT_RELU
    if name == "leaky_relu":
        return ACT_LEAKY
    if name == "elu":
        return ACT_ELU
    if name == "sigmoid":
        return ACT_SIGMOID
    if name == "tanh":
        return ACT_TANH
    raise ValueError(f"unknown activation {name!r}")
