"""Gradient checking by central differences.

``numerical_gradient(f, x)``: the textbook's helper. ``gradient_check(model, x, t)`` compares a
net's ``gradient`` with the numerical gradient of ``model.loss(x, t, train=True)``;
``layer_gradient_check(layer, x)`` does the same for one layer with the loss ``sum(out * R)``
(R fixed, random), checking dL/dx too. Both hold the random streams of dropout/RReLU layers still
during the check (``hold_rng``) and restore the model's state (BN running statistics, counters)
afterwards. Errors are ``max |a - n| / max(|a| + |n|, tiny)`` over the elements.

``tiny`` (default None = automatic) is the resolution of central differences: the loss is known to
about ``2**-52 * scale`` (scale = max(|L|, 1) for a net, ``sum |out * R|`` for a layer), so the
numerical gradient carries noise of about ``2**-52 * scale / eps``; the automatic
``tiny = 1e7 * 2**-52 * scale / eps`` (2.2e-3 * scale for eps = 1e-6) makes an error below 1e-6
mean ``|a - n|`` under 10x that noise for gradients smaller than tiny (e.g. a bias feeding batch
norm, whose true gradient is 0) and a relative error under 1e-6 otherwise. Run checks in float64:
float32 rounding alone gives errors around 1e-3.
"""
from __future__ import annotations

import contextlib

import numpy as np

from ._validation import FLOAT_DTYPES, real

__all__ = ["numerical_gradient", "relative_error", "gradient_check", "layer_gradient_check",
           "hold_rng", "auto_tiny"]

_EPS64 = 2.0 ** -52


def auto_tiny(scale, eps):
    """``1e7 * 2**-52 * max(scale, 1e-300) / eps``: the default error floor (see the module doc)."""
    return 1e7 * _EPS64 * max(abs(float(scale)), 1e-300) / eps


def numerical_gradient(f, x, eps=1e-6):
    """``grad[i] = (f(x + h e_i) - f(x - h e_i)) / (2h)`` for every element of x (h = eps).

    x is perturbed in place (``f`` is called as ``f(x)``) and restored, also on error. The divisor
    is the step actually taken in x's dtype, ``(x_i + h) - (x_i - h)``, which is 2h up to rounding.
    """
    if not isinstance(x, np.ndarray) or x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be a float32 or float64 numpy.ndarray, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if not x.flags.writeable:
        raise ValueError("x must be writeable (it is perturbed in place)")
    eps = real("eps", eps, 0.0, lo_open=True)
    grad = np.zeros_like(x)
    t = x.dtype.type
    for idx in np.ndindex(*x.shape):
        tmp = x[idx]
        try:
            xp, xm = t(tmp + eps), t(tmp - eps)
            x[idx] = xp
            fp = float(f(x))
            x[idx] = xm
            fm = float(f(x))
        finally:
            x[idx] = tmp
        grad[idx] = (fp - fm) / (float(xp) - float(xm))
    return grad


def relative_error(a, n, tiny=1e-12):
    """``max |a - n| / max(|a| + |n|, tiny)`` over the elements (0.0 for empty arrays)."""
    a = np.asarray(a, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {n.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), tiny)))


def _stochastic_layers(obj):
    if getattr(obj, "stochastic", False):
        return [obj]
    layers = getattr(obj, "_all", None) or getattr(obj, "layers", None) or []
    return [l for l in layers if getattr(l, "stochastic", False)]


@contextlib.contextmanager
def hold_rng(obj):
    """Within the block, dropout/RReLU layers of ``obj`` (a layer or net) draw the same numbers on
    every forward (their counters do not advance)."""
    layers = _stochastic_layers(obj)
    before = [l.hold_rng for l in layers]
    for l in layers:
        l.hold_rng = True
    try:
        yield
    finally:
        for l, b in zip(layers, before):
            l.hold_rng = b


def gradient_check(model, x, t, eps=1e-6, names=None, tiny=None):
    """dict param name -> relative error between ``model.gradient(x, t)`` and the numerical
    gradient of ``model.loss(x, t, train=True)`` (random streams held, BN in train mode).
    ``names``: the params to check (default: all trainable ones); ``tiny``: the error floor
    (None: ``auto_tiny(max(|L|, 1), eps)``). The model's state is restored."""
    state = model.state_dict()
    try:
        with hold_rng(model):
            analytic = model.gradient(x, t)
            names = list(analytic) if names is None else list(names)
            unknown = [k for k in names if k not in analytic]
            if unknown:
                raise KeyError(f"no gradient for {unknown}; trainable params are {list(analytic)}")

            def f(_):
                return model.loss(x, t, train=True)

            if tiny is None:
                tiny = auto_tiny(max(abs(f(None)), 1.0), eps)
            return {k: relative_error(analytic[k], numerical_gradient(f, model.params[k], eps),
                                      tiny) for k in names}
    finally:
        model.load_state_dict(state)


def layer_gradient_check(layer, x, eps=1e-6, train=True, seed=0, tiny=None):
    """dict -> relative error for "x" and each trainable param of ``layer``, with the loss
    ``L = sum(layer.forward(x, train) * R)``, R ~ N(0, 1) fixed by ``seed``; ``tiny`` None:
    ``auto_tiny(sum |out * R|, eps)``. State restored."""
    state = layer.state_dict()
    x = np.array(x, copy=True)
    try:
        with hold_rng(layer):
            out = layer.forward(x, train)
            r = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
            if tiny is None:
                tiny = auto_tiny(np.sum(np.abs(out * r), dtype=np.float64), eps)
            dx = np.array(layer.backward(r), copy=True)
            analytic = {k: layer.grads[k].copy() for k in layer.params} if layer.trainable else {}

            def f(_):
                return np.sum(layer.forward(x, train) * r, dtype=np.float64)

            errors = {"x": relative_error(dx, numerical_gradient(f, x, eps), tiny)}
            for k, g in analytic.items():
                errors[k] = relative_error(g, numerical_gradient(f, layer.params[k], eps), tiny)
            return errors
    finally:
        layer.load_state_dict(state)
