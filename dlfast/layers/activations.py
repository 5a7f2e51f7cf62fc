"""Elementwise activations, PReLU, RReLU and Softmax."""
from __future__ import annotations

import numpy as np

from .. import kernels
from .._validation import float_array, positive_int, real, seed_value
from ._base import _DEFAULT_ALPHA, Layer, Pair, activation_code

__all__ = ["Activation", "Identity", "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "ELU", "PReLU",
           "RReLU", "Softmax"]


class Activation(Layer):
    """Elementwise ``out = act(x)`` for any input shape (see ``activation_code`` for names)."""

    def __init__(self, activation, alpha=None, dtype=None):
        super().__init__(dtype)
        self.activation, self.alpha = activation_code(activation, alpha)

    def forward(self, x, train=True):
        x = self._check_x(x, ndim=None)
        out = self._buf("out", x.shape)
        kernels.activation_forward(x, out, self.activation, self.alpha)
        self._fwd = {"out": out}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        if not compute_dx:
            return None
        out = self._fwd["out"]
        return kernels.activation_backward(dout, out, self._buf("dx", out.shape),
                                           self.activation, self.alpha)

    def kernel_pair(self, x_shape, need_dx):
        rec = {"out": self._buf("out", x_shape)}
        return Pair("activation", dict(out=rec["out"], dx=self._buf("dx", x_shape) if need_dx
                                       else None, activation=self.activation, alpha=self.alpha),
                    rec)

    def _config(self):
        return {"activation": self.activation,
                "alpha": self.alpha if self.activation in _DEFAULT_ALPHA else None}


class _Fixed(Activation):
    _code = "identity"

    def __init__(self, dtype=None):
        super().__init__(self._code, None, dtype)

    def _config(self):
        return {}


class Identity(_Fixed):
    """``out = x``."""
    _code = "identity"


class ReLU(_Fixed):
    """``out = max(x, 0)``."""
    _code = "relu"


class Sigmoid(_Fixed):
    """``out = 1 / (1 + exp(-x))``."""
    _code = "sigmoid"


class Tanh(_Fixed):
    """``out = tanh(x)``."""
    _code = "tanh"


class LeakyReLU(Activation):
    """``out = x if x > 0 else alpha * x`` (alpha >= 0, default 0.01)."""

    def __init__(self, alpha=0.01, dtype=None):
        super().__init__("leaky_relu", alpha, dtype)

    def _config(self):
        return {"alpha": self.alpha}


class ELU(Activation):
    """``out = x if x > 0 else alpha * (exp(x) - 1)`` (alpha > 0, default 1.0)."""

    def __init__(self, alpha=1.0, dtype=None):
        super().__init__("elu", alpha, dtype)

    def _config(self):
        return {"alpha": self.alpha}


class PReLU(Layer):
    """``out = x if x > 0 else slope * x`` with a learnable ``slope`` (param "slope"):
    one shared value (``num_parameters=1``) or one per feature (``num_parameters=F``)."""

    def __init__(self, num_parameters=1, init=0.25, dtype=None, trainable=True):
        super().__init__(dtype, trainable)
        self.num_parameters = positive_int("num_parameters", num_parameters)
        self.init = real("init", init)
        self.params["slope"] = np.full(self.num_parameters, self.init, self.dtype)
        self.grads["slope"] = np.zeros_like(self.params["slope"])

    def forward(self, x, train=True):
        x = self._check_x(x)
        if self.num_parameters not in (1, x.shape[1]):
            raise ValueError(f"x must have {self.num_parameters} features for a PReLU with "
                             f"num_parameters={self.num_parameters}, got shape {x.shape}")
        out = self._buf("out", x.shape)
        kernels.prelu_forward(x, self.params["slope"], out)
        self._fwd = {"x": x, "out": out}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        x = self._fwd["x"]
        dx = self._buf("dx", x.shape) if compute_dx else None
        kernels.prelu_backward(dout, x, self.params["slope"], dx, self._grad("slope"))
        return dx

    def kernel_pair(self, x_shape, need_dx):
        rec = {"x": None, "out": self._buf("out", x_shape)}
        return Pair("prelu", dict(slope=self.params["slope"], out=rec["out"],
                                  dx=self._buf("dx", x_shape) if need_dx else None,
                                  dslope=self._grad("slope")), rec)

    def _config(self):
        return {"num_parameters": self.num_parameters, "init": self.init,
                "trainable": self.trainable}


class RReLU(Layer):
    """Randomised leaky ReLU: ``out = x if x > 0 else a * x``; in training a ~ U(lower, upper)
    per element (``kernels.random_uniform`` with the layer's seed and counter), in eval
    a = (lower + upper) / 2. ``fixed_slopes`` (shape (N, F), (F,) or (1,)) replaces the draw."""

    stochastic = True

    def __init__(self, lower=1.0 / 8, upper=1.0 / 3, seed=None, dtype=None):
        super().__init__(dtype)
        self.lower = real("lower", lower, 0.0)
        self.upper = real("upper", upper, self.lower)
        self.seed = seed_value(seed)
        self.counter = 0
        self.hold_rng = False
        self.fixed_slopes = None

    def forward(self, x, train=True):
        x = self._check_x(x)
        if not train:
            slopes = self._buf("eval_slope", (1,))
            slopes[0] = (self.lower + self.upper) / 2
        elif self.fixed_slopes is not None:
            slopes = float_array("fixed_slopes", self.fixed_slopes, self.dtype)
            if slopes.shape not in ((1,), (x.shape[1],), x.shape):
                raise ValueError(f"fixed_slopes must have shape (1,), ({x.shape[1]},) or "
                                 f"{x.shape}, got {slopes.shape}")
        else:
            slopes = self._buf("slopes", x.shape)
            kernels.random_uniform(slopes, self.lower, self.upper, self.seed,
                                   self._take_counter(slopes.size))
        out = self._buf("out", x.shape)
        kernels.prelu_forward(x, slopes, out)
        self._fwd = {"x": x, "out": out, "slopes": slopes}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        if not compute_dx:
            return None
        x = self._fwd["x"]
        dx = self._buf("dx", x.shape)
        kernels.prelu_backward(dout, x, self._fwd["slopes"], dx, None)
        return dx

    def kernel_pair(self, x_shape, need_dx):
        if self.fixed_slopes is not None:
            return None                 # given slopes: checked per step by forward
        rec = {"x": None, "out": self._buf("out", x_shape), "slopes": self._buf("slopes", x_shape)}
        return Pair("rrelu", dict(slopes=rec["slopes"], out=rec["out"],
                                  dx=self._buf("dx", x_shape) if need_dx else None,
                                  lower=self.lower, upper=self.upper, seed=self.seed), rec)

    def _buffers(self):
        return {"seed": np.uint64(self.seed), "counter": np.uint64(self.counter)}

    def _load_buffer(self, key, own, src):
        setattr(self, key, int(src))

    def _config(self):
        return {"lower": self.lower, "upper": self.upper, "seed": self.seed}


class Softmax(Layer):
    """Row-wise ``out = exp(x - max x) / sum exp(x - max x)``."""

    def forward(self, x, train=True):
        x = self._check_x(x)
        out = self._buf("out", x.shape)
        kernels.softmax_forward(x, out)
        self._fwd = {"out": out}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        if not compute_dx:
            return None
        y = self._fwd["out"]
        return kernels.softmax_backward(dout, y, self._buf("dx", y.shape))

    def kernel_pair(self, x_shape, need_dx):
        rec = {"out": self._buf("out", x_shape)}
        return Pair("softmax", dict(out=rec["out"],
                                    dx=self._buf("dx", x_shape) if need_dx else None), rec)
