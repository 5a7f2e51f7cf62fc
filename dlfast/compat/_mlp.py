"""Nets of the book that run on a dlfast net (``self.net``): every ``gradient`` is one step of
dlfast's training engine (one plan, compiled), with the book's numerical forms.
``MultiLayerNet``/``MultiLayerNetExtend`` run on ``dlfast.net.MLP``, ``TwoLayerNet`` on a
``dlfast.net.Sequential``.

The dlfast layers get subclasses that add the book's attribute names (``W``, ``b``, ``dW``,
``db``, ``x``; ``gamma``, ``beta``, ``dgamma``, ``dbeta``, ``xn``, ``std``; ``mask``, ``out``,
``dropout_ratio``) and, for batch norm, the book's one-row batch; their steps are the same ops.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from .. import kernels
from .. import layers as L
from .._validation import real, resolve_dtype
from ..gradcheck import hold_rng
from ..net import MLP
from ._nonfinite import warn_once
from .gradient import numerical_gradient
from .layers import SoftmaxWithLoss, book_arg_max

_BN_EPS = 1e-6                 # the book writes 10e-7


def book_std(weight_init_std, fan_in):
    """The book's weight scale: 'relu'/'he' -> sqrt(2/fan_in), 'sigmoid'/'xavier' ->
    sqrt(1/fan_in), a number -> itself."""
    if isinstance(weight_init_std, str):
        key = weight_init_std.lower()
        if key in ("relu", "he"):
            return math.sqrt(2.0 / fan_in)
        if key in ("sigmoid", "xavier"):
            return math.sqrt(1.0 / fan_in)
        raise ValueError(f"weight_init_std must be 'relu'/'he', 'sigmoid'/'xavier' or a number, "
                         f"got {weight_init_std!r}")
    if isinstance(weight_init_std, (bool, np.bool_)) or not isinstance(
            weight_init_std, (int, float, np.integer, np.floating)):
        raise TypeError(f"weight_init_std must be 'relu'/'he', 'sigmoid'/'xavier' or a number, "
                        f"got {type(weight_init_std).__name__}")
    std = float(weight_init_std)
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"weight_init_std must be a finite number >= 0, got {std}")
    return std


# ============================================================================ engine layers
def _as(a, dtype):
    """a as an ndarray of dtype (the book's layers take any real input)."""
    a = np.asarray(a)
    return a if a.dtype == dtype else a.astype(dtype)


class _Book:
    """The book's calls on a dlfast layer: ``forward``/``backward`` take any real input
    (converted to the layer's dtype); ``config()`` names the dlfast class, so the layer saves and
    rebuilds as one. The training engine still runs the layer's kernel pair."""

    def forward(self, x, train=True):
        return super().forward(_as(x, self.dtype), train)

    def backward(self, dout, compute_dx=True):
        self.__dict__.pop("_last_grads", None)          # dW etc. are the buffers again
        return super().backward(_as(dout, self.dtype), compute_dx)

    def kernel_pair(self, x_shape, need_dx):
        return super().kernel_pair(x_shape, need_dx)

    def config(self):
        cfg = super().config()
        cfg["type"] = next(c for c in type(self).__mro__
                           if c.__module__.startswith("dlfast.layers")).__name__
        return cfg


def _param(key, doc):
    """A property for ``params[key]``; setting it (the book's ``layer.W = ...``) replaces the
    array: kept as given when it has the layer's shape, dtype and C order, else a copy."""
    def get(self):
        return self.params[key]

    def put(self, value):
        old = self.params[key]
        a = np.asarray(value)
        if a.shape != old.shape:
            raise ValueError(f"{key} must have shape {old.shape}, got {a.shape}")
        if not (a.dtype == self.dtype and a.flags.c_contiguous and a.flags.writeable):
            a = np.array(a, dtype=self.dtype, order="C")
        self.params[key] = a
    return property(get, put, doc=doc)


def _grad(key):
    """The last step's gradient: the layer's buffer, or the new array the net's last
    ``gradient`` call wrote it to (``EngineNet._note_fresh``)."""
    def get(self):
        last = self.__dict__.get("_last_grads")
        return self.grads[key] if last is None or key not in last else last[key]
    return property(get, doc=f"The last step's dL/d{key}.")


def _rec(key, doc):
    return property(lambda self: None if self._fwd is None else self._fwd.get(key), doc=doc)


class _Affine(_Book, L.Dense):
    """Dense without activation; like the book's Affine it takes x of any shape (N, ...)
    as (N, -1) and gives dx in x's shape."""

    W = _param("W", "The weight matrix (in, out).")
    b = _param("b", "The bias (out,).")
    dW, db = _grad("W"), _grad("b")
    x = _rec("x", "The last forward's input (N, in).")
    out = _rec("out", "The last forward's output.")

    @property
    def original_x_shape(self):
        """The shape of the last forward's input as given."""
        return None if self._fwd is None else self._fwd.get("x_shape", self._fwd["x"].shape)

    def forward(self, x, train=True):
        x = _as(x, self.dtype)
        out = L.Dense.forward(self, x.reshape(x.shape[0], -1) if x.ndim > 2 else x, train)
        self._fwd["x_shape"] = x.shape
        return out

    def backward(self, dout, compute_dx=True):
        self.__dict__.pop("_last_grads", None)
        dx = L.Dense.backward(self, _as(dout, self.dtype), compute_dx)
        shape = self._fwd.get("x_shape")
        return dx if dx is None or shape is None else dx.reshape(shape)

    def kernel_pair(self, x_shape, need_dx):
        return L.Dense.kernel_pair(self, x_shape, need_dx)


class _Conv(_Book, L.Conv2D):
    W = _param("W", "The filters (FN, C, FH, FW).")
    b = _param("b", "The bias (FN,).")
    dW, db = _grad("W"), _grad("b")
    x = _rec("x", "The last forward's input.")
    col = property(lambda self: self._buf("col", self._shapes(self._fwd["x"].shape)[1])
                   if self._fwd and self._fwd.get("x") is not None else None,
                   doc="The convolution's workspace (N, C*FH*FW, OH*OW) for the last input.")
    pad = property(lambda self: self.padding[0] if self.padding[0] == self.padding[1]
                   else self.padding, doc="The zero padding (an int when square).")


class _MaxPool(_Book, L.MaxPool2D):
    pool_h = property(lambda self: self.kernel_size[0])
    pool_w = property(lambda self: self.kernel_size[1])
    pad = property(lambda self: self.padding[0] if self.padding[0] == self.padding[1]
                   else self.padding, doc="The padding (an int when square).")
    x = _rec("x", "The last forward's input.")

    @property
    def arg_max(self):
        """The book's ``arg_max`` of the last forward (see ``dlfast.compat.layers.Pooling``)."""
        if self._fwd is None:
            return None
        return book_arg_max(self._fwd["argmax"], self._fwd["x"].shape[3], self.pool_w,
                            self.stride, self.padding)


class _Activation(_Book, L.Activation):
    out = property(lambda self: None if self._fwd is None else self._fwd["out"],
                   doc="The last forward's output.")

    @property
    def mask(self):
        """``x <= 0`` of the last forward (ReLU), or None."""
        return None if self._fwd is None or self.activation != "relu" else self._fwd["out"] <= 0


class _Dropout(_Book, L.Dropout):
    @property
    def dropout_ratio(self):
        """The drop probability (``p``)."""
        return self.p

    @dropout_ratio.setter
    def dropout_ratio(self, value):
        self.p = real("dropout_ratio", value, 0.0, 1.0, hi_open=True)

    @property
    def mask(self):
        """The last training step's mask (bool, True = kept), or None."""
        m = None if self._fwd is None else self._fwd["mask"]
        return None if m is None else m.view(np.bool_)


class _BatchNorm(_Book, L.BatchNorm):
    """dlfast's BatchNorm (textbook momentum, biased running var, eps 1e-6) that also trains on a
    one-row batch as the book does: mean = the row, var = 0, so out = beta and dx = 0; the
    running statistics move towards (row, 0)."""

    gamma = property(lambda self: self.params["gamma"])
    beta = property(lambda self: self.params["beta"])
    dgamma, dbeta = _grad("gamma"), _grad("beta")
    xn = property(lambda self: None if self._fwd is None else self._fwd["xhat"],
                  doc="The last forward's normalised input.")
    std = property(lambda self: None if self._fwd is None else 1.0 / self._fwd["invstd"],
                   doc="sqrt(var + eps) of the last forward.")

    def forward(self, x, train=True):
        x = _as(x, self.dtype)
        if not (train and x.ndim == 2 and x.shape[0] == 1):
            return L.BatchNorm.forward(self, x, train)
        x = self._check_x(x, self.num_features)
        f = self.num_features
        out, xhat = self._buf("out", x.shape), self._buf("xhat", x.shape)
        invstd = self._buf("invstd", (f,))
        mean = np.ascontiguousarray(x[0])
        kernels.batchnorm_forward_eval(x, self.params["gamma"], self.params["beta"], mean,
                                       np.zeros(f, self.dtype), self.eps, out, xhat, invstd)
        m = self.kernel_momentum
        self.running_mean[...] = (1.0 - m) * self.running_mean + m * mean
        self.running_var[...] = (1.0 - m) * self.running_var
        self._fwd = {"out": out, "xhat": xhat, "invstd": invstd, "train": True}
        return out

    def backward(self, dout, compute_dx=True):
        return super().backward(dout, compute_dx)

    def kernel_pair(self, x_shape, need_dx):
        if x_shape[0] < 2:
            return None                      # the one-row batch: forward/backward above
        return super().kernel_pair(x_shape, need_dx)


_BOOK_CLASS = {L.Dense: _Affine, L.Activation: _Activation, L.Dropout: _Dropout,
               L.BatchNorm: _BatchNorm}                      # MLP's layers -> these


# ============================================================================ the nets
def _labels(t):
    """The book's class indices of shape (N, 1) as (N,) (one-hot rows and (N,) as given)."""
    t = np.asarray(t)
    return t[:, 0] if t.ndim == 2 and t.shape[1] == 1 else t


class EngineNet:
    """The book's net interface over a dlfast net ``self.net``; ``_names`` maps the book's
    parameter names to the dlfast net's (None: the same names)."""

    _names = None
    _flat_input = True          # x of more axes is taken as (N, -1) (the book's Affine)

    # ---------------------------------------------------------------- dlfast net interface
    @property
    def grads(self):
        return self._book(self.net.grads)

    def _book(self, d):
        """A dict of the dlfast net keyed by the book's names."""
        return d if self._names is None else {k: d[n] for k, n in self._names.items()}

    @property
    def dtype(self):
        return self.net.dtype

    @property
    def loss_layer(self):
        return self.net.loss_layer

    def _x(self, x, stacklevel=4, check=False):
        """x (as (N, -1) for a net of Affine layers) in the net's dtype; a first non-finite x
        warns (at the caller of the caller). ``check``: return (x, whether x is finite)."""
        x = src = np.asarray(x)
        if x.ndim > 2 and self._flat_input:
            x = x.reshape(x.shape[0], -1)
        if x.dtype != self.net.dtype:
            x = x.astype(self.net.dtype)
        finite = True
        if check or "input" not in self.__dict__.get("_nonfinite_seen", ()):
            if src.dtype.kind in "iub":         # integers and bools convert to finite floats
                finite = True
            else:                               # float32 -> float64 keeps finiteness: check
                c = src if src.dtype == np.float32 and x.dtype == np.float64 else x   # fewer bytes
                finite = not c.size or kernels.all_finite(c)
            if not finite:
                warn_once(self, "input", stacklevel=stacklevel)
        return (x, finite) if check else x

    def forward(self, x, train=True):
        """Scores of the last Affine layer (a layer buffer, not copied)."""
        return self.net.forward(self._x(x), train)

    def loss_and_gradient(self, x, t):
        """``(loss, grads)`` of one train-mode step (grads are the layers' buffers)."""
        return self._step(x, t)

    def _step(self, x, t, fresh=False):
        """One train-mode step: the engine's, or for a non-finite x (which the engine refuses)
        the layers' own forward and backward, so that NaN propagates. ``fresh``: the gradients
        are new arrays (``Net.gradient``), which the layers' ``dW``... then name."""
        (x, finite), t, net = self._x(x, 5, True), _labels(t), self.net
        if not finite:
            loss = net.loss_layer.forward(net.forward(x, True), t)
            net.backward(net.loss_layer.backward())
            grads = net.grads
            if fresh:
                grads = {k: g.copy() for k, g in grads.items()}
        else:
            loss, grads = net._step(net._graph(), x, net._targets_of(t), None, fresh, True)
        loss, grads = loss + net.penalty(), net._finish_grads(grads)
        self._note_fresh(grads if fresh and finite else None)
        if not math.isfinite(loss):             # one warning per net: its last layer's
            warn_once(self.last_layer, "loss", stacklevel=4, what=type(self).__name__)
        return loss, self._book(grads)

    def _note_fresh(self, grads):
        """Point the book layers' ``dW``... at ``grads`` (new arrays), or (None) back at the
        layers' buffers."""
        net = self.net
        if grads is not None:
            for n, layer, k in net._param_entries:
                g = grads.get(n)
                if g is not None:
                    layer.__dict__.setdefault("_last_grads", {})[k] = g
            self.__dict__["_fresh_out"] = True
        elif self.__dict__.get("_fresh_out"):
            for layer in net._all:
                layer.__dict__.pop("_last_grads", None)
            self.__dict__["_fresh_out"] = False

    def penalty(self):
        return self.net.penalty()

    def apply_constraints(self):
        self.net.apply_constraints()

    def state_dict(self):
        return self.net.state_dict()

    def load_state_dict(self, d, strict=True):
        self.net.load_state_dict(d, strict)

    # ---------------------------------------------------------------- the book's interface
    def predict(self, x, train_flg=False):
        """Scores (before the softmax), a new array."""
        return self.net.predict(self._x(x), train_flg)

    def loss(self, x, t, train_flg=False):
        """``last_layer.forward(predict(x), t)`` (the book's cross-entropy, + 1e-7 inside the
        log) + 0.5 * lambda * sum over every W of sum(W^2)."""
        y = self.net.forward(self._x(x), train_flg)
        return self.last_layer.forward(y, t) + self.net.penalty()

    def accuracy(self, x, t):
        """Fraction of rows whose largest score is at t (indices or one-hot rows)."""
        t = np.asarray(t)
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        x = self._x(x)
        y = self.net.forward(x, False)
        return float(np.sum(np.argmax(y, axis=1) == t)) / float(x.shape[0])

    def gradient(self, x, t):
        """Gradients (new arrays) of ``loss(x, t, train_flg=True)``, weight decay lambda*W
        included (the book's cross-entropy and the exact one have the same gradient)."""
        return self._step(x, t, fresh=True)[1]

    def numerical_gradient(self, x, t):
        """Central differences (h = 1e-4) of ``loss(x, t, train_flg=True)`` for every entry of
        ``params``; dropout masks are held still and the BN running statistics restored."""
        x = self._x(x)
        state = self.net.state_dict()
        try:
            with hold_rng(self.net):
                def loss_W(_):
                    return EngineNet.loss(self, x, t, True)
                return {k: numerical_gradient(loss_W, p) for k, p in self.params.items()}
        finally:
            self.net.load_state_dict(state)


class MLPNet(EngineNet):
    """Shared body of ``MultiLayerNet`` and ``MultiLayerNetExtend``."""

    @property
    def params(self):
        """name -> the layer's own array (W1, b1, gamma1, beta1, ...)."""
        return self.net.params

    def _build(self, input_size, hidden_size_list, output_size, activation, weight_init_std,
               weight_decay_lambda, use_dropout, dropout_ration, use_batchnorm, dtype):
        self.input_size = input_size
        self.output_size = output_size
        self.hidden_size_list = list(hidden_size_list)
        self.hidden_layer_num = len(self.hidden_size_list)
        self.weight_decay_lambda = weight_decay_lambda
        self.weight_init_std = weight_init_std
        self.activation = activation
        self.use_dropout = bool(use_dropout)
        self.dropout_ration = dropout_ration
        self.use_batchnorm = bool(use_batchnorm)
        book_std(weight_init_std, 1)            # validate before drawing anything

        def init(shape, rng=None, dtype=np.float64):
            # the book: weight_init_std * np.random.randn(fan_in, fan_out), the global stream
            return (book_std(weight_init_std, shape[0]) * np.random.randn(*shape)).astype(dtype)

        self.net = MLP(input_size, self.hidden_size_list, output_size, activation=activation,
                       weight_init=init, batchnorm=self.use_batchnorm,
                       dropout=dropout_ration if self.use_dropout else 0.0,
                       weight_decay=weight_decay_lambda, seed=0, dtype=resolve_dtype(dtype),
                       bn_momentum=0.9, bn_eps=_BN_EPS, bn_momentum_convention="textbook",
                       bn_unbiased=False, bn_running_var_init=0.0, dropout_inverted=False)
        self.net.check_finite = False           # NaN/inf propagate; warned once here instead
        if self.use_dropout:
            # dropout masks follow np.random.seed too: the stream seed is drawn from it
            self.net.set_seed(int(np.random.randint(0, 2 ** 31 - 1)))
        for layer in self.net.layers:
            cls = _BOOK_CLASS.get(type(layer))
            if cls is not None:
                layer.__class__ = cls
        self.layers = OrderedDict(
            (name.replace("Activation", "Activation_function"), layer)
            for name, layer in zip(self.net.layer_names, self.net.layers))
        self.last_layer = SoftmaxWithLoss()


    def __repr__(self):
        return (f"{type(self).__name__}(input_size={self.input_size}, hidden_size_list="
                f"{self.hidden_size_list}, output_size={self.output_size}, "
                f"activation={self.activation!r}, weight_init_std={self.weight_init_std!r})")
