"""The argument checks' fast paths (``kernels._float_in``, ``kernels._out``,
``_validation.float_array``) against the contracts their docstrings state, over generated arrays:
every dtype, byte order, layout, ndim, shape, writeable flag and ndarray subclass below. A fast
path may only take the common case early; it never accepts what the contract rejects, nor
returns anything else."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlfast import kernels as K
from dlfast._validation import float_array

DTYPES = [np.float32, np.float64, ">f4", ">f8", np.float16, np.int32, np.bool_, np.complex64]
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class Sub(np.ndarray):
    """An ndarray subclass (the checks accept it through the slow path)."""


@st.composite
def arrays(draw):
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.integers(0, 3)) for _ in range(ndim))
    a = np.zeros(shape, draw(st.sampled_from(DTYPES)))
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        a = np.asfortranarray(a)
    elif layout == "strided" and ndim:
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    if draw(st.booleans()):
        a = a.view(Sub)
    if draw(st.booleans()):
        a.flags.writeable = False
    return a


def outcome(f, *args):
    """('ok', value) or (exception type, None)."""
    try:
        return "ok", f(*args)
    except (TypeError, ValueError) as exc:
        return type(exc), None


def same(got, want):
    (gk, gv), (wk, wv) = got, want
    assert gk == wk
    if gk == "ok":
        assert type(gv) is type(wv) and gv.dtype == wv.dtype and gv.shape == wv.shape
        assert gv.flags.c_contiguous


def float_in_contract(a, ndim, dtype):
    if not isinstance(a, np.ndarray):
        raise TypeError
    if a.dtype not in FLOATS or (dtype is not None and a.dtype != dtype):
        raise TypeError
    if ndim is not None and a.ndim != ndim:
        raise ValueError
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def out_contract(a, shape, dtype):
    if not isinstance(a, np.ndarray) or a.dtype != dtype:
        raise TypeError
    if a.shape != tuple(shape) or not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError
    return a


def float_array_contract(a, dtype, ndim, features, min_rows):
    if not isinstance(a, np.ndarray) or a.dtype not in FLOATS or a.dtype != dtype:
        raise TypeError
    allowed = ndim if isinstance(ndim, tuple) else (ndim,)
    if ndim is not None and a.ndim not in allowed:
        raise ValueError
    if features is not None and (a.ndim == 0 or a.shape[-1] != features):
        raise ValueError
    if a.ndim and a.shape[0] < min_rows:
        raise ValueError
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(arrays(), st.sampled_from([None, 0, 1, 2, 3]),
       st.sampled_from([None, np.dtype(np.float32), np.dtype(np.float64), np.dtype(">f4")]))
def test_float_in_keeps_its_contract(a, ndim, dtype):
    got = outcome(K._float_in, "x", a, ndim, dtype)
    want = outcome(float_in_contract, a, ndim, dtype)
    same(got, want)
    if got[0] == "ok" and a.flags.c_contiguous:
        assert got[1] is a                              # never a copy of a usable array


@SETTINGS
@given(arrays(), st.sampled_from([(), (0,), (2,), (3, 3), (2, 3), [2, 3], (1, 2, 3)]),
       st.sampled_from([np.dtype(np.float32), np.dtype(np.float64), np.dtype(">f8")]))
def test_out_keeps_its_contract(a, shape, dtype):
    got = outcome(K._out, "out", a, shape, dtype)
    want = outcome(out_contract, a, shape, dtype)
    assert got[0] == want[0]
    if got[0] == "ok":
        assert got[1] is a


@SETTINGS
@given(arrays(), st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)]),
       st.sampled_from([None, 1, 2, (2, 4)]), st.sampled_from([None, 0, 2, 3]),
       st.sampled_from([0, 1, 3]))
def test_float_array_keeps_its_contract(a, dtype, ndim, features, min_rows):
    got = outcome(float_array, "x", a, dtype, ndim, features, min_rows)
    want = outcome(float_array_contract, a, dtype, ndim, features, min_rows)
    same(got, want)
    if got[0] == "ok" and a.flags.c_contiguous:
        assert got[1] is a


@pytest.mark.parametrize("value", [None, [1.0, 2.0], 3.0, np.float32(1.0)])
def test_non_arrays_are_rejected_by_every_check(value):
    with pytest.raises(TypeError):
        K._float_in("x", value, None, None)
    with pytest.raises(TypeError):
        K._out("out", value, (2,), np.dtype(np.float32))
    with pytest.raises(TypeError):
        float_array("x", value, np.dtype(np.float32))
