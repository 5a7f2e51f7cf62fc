"""Layers: ``forward(x, train=True)`` / ``backward(dout)``, with ``params`` and ``grads`` dicts.

All numeric work goes through ``dlfast.kernels``; layers hold state, check arguments and own their
workspaces. Workspaces (outputs, gradients) are allocated once per batch shape (the two most recent
shapes are kept) and reused: **the array a forward or backward call returns is overwritten by the
layer's next call with the same batch shape** — copy it if you need to keep it.

Common to every layer:

* ``dtype`` (float32 by default, or float64): inputs must have exactly this dtype (a mismatch is a
  ``TypeError``, never a silent cast). Parameter-free layers built without ``dtype=`` adopt the
  dtype of the net they are put in.
* ``params`` / ``grads``: dict name -> the layer's own arrays (in-place updates reach the layer).
* ``trainable`` (default True): when False, ``backward`` computes no parameter gradients.
* ``backward(dout, compute_dx=True)`` returns dL/dx (None when ``compute_dx=False``); it uses the
  state of the last ``forward``.
* ``state_dict()`` / ``load_state_dict(d)``: params, running statistics, random-stream state.
* ``config()``: the constructor arguments; ``from_config(cfg)`` rebuilds a layer from it.
* ``check_finite`` (default True): x and dout holding NaN or infinity are a ``ValueError``. Nets
  check their input once and turn this off for the layers inside them.

Stochastic layers (``Dropout``, ``RReLU``) draw from the counter-based generator with their ``seed``
and a ``counter`` advanced by the number of values drawn per call; ``hold_rng = True`` keeps the
counter still so repeated forwards draw identical numbers (used by gradient checks).
"""
from __future__ import annotations

import functools

import numpy as np

from . import init as _init
from . import kernels
from ._validation import (finite_array, float_array, labels_to_indices, make_rng, positive_int,
                          real, resolve_dtype, seed_value)

__all__ = ["Layer", "Dense", "Activation", "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "ELU",
           "Identity", "PReLU", "RReLU", "Maxout", "Softmax", "BatchNorm", "Dropout",
           "SoftmaxCrossEntropy", "activation_code", "from_config"]

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


class Layer:
    """Base class: dtype, params/grads dicts, trainable flag, workspaces, state and config."""

    stochastic = False
    check_finite = True

    def __init__(self, dtype=None, trainable=True):
        self._dtype_given = dtype is not None
        self.dtype = resolve_dtype(np.float32 if dtype is None else dtype)
        self.trainable = bool(trainable)
        self.params = {}
        self.grads = {}
        self._ws = {}
        self._fwd = None          # state of the last forward

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
    def _check_x(self, x, features=None, ndim=2, name="x"):
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


# ============================================================================ dense and maxout
class Dense(Layer):
    """Fused affine + activation: ``out = act(x @ W + b)``, W (in_features, out_features).

    ``activation``: None/"linear"/"identity", "relu", "sigmoid", "tanh", "leaky_relu", "elu"
    (``alpha`` for the last two). ``weight_init``: a name of ``dlfast.init`` ("he", "xavier", ...),
    a float (normal std) or a callable; biases start at 0. ``rng`` (or ``seed``): Generator or int.
    """

    def __init__(self, in_features, out_features, activation=None, weight_init="he", bias=True,
                 dtype=None, rng=None, seed=None, alpha=None, trainable=True):
        super().__init__(dtype, trainable)
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.activation, self.alpha = activation_code(activation, alpha)
        if rng is not None and seed is not None:
            raise ValueError("give rng or seed, not both")
        fn = _init.get(weight_init)
        self.weight_init = _init_spec(weight_init)
        self.params["W"] = np.ascontiguousarray(
            fn((self.in_features, self.out_features), rng=make_rng(seed if rng is None else rng),
               dtype=self.dtype), dtype=self.dtype)
        if self.params["W"].shape != (self.in_features, self.out_features):
            raise ValueError(f"weight_init returned shape {self.params['W'].shape}, expected "
                             f"{(self.in_features, self.out_features)}")
        if bias:
            self.params["b"] = np.zeros(self.out_features, self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x, train=True):
        x = self._check_x(x, self.in_features)
        out = self._buf("out", (x.shape[0], self.out_features))
        kernels.dense_forward(x, self.params["W"], self.params.get("b"), out, self.activation,
                              self.alpha)
        self._fwd = {"x": x, "out": out}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        x, out = self._fwd["x"], self._fwd["out"]
        dx = self._buf("dx", x.shape) if compute_dx else None
        kernels.dense_backward(dout, x, self.params["W"], out, self._buf("dz", out.shape), dx,
                               self._grad("W"), self._grad("b") if "b" in self.params else None,
                               self.activation, self.alpha)
        return dx

    def _config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "activation": self.activation, "weight_init": self.weight_init,
                "bias": "b" in self.params,
                "alpha": self.alpha if self.activation in _DEFAULT_ALPHA else None,
                "trainable": self.trainable}


class Maxout(Layer):
    """``out[:, o] = max_j (x @ W + b)[:, o*pieces + j]``: max over ``pieces`` affine maps.
    W (in_features, out_features*pieces), b (out_features*pieces,)."""

    def __init__(self, in_features, out_features, pieces=2, weight_init="he", bias=True,
                 dtype=None, rng=None, seed=None, trainable=True):
        super().__init__(dtype, trainable)
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.pieces = positive_int("pieces", pieces)
        if rng is not None and seed is not None:
            raise ValueError("give rng or seed, not both")
        width = self.out_features * self.pieces
        self.weight_init = _init_spec(weight_init)
        self.params["W"] = np.ascontiguousarray(
            _init.get(weight_init)((self.in_features, width),
                                   rng=make_rng(seed if rng is None else rng), dtype=self.dtype),
            dtype=self.dtype)
        if bias:
            self.params["b"] = np.zeros(width, self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def forward(self, x, train=True):
        x = self._check_x(x, self.in_features)
        n = x.shape[0]
        z = self._buf("z", (n, self.out_features * self.pieces))
        kernels.dense_forward(x, self.params["W"], self.params.get("b"), z, "identity")
        out = self._buf("out", (n, self.out_features))
        argmax = self._buf("argmax", (n, self.out_features), np.int64)
        kernels.maxout_forward(z, out, argmax)
        self._fwd = {"x": x, "z": z, "out": out, "argmax": argmax}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        f = self._fwd
        dz = self._buf("dz", f["z"].shape)
        kernels.maxout_backward(dout, f["argmax"], dz)
        dx = self._buf("dx", f["x"].shape) if compute_dx else None
        kernels.dense_backward(dz, f["x"], self.params["W"], f["z"], self._buf("dz2", dz.shape),
                               dx, self._grad("W"),
                               self._grad("b") if "b" in self.params else None, "identity")
        return dx

    def _config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "pieces": self.pieces, "weight_init": self.weight_init,
                "bias": "b" in self.params, "trainable": self.trainable}


# ============================================================================ activations
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
            kernels.random_uniform(slopes, self.lower, self.upper, self.seed, self.counter)
            if not self.hold_rng:
                self.counter += slopes.size
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


# ============================================================================ batch norm
class BatchNorm(Layer):
    """Batch normalisation over the batch axis of x (N, F): params "gamma" (1) and "beta" (0),
    running statistics ``running_mean`` (0) and ``running_var`` (``running_var_init``, 1).

    train: ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with the biased batch var, and
    ``running = (1 - m) * running + m * stat`` (running var from the unbiased var when
    ``unbiased``). eval: the running statistics. A batch of one row in training is an error.

    ``momentum_convention="pytorch"`` (default): m = momentum (0.1). ``"textbook"`` (also
    ``textbook=True``, which further defaults momentum to 0.9 and ``unbiased`` to False):
    ``running = momentum * running + (1 - momentum) * stat``, i.e. m = 1 - momentum.
    """

    def __init__(self, num_features, momentum=None, eps=1e-5, momentum_convention=None,
                 unbiased=None, running_var_init=1.0, textbook=False, dtype=None, trainable=True):
        super().__init__(dtype, trainable)
        self.num_features = positive_int("num_features", num_features)
        if momentum_convention is None:
            momentum_convention = "textbook" if textbook else "pytorch"
        if momentum_convention not in ("pytorch", "textbook"):
            raise ValueError(f"momentum_convention must be 'pytorch' or 'textbook', "
                             f"got {momentum_convention!r}")
        tb = momentum_convention == "textbook"
        self.momentum_convention = momentum_convention
        self.momentum = real("momentum", (0.9 if tb else 0.1) if momentum is None else momentum,
                             0.0, 1.0)
        self.eps = real("eps", eps, 0.0, lo_open=True, hi_open=True)
        self.unbiased = (not tb) if unbiased is None else bool(unbiased)
        self.running_var_init = real("running_var_init", running_var_init, 0.0)
        f = self.num_features
        self.params["gamma"] = np.ones(f, self.dtype)
        self.params["beta"] = np.zeros(f, self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.running_mean = np.zeros(f, self.dtype)
        self.running_var = np.full(f, self.running_var_init, self.dtype)

    @property
    def kernel_momentum(self):
        """Weight of the new batch statistic in the running average."""
        return self.momentum if self.momentum_convention == "pytorch" else 1.0 - self.momentum

    def forward(self, x, train=True):
        x = self._check_x(x, self.num_features)
        n, f = x.shape
        if train and n < 2:
            raise ValueError(f"BatchNorm in training mode needs a batch of at least 2 rows, got "
                             f"{n} (the batch variance of one row is undefined); use train=False")
        out, xhat = self._buf("out", x.shape), self._buf("xhat", x.shape)
        invstd = self._buf("invstd", (f,))
        g, b = self.params["gamma"], self.params["beta"]
        if train:
            kernels.batchnorm_forward_train(x, g, b, out, xhat, self._buf("mean", (f,)), invstd,
                                            self.running_mean, self.running_var,
                                            self.kernel_momentum, self.eps, self.unbiased)
        else:
            kernels.batchnorm_forward_eval(x, g, b, self.running_mean, self.running_var,
                                           self.eps, out, xhat, invstd)
        self._fwd = {"out": out, "xhat": xhat, "invstd": invstd, "train": bool(train)}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        f = self._fwd
        dx = self._buf("dx", dout.shape) if compute_dx else None
        kernels.batchnorm_backward(dout, f["xhat"], self.params["gamma"], f["invstd"], dx,
                                   self._grad("gamma"), self._grad("beta"), f["train"])
        return dx

    def _buffers(self):
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def _config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps,
                "momentum_convention": self.momentum_convention, "unbiased": self.unbiased,
                "running_var_init": self.running_var_init, "trainable": self.trainable}


# ============================================================================ dropout
def _as_mask(mask, shape, name="mask"):
    """A 0/1 mask of ``shape`` as contiguous uint8 (bool, int or float 0/1 accepted)."""
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of 0/1 values, got {type(mask).__name__}")
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be bool, integer or float 0/1 values, got {mask.dtype.name}")
    if mask.shape != shape:
        raise ValueError(f"{name} must have the shape of x {shape}, got {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and not np.all((mask == 0) | (mask == 1)):
            raise ValueError(f"{name} values must be 0 or 1")
        mask = mask.astype(np.uint8)
    elif mask.size and mask.max() > 1:
        raise ValueError(f"{name} values must be 0 or 1")
    return np.ascontiguousarray(mask)


class Dropout(Layer):
    """Dropout with drop probability p in [0, 1); mask ~ Bernoulli(1 - p) (``kernels.dropout_mask``).

    inverted (default): train ``y = x * mask / (1 - p)``, eval ``y = x``.
    textbook (``inverted=False``): train ``y = x * mask``, eval ``y = x * (1 - p)``.
    A given mask (``forward(x, mask=...)`` or the ``fixed_mask`` attribute) replaces the draw.
    """

    stochastic = True

    def __init__(self, p=0.5, inverted=True, seed=None, dtype=None):
        super().__init__(dtype)
        self.p = real("p", p, 0.0, 1.0, hi_open=True)
        self.inverted = bool(inverted)
        self.seed = seed_value(seed)
        self.counter = 0
        self.hold_rng = False
        self.fixed_mask = None

    def forward(self, x, train=True, mask=None):
        x = self._check_x(x, ndim=None)
        out = self._buf("out", x.shape)
        if not train:
            scale = 1.0 if self.inverted else 1.0 - self.p
            kernels.dropout_apply(x, None, scale, out)
            self._fwd = {"out": out, "mask": None, "scale": scale}
            return out
        if mask is None:
            mask = self.fixed_mask
        if mask is not None:
            mask = _as_mask(mask, x.shape)
        else:
            mask = self._buf("mask", x.shape, np.uint8)
            kernels.dropout_mask(mask, self.p, self.seed, self.counter)
            if not self.hold_rng:
                self.counter += mask.size
        scale = 1.0 / (1.0 - self.p) if self.inverted else 1.0
        kernels.dropout_apply(x, mask, scale, out)
        self._fwd = {"out": out, "mask": mask, "scale": scale}
        return out

    @property
    def mask(self):
        """The mask of the last training forward (uint8), or None."""
        return None if self._fwd is None else self._fwd["mask"]

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        if not compute_dx:
            return None
        f = self._fwd
        return kernels.dropout_apply(dout, f["mask"], f["scale"], self._buf("dx", dout.shape))

    def _buffers(self):
        return {"seed": np.uint64(self.seed), "counter": np.uint64(self.counter)}

    def _load_buffer(self, key, own, src):
        setattr(self, key, int(src))

    def _config(self):
        return {"p": self.p, "inverted": self.inverted, "seed": self.seed}


# ============================================================================ loss
class SoftmaxCrossEntropy(Layer):
    """Softmax + cross-entropy, averaged over the batch.

    ``forward(logits, t)`` returns ``L = mean_n (logsumexp(logits_n) - logits[n, t_n])`` (float);
    t: class indices (any int dtype) or exact one-hot rows. ``backward(dout=1.0)`` returns
    ``dL/dlogits = dout * (softmax(logits) - onehot(t)) / N``. ``probs``: the last softmax.
    """

    def forward(self, logits, t):
        logits = float_array("logits", logits, self.dtype, ndim=2, min_rows=1)
        if self.check_finite:
            finite_array("logits", logits)
        n, c = logits.shape
        labels = labels_to_indices(t, n, c)
        probs = self._buf("probs", logits.shape)
        loss = kernels.softmax_xent_forward(logits, labels, probs)
        self._fwd = {"out": probs, "labels": labels}
        self.loss = loss
        return loss

    @property
    def probs(self):
        return None if self._fwd is None else self._fwd["out"]

    def backward(self, dout=1.0, compute_dx=True):
        if self._fwd is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        dout = real("dout", dout)
        probs = self._fwd["out"]
        dlogits = self._buf("dx", probs.shape)
        kernels.softmax_xent_backward(probs, self._fwd["labels"], dlogits, dout)
        return dlogits


_CLASSES = {c.__name__: c for c in (Dense, Maxout, Activation, Identity, ReLU, Sigmoid, Tanh,
                                    LeakyReLU, ELU, PReLU, RReLU, Softmax, BatchNorm, Dropout,
                                    SoftmaxCrossEntropy)}


def from_config(cfg):
    """Rebuild a layer from ``layer.config()`` (its parameters start fresh: load a state_dict)."""
    if not isinstance(cfg, dict) or cfg.get("type") not in _CLASSES:
        raise ValueError(f"layer config must be a dict with 'type' in {sorted(_CLASSES)}, got {cfg!r}")
    kw = {k: v for k, v in cfg.items() if k != "type"}
    return _CLASSES[cfg["type"]](**kw)
