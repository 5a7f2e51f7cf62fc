"""The nets of the book's chapters 5, 7 and 8 (``ch05/two_layer_net.py``,
``ch07/simple_convnet.py``, ``ch08/deep_convnet.py``) on the compat layers.

The book's structure: ``params`` (W1, b1, ...: the arrays the layers hold), ``layers``
(an OrderedDict, a list for ``DeepConvNet``), ``last_layer`` (``lastLayer`` for
``TwoLayerNet``), ``predict``/``loss``/``accuracy``/``gradient``/``numerical_gradient``, and for
the conv nets ``save_params``/``load_params`` (the book's pickle files, read without running
code: ``dlfast.compat.load_pickle``). Weights are ``scale * np.random.randn(...)`` from the global
generator in the book's order; ``dtype``: float64 (the book's) or float32.

``TwoLayerNet`` runs on a ``dlfast.net.Sequential`` (its ``layers`` are dlfast layers with the
book's attribute names: each ``gradient`` is one step of the training engine); the conv nets run
the book's layer loop on the compat layers (``dlfast.kernels.conv2d_*``/``maxpool2d_*``).

Differences: ``gradient`` skips the input gradient of the first layer (nothing uses it); the
conv nets' ``accuracy`` counts every row (the book's drops a last partial batch but still divides
by all rows); sizes of layers after a convolution are computed from its actual output (the
book's formula assumes square inputs and an even conv output).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from .. import kernels
from .._validation import positive_int, resolve_dtype
from ..net import Sequential
from ._mlp import EngineNet, _Activation, _Affine
from ._pickle import load_pickle, save_pickle
from .gradient import numerical_gradient
from .layers import Affine, Convolution, Dropout, Pooling, Relu, SoftmaxWithLoss

__all__ = ["TwoLayerNet", "SimpleConvNet", "DeepConvNet"]


def _randn(scale, shape, dtype):
    return (scale * np.random.randn(*shape)).astype(dtype)


def _labels(t):
    t = np.asarray(t)
    return t if t.ndim == 1 else np.argmax(t, axis=1)


def _backprop(last_layer, layers):
    """The book's backward pass; the first layer computes no input gradient."""
    dout = last_layer.backward(1)
    for i in range(len(layers) - 1, 0, -1):
        dout = layers[i].backward(dout)
    first = layers[0]
    if hasattr(first, "_backward"):
        first._backward(dout, False)
    else:
        first.backward(dout)


def _numerical(net, x, t):
    def loss_w(_):
        return net.loss(x, t)
    return {k: numerical_gradient(loss_w, v) for k, v in net.params.items()}


def _batched_accuracy(predict, x, t, batch_size):
    """Fraction of rows whose largest score is at t, predicted batch_size rows at a time."""
    t = _labels(t)
    n = x.shape[0]
    batch_size = positive_int("batch_size", batch_size)
    hits = 0
    for i in range(0, n, batch_size):
        y = predict(x[i:i + batch_size])
        hits += int(np.sum(np.argmax(y, axis=1) == t[i:i + batch_size]))
    return hits / n if n else 0.0


class _Saving:
    """``save_params``/``load_params`` of the book's conv nets."""

    def save_params(self, file_name="params.pkl"):
        """Pickle ``params`` (a dict of arrays, the book's format) to ``file_name``."""
        save_pickle(dict(self.params), file_name)

    def load_params(self, file_name="params.pkl"):
        """Read a params pickle (restricted: arrays and numbers only) into ``params`` and the
        layers; each array must have the shape of the parameter it replaces (cast to the net's
        dtype)."""
        loaded = load_pickle(file_name)
        if not isinstance(loaded, dict):
            raise ValueError(f"{file_name} must hold a dict name -> array, got "
                             f"{type(loaded).__name__}")
        new = {}
        for key, val in loaded.items():
            if key not in self.params:
                raise ValueError(f"{file_name} has a parameter {key!r} this net does not have "
                                 f"(it has {', '.join(self.params)})")
            val = np.asarray(val)
            if val.shape != np.shape(self.params[key]):
                raise ValueError(f"{file_name}: {key!r} has shape {val.shape}, the net's has "
                                 f"{np.shape(self.params[key])}")
            new[key] = np.array(val, dtype=self.dtype, order="C")
        self.params.update(new)
        for i, layer in enumerate(self._param_layers(), 1):
            layer.W, layer.b = self.params[f"W{i}"], self.params[f"b{i}"]


# ============================================================================ chapter 5
class TwoLayerNet(EngineNet):
    """Affine -> Relu -> Affine -> SoftmaxWithLoss (the book's chapter-5 net); weights
    ``weight_init_std * randn``, biases 0.

    Runs on a ``dlfast.net.Sequential`` (``net``) of dlfast layers with the book's attribute
    names, so each ``gradient`` is one step of dlfast's training engine; ``params`` holds the
    layers' own arrays."""

    _names = {"W1": "0.W", "b1": "0.b", "W2": "2.W", "b2": "2.b"}

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01, *,
                 dtype=np.float64):
        dt = resolve_dtype(dtype)
        W1 = _randn(weight_init_std, (input_size, hidden_size), dt)
        W2 = _randn(weight_init_std, (hidden_size, output_size), dt)
        affine1 = _Affine(input_size, hidden_size, None, weight_init=lambda *a, **k: W1, dtype=dt)
        affine2 = _Affine(hidden_size, output_size, None, weight_init=lambda *a, **k: W2, dtype=dt)
        relu = _Activation("relu", dtype=dt)
        self.net = Sequential([affine1, relu, affine2], dtype=dt, seed=0)
        self.net.check_finite = False           # NaN/inf propagate; warned once instead
        self.params = {k: self.net.params[n] for k, n in self._names.items()}
        self.layers = OrderedDict([("Affine1", affine1), ("Relu1", relu), ("Affine2", affine2)])
        self.lastLayer = SoftmaxWithLoss()

    @property
    def last_layer(self):
        """The loss layer (``lastLayer``, the book's name here)."""
        return self.lastLayer

    def predict(self, x):
        """Scores of the last Affine layer (a new array)."""
        return super().predict(x)

    def loss(self, x, t):
        """``lastLayer.forward(predict(x), t)``."""
        return super().loss(x, t)

    def gradient(self, x, t):
        """Backpropagation: ``{'W1': dW, 'b1': db, ...}`` of ``loss(x, t)`` (new arrays)."""
        return super().gradient(x, t)

    def numerical_gradient(self, x, t):
        """Central differences (h = 1e-4) of ``loss(x, t)`` for every entry of ``params``."""
        return super().numerical_gradient(x, t)


# ============================================================================ chapter 7
class SimpleConvNet(_Saving):
    """conv - relu - pool(2x2, stride 2) - affine - relu - affine - softmax (the book's chapter-7
    net). ``conv_param``: 'filter_num', 'filter_size', 'pad', 'stride'; weights
    ``weight_init_std * randn``, biases 0."""

    def __init__(self, input_dim=(1, 28, 28),
                 conv_param={"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1},  # noqa: B006
                 hidden_size=100, output_size=10, weight_init_std=0.01, *, dtype=np.float64):
        dt = resolve_dtype(dtype)
        missing = {"filter_num", "filter_size", "pad", "stride"} - set(conv_param)
        if missing:
            raise KeyError(f"conv_param is missing {sorted(missing)}")
        fn, fs = conv_param["filter_num"], conv_param["filter_size"]
        stride, pad = conv_param["stride"], conv_param["pad"]
        c = input_dim[0]
        conv = kernels.conv2d_output_shape((1, *input_dim), (fn, c, fs, fs), stride, pad)
        pooled = kernels.pool2d_output_shape(conv, 2, 2)
        self.params = {}
        self.params["W1"] = _randn(weight_init_std, (fn, c, fs, fs), dt)
        self.params["b1"] = np.zeros(fn, dt)
        self.params["W2"] = _randn(weight_init_std, (math.prod(pooled[1:]), hidden_size), dt)
        self.params["b2"] = np.zeros(hidden_size, dt)
        self.params["W3"] = _randn(weight_init_std, (hidden_size, output_size), dt)
        self.params["b3"] = np.zeros(output_size, dt)
        self.layers = OrderedDict()
        self.layers["Conv1"] = Convolution(self.params["W1"], self.params["b1"], stride, pad)
        self.layers["Relu1"] = Relu()
        self.layers["Pool1"] = Pooling(pool_h=2, pool_w=2, stride=2)
        self.layers["Affine1"] = Affine(self.params["W2"], self.params["b2"])
        self.layers["Relu2"] = Relu()
        self.layers["Affine2"] = Affine(self.params["W3"], self.params["b3"])
        self.last_layer = SoftmaxWithLoss()
        self.dtype = dt

    def _param_layers(self):
        return [self.layers[k] for k in ("Conv1", "Affine1", "Affine2")]

    def predict(self, x):
        """Scores of the last Affine layer (its buffer)."""
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        """``last_layer.forward(predict(x), t)``."""
        return self.last_layer.forward(self.predict(x), t)

    def accuracy(self, x, t, batch_size=100):
        """Fraction of rows whose largest score is at t, batch_size rows at a time."""
        return _batched_accuracy(self.predict, x, t, batch_size)

    def numerical_gradient(self, x, t):
        """Central differences (h = 1e-4) of ``loss(x, t)`` for every entry of ``params``."""
        return _numerical(self, x, t)

    def gradient(self, x, t):
        """Backpropagation: ``{'W1': dW, 'b1': db, ...}`` of ``loss(x, t)`` (new arrays)."""
        self.loss(x, t)
        _backprop(self.last_layer, list(self.layers.values()))
        grads = {}
        for i, layer in enumerate(self._param_layers(), 1):
            grads[f"W{i}"], grads[f"b{i}"] = layer.dW, layer.db
        return grads


# ============================================================================ chapter 8
_DEEP_CONV = ({"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},
              {"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},
              {"filter_num": 32, "filter_size": 3, "pad": 1, "stride": 1},
              {"filter_num": 32, "filter_size": 3, "pad": 2, "stride": 1},
              {"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1},
              {"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1})


class DeepConvNet(_Saving):
    """The book's chapter-8 net: (conv - relu - conv - relu - pool) x 3 - affine - relu - dropout
    - affine - dropout - softmax; He weights ``sqrt(2 / fan_in) * randn`` (fan_in = C*FH*FW of
    a filter, the rows of an affine weight), biases 0. ``layers`` is a list; ``loss`` runs in
    training mode (dropout on), as the book's."""

    _PARAM_INDEX = (0, 2, 5, 7, 10, 12, 15, 18)

    def __init__(self, input_dim=(1, 28, 28),
                 conv_param_1=_DEEP_CONV[0], conv_param_2=_DEEP_CONV[1],
                 conv_param_3=_DEEP_CONV[2], conv_param_4=_DEEP_CONV[3],
                 conv_param_5=_DEEP_CONV[4], conv_param_6=_DEEP_CONV[5],
                 hidden_size=50, output_size=10, *, dtype=np.float64):
        dt = resolve_dtype(dtype)
        convs = (conv_param_1, conv_param_2, conv_param_3, conv_param_4, conv_param_5,
                 conv_param_6)
        self.params = {}
        shape = (1, *input_dim)
        for i, cp in enumerate(convs, 1):
            fn, fs, c = cp["filter_num"], cp["filter_size"], shape[1]
            self.params[f"W{i}"] = _randn(math.sqrt(2.0 / (c * fs * fs)), (fn, c, fs, fs), dt)
            self.params[f"b{i}"] = np.zeros(fn, dt)
            shape = kernels.conv2d_output_shape(shape, (fn, c, fs, fs), cp["stride"], cp["pad"])
            if i % 2 == 0:
                shape = kernels.pool2d_output_shape(shape, 2, 2)
        flat = math.prod(shape[1:])
        self.params["W7"] = _randn(math.sqrt(2.0 / flat), (flat, hidden_size), dt)
        self.params["b7"] = np.zeros(hidden_size, dt)
        self.params["W8"] = _randn(math.sqrt(2.0 / hidden_size), (hidden_size, output_size), dt)
        self.params["b8"] = np.zeros(output_size, dt)
        p = self.params
        self.layers = []
        for i, cp in enumerate(convs, 1):
            self.layers += [Convolution(p[f"W{i}"], p[f"b{i}"], cp["stride"], cp["pad"]), Relu()]
            if i % 2 == 0:
                self.layers.append(Pooling(pool_h=2, pool_w=2, stride=2))
        self.layers += [Affine(p["W7"], p["b7"]), Relu(), Dropout(0.5), Affine(p["W8"], p["b8"]),
                        Dropout(0.5)]
        self.last_layer = SoftmaxWithLoss()
        self.dtype = dt

    def _param_layers(self):
        return [self.layers[i] for i in self._PARAM_INDEX]

    def predict(self, x, train_flg=False):
        """Scores of the last layer (its buffer); ``train_flg`` switches dropout on."""
        for layer in self.layers:
            x = layer.forward(x, train_flg) if isinstance(layer, Dropout) else layer.forward(x)
        return x

    def loss(self, x, t):
        """``last_layer.forward(predict(x, train_flg=True), t)``."""
        return self.last_layer.forward(self.predict(x, train_flg=True), t)

    def accuracy(self, x, t, batch_size=100):
        """Fraction of rows whose largest score is at t, batch_size rows at a time (dropout off)."""
        return _batched_accuracy(self.predict, x, t, batch_size)

    def gradient(self, x, t):
        """Backpropagation: ``{'W1': dW, 'b1': db, ...}`` of ``loss(x, t)`` (new arrays)."""
        self.loss(x, t)
        _backprop(self.last_layer, self.layers)
        grads = {}
        for i, layer in enumerate(self._param_layers(), 1):
            grads[f"W{i}"], grads[f"b{i}"] = layer.dW, layer.db
        return grads
