"""The nets of the book's chapters 5, 7 and 8 (``ch05/two_layer_net.py``,
``ch07/simple_convnet.py``, ``ch08/deep_convnet.py``), each on a ``dlfast.net.Sequential``
(``net``): every ``gradient`` is one step of dlfast's training engine.

The book's structure: ``params`` (W1, b1, ...: the arrays the layers hold, updated in place by
the optimisers), ``layers`` (an OrderedDict, a list for ``DeepConvNet``; dlfast layers with the
book's attribute names and ``forward``/``backward`` calls), ``last_layer`` (``lastLayer`` for
``TwoLayerNet``: a compat ``SoftmaxWithLoss``, used by ``loss``),
``predict``/``loss``/``accuracy``/``gradient``/``numerical_gradient``, and for the conv nets
``save_params``/``load_params`` (the book's pickle files, read without running code:
``dlfast.compat.load_pickle``). Weights are ``scale * np.random.randn(...)`` from the global
generator in the book's order; ``dtype``: float64 (the book's) or float32.

Differences: ``gradient`` skips the input gradient of the first layer (nothing uses it) and
returns new arrays; the conv nets' ``accuracy`` counts every row (the book's drops a last partial
batch but still divides by all rows); sizes of layers after a convolution are computed from its
actual output (the book's formula assumes square inputs and an even conv output); the engine's
Sequential has a ``Flatten`` before the first Affine layer that ``layers`` does not list;
``load_params`` copies into the existing arrays; layer ``stride``/``padding`` are (h, w) pairs
(``pad`` an int); dropout masks come from dlfast's counter-based generator, seeded from
``np.random`` when the net is made.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from .. import kernels
from .. import layers as L
from .._validation import positive_int, resolve_dtype
from ..net import Sequential
from ._mlp import EngineNet, _Activation, _Affine, _Conv, _Dropout, _MaxPool
from ._pickle import load_pickle, save_pickle
from .layers import SoftmaxWithLoss

__all__ = ["TwoLayerNet", "SimpleConvNet", "DeepConvNet"]


def _randn(scale, shape, dtype):
    return (scale * np.random.randn(*shape)).astype(dtype)


def _given(W):
    """A weight_init that returns the array drawn already."""
    return lambda shape, rng=None, dtype=None: W


def _engine(layers, dtype, seeded):
    """The Sequential of ``layers``; ``seeded``: dropout streams seeded from ``np.random``."""
    seed = int(np.random.randint(0, 2 ** 31 - 1)) if seeded else 0
    net = Sequential(layers, dtype=dtype, seed=seed)
    net.check_finite = False                # NaN/inf propagate; warned once instead
    return net


def _book_params(net, names):
    """{book name: the layer's array} and {book name: the Sequential's name} for the parameter
    layers in ``names`` order (W1, b1, W2, ...)."""
    pos = {id(layer): i for i, layer in enumerate(net.layers)}
    mapping = {}
    for k, layer in enumerate(names, 1):
        mapping[f"W{k}"], mapping[f"b{k}"] = f"{pos[id(layer)]}.W", f"{pos[id(layer)]}.b"
    return {b: net.params[n] for b, n in mapping.items()}, mapping


def _batched_accuracy(predict, x, t, batch_size):
    """Fraction of rows whose largest score is at t, predicted batch_size rows at a time."""
    t = np.asarray(t)
    if t.ndim != 1:
        t = np.argmax(t, axis=1)
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
        """Read a params pickle (restricted: arrays and numbers only) into ``params`` (copied
        into the arrays the layers hold, cast to the net's dtype); every array must have the
        shape of the parameter it replaces, and nothing changes when one does not."""
        loaded = load_pickle(file_name)
        if not isinstance(loaded, dict):
            raise ValueError(f"{file_name} must hold a dict name -> array, got "
                             f"{type(loaded).__name__}")
        for key, val in loaded.items():
            if key not in self.params:
                raise ValueError(f"{file_name} has a parameter {key!r} this net does not have "
                                 f"(it has {', '.join(self.params)})")
            if np.shape(val) != np.shape(self.params[key]):
                raise ValueError(f"{file_name}: {key!r} has shape {np.shape(val)}, the net's has "
                                 f"{np.shape(self.params[key])}")
        for key, val in loaded.items():
            self.params[key][...] = val


# ============================================================================ chapter 5
class TwoLayerNet(EngineNet):
    """Affine -> Relu -> Affine -> SoftmaxWithLoss (the book's chapter-5 net); weights
    ``weight_init_std * randn``, biases 0."""

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01, *,
                 dtype=np.float64):
        dt = resolve_dtype(dtype)
        W1 = _randn(weight_init_std, (input_size, hidden_size), dt)
        W2 = _randn(weight_init_std, (hidden_size, output_size), dt)
        affine1 = _Affine(input_size, hidden_size, None, weight_init=_given(W1), dtype=dt)
        relu = _Activation("relu", dtype=dt)
        affine2 = _Affine(hidden_size, output_size, None, weight_init=_given(W2), dtype=dt)
        self.net = _engine([affine1, relu, affine2], dt, False)
        self.params, self._names = _book_params(self.net, [affine1, affine2])
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


# ============================================================================ chapter 7
class SimpleConvNet(_Saving, EngineNet):
    """conv - relu - pool(2x2, stride 2) - affine - relu - affine - softmax (the book's chapter-7
    net). ``conv_param``: 'filter_num', 'filter_size', 'pad', 'stride'; weights
    ``weight_init_std * randn``, biases 0."""

    _flat_input = False

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
        conv_shape = kernels.conv2d_output_shape((1, *input_dim), (fn, c, fs, fs), stride, pad)
        flat = math.prod(kernels.pool2d_output_shape(conv_shape, 2, 2)[1:])
        W1 = _randn(weight_init_std, (fn, c, fs, fs), dt)
        W2 = _randn(weight_init_std, (flat, hidden_size), dt)
        W3 = _randn(weight_init_std, (hidden_size, output_size), dt)
        conv = _Conv(c, fn, fs, stride, pad, weight_init=_given(W1), dtype=dt)
        relu1, relu2 = _Activation("relu", dtype=dt), _Activation("relu", dtype=dt)
        pool = _MaxPool(2, 2, dtype=dt)
        affine1 = _Affine(flat, hidden_size, None, weight_init=_given(W2), dtype=dt)
        affine2 = _Affine(hidden_size, output_size, None, weight_init=_given(W3), dtype=dt)
        self.net = _engine([conv, relu1, pool, L.Flatten(dtype=dt), affine1, relu2, affine2],
                           dt, False)
        self.params, self._names = _book_params(self.net, [conv, affine1, affine2])
        self.layers = OrderedDict([("Conv1", conv), ("Relu1", relu1), ("Pool1", pool),
                                   ("Affine1", affine1), ("Relu2", relu2), ("Affine2", affine2)])
        self.last_layer = SoftmaxWithLoss()

    def predict(self, x):
        """Scores of the last Affine layer (a new array)."""
        return super().predict(x)

    def loss(self, x, t):
        """``last_layer.forward(predict(x), t)``."""
        return super().loss(x, t)

    def accuracy(self, x, t, batch_size=100):
        """Fraction of rows whose largest score is at t, batch_size rows at a time."""
        return _batched_accuracy(lambda xb: self.net.forward(self._x(xb, 5), False), x, t,
                                 batch_size)


# ============================================================================ chapter 8
_DEEP_CONV = ({"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},
              {"filter_num": 16, "filter_size": 3, "pad": 1, "stride": 1},
              {"filter_num": 32, "filter_size": 3, "pad": 1, "stride": 1},
              {"filter_num": 32, "filter_size": 3, "pad": 2, "stride": 1},
              {"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1},
              {"filter_num": 64, "filter_size": 3, "pad": 1, "stride": 1})


class DeepConvNet(_Saving, EngineNet):
    """The book's chapter-8 net: (conv - relu - conv - relu - pool) x 3 - affine - relu - dropout
    - affine - dropout - softmax; He weights ``sqrt(2 / fan_in) * randn`` (fan_in = C*FH*FW of
    a filter, the rows of an affine weight), biases 0; dropout ratio 0.5 in the book's form
    (train ``x * mask``, eval ``x * 0.5``). ``layers`` is a list; ``loss`` runs in training mode
    (dropout on), as the book's."""

    _flat_input = False

    def __init__(self, input_dim=(1, 28, 28),
                 conv_param_1=_DEEP_CONV[0], conv_param_2=_DEEP_CONV[1],
                 conv_param_3=_DEEP_CONV[2], conv_param_4=_DEEP_CONV[3],
                 conv_param_5=_DEEP_CONV[4], conv_param_6=_DEEP_CONV[5],
                 hidden_size=50, output_size=10, *, dtype=np.float64):
        dt = resolve_dtype(dtype)
        convs = (conv_param_1, conv_param_2, conv_param_3, conv_param_4, conv_param_5,
                 conv_param_6)
        weights, shape = [], (1, *input_dim)
        for i, cp in enumerate(convs):
            fn, fs, c = cp["filter_num"], cp["filter_size"], shape[1]
            weights.append(_randn(math.sqrt(2.0 / (c * fs * fs)), (fn, c, fs, fs), dt))
            shape = kernels.conv2d_output_shape(shape, (fn, c, fs, fs), cp["stride"], cp["pad"])
            if i % 2:
                shape = kernels.pool2d_output_shape(shape, 2, 2)
        flat = math.prod(shape[1:])
        W7 = _randn(math.sqrt(2.0 / flat), (flat, hidden_size), dt)
        W8 = _randn(math.sqrt(2.0 / hidden_size), (hidden_size, output_size), dt)
        self.layers, params = [], []
        for i, (cp, W) in enumerate(zip(convs, weights)):
            conv = _Conv(W.shape[1], W.shape[0], W.shape[2:], cp["stride"], cp["pad"],
                         weight_init=_given(W), dtype=dt)
            self.layers += [conv, _Activation("relu", dtype=dt)]
            params.append(conv)
            if i % 2:
                self.layers.append(_MaxPool(2, 2, dtype=dt))
        affine7 = _Affine(flat, hidden_size, None, weight_init=_given(W7), dtype=dt)
        affine8 = _Affine(hidden_size, output_size, None, weight_init=_given(W8), dtype=dt)
        self.layers += [affine7, _Activation("relu", dtype=dt),
                        _Dropout(0.5, inverted=False, dtype=dt), affine8,
                        _Dropout(0.5, inverted=False, dtype=dt)]
        k = self.layers.index(affine7)
        self.net = _engine(self.layers[:k] + [L.Flatten(dtype=dt)] + self.layers[k:], dt, True)
        self.params, self._names = _book_params(self.net, params + [affine7, affine8])
        self.last_layer = SoftmaxWithLoss()

    def loss(self, x, t):
        """``last_layer.forward(predict(x, train_flg=True), t)``."""
        return super().loss(x, t, True)

    def accuracy(self, x, t, batch_size=100):
        """Fraction of rows whose largest score is at t, batch_size rows at a time (dropout off)."""
        return _batched_accuracy(lambda xb: self.net.forward(self._x(xb, 5), False), x, t,
                                 batch_size)
