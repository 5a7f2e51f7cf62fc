"""Convolution and pooling over NCHW images (``Conv2D``, ``MaxPool2D``, ``AvgPool2D``) and
``Flatten``, the bridge to ``Dense``.

Shapes: x (N, C, H, W); a window (KH, KW) with stride (sh, sw) and zero padding (ph, pw) gives
``OH = (H + 2*ph - KH) // sh + 1``, ``OW = (W + 2*pw - KW) // sw + 1`` (the last rows and columns
that do not fill a window are dropped). ``kernel_size``, ``stride`` and ``padding`` are an int
(both axes) or a pair (h, w).
"""
from __future__ import annotations

import math

import numpy as np

from .. import init as _init
from .. import kernels
from .._validation import make_rng, positive_int
from ._base import Layer, Pair, _init_spec

__all__ = ["Conv2D", "MaxPool2D", "AvgPool2D", "Flatten"]


def _compact(pair):
    """A pair (h, w) as an int when h == w (for configs and reprs), else a list."""
    return pair[0] if pair[0] == pair[1] else list(pair)


def _image_input(layer, x):
    """x checked as the layer's 4-D input (N, C, H, W)."""
    if isinstance(x, np.ndarray) and x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W) for {type(layer).__name__}, got shape "
                         f"{x.shape}")
    return layer._check_x(x, ndim=4)


def _out_hw(layer, x_shape, kernel, stride, padding):
    """(OH, OW) of a window over x of x_shape, or a ValueError naming the arguments."""
    if len(x_shape) != 4:
        raise ValueError(f"{type(layer).__name__} needs inputs (N, C, H, W), got shape "
                         f"{tuple(x_shape)}")
    h, w = x_shape[2:]
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ValueError(f"{type(layer).__name__}: kernel_size {tuple(kernel)} is larger than the "
                         f"padded input ({h + 2 * ph}, {w + 2 * pw}) of x {tuple(x_shape)} with "
                         f"padding {tuple(padding)}")
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


class Conv2D(Layer):
    """2-D convolution (cross-correlation, no kernel flip) of x (N, C, H, W) with W (F, C, KH, KW)
    and b (F,): ``out[n, f, i, j] = b[f] + sum_{c,kh,kw} W[f, c, kh, kw] * xp[n, c, i*sh + kh,
    j*sw + kw]``, xp = x zero-padded; out (N, F, OH, OW).

    ``weight_init``: a name of ``dlfast.init``, a float (normal std) or a callable of the shape
    (F, C, KH, KW); fans: fan_in = C*KH*KW, fan_out = F*KH*KW. Biases start at 0.
    ``rng`` (or ``seed``): Generator or int.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 weight_init="he", dtype=None, rng=None, seed=None, trainable=True):
        super().__init__(dtype, trainable)
        self.in_channels = positive_int("in_channels", in_channels)
        self.out_channels = positive_int("out_channels", out_channels)
        self.kernel_size = kernels._pair("kernel_size", kernel_size, 1)
        self.stride = kernels._pair("stride", stride, 1)
        self.padding = kernels._pair("padding", padding, 0)
        if rng is not None and seed is not None:
            raise ValueError("give rng or seed, not both")
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        self.weight_init = _init_spec(weight_init)
        W = _init.get(weight_init)(shape, rng=make_rng(seed if rng is None else rng),
                                   dtype=self.dtype)
        if np.shape(W) != shape:
            raise ValueError(f"weight_init returned shape {np.shape(W)}, expected {shape}")
        self.params["W"] = np.ascontiguousarray(W, dtype=self.dtype)
        if bias:
            self.params["b"] = np.zeros(self.out_channels, self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def _shapes(self, x_shape):
        """(out shape, col shape) for x of x_shape."""
        if len(x_shape) == 4 and x_shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels (axis 1) for "
                             f"Conv2D(in_channels={self.in_channels}), got shape {tuple(x_shape)}")
        oh, ow = _out_hw(self, x_shape, self.kernel_size, self.stride, self.padding)
        n = x_shape[0]
        return ((n, self.out_channels, oh, ow),
                (n, self.in_channels * math.prod(self.kernel_size), oh * ow))

    def forward(self, x, train=True):
        x = _image_input(self, x)
        oshape, cshape = self._shapes(x.shape)
        out, col = self._buf("out", oshape), self._buf("col", cshape)
        kernels.conv2d_forward(x, self.params["W"], self.params.get("b"), out, col, self.stride,
                               self.padding)
        self._fwd = {"x": x, "out": out}           # col: a workspace, not a record
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        x = self._fwd["x"]
        cshape = self._shapes(x.shape)[1]
        col = self._buf("col", cshape)
        dx = self._buf("dx", x.shape) if compute_dx else None
        dcol = self._buf("dcol", cshape) if compute_dx else None
        kernels.conv2d_backward(dout, x, self.params["W"], col, dcol, dx, self._grad("W"),
                                self._grad("b") if "b" in self.params else None, self.stride,
                                self.padding)
        return dx

    def kernel_pair(self, x_shape, need_dx):
        oshape, cshape = self._shapes(x_shape)
        rec = {"x": None, "out": self._buf("out", oshape)}
        return Pair("conv2d", dict(
            W=self.params["W"], b=self.params.get("b"), out=rec["out"],
            col=self._buf("col", cshape),
            dcol=self._buf("dcol", cshape) if need_dx else None,
            dx=self._buf("dx", tuple(x_shape)) if need_dx else None, dW=self._grad("W"),
            db=self._grad("b") if "b" in self.params else None, dz=None, stride=self.stride,
            pad=self.padding, activation="identity", alpha=0.0), rec)

    def _config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": _compact(self.kernel_size), "stride": _compact(self.stride),
                "padding": _compact(self.padding), "bias": "b" in self.params,
                "weight_init": self.weight_init, "trainable": self.trainable}


class _Pool2D(Layer):
    """A window pooling of x (N, C, H, W) per channel; stride defaults to the window,
    0 <= padding <= kernel_size // 2."""

    kind = None

    def __init__(self, kernel_size, stride=None, padding=0, dtype=None):
        super().__init__(dtype)
        self.kernel_size = kernels._pair("kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else kernels._pair("stride", stride, 1)
        self.padding = kernels._pair("padding", padding, 0)
        half = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
        if self.padding[0] > half[0] or self.padding[1] > half[1]:
            raise ValueError(f"padding must be at most half the window (kernel_size // 2 = "
                             f"{half}), got padding {self.padding} for kernel_size "
                             f"{self.kernel_size}")

    def _out_shape(self, x_shape):
        if len(x_shape) == 4 and min(x_shape[2:]) < 1:
            raise ValueError(f"x must have H, W >= 1 for {type(self).__name__}, got shape "
                             f"{tuple(x_shape)}")
        return tuple(x_shape[:2]) + _out_hw(self, x_shape, self.kernel_size, self.stride,
                                            self.padding)

    def _settings(self):
        return dict(kernel=self.kernel_size, stride=self.stride, pad=self.padding)

    def _config(self):
        return {"kernel_size": _compact(self.kernel_size), "stride": _compact(self.stride),
                "padding": _compact(self.padding)}


class MaxPool2D(_Pool2D):
    """``out[n, c, i, j] = max`` of x over the window rows ``i*sh - ph + [0, KH)``, columns
    ``j*sw - pw + [0, KW)`` (padding never wins); the gradient goes to the window's first maximum
    in row-major order (``argmax``, the flat index h*W + w in x[n, c])."""

    def forward(self, x, train=True):
        x = _image_input(self, x)
        oshape = self._out_shape(x.shape)
        out, argmax = self._buf("out", oshape), self._buf("argmax", oshape, np.int64)
        kernels.maxpool2d_forward(x, out, argmax, **self._settings())
        self._fwd = {"x": x, "out": out, "argmax": argmax}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        if not compute_dx:
            return None
        dx = self._buf("dx", self._fwd["x"].shape)
        kernels.maxpool2d_backward(dout, self._fwd["argmax"], dx, **self._settings())
        return dx

    def kernel_pair(self, x_shape, need_dx):
        oshape = self._out_shape(x_shape)
        rec = {"x": None, "out": self._buf("out", oshape),
               "argmax": self._buf("argmax", oshape, np.int64)}
        return Pair("maxpool2d", dict(out=rec["out"], argmax=rec["argmax"],
                                      dx=self._buf("dx", tuple(x_shape)) if need_dx else None,
                                      activation="identity", alpha=0.0, **self._settings()),
                    rec)


class AvgPool2D(_Pool2D):
    """``out[n, c, i, j] = (sum of the window's cells inside x) / d``, d = KH*KW
    (``count_include_pad=True``: padded zeros count, as PyTorch's default) or the number of the
    window's cells inside x."""

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True, dtype=None):
        super().__init__(kernel_size, stride, padding, dtype)
        self.count_include_pad = bool(count_include_pad)

    def _settings(self):
        return dict(super()._settings(), count_include_pad=self.count_include_pad)

    def forward(self, x, train=True):
        x = _image_input(self, x)
        out = self._buf("out", self._out_shape(x.shape))
        kernels.avgpool2d_forward(x, out, **self._settings())
        self._fwd = {"x": x, "out": out}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        if not compute_dx:
            return None
        dx = self._buf("dx", self._fwd["x"].shape)
        kernels.avgpool2d_backward(dout, dx, **self._settings())
        return dx

    def kernel_pair(self, x_shape, need_dx):
        rec = {"x": None, "out": self._buf("out", self._out_shape(x_shape))}
        return Pair("avgpool2d", dict(out=rec["out"],
                                      dx=self._buf("dx", tuple(x_shape)) if need_dx else None,
                                      **self._settings()), rec)

    def _config(self):
        return dict(super()._config(), count_include_pad=self.count_include_pad)


class Flatten(Layer):
    """``out = x.reshape(N, -1)``: (N, C, H, W) -> (N, C*H*W) (any x of 2 or more axes);
    ``dx = dout.reshape(x.shape)``. forward and backward return views (no copy)."""

    def forward(self, x, train=True):
        if isinstance(x, np.ndarray) and x.ndim < 2:
            raise ValueError(f"x must have at least 2 axes (N, ...) for Flatten, got shape "
                             f"{x.shape}")
        x = self._check_x(x, ndim=None)
        out = x.reshape(x.shape[0], -1)
        self._fwd = {"x": x, "out": out}
        return out

    def backward(self, dout, compute_dx=True):
        dout = self._check_dout(dout)
        return dout.reshape(self._fwd["x"].shape) if compute_dx else None

    def kernel_pair(self, x_shape, need_dx):
        if len(x_shape) < 2:
            raise ValueError(f"Flatten needs inputs (N, ...) of 2 or more axes, got shape "
                             f"{tuple(x_shape)}")
        out = self._buf("out", (x_shape[0], math.prod(x_shape[1:])))
        return Pair("flatten", dict(out=out, dx=self._buf("dx", tuple(x_shape)) if need_dx
                                    else None), {"x": None, "out": out})
