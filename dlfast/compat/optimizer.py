"""The book's ``common/optimizer.py``: ``update(params, grads)`` on dlfast's fused kernels.

As in the book, ``update`` walks ``params`` (every key needs an entry in ``grads``; other keys of
``grads`` are ignored) and changes float arrays in place; a parameter that is a number (Python
or NumPy scalar, e.g. ``{'x': -7.0, 'y': 2.0}``) is updated through a 0-d float array and written
back into the dict as a number of its kind. Gradients of another dtype or shape that broadcasts
are converted. State (``v``, ``h``, ``m``, ``iter``) is kept per key, allocated at the first
update; no weight decay is applied here (the nets add it to the gradients).

NaN and infinity: the first non-finite gradient warns once (``NonFiniteWarning``) and the update
goes on, propagating them as the book's NumPy arithmetic does; later updates are not checked
(and NumPy's floating-point warnings of the NumPy backend are silenced).
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import optim as _optim
from .._validation import FLOAT_DTYPES
from ._nonfinite import warn_once

__all__ = ["np", "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam"]

_EPS = 1e-7           # AdaGrad / RMSprop / Adam (the book writes 1e-7)


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


class _BookUpdate:
    """The book's ``update`` semantics on top of a ``dlfast.optim`` optimiser."""

    def update(self, params, grads):
        """Update ``params`` from ``grads`` (see the module docstring)."""
        b = self.__dict__.get("_binding")
        if (b is not None and self.check_finite and type(params) is dict
                and len(params) == len(b.names) and self._fused_update(b, params, grads)):
            return          # params holds exactly the bound arrays, grads fit (checked in C)
        ps, gs, scalars = self._arrays(params, grads)
        if self.check_finite:
            try:
                super().update(ps, gs)
            except _optim.NonFiniteGradientError:
                warn_once(self, "gradient")
                self.check_finite = False        # from now on NaN/inf propagate unchecked
        if not self.check_finite:
            with np.errstate(all="ignore"):      # (the NumPy backend's own warnings)
                super().update(ps, gs)
        for key, kind, w in scalars:
            params[key] = kind(w[()])

    def _arrays(self, params, grads):
        """(params as arrays, grads as arrays of their dtype and shape, [(key, kind, 0-d array)]
        of the number parameters)."""
        if not hasattr(params, "items"):
            raise TypeError(f"params must be a dict name -> array, got {type(params).__name__}")
        if not hasattr(grads, "__getitem__") or not hasattr(grads, "__contains__"):
            raise TypeError(f"grads must be a dict name -> array, got {type(grads).__name__}")
        shadows = self.__dict__.setdefault("_shadows", {})
        ps, gs, scalars = {}, {}, []
        for key, p in params.items():
            if key not in grads:
                raise KeyError(f"grads has no entry for params[{key!r}]")
            if isinstance(p, np.ndarray):
                if p.dtype not in FLOAT_DTYPES:
                    raise TypeError(f"params[{key!r}] must be a float32 or float64 array (it is "
                                    f"updated in place), got {p.dtype.name}")
                w = p
            elif _is_number(p):
                dt = p.dtype if isinstance(p, np.floating) and p.dtype in FLOAT_DTYPES \
                    else np.dtype(np.float64)
                w = shadows.get(key)
                if w is None or w.dtype != dt:
                    w = shadows[key] = np.zeros((), dt)
                w[()] = p
                scalars.append((key, type(p) if isinstance(p, np.floating) else float, w))
            else:
                raise TypeError(f"params[{key!r}] must be a float array or a number, "
                                f"got {type(p).__name__}")
            g = grads[key]
            if not (type(g) is np.ndarray and g.dtype == w.dtype and g.shape == w.shape):
                g = self._grad_like(key, g, w)
            ps[key], gs[key] = w, g
        return ps, gs, scalars

    @staticmethod
    def _grad_like(key, g, w):
        try:
            a = np.asarray(g)
        except (TypeError, ValueError):
            raise TypeError(f"grads[{key!r}] must be an array or a number, "
                            f"got {type(g).__name__}") from None
        if a.dtype.kind not in "biuf":
            raise TypeError(f"grads[{key!r}] must hold real numbers, got dtype {a.dtype.name}")
        try:
            a = np.broadcast_to(a, w.shape)
        except ValueError:
            raise ValueError(f"grads[{key!r}] has shape {a.shape}, which does not fit "
                             f"params[{key!r}] of shape {w.shape}") from None
        return np.array(a, dtype=w.dtype, order="C")

    def _state_of(self, name):
        """{key: the state array ``name``} (None before the first update), as the book's."""
        if not self.state:
            return None
        return {k: st[name] for k, st in self.state.items() if name in st}


class SGD(_BookUpdate, _optim.SGD):
    """``w -= lr * g``."""

    def __init__(self, lr=0.01):
        super().__init__(lr)


class Momentum(_BookUpdate, _optim.Momentum):
    """``v = momentum * v - lr * g; w += v``."""

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr, momentum)

    @property
    def v(self):
        """The velocity per key."""
        return self._state_of("v")


class Nesterov(_BookUpdate, _optim.Nesterov):
    """The book's Nesterov (as fixed in its repository): ``w += mu^2*v - (1+mu)*lr*g`` with the
    old v, then ``v = mu*v - lr*g``; that is dlfast's ``v = mu*v - lr*g; w += mu*v - lr*g``."""

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr, momentum)

    @property
    def v(self):
        """The velocity per key."""
        return self._state_of("v")


class AdaGrad(_BookUpdate, _optim.AdaGrad):
    """``h += g^2; w -= lr * g / (sqrt(h) + 1e-7)``."""

    def __init__(self, lr=0.01):
        super().__init__(lr, eps=_EPS)

    @property
    def h(self):
        """The sum of squared gradients per key."""
        return self._state_of("h")


class RMSprop(_BookUpdate, _optim.RMSProp):
    """``h = decay_rate*h + (1-decay_rate)*g^2; w -= lr * g / (sqrt(h) + 1e-7)``."""

    def __init__(self, lr=0.01, decay_rate=0.99):
        super().__init__(lr, decay_rate=decay_rate, eps=_EPS)

    @property
    def h(self):
        """The running mean of squared gradients per key."""
        return self._state_of("h")


class Adam(_BookUpdate, _optim.Adam):
    """``m += (1-b1)(g-m); v += (1-b2)(g^2-v); w -= lr_t*m/(sqrt(v)+1e-7)``,
    ``lr_t = lr*sqrt(1-b2^t)/(1-b1^t)`` (the folded "eps-hat" form); t = ``iter``."""

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        super().__init__(lr, beta1, beta2, eps=_EPS, eps_hat=True)

    @property
    def iter(self):
        """The number of updates so far."""
        return self.steps

    @property
    def m(self):
        """The first moment per key."""
        return self._state_of("m")

    @property
    def v(self):
        """The second moment per key."""
        return self._state_of("v")
