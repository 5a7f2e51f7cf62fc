"""The book's ``common/util.py``: curve smoothing, shuffling and the im2col layout.

``im2col``/``col2im`` use the book's layout: one row per output position (n, i, j), columns in
(c, kh, kw) order, float64 as the book's. The compat ``Convolution`` layer does not need them
(it runs ``dlfast.kernels.conv2d_*``); they are here for code that calls them directly.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["np", "smooth_curve", "shuffle_dataset", "conv_output_size", "im2col", "col2im"]

_WINDOW = 11


def smooth_curve(x):
    """A loss curve smoothed by a normalised Kaiser window (11 points, beta 2) after mirroring
    x[1:11] before the start and x[-10:] after the end; len(x) points (x needs at least 11)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size < _WINDOW:
        raise ValueError(f"x must have at least {_WINDOW} points, got {x.size}")
    k = _WINDOW - 1
    padded = np.concatenate([x[k:0:-1], x, x[:-k - 1:-1]])
    w = np.kaiser(_WINDOW, 2)
    y = np.convolve(w / w.sum(), padded, mode="valid")
    return y[k // 2:len(y) - k // 2]


def shuffle_dataset(x, t):
    """x and t in the same random order (``np.random.permutation``, the global generator)."""
    x, t = np.asarray(x), np.asarray(t)
    if len(x) != len(t):
        raise ValueError(f"x and t must have the same number of rows, got {len(x)} and {len(t)}")
    order = np.random.permutation(x.shape[0])
    return x[order], t[order]


def conv_output_size(input_size, filter_size, stride=1, pad=0):
    """``(input_size + 2*pad - filter_size) / stride + 1`` (true division, as the book)."""
    return (input_size + 2 * pad - filter_size) / stride + 1


def _geometry(shape, filter_h, filter_w, stride, pad):
    if len(shape) != 4:
        raise ValueError(f"the input must be 4-D (N, C, H, W), got shape {tuple(shape)}")
    n, c, h, w = shape
    oh = (h + 2 * pad - filter_h) // stride + 1
    ow = (w + 2 * pad - filter_w) // stride + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"the filter ({filter_h}, {filter_w}) does not fit the padded input "
                         f"({h + 2 * pad}, {w + 2 * pad})")
    return n, c, h, w, oh, ow


def im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    """(N*OH*OW, C*filter_h*filter_w) float64: row (n, i, j) holds the zero-padded input window
    of output position (i, j) of image n, in (c, kh, kw) order."""
    x = np.asarray(input_data)
    n, c, _, _, oh, ow = _geometry(x.shape, filter_h, filter_w, stride, pad)
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(padded, (filter_h, filter_w), axis=(2, 3))
    windows = windows[:, :, :stride * oh:stride, :stride * ow:stride]     # (N, C, OH, OW, kh, kw)
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, -1).astype(np.float64)


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """The adjoint of ``im2col``: each row's window values are added back at their input
    positions (overlaps add), the padding dropped; float64 of ``input_shape``."""
    n, c, h, w, oh, ow = _geometry(tuple(input_shape), filter_h, filter_w, stride, pad)
    col = np.asarray(col)
    if col.shape != (n * oh * ow, c * filter_h * filter_w):
        raise ValueError(f"col must have shape {(n * oh * ow, c * filter_h * filter_w)} for "
                         f"input_shape {tuple(input_shape)}, got {col.shape}")
    taps = col.reshape(n, oh, ow, c, filter_h, filter_w)
    img = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    for kh in range(filter_h):
        for kw in range(filter_w):
            img[:, :, kh:kh + stride * (oh - 1) + 1:stride, kw:kw + stride * (ow - 1) + 1:stride] \
                += taps[:, :, :, :, kh, kw].transpose(0, 3, 1, 2)
    return img[:, :, pad:pad + h, pad:pad + w]
