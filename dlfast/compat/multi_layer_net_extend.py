"""The book's ``common/multi_layer_net_extend.py``: ``MultiLayerNetExtend`` (with the names the
book's module also provides: its star import gives them too)."""
from __future__ import annotations

import os  # noqa: F401  (the book's module provides them)
import sys  # noqa: F401
from collections import OrderedDict  # noqa: F401

import numpy as np

from ._mlp import MLPNet
from .gradient import numerical_gradient  # noqa: F401
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layers_all

__all__ = ["sys", "os", "OrderedDict", "numerical_gradient", "MultiLayerNetExtend", *_layers_all]


class MultiLayerNetExtend(MLPNet):
    """``MultiLayerNet`` with the book's batch norm (``use_batchnorm``) and dropout
    (``use_dropout``, ``dropout_ration``): Affine -> [BatchNorm] -> Activation_function ->
    [Dropout] per hidden layer; params add ``gamma{k}``, ``beta{k}``.

    Batch norm: ``y = gamma*(x-mu)/sqrt(var+1e-6)+beta`` with the biased batch var;
    ``running = 0.9*running + 0.1*batch`` (biased var), starting at 0; a one-row batch gives
    var = 0 (out = beta, dx = 0), as the book's. Dropout: train ``x * mask`` (keep probability
    1 - dropout_ration), eval ``x * (1 - dropout_ration)``; its stream is seeded from
    ``np.random`` when the net is made (masks held still by ``numerical_gradient``)."""

    def __init__(self, input_size, hidden_size_list, output_size, activation="relu",
                 weight_init_std="relu", weight_decay_lambda=0, use_dropout=False,
                 dropout_ration=0.5, use_batchnorm=False, *, dtype=np.float64):
        self._build(input_size, hidden_size_list, output_size, activation, weight_init_std,
                    weight_decay_lambda, use_dropout, dropout_ration, use_batchnorm, dtype)
