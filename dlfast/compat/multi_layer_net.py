"""The book's ``common/multi_layer_net.py``: ``MultiLayerNet`` (with the names the book's module
also provides: its star import gives them too)."""
from __future__ import annotations

import os  # noqa: F401  (the book's module provides them)
import sys  # noqa: F401
from collections import OrderedDict  # noqa: F401

import numpy as np

from ._mlp import MLPNet
from .gradient import numerical_gradient  # noqa: F401
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layers_all

__all__ = ["sys", "os", "OrderedDict", "numerical_gradient", "MultiLayerNet", *_layers_all]


class MultiLayerNet(MLPNet):
    """The book's fully connected net: Affine -> activation per hidden size, a last Affine,
    softmax with loss; ``weight_decay_lambda`` adds ``0.5*lambda*sum(W^2)`` to the loss and
    ``lambda*W`` to the gradients. Runs on ``dlfast.net.MLP`` (``net``): each ``gradient`` is one
    step of dlfast's training engine.

    ``params`` (W1, b1, ...), ``layers`` (OrderedDict 'Affine1', ...: the MLP's layers with the
    book's attribute names; the activation is fused into its Affine layer, so there are no
    'Activation_function' entries), ``last_layer`` (a ``SoftmaxWithLoss``, used by ``loss``).
    Weights: ``std * np.random.randn(fan_in, fan_out)`` from the global generator, std from
    ``weight_init_std`` ('relu'/'he': sqrt(2/fan_in), 'sigmoid'/'xavier': sqrt(1/fan_in), or a
    number); biases 0. ``dtype``: float64 (the book's) or float32."""

    def __init__(self, input_size, hidden_size_list, output_size, activation="relu",
                 weight_init_std="relu", weight_decay_lambda=0, *, dtype=np.float64):
        self._build(input_size, hidden_size_list, output_size, activation, weight_init_std,
                    weight_decay_lambda, False, 0.5, False, dtype)
