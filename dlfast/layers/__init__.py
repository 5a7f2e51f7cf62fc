"""Layers: ``forward(x, train=True)`` / ``backward(dout)``, with ``params`` and ``grads`` dicts.

All numeric work goes through ``dlfast.kernels``; layers hold state, check arguments and own their
workspaces. Workspaces (outputs, gradients) are allocated once per batch shape (the two most recent
shapes are kept) and reused: **the array a forward or backward call returns is overwritten by the
layer's next call with the same batch shape** — copy it if you need to keep it.

Dense-like layers take x (N, features); ``Conv2D``, ``MaxPool2D``, ``AvgPool2D`` take images
(N, C, H, W) and ``Flatten`` turns them into rows; ``BatchNorm``, ``Dropout`` and the activation
layers (``Activation``, ``ReLU`` ...) take either (BatchNorm normalises per channel of images).

Common to every layer:

* ``dtype`` (float32 by default, or float64): inputs must have exactly this dtype (a mismatch is a
  ``TypeError``, never a silent cast). Parameter-free layers built without ``dtype=`` follow the
  float dtype of their input (float32 in, float32 out; float64 likewise) and adopt the dtype of
  the net they are put in; with an explicit ``dtype=`` they are strict too.
* ``params`` / ``grads``: dict name -> the layer's own arrays (in-place updates reach the layer).
* ``trainable`` (default True): when False, ``backward`` computes no parameter gradients.
* ``backward(dout, compute_dx=True)`` returns dL/dx (None when ``compute_dx=False``); it uses the
  state of the last ``forward``.
* ``state_dict()`` / ``load_state_dict(d)``: params, running statistics, random-stream state.
* ``config()``: the constructor arguments; ``from_config(cfg)`` rebuilds a layer from it.
* ``check_finite`` (default True): x and dout holding NaN or infinity are a ``ValueError``. Nets
  check their input once and turn this off for the layers inside them.

Losses (``SoftmaxCrossEntropy``, ``MSELoss``, ``MAELoss``, ``HuberLoss``, ``SigmoidBCELoss``,
base ``Loss``; ``dlfast.layers.loss.get(name)``) end a net: ``forward(y, t, sample_weight=None)``
returns the loss, ``backward(dout=1.0)`` its gradient.

Stochastic layers (``Dropout``, ``RReLU``) draw from the counter-based generator with their ``seed``
and a ``counter`` advanced by the number of values drawn per call; ``hold_rng = True`` keeps the
counter still so repeated forwards draw identical numbers (used by gradient checks).
"""
from __future__ import annotations

from ._base import _DEFAULT_ALPHA, Layer, _init_spec, activation_code
from .activations import (ELU, Activation, Identity, LeakyReLU, PReLU, ReLU, RReLU, Sigmoid,
                          Softmax, Tanh)
from .batchnorm import BatchNorm
from .conv import AvgPool2D, Conv2D, Flatten, MaxPool2D
from .dense import Dense, Maxout
from .dropout import Dropout
from .loss import HuberLoss, Loss, MAELoss, MSELoss, SigmoidBCELoss, SoftmaxCrossEntropy

__all__ = ["Layer", "Dense", "Activation", "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "ELU",
           "Identity", "PReLU", "RReLU", "Maxout", "Softmax", "BatchNorm", "Dropout",
           "Loss", "SoftmaxCrossEntropy", "MSELoss", "MAELoss", "HuberLoss", "SigmoidBCELoss",
           "Conv2D", "MaxPool2D", "AvgPool2D", "Flatten",
           "activation_code", "from_config"]

_CLASSES = {c.__name__: c for c in (Dense, Maxout, Activation, Identity, ReLU, Sigmoid, Tanh,
                                    LeakyReLU, ELU, PReLU, RReLU, Softmax, BatchNorm, Dropout,
                                    SoftmaxCrossEntropy, MSELoss, MAELoss, HuberLoss,
                                    SigmoidBCELoss, Conv2D, MaxPool2D, AvgPool2D, Flatten)}


def from_config(cfg):
    """Rebuild a layer from ``layer.config()`` (its parameters start fresh: load a state_dict)."""
    if not isinstance(cfg, dict) or cfg.get("type") not in _CLASSES:
        raise ValueError(f"layer config must be a dict with 'type' in {sorted(_CLASSES)}, got {cfg!r}")
    kw = {k: v for k, v in cfg.items() if k != "type"}
    return _CLASSES[cfg["type"]](**kw)
