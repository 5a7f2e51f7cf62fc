"""The book "Deep Learning from Scratch" (O'Reilly Japan) on dlfast: its ``common`` package and
the nets of its chapters, with the book's names, signatures, attributes and numerical forms.

=================================== ============================================================
book                                dlfast.compat
=================================== ============================================================
``common.functions``                ``dlfast.compat.functions``
``common.gradient``                 ``dlfast.compat.gradient``
``common.layers``                   ``dlfast.compat.layers`` (on ``dlfast.kernels``)
``common.optimizer``                ``dlfast.compat.optimizer`` (dlfast's fused updates)
``common.multi_layer_net[_extend]`` ``dlfast.compat.multi_layer_net[_extend]`` (on
                                    ``dlfast.net.MLP``: each step is one engine plan)
``common.trainer``                  ``dlfast.compat.trainer``
``common.util``                     ``dlfast.compat.util``
``dataset.mnist``                   ``dlfast.compat.dataset.mnist`` (on ``dlfast.datasets``)
ch05 ``TwoLayerNet``, ch07          ``dlfast.compat.nets``
``SimpleConvNet``, ch08
``DeepConvNet``
=================================== ============================================================

Each module's star import gives the names the book's module gives (``np`` included);
``from dlfast.compat import *`` gives all of them. ``python -m dlfast.compat SCRIPT.py [args]``
runs an unmodified script of the book with ``common`` and ``dataset`` resolved to these modules.

The book's semantics, kept here: float64 arrays unless ``dtype=np.float32`` is given to a net
(layers take the dtype of their parameters); weights from the global ``np.random`` in the book's
order (``np.random.seed`` reproduces a run); the loss ``-mean log(y_t + 1e-7)`` plus
``0.5*lambda*sum(W^2)``; batch norm with momentum 0.9, eps 1e-6 (the book's ``10e-7``), biased
running variance starting at 0, and the book's one-row batch (var 0); dropout ``x * mask`` in
training and ``x * (1 - ratio)`` in evaluation; AdaGrad/RMSprop/Adam with eps 1e-7 (Adam in its
folded form); optimisers that accept Python numbers and 0-d arrays as parameters; NaN and
infinity propagate as in NumPy with one ``NonFiniteWarning`` per object and kind, never an
exception; ``numerical_gradient`` with h = 1e-4 over any array, number or params dict;
``save_params``/``load_params`` of the book's pickles through a restricted unpickler
(``load_pickle``: arrays and numbers only, never code).

Differences (each module's docstring has its own): layer outputs are reusable buffers; dropout
masks come from dlfast's counter-based generator (seeded from ``np.random``), not
``np.random.rand``; ``MultiLayerNet`` fuses each activation into its Affine layer (no
'Activation_function' entries without batch norm). ``mean_squared_error`` is the former name of
``sum_squared_error`` here (the book has no ``mean_squared_error``).
"""
from __future__ import annotations

import numpy as np

from ._nonfinite import NonFiniteWarning
from ._pickle import SafeUnpickler, load_pickle, save_pickle
from .functions import (cross_entropy_error, identity_function, relu, relu_grad, sigmoid,
                        sigmoid_grad, softmax, softmax_loss, step_function, sum_squared_error)
from .gradient import numerical_gradient, numerical_gradient_2d
from .layers import (Affine, BatchNormalization, Convolution, Dropout, Pooling, Relu, Sigmoid,
                     SoftmaxWithLoss)
from .multi_layer_net import MultiLayerNet
from .multi_layer_net_extend import MultiLayerNetExtend
from .nets import DeepConvNet, SimpleConvNet, TwoLayerNet
from .optimizer import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop
from .trainer import Trainer
from .util import col2im, conv_output_size, im2col, shuffle_dataset, smooth_curve

mean_squared_error = sum_squared_error

__all__ = ["np",
           # functions
           "identity_function", "step_function", "sigmoid", "sigmoid_grad", "relu", "relu_grad",
           "softmax", "sum_squared_error", "cross_entropy_error", "softmax_loss",
           "mean_squared_error",
           # gradient, util
           "numerical_gradient", "numerical_gradient_2d", "smooth_curve", "shuffle_dataset",
           "conv_output_size", "im2col", "col2im",
           # layers
           "Relu", "Sigmoid", "Affine", "SoftmaxWithLoss", "Dropout", "BatchNormalization",
           "Convolution", "Pooling",
           # optimisers, nets, trainer
           "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "MultiLayerNet",
           "MultiLayerNetExtend", "TwoLayerNet", "SimpleConvNet", "DeepConvNet", "Trainer",
           # dlfast additions
           "NonFiniteWarning", "SafeUnpickler", "load_pickle", "save_pickle"]
