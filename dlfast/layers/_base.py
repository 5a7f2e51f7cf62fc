"""The layer base class and the activation-name table."""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .. import kernels
from .. import init as _init
from .._validation import FLOAT_DTYPES, finite_array, float_array, real, resolve_dtype

__all__ = ["Layer", "Pair", "activation_code"]

_ACT_ALIASES = {None: "identity", "none": "identity", "linear": "identity",
                "identity": "identity", "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
                "leaky_relu": "leaky_relu", "leakyrelu": "leaky_relu", "elu": "elu"}
_DEFAULT_ALPHA = {"leaky_relu": 0.01, "elu": 1.0}


def activation_code(activation, alpha=None, also=()):
    """``(code, alpha)`` for a fused activation name: None/"linear"/"identity", "relu",
    "sigmoid", "tanh", "leaky_relu"/"leakyrelu" (alpha default 0.01), "elu" (alpha default 1.0).
    ``also``: the caller's other names, listed in the error for an unknown one."""
    key = activation.lower().replace("-", "_") if isinstance(activation, str) else activation
    if not (key is None or isinstance(key, str)) or key not in _ACT_ALIASES:
        names = sorted(k for k in _ACT_ALIASES if k) + list(also)
        raise ValueError(f"unknown activation {activation!r}; choose one of {names} or None")
    code = _ACT_ALIASES[key]
    if code in _DEFAULT_ALPHA:
        a = _DEFAULT_ALPHA[code] if alpha is None else alpha
        a = real("alpha", a, 0.0, lo_open=code == "elu")
        return code, a
    if alpha is not None:
        raise ValueError(f"alpha only applies to leaky_relu and elu, not {code}")
    return code, 0.0


def _init_spec(spec):
    """A serialisable form of a weight_init argument when there is one (name or float std)."""
    if isinstance(spec, functools.partial) and spec.func is _init.normal:
        return float(spec.keywords.get("std", 0.01))
    if callable(spec) and getattr(_init, getattr(spec, "__name__", ""), None) is spec:
        return spec.__name__
    return spec


class WatchedDict(dict):
    """A dict whose changes (an entry set, replaced or removed) count as a change of settings:
    layers' ``params`` and ``grads``, which the training engine's plans bind (``STATE``)."""

    def _changed(self):
        STATE[0] += 1

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key):
        super().__delitem__(key)
        self._changed()

    def _mutator(name):
        def method(self, *args, **kwargs):
            out = getattr(dict, name)(self, *args, **kwargs)
            self._changed()
            return out
        method.__name__ = name
        return method

    update = _mutator("update")
    pop = _mutator("pop")
    popitem = _mutator("popitem")
    clear = _mutator("clear")
    setdefault = _mutator("setdefault")
    __ior__ = _mutator("__ior__")
    del _mutator


# Every change of a layer's settings or arrays (any attribute set but those in _STEP_STATE, any
# change of its params/grads dicts) advances STATE[0]: a training plan made at another value
# checks again whether what it baked in still holds (dlfast._engine).
STATE = [0]
_U64 = 1 << 64
_STEP_STATE = frozenset({"_fwd", "counter", "loss"})     # what a step itself changes


class Pair(NamedTuple):
    """A layer's kernel pair for the training engine: op ``kind`` (``dlfast.kernels.OPS``) with
    its arrays and settings ``args``, and ``rec``, the layer's forward record after a step
    (its ``"x"`` entry, when present, is set to the step's input)."""
    kind: str
    args: dict
    rec: dict


class Layer:
    """Base class: dtype, params/grads dicts, trainable flag, workspaces, state and config."""

    stochastic = False
    check_finite = True

    def __init__(self, dtype=None, trainable=True):
        self._dtype_given = dtype is not None
        self.dtype = resolve_dtype(np.float32 if dtype is None else dtype)
        self.trainable = bool(trainable)
        self.params = WatchedDict()
        self.grads = WatchedDict()
        self._ws = {}
        self._fwd = None          # state of the last forward

    def __setattr__(self, name, value):
        if name in ("params", "grads") and type(value) is dict:
            value = WatchedDict(value)
        object.__setattr__(self, name, value)
        if name not in _STEP_STATE:
            STATE[0] += 1

    def __getstate__(self):
        """Copies and pickles drop the workspaces (caches, remade on demand: an unpickled
        layer never writes into arrays it was loaded with read-only)."""
        state = self.__dict__.copy()
        state["_ws"] = {}
        return state

    def __setstate__(self, state):
        for k in ("params", "grads"):
            if type(state.get(k)) is dict:
                state[k] = WatchedDict(state[k])
        self.__dict__.update(state)
        STATE[0] += 1

    # ---------------------------------------------------------------- workspaces
    def _buf(self, key, shape, dtype=None):
        """A reusable workspace; the two most recent shapes per key are kept."""
        dt = self.dtype if dtype is None else np.dtype(dtype)
        slots = self._ws.setdefault(key, [])
        for a in slots:
            if a.shape == shape and a.dtype == dt:
                return a
        a = np.empty(shape, dt)
        slots.insert(0, a)
        del slots[2:]
        return a

    def _drop_buf(self, key, a):
        """Forget the workspace ``a`` of ``key`` (the training engine writes elsewhere)."""
        slots = self._ws.get(key)
        if slots:
            slots[:] = [b for b in slots if b is not a]

    def _set_dtype(self, dtype):
        """Switch a parameter-free layer to dtype (used by nets for layers built without dtype=)."""
        dtype = resolve_dtype(dtype)
        if self.params and dtype != self.dtype:
            raise TypeError(f"{type(self).__name__} has {self.dtype.name} parameters; "
                            f"cannot switch it to {dtype.name}")
        self.dtype = dtype
        self._ws = {}
        self._fwd = None

    # ---------------------------------------------------------------- checks
    def _adopt(self, x):
        """A parameter-free layer built without dtype= follows its input's float dtype."""
        if (not self._dtype_given and not self.params and isinstance(x, np.ndarray)
                and x.dtype in FLOAT_DTYPES and x.dtype != self.dtype):
            self._set_dtype(x.dtype)

    def _check_x(self, x, features=None, ndim=2, name="x"):
        if name != "dout":
            self._adopt(x)
        x = float_array(name, x, self.dtype, ndim=ndim, features=features)
        if self.check_finite:
            finite_array(name, x)
        return x

    def _check_dout(self, dout):
        if self._fwd is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        shape = self._fwd["out"].shape
        dout = self._check_x(dout, ndim=None, name="dout")
        if dout.shape != shape:
            raise ValueError(f"dout must have the shape of the last forward output {shape}, "
                             f"got {dout.shape}")
        return dout

    def _take_counter(self, size):
        """Stochastic layers: the counter of this step's draw of ``size`` values, an int in
        [0, 2**64) (checked as the kernels check it); it advances by ``size`` unless
        ``hold_rng``."""
        c = self.counter
        k = c if type(c) is int and 0 <= c < _U64 else kernels._u64("counter", c)
        if not self.hold_rng:
            self.__dict__["counter"] = c + size
        return k

    def _grad(self, key):
        return self.grads[key] if self.trainable else None

    # ---------------------------------------------------------------- the training engine
    def kernel_pair(self, x_shape, need_dx):
        """The ``Pair`` the training engine runs for a training step on inputs of ``x_shape``
        (dx None unless ``need_dx``), or None: the engine calls ``forward``/``backward``."""
        return None

    # ---------------------------------------------------------------- interface
    def forward(self, x, train=True):
        raise NotImplementedError

    def backward(self, dout, compute_dx=True):
        raise NotImplementedError

    def __call__(self, x, train=True):
        return self.forward(x, train)

    def _buffers(self):
        """Non-parameter state arrays (name -> array), saved by state_dict."""
        return {}

    def state_dict(self):
        """Copies of params and buffers (running statistics, seed and counter)."""
        d = {k: v.copy() for k, v in self.params.items()}
        d.update({k: np.array(v, copy=True) for k, v in self._buffers().items()})
        return d

    def load_state_dict(self, d):
        """Copy params and buffers from ``d`` into the layer's own arrays (shapes must match)."""
        own = {**self.params, **self._buffers()}
        missing = [k for k in own if k not in d]
        if missing:
            raise KeyError(f"{type(self).__name__} state is missing {missing}")
        for k, a in own.items():
            src = np.asarray(d[k])
            if src.shape != a.shape:
                raise ValueError(f"state {k!r} must have shape {a.shape}, got {src.shape}")
            kinds = "f" if a.dtype.kind == "f" else "iu"
            if src.dtype.kind not in kinds:
                raise TypeError(f"state {k!r} must have a {a.dtype.name}-compatible dtype, "
                                f"got {src.dtype.name}")
            self._load_buffer(k, a, src)

    def _load_buffer(self, key, own, src):
        own[...] = src

    def config(self):
        """Constructor arguments (JSON-friendly) plus ``"type"``: the class name."""
        return {"type": type(self).__name__, **self._config(),
                "dtype": self.dtype.name if self._dtype_given else None}

    def _config(self):
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"
