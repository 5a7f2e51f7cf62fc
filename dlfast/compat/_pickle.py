"""The book's parameter pickles, read without running code.

``load_pickle`` unpickles with ``SafeUnpickler``, whose ``find_class`` resolves only the globals
that NumPy arrays, dtypes and scalars need (``numpy.ndarray``, ``numpy.dtype``,
``numpy[._]core.multiarray._reconstruct`` / ``scalar``, ``numpy[._]core.numeric._frombuffer``,
``_codecs.encode`` for bytes written by protocol 2, and ``complex``); any other global is a
``pickle.UnpicklingError`` naming it, raised before anything of it is called. The result must be
dicts, lists and tuples of NumPy arrays (bool, integer, float or complex) and numbers, with string
or number keys; anything else is an ``UnpicklingError`` too. ``save_pickle`` writes such an object
(checked the same way) as ``pickle.dump`` does.
"""
from __future__ import annotations

import importlib
import numbers
import os
import pickle

import numpy as np

__all__ = ["SafeUnpickler", "load_pickle", "save_pickle"]

_ALLOWED = {
    "numpy": ("ndarray", "dtype"),
    "numpy.core.multiarray": ("_reconstruct", "scalar"),
    "numpy._core.multiarray": ("_reconstruct", "scalar"),
    "numpy.core.numeric": ("_frombuffer",),
    "numpy._core.numeric": ("_frombuffer",),
    "_codecs": ("encode",),
    "builtins": ("complex",),
    "__builtin__": ("complex",),                  # the name protocols 0-2 write
}


def _numpy_core(sub):
    """numpy._core.<sub> (NumPy 2), else numpy.core.<sub>."""
    try:
        return importlib.import_module(f"numpy._core.{sub}")
    except ImportError:                                  # pragma: no cover (NumPy < 1.26)
        return importlib.import_module(f"numpy.core.{sub}")


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals NumPy arrays and numbers need."""

    def find_class(self, module, name):
        if name not in _ALLOWED.get(module, ()):
            raise pickle.UnpicklingError(
                f"refused to load the global {module}.{name}: only NumPy arrays, numbers and "
                f"dicts/lists/tuples of them may be in a parameter file")
        if module == "numpy":
            return getattr(np, name)
        if module == "_codecs":
            import _codecs
            return _codecs.encode
        if name == "complex":
            return complex
        return getattr(_numpy_core(module.rsplit(".", 1)[1]), name)


def _check(obj, where="the file", error=pickle.UnpicklingError):
    """``error`` unless obj is dicts/lists/tuples of numeric arrays and numbers."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufc":
            raise error(f"{where} is an array of dtype {obj.dtype}; only bool, "
                                         f"integer, float and complex arrays are allowed")
        return
    if isinstance(obj, (numbers.Number, np.number, np.bool_)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, numbers.Number)):
                raise error(f"{where} has a key of type {type(k).__name__}; "
                                             f"only strings and numbers are allowed")
            _check(v, f"{where}[{k!r}]", error)
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check(v, f"{where}[{i}]", error)
        return
    raise error(f"{where} is a {type(obj).__name__}; only NumPy arrays, numbers "
                                 f"and dicts/lists/tuples of them are allowed")


def load_pickle(file):
    """The object pickled in ``file`` (a path or a binary file object), read with
    ``SafeUnpickler`` and checked (see the module docstring). Pickles written by Python 2 are
    read with encoding 'latin1'."""
    if isinstance(file, (str, bytes, os.PathLike)):
        with open(file, "rb") as f:
            return load_pickle(f)
    if not hasattr(file, "read"):
        raise TypeError(f"file must be a path or a binary file object, got {type(file).__name__}")
    try:
        obj = SafeUnpickler(file, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise pickle.UnpicklingError(f"{_name(file)}: {exc}") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, MemoryError) as exc:
        raise pickle.UnpicklingError(f"{_name(file)} is not a readable parameter pickle: "
                                     f"{type(exc).__name__}: {exc}") from None
    _check(obj, _name(file))
    return obj


def _name(file):
    name = getattr(file, "name", None)
    return name if isinstance(name, str) else "the file"


def save_pickle(obj, file):
    """Pickle ``obj`` (dicts/lists/tuples of NumPy arrays and numbers) to ``file`` (a path or a
    binary file object), protocol 4."""
    _check(obj, "obj", TypeError)
    if isinstance(file, (str, bytes, os.PathLike)):
        with open(file, "wb") as f:
            pickle.dump(obj, f, protocol=4)
    else:
        pickle.dump(obj, file, protocol=4)
