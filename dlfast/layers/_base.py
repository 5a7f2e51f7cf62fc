"""The layer base class and the activation-name table."""
from __future__ import annotations

import functools
import types

import numpy as np

from .. import _config
from .. import init as _init
from .._validation import FLOAT_DTYPES, finite_array, float_array, real, resolve_dtype

__all__ = ["Layer", "activation_code"]

_ACT_ALIASES = {None: "identity", "none": "identity", "linear": "identity",
                "identity": "identity", "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
                "leaky_relu": "leaky_relu", "leakyrelu": "leaky_relu", "elu": "elu"}
_DEFAULT_ALPHA = {"leaky_relu": 0.01, "elu": 1.0}


def activation_code(activation, alpha=None):
    """``(code, alpha)`` for a fused activation name: None/"linear"/"identity", "relu",
    "sigmoid", "tanh", "leaky_relu"/"leakyrelu" (alpha default 0.01), "elu" (alpha default 1.0)."""
    key = activation.lower().replace("-", "_") if isinstance(activation, str) else activation
    if not (key is None or isinstance(key, str)) or key not in _ACT_ALIASES:
        names = sorted(k for k in _ACT_ALIASES if k)
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


def chain_op(impl, kind, *args):
    """The compiled op ``kind`` of backend ``impl`` bound to these arrays (``CHAIN_OPS`` of the
    compiled backend: src/dlfast_op.h), or None when the backend has none."""
    ops = getattr(impl, "CHAIN_OPS", None)
    return None if ops is None else ops[kind](*args)


class Layer:
    """Base class: dtype, params/grads dicts, trainable flag, workspaces, state and config."""

    stochastic = False
    check_finite = True
    _trust = types.MappingProxyType({})     # (layers unpickled from before trusted calls)

    def __init__(self, dtype=None, trainable=True):
        self._dtype_given = dtype is not None
        self.dtype = resolve_dtype(np.float32 if dtype is None else dtype)
        self.trainable = bool(trainable)
        self.params = {}
        self.grads = {}
        self._ws = {}
        self._fwd = None          # state of the last forward
        self._trust = {}          # slot -> record of the last validated kernel call (_untrusted)

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

    def _grad(self, key):
        return self.grads[key] if self.trainable else None

    # ---------------------------------------------------------------- trusted kernel calls
    # A kernel call may skip its argument checks (``check=False``) when it cannot fail them: the
    # last validated call in the same slot ran on the same backend with the same ``held`` arrays
    # (persistent state: params, gradients, running statistics; by identity), the same
    # ``settings`` (by type and value) and arrays of the same shapes and dtypes, and now every
    # array is C-contiguous and every output is writeable, owns its memory and shares none with
    # another argument. Checks of array contents (labels, running_var >= 0) are not covered.
    def _untrusted(self, slot, ins, outs, held=(), settings=()):
        """None when this call may skip the kernel checks, else the record for ``_validated``.
        ``ins``: input arrays; ``outs``: outputs and in-place arrays (None entries skipped)."""
        key = [_config.active().__name__, *map(id, held), *settings, *map(type, settings)]
        ok = True
        ids = set()
        for o in outs:
            if o is None:
                key.append(None)
                continue
            key += (o.shape, o.dtype)
            if o.base is not None or not o.flags.carray or id(o) in ids:
                ok = False
            ids.add(id(o))
        for a in ins:
            if a is None:
                key.append(None)
                continue
            key += (a.shape, a.dtype)
            if not a.flags.c_contiguous or id(a) in ids or a.base is not None and any(
                    o is not None and np.may_share_memory(a, o) for o in outs):
                ok = False
        last = self._trust.get(slot)
        if ok and last is not None and last[0] == key:
            return None
        return key, held                # held keeps the arrays whose ids are in key alive

    def _validated(self, slot, record):
        """After a validated call: trust the next calls like it (``record`` from ``_untrusted``)."""
        if record is not None:
            if "_trust" not in self.__dict__:
                self._trust = {}
            self._trust[slot] = record

    def __getstate__(self):
        """Copies and pickles drop the trust records: their keys hold ``id``s of this object's
        arrays, so the copy validates its first call in every slot again."""
        state = self.__dict__.copy()
        state.pop("_trust", None)
        return state

    # ---------------------------------------------------------------- bound training steps
    # A net replays a validated training step with the kernels unchecked (``dlfast._bound``):
    # ``_bind_train`` returns ``(fwd, bwd, outs)`` built from the state the last training forward
    # and backward left (workspaces, ``_fwd``): ``fwd(x) -> out`` (also sets ``_fwd``),
    # ``bwd(dout) -> dx`` (the input of the last ``fwd``; dx is None unless ``need_dx``), and
    # ``outs``, the arrays they write. They hold every array they use; they stay valid while
    # ``_bind_key()`` (ids of those arrays and the settings they baked in) and the input shape and
    # dtype do not change.
    def _bind_key(self):
        """What the bound calls depend on, beyond the input's shape and dtype."""
        return None

    def _bind_train(self, impl, need_dx):
        """``(fwd, bwd, outs)`` or ``(fwd, bwd, outs, (op, rec))`` on the kernels of backend
        module ``impl``, or None: no bound form. ``op``: the same calls as one compiled op
        (``chain_op``; None on a backend without them), ``rec``: the forward record the step
        leaves in ``_fwd``."""
        return None

    def _bindable(self, binder="_bind_train", methods=("forward", "backward")):
        """True when ``methods`` are those of the class that defines ``binder`` (a subclass
        overriding one of them is never bound)."""
        cls = type(self)
        owner = next((c for c in cls.__mro__ if binder in c.__dict__), Layer)
        return owner is not Layer and all(getattr(cls, m) is getattr(owner, m) for m in methods)

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
