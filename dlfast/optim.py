"""Optimisers: ``opt.update(params, grads)`` changes the arrays of ``params`` in place.

Notation: g gradient, t step (from 1), lr learning rate, wd weight decay, mu momentum.
Every update is one call of a ``dlfast.kernels.*_update`` kernel per parameter; this module
does no arithmetic on the arrays itself. Formulas (PyTorch defaults, textbook options):

=========== ============================================================== =====================
SGD         w -= lr * g                                                    lr=0.01
Momentum    v = mu*v - lr*g;  w += v                                       lr=0.01, mu=0.9
Nesterov    v = mu*v - lr*g;  w += mu*v - lr*g                             lr=0.01, mu=0.9
AdaGrad     h += g^2;  w -= lr * g / (sqrt(h) + eps)                       lr=0.01, eps=1e-10
RMSProp     h = rho*h + (1-rho)*g^2;  w -= lr * g / (sqrt(h) + eps)        lr=0.01, rho=0.99, eps=1e-8
Adam        m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2                    lr=0.001, b1=0.9,
            w -= lr * mhat / (sqrt(vhat) + eps),                           b2=0.999, eps=1e-8
            mhat = m/(1-b1^t), vhat = v/(1-b2^t)
AdamW       w *= 1 - lr*wd, then the Adam step on the raw g                wd=0.01
=========== ============================================================== =====================

Options: ``eps_inside_sqrt=True`` (AdaGrad, RMSProp): ``g / sqrt(h + eps)`` (Keras);
``eps_hat=True`` (Adam, AdamW): ``w -= lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)``
(textbook / Keras folded form).

Common options of every optimiser
---------------------------------
* ``weight_decay`` (wd >= 0): coupled L2, ``g += wd * w`` (AdamW: decoupled, see above). Applied
  only to the parameters selected by ``decay_filter(name) -> bool``; the default selects names
  whose last component (after the last '.') starts with "W" (so biases ``b``, BN ``gamma``/``beta``
  and PReLU ``slope`` are excluded). ``exclude`` = names or fnmatch patterns (matched against the
  full name and its last component) removed from the selection as well.
* ``check_finite=True``: before anything changes, ``S = sum_p kernels.sumsq(g_p)`` over the
  gradients of the update; if S is not finite, each gradient is checked with
  ``kernels.all_finite`` and the first bad one raises ``NonFiniteGradientError`` (no parameter,
  state or step count is changed).
* ``clip_norm`` (> 0): with the global norm ``n = sqrt(S)``, if ``n > clip_norm`` every gradient is
  scaled by ``clip_norm / (n + 1e-6)``. ``clip_value`` (> 0): elementwise clamp to
  ``[-clip_value, clip_value]``. Order: norm scale, value clamp, then weight decay.
  ``opt.last_grad_norm`` = the pre-clip global norm n (None when neither check_finite nor
  clip_norm is on).
* Parameters missing from ``grads`` (frozen) are not updated; a key of ``grads`` that is not in
  ``params``, or a shape/dtype mismatch, raises naming the key. State arrays (velocity, squared
  gradient sums, moments) are allocated at a parameter's first update, with its dtype.
* ``lr`` may be changed at any time (schedules do); ``state_dict()`` / ``load_state_dict()``
  save and restore hyperparameters, the step count and every state array exactly.
"""
from __future__ import annotations

import fnmatch
import math
import numbers

import numpy as np

from . import _config, kernels

__all__ = ["NonFiniteGradientError", "UnknownParameterError", "Optimizer", "SGD", "Momentum", "Nesterov", "AdaGrad",
           "RMSProp", "Adam", "AdamW", "OPTIMIZERS", "get", "default_decay_filter"]

_CLIP_EPS = 1e-6
_UNSET = object()


class NonFiniteGradientError(FloatingPointError):
    """A gradient contains NaN or infinity; ``.param`` is the name of that parameter."""

    def __init__(self, param, message=None):
        self.param = param
        super().__init__(message or f"gradient of parameter {param!r} contains NaN or infinity; "
                                    f"no parameter was updated")


class UnknownParameterError(KeyError, ValueError):
    """``grads`` has a key that is not in ``params``."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def default_decay_filter(name):
    """True when the last component of ``name`` (after the last '.') starts with "W"."""
    return str(name).rsplit(".", 1)[-1].startswith("W")


# ---------------------------------------------------------------------------- validation helpers
def _number(name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if math.isnan(v):
        raise ValueError(f"{name} must not be NaN")
    return v


def _nonneg(name, v):
    v = _number(name, v)
    if not (0.0 <= v < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {v}")
    return v


def _positive(name, v):
    v = _number(name, v)
    if not (0.0 < v < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, got {v}")
    return v


def _unit_closed(name, v):
    v = _number(name, v)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {v}")
    return v


def _unit_open(name, v):
    v = _number(name, v)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {v}")
    return v


def _optional_positive(name, v):
    return None if v is None else _positive(name, v)


def _flag(name, v):
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(v).__name__}")
    return bool(v)


def _exclude(v):
    if v is None:
        return ()
    if isinstance(v, str):
        v = (v,)
    try:
        v = tuple(v)
    except TypeError:
        raise TypeError(f"exclude must be a parameter name or an iterable of names/patterns, "
                        f"got {type(v).__name__}") from None
    for p in v:
        if not isinstance(p, str):
            raise TypeError(f"exclude must contain strings (names or fnmatch patterns), "
                            f"got {type(p).__name__}")
    return v


class _Binding:
    """What a fused update bound: backend, the state dict, parameter names and arrays, their
    state dicts, the weight-decay and hyperparameter keys, the ``kernels.BoundUpdate``."""
    __slots__ = ("impl", "state", "names", "ws", "sts", "wd_key", "hyper_key", "bound")

    def __init__(self, impl, state, names, ws, sts, wd_key, hyper_key, bound):
        self.impl, self.state, self.names, self.ws, self.sts = impl, state, names, ws, sts
        self.wd_key, self.hyper_key, self.bound = wd_key, hyper_key, bound


# ---------------------------------------------------------------------------- base class
class Optimizer:
    """Base class: validation, non-finite check, clipping, weight-decay selection, state.

    Subclasses set ``STATE`` (names of the per-parameter state arrays), ``_HYPER`` (the
    hyperparameter attribute names saved by ``state_dict``) and implement ``_step``.
    """

    STATE: tuple = ()
    _HYPER: tuple = ()
    _DECOUPLED = False

    def __init__(self, lr, *, weight_decay=0.0, decay_filter=None, exclude=None, clip_norm=None,
                 clip_value=None, check_finite=True):
        self.lr = lr
        self.weight_decay = _nonneg("weight_decay", weight_decay)
        if decay_filter is not None and not callable(decay_filter):
            raise TypeError(f"decay_filter must be a callable name -> bool, "
                            f"got {type(decay_filter).__name__}")
        self.decay_filter = decay_filter
        self.exclude = _exclude(exclude)
        self.clip_norm = _optional_positive("clip_norm", clip_norm)
        self.clip_value = _optional_positive("clip_value", clip_value)
        self.check_finite = _flag("check_finite", check_finite)
        self.steps = 0               # number of update() calls that changed the parameters
        self.last_grad_norm = None
        self.state = {}              # name -> {state name: array} (+ "step" for Adam)

    def __getstate__(self):
        """Copies and pickles drop the fused update's binding (it holds the bound arrays)."""
        state = self.__dict__.copy()
        state.pop("_binding", None)
        return state

    # -- lr: a validated attribute that schedules set
    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _nonneg("lr", value)

    # -- weight decay selection
    def decays(self, name):
        """True when weight decay applies to the parameter ``name``."""
        f = self.decay_filter or default_decay_filter
        if not f(name):
            return False
        last = str(name).rsplit(".", 1)[-1]
        return not any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(last, p)
                       for p in self.exclude)

    # -- the update
    def update(self, params, grads):
        """Update ``params`` (dict name -> array, changed in place) from ``grads`` (name -> array).

        The first update, and any after a change of the parameter or state arrays, the weight
        decay selection or the backend, is validated in full and binds the parameters and state
        for a fused update (``kernels.bind_update``). Later updates check in O(K) that ``params``
        and ``state`` hold the bound arrays and that every gradient fits (``BoundUpdate.take``:
        shape, dtype, C-contiguous, no memory shared with a parameter or state), whatever dict
        holds the gradients, then run the two fused calls: the same kernels in the same order,
        so the same results."""
        b = self.__dict__.get("_binding")
        if b is not None and self._fused_update(b, params, grads):
            return
        self._binding = None
        self._full_update(params, grads)
        self._binding = self._bind(params, grads)

    def _full_update(self, params, grads):
        if not isinstance(params, dict) and not hasattr(params, "items"):
            raise TypeError(f"params must be a dict name -> array, got {type(params).__name__}")
        if not isinstance(grads, dict) and not hasattr(grads, "items"):
            raise TypeError(f"grads must be a dict name -> array, got {type(grads).__name__}")
        for k in grads:
            if k not in params:
                raise UnknownParameterError(f"grads has key {k!r} that is not in params "
                               f"(params: {', '.join(map(repr, params))})")
        names = [k for k in params if k in grads]
        for k in names:
            self._check_pair(k, params[k], grads[k])

        grad_scale = 1.0
        if self.check_finite or self.clip_norm is not None:
            total = 0.0
            for k in names:
                total += kernels.sumsq(grads[k])
            if not math.isfinite(total):
                finite = True
                for k in names:
                    if not kernels.all_finite(grads[k]):
                        if self.check_finite:
                            raise NonFiniteGradientError(k)
                        finite = False
                norm = _overflow_norm([grads[k] for k in names]) if finite else math.nan
            else:
                norm = math.sqrt(total)
            self.last_grad_norm = norm
            if self.clip_norm is not None and math.isfinite(norm) and norm > self.clip_norm:
                grad_scale = self.clip_norm / (norm + _CLIP_EPS)
        clip_value = math.inf if self.clip_value is None else self.clip_value

        for k in names:
            if k not in self.state:
                self.state[k] = self._new_state(params[k])
        self.steps += 1
        for k in names:
            wd = self.weight_decay if self.weight_decay and self.decays(k) else 0.0
            self._step(params[k], grads[k], self.state[k], wd, grad_scale, clip_value)

    # -- the fused update
    def _wd_key(self):
        return (self.weight_decay, self.decay_filter, self.exclude)

    def _bind(self, params, grads):
        """A ``_Binding`` of the arrays just updated, or None: no fused update for them (no rule
        of ``kernels.RULES``, mixed dtypes, per-parameter counters that differ)."""
        names = tuple(k for k in params if k in grads)
        sts = tuple(self.state[k] for k in names)
        spec = self._bind_spec(sts) if names and self._fast_ready() else None
        ws, gs = [params[k] for k in names], [grads[k] for k in names]
        if (spec is None or len({w.dtype for w in ws}) != 1 or not self._counters_agree(sts)
                or not all(g.flags.c_contiguous for g in gs)):
            return None
        rule, hyper = spec
        snames = kernels.RULES[rule]
        if any(n not in st for st in sts for n in snames):
            return None
        wds = [self.weight_decay if self.weight_decay and self.decays(k) else 0.0 for k in names]
        bound = kernels.bind_update(rule, ws, gs, [tuple(st[n] for n in snames) for st in sts],
                                    wds, **hyper)
        return _Binding(kernels._impl(), self.state, names, tuple(ws), sts, self._wd_key(),
                        self._hyper_key(), bound)

    def _fused_update(self, b, params, grads):
        """The fused update of binding ``b`` (``BoundUpdate.step`` checks the arrays, the state
        dicts and Adam's per-tensor counters in C: O(K)); False (nothing changed) when it does
        not apply or a gradient is not finite."""
        if (b.impl is not _config.active() or self.state is not b.state
                or self._wd_key() != b.wd_key):
            return False
        bound = b.bound
        hyper = self._hyper_key()
        if hyper != b.hyper_key:                # e.g. a momentum schedule
            spec = self._bind_spec(b.sts)
            if spec is None or spec[0] != bound.rule:
                return False                    # another rule: bind again
            bound.set_hyper(**spec[1])
            b.hyper_key = hyper
        clip = self.clip_norm
        norm = self.check_finite or clip is not None
        n = bound._b.step(b.names, params, grads, self.state, b.sts, self._lr, norm,
                          clip or 0.0, _CLIP_EPS,
                          math.inf if self.clip_value is None else self.clip_value, self._COUNTER)
        if not n >= 0.0:                        # does not apply, or the validated path finds
            return False                        # the bad gradient (nothing changed)
        if norm:
            self.last_grad_norm = n
        self.steps += 1
        return True

    def _bind_spec(self, sts):
        """(rule, hyperparameters of ``kernels.bind_update``) for the state dicts ``sts``, or
        None: no fused update."""
        return None

    def _hyper_key(self):
        """The hyperparameters ``_bind_spec`` reads (a change calls it again)."""
        return ()

    def _counters_agree(self, sts):
        """False when per-parameter counters differ (Adam's t): no fused update then."""
        return True

    _COUNTER = None     # the state key of a per-tensor step counter (Adam's "step")

    def _fast_ready(self):
        """False when the state must change structure first (the validated path does that)."""
        return True

    def _check_pair(self, k, w, g):
        if not isinstance(w, np.ndarray):
            raise TypeError(f"params[{k!r}] must be a numpy.ndarray, got {type(w).__name__}")
        if not isinstance(g, np.ndarray):
            raise TypeError(f"grads[{k!r}] must be a numpy.ndarray, got {type(g).__name__}")
        if w.dtype not in kernels.FLOAT_DTYPES:
            raise TypeError(f"params[{k!r}] must be float32 or float64, got {w.dtype.name}")
        if g.dtype != w.dtype:
            raise TypeError(f"grads[{k!r}] has dtype {g.dtype.name} but params[{k!r}] is "
                            f"{w.dtype.name}")
        if g.shape != w.shape:
            raise ValueError(f"grads[{k!r}] has shape {g.shape} but params[{k!r}] has shape "
                             f"{w.shape}")
        if not (w.flags.c_contiguous and w.flags.writeable):
            raise ValueError(f"params[{k!r}] must be C-contiguous and writeable (updated in place)")
        if np.may_share_memory(w, g):
            raise ValueError(f"grads[{k!r}] overlaps params[{k!r}]")
        st = self.state.get(k)
        if st:
            for s, a in st.items():
                if isinstance(a, np.ndarray) and (a.shape != w.shape or a.dtype != w.dtype):
                    raise ValueError(f"optimizer state {s!r} of parameter {k!r} has shape {a.shape} "
                                     f"and dtype {a.dtype.name} but the parameter has shape "
                                     f"{w.shape} and dtype {w.dtype.name}")

    def _zeros(self, w):
        return {s: np.zeros(w.shape, dtype=w.dtype) for s in self.STATE}

    def _new_state(self, w):
        """The state of a parameter at its first update (zero arrays of its shape and dtype)."""
        return self._zeros(w)

    def _step(self, w, g, st, wd, grad_scale, clip_value):
        raise NotImplementedError

    # -- hyperparameters and state
    def hyperparams(self):
        """The hyperparameters as a dict (what ``state_dict`` saves)."""
        h = {"lr": self.lr, "weight_decay": self.weight_decay, "clip_norm": self.clip_norm,
             "clip_value": self.clip_value, "check_finite": self.check_finite,
             "exclude": list(self.exclude)}
        for a in self._HYPER:
            h[a] = getattr(self, a)
        return h

    def state_dict(self):
        """``{"optimizer": class name, "hyperparams": {...}, "steps": int, "state": {param name:
        {state name: array copy}}}`` (``last_grad_norm`` too)."""
        return {
            "optimizer": type(self).__name__,
            "hyperparams": self.hyperparams(),
            "steps": self.steps,
            "last_grad_norm": self.last_grad_norm,
            "state": {k: {s: (a.copy() if isinstance(a, np.ndarray) else a) for s, a in st.items()}
                      for k, st in self.state.items()},
        }

    def load_state_dict(self, state, params=None):
        """Restore from ``state_dict()`` output (arrays are copied; all-or-nothing). With ``params``
        (name -> array), each parameter's state arrays must match its shape and dtype."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        missing = {"optimizer", "hyperparams", "steps", "state"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}")
        if state["optimizer"] != type(self).__name__:
            raise ValueError(f"state is for optimizer {state['optimizer']!r}, "
                             f"not {type(self).__name__!r}")
        steps = state["steps"]
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ValueError(f"state['steps'] must be an integer >= 0, got {steps!r}")
        # validate hyperparameters on a scratch copy, then assign
        hyper = dict(state["hyperparams"])
        expected = set(self.hyperparams())
        if set(hyper) != expected:
            raise ValueError(f"state['hyperparams'] must have keys {sorted(expected)}, "
                             f"got {sorted(hyper)}")
        scratch = object.__new__(type(self))
        scratch.__dict__.update(self.__dict__)
        scratch._set_hyper(hyper)
        new_state = {}
        if not isinstance(state["state"], dict):
            raise TypeError("state['state'] must be a dict param name -> {state name: array}")
        scalars = self._scalar_state()
        allowed = set(self.STATE) | set(scalars)
        for k, st in state["state"].items():
            if not isinstance(st, dict) or not set(scalars) <= set(st) <= allowed:
                raise ValueError(f"state of parameter {k!r} must be a dict with keys among "
                                 f"{sorted(allowed)} (including {sorted(scalars)}), got "
                                 f"{sorted(st) if isinstance(st, dict) else type(st).__name__}")
            shape = dtype = None
            new = {}
            for s in self.STATE:
                if s not in st:
                    continue
                a = st[s]
                if not isinstance(a, np.ndarray) or a.dtype not in kernels.FLOAT_DTYPES:
                    raise TypeError(f"state {s!r} of parameter {k!r} must be a float32/float64 array")
                if shape is None:
                    shape, dtype = a.shape, a.dtype
                elif a.shape != shape or a.dtype != dtype:
                    raise ValueError(f"state arrays of parameter {k!r} disagree in shape/dtype")
                if params is not None and k in params:
                    w = params[k]
                    if a.shape != w.shape or a.dtype != w.dtype:
                        raise ValueError(f"state {s!r} of parameter {k!r} has shape {a.shape} and "
                                         f"dtype {a.dtype.name}, but the parameter has shape "
                                         f"{w.shape} and dtype {w.dtype.name}")
                new[s] = np.array(a, dtype=a.dtype, order="C", copy=True)
            for s, check in scalars.items():
                new[s] = check(k, st[s])
            new_state[k] = new
        if params is not None:
            extra = [k for k in new_state if k not in params]
            if extra:
                raise ValueError(f"state has parameters not in params: {extra}")
        lgn = state.get("last_grad_norm")
        self._set_hyper(hyper)
        self.steps = int(steps)
        self.last_grad_norm = None if lgn is None else float(lgn)
        self.state = new_state

    def _scalar_state(self):
        """Per-parameter non-array state entries: name -> validator(param, value)."""
        return {}

    def _set_hyper(self, h):
        self.lr = h["lr"]
        self.weight_decay = _nonneg("weight_decay", h["weight_decay"])
        self.clip_norm = _optional_positive("clip_norm", h["clip_norm"])
        self.clip_value = _optional_positive("clip_value", h["clip_value"])
        self.check_finite = _flag("check_finite", h["check_finite"])
        self.exclude = _exclude(h["exclude"])
        self._set_own(h)

    def _set_own(self, h):
        pass

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams().items())
        return f"{type(self).__name__}({args})"


def _overflow_norm(arrays):
    """Global L2 norm of finite arrays whose sum of squares overflows float64 (rare path):
    ``s * sqrt(sum (a/s)^2)`` with s the largest magnitude."""
    s = max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0)
    if s == 0.0:
        return 0.0
    total = 0.0
    for a in arrays:
        if a.size:
            total += kernels.sumsq(a / a.dtype.type(s))
    return s * math.sqrt(total)


# ---------------------------------------------------------------------------- SGD family
class SGD(Optimizer):
    """``w -= lr * g`` (with ``momentum > 0``: the Momentum update; ``nesterov=True``: Nesterov).

    ``g`` includes clipping and coupled weight decay ``wd * w`` (see the module docstring)."""

    _HYPER = ("momentum", "nesterov")

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, **kwargs):
        super().__init__(lr, **kwargs)
        self.momentum = _unit_closed("momentum", momentum)
        self.nesterov = _flag("nesterov", nesterov)

    STATE = ("v",)

    def _new_state(self, w):
        # plain SGD (mu = 0, not Nesterov) keeps no state; v appears if momentum is switched on
        return self._zeros(w) if (self.momentum or self.nesterov) else {}

    def _set_own(self, h):
        self.momentum = _unit_closed("momentum", h["momentum"])
        self.nesterov = _flag("nesterov", h["nesterov"])

    def _fast_ready(self):
        return not (self.momentum or self.nesterov) or all(
            "v" in st for st in self.state.values())

    def _hyper_key(self):
        return (self.momentum, self.nesterov)

    def _bind_spec(self, sts):
        with_v = {"v" in st for st in sts}
        if with_v == {False} and not (self.momentum or self.nesterov):
            return "sgd", {}
        if with_v == {True}:
            return ("nesterov" if self.nesterov else "momentum"), {"mu": self.momentum}
        return None

    def _step(self, w, g, st, wd, gs, cv):
        if "v" not in st:
            if self.momentum or self.nesterov:      # momentum switched on after the first steps
                st["v"] = np.zeros(w.shape, dtype=w.dtype)
            else:
                kernels.sgd_update(w, g, lr=self.lr, wd=wd, grad_scale=gs, clip_value=cv)
                return
        if self.nesterov:
            kernels.nesterov_update(w, g, st["v"], lr=self.lr, mu=self.momentum, wd=wd,
                                    grad_scale=gs, clip_value=cv)
        else:
            kernels.momentum_update(w, g, st["v"], lr=self.lr, mu=self.momentum, wd=wd,
                                    grad_scale=gs, clip_value=cv)


class Momentum(SGD):
    """``v = mu*v - lr*g; w += v`` (``momentum`` = mu in [0, 1], default 0.9)."""

    def __init__(self, lr=0.01, momentum=0.9, **kwargs):
        super().__init__(lr, momentum=momentum, nesterov=False, **kwargs)


class Nesterov(SGD):
    """``v = mu*v - lr*g; w += mu*v - lr*g`` (``momentum`` = mu in [0, 1], default 0.9)."""

    def __init__(self, lr=0.01, momentum=0.9, **kwargs):
        super().__init__(lr, momentum=momentum, nesterov=True, **kwargs)


# ---------------------------------------------------------------------------- adaptive
class AdaGrad(Optimizer):
    """``h += g^2; w -= lr * g / (sqrt(h) + eps)``; ``eps_inside_sqrt=True``: ``g / sqrt(h + eps)``."""

    STATE = ("h",)
    _HYPER = ("eps", "eps_inside_sqrt")

    def __init__(self, lr=0.01, eps=1e-10, eps_inside_sqrt=False, **kwargs):
        super().__init__(lr, **kwargs)
        self.eps = _positive("eps", eps)
        self.eps_inside_sqrt = _flag("eps_inside_sqrt", eps_inside_sqrt)

    def _set_own(self, h):
        self.eps = _positive("eps", h["eps"])
        self.eps_inside_sqrt = _flag("eps_inside_sqrt", h["eps_inside_sqrt"])

    def _hyper_key(self):
        return (self.eps, self.eps_inside_sqrt)

    def _bind_spec(self, sts):
        return "adagrad", {"eps": self.eps, "eps_inside": self.eps_inside_sqrt}

    def _step(self, w, g, st, wd, gs, cv):
        kernels.adagrad_update(w, g, st["h"], lr=self.lr, eps=self.eps,
                               eps_inside=self.eps_inside_sqrt, wd=wd, grad_scale=gs, clip_value=cv)


class RMSProp(Optimizer):
    """``h = rho*h + (1-rho)*g^2; w -= lr * g / (sqrt(h) + eps)``; ``eps_inside_sqrt=True``:
    ``g / sqrt(h + eps)`` (Keras). ``decay_rate`` is an alias of ``rho`` (in [0, 1))."""

    STATE = ("h",)
    _HYPER = ("rho", "eps", "eps_inside_sqrt")

    def __init__(self, lr=0.01, rho=_UNSET, eps=1e-8, eps_inside_sqrt=False, *, decay_rate=_UNSET,
                 **kwargs):
        super().__init__(lr, **kwargs)
        if rho is not _UNSET and decay_rate is not _UNSET:
            raise TypeError("give rho or its alias decay_rate, not both")
        r = rho if rho is not _UNSET else (decay_rate if decay_rate is not _UNSET else 0.99)
        self.rho = _unit_open("decay_rate" if rho is _UNSET and decay_rate is not _UNSET else "rho", r)
        self.eps = _positive("eps", eps)
        self.eps_inside_sqrt = _flag("eps_inside_sqrt", eps_inside_sqrt)

    @property
    def decay_rate(self):
        """Alias of ``rho``."""
        return self.rho

    @decay_rate.setter
    def decay_rate(self, value):
        self.rho = _unit_open("decay_rate", value)

    def _set_own(self, h):
        self.rho = _unit_open("rho", h["rho"])
        self.eps = _positive("eps", h["eps"])
        self.eps_inside_sqrt = _flag("eps_inside_sqrt", h["eps_inside_sqrt"])

    def _hyper_key(self):
        return (self.rho, self.eps, self.eps_inside_sqrt)

    def _bind_spec(self, sts):
        return "rmsprop", {"rho": self.rho, "eps": self.eps, "eps_inside": self.eps_inside_sqrt}

    def _step(self, w, g, st, wd, gs, cv):
        kernels.rmsprop_update(w, g, st["h"], lr=self.lr, rho=self.rho, eps=self.eps,
                               eps_inside=self.eps_inside_sqrt, wd=wd, grad_scale=gs, clip_value=cv)


def _step_count(k, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
        raise ValueError(f"state 'step' of parameter {k!r} must be an integer >= 0, got {v!r}")
    return int(v)


class Adam(Optimizer):
    """Adam with bias correction; t counts this parameter's updates (from 1)::

        m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
        w -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)                 (default, PyTorch)
        w -= lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)             (eps_hat=True)

    ``weight_decay`` is coupled L2 (g += wd*w); ``betas=(b1, b2)`` may replace beta1/beta2."""

    STATE = ("m", "v")
    _HYPER = ("beta1", "beta2", "eps", "eps_hat")

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, eps_hat=False, *, betas=None,
                 **kwargs):
        super().__init__(lr, **kwargs)
        if betas is not None:
            try:
                beta1, beta2 = betas
            except (TypeError, ValueError):
                raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.beta1 = _unit_open("beta1", beta1)
        self.beta2 = _unit_open("beta2", beta2)
        self.eps = _positive("eps", eps)
        self.eps_hat = _flag("eps_hat", eps_hat)

    def _set_own(self, h):
        self.beta1 = _unit_open("beta1", h["beta1"])
        self.beta2 = _unit_open("beta2", h["beta2"])
        self.eps = _positive("eps", h["eps"])
        self.eps_hat = _flag("eps_hat", h["eps_hat"])

    def _new_state(self, w):
        st = self._zeros(w)
        st["step"] = 0
        return st

    def _scalar_state(self):
        return {"step": _step_count}

    def _hyper_key(self):
        return (self.beta1, self.beta2, self.eps, self.eps_hat)

    def _bind_spec(self, sts):
        return "adam", {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                        "eps_hat": self.eps_hat, "decoupled_wd": self._DECOUPLED}

    _COUNTER = "step"

    def _counters_agree(self, sts):
        t = sts[0]["step"]
        return all(st["step"] == t for st in sts)

    def _step(self, w, g, st, wd, gs, cv):
        st["step"] += 1
        kernels.adam_update(w, g, st["m"], st["v"], lr=self.lr, beta1=self.beta1, beta2=self.beta2,
                            eps=self.eps, step=st["step"], eps_hat=self.eps_hat, wd=wd,
                            decoupled_wd=self._DECOUPLED, grad_scale=gs, clip_value=cv)


class AdamW(Adam):
    """Adam with decoupled weight decay: ``w *= 1 - lr*wd`` then the Adam step on the raw g
    (default ``weight_decay=0.01``; same parameter selection as the coupled decay)."""

    _DECOUPLED = True

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, eps_hat=False, *,
                 weight_decay=0.01, **kwargs):
        super().__init__(lr, beta1, beta2, eps, eps_hat, weight_decay=weight_decay, **kwargs)


# ---------------------------------------------------------------------------- name table
OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad,
              "rmsprop": RMSProp, "adam": Adam, "adamw": AdamW}


def get(name, **kwargs):
    """The optimiser called ``name`` (case-insensitive, see ``OPTIMIZERS``) built with ``kwargs``.
    An ``Optimizer`` instance is returned as is (no kwargs allowed)."""
    if isinstance(name, Optimizer):
        if kwargs:
            raise TypeError("keyword arguments cannot be applied to an existing optimizer instance")
        return name
    if not isinstance(name, str):
        raise TypeError(f"name must be a string (one of {', '.join(OPTIMIZERS)}), "
                        f"got {type(name).__name__}")
    cls = OPTIMIZERS.get(name.strip().lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    return cls(**kwargs)
