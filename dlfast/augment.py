"""Data augmentation of images: random shifts, small rotations, scaling and additive Gaussian noise.

``Augment(...)(x)`` returns a new randomly transformed copy of ``x`` (same shape and dtype) on
every call, from its own generator (``seed``). Use it as ``Trainer(..., transform=Augment(...))``:
each epoch then trains on a fresh augmented copy of the training set; validation data is never
transformed.

Per image n (independent draws), with c = ((H-1)/2, (W-1)/2) the image centre:

* shift ``d_n ~ U[-shift, shift]^2`` pixels (row, column);
* rotation ``a_n ~ U[-rotate, rotate]`` degrees;
* scale ``s_n ~ U[1 - scale, 1 + scale]``;
* output pixel p takes the input at ``q = R(-a_n) (p - c - d_n) / s_n + c`` (bilinear, 0 outside),
  i.e. the image is scaled by s_n and rotated by a_n about its centre, then moved by d_n;
* then ``+ noise * N(0, 1)`` per pixel (drawn in x's dtype), and clipped to
  ``clip = (lo, hi)`` when given.

The geometric transforms of up to 2048 images are one 2-D ``scipy.ndimage.map_coordinates``
call (the images side by side in a zero-padded canvas).
"""
from __future__ import annotations

import numpy as np

from ._validation import FLOAT_DTYPES, make_rng, positive_int, real, seed_value

__all__ = ["Augment", "DIGITS_DEFAULTS", "IMAGE_DEFAULTS", "image_shape", "for_images"]

#: ``dlfast train --augment`` on 8x8 digits in [0, 1]: mild, since one pixel is 1/8 of the image
#: (``dlfast experiment augment`` measures each transform alone on 200 training digits).
DIGITS_DEFAULTS = dict(shift=0.5, rotate=8.0, scale=0.05, noise=0.03, clip=(0.0, 1.0))
#: ``--augment`` on larger images in [0, 1] (e.g. 28x28 MNIST).
IMAGE_DEFAULTS = dict(shift=2.0, rotate=10.0, scale=0.1, noise=0.03, clip=(0.0, 1.0))


def image_shape(n_features):
    """(s, s) for square images of ``n_features`` pixels; ValueError when not a square."""
    s = int(round(n_features ** 0.5))
    if s * s != n_features:
        raise ValueError(f"cannot infer an image shape from {n_features} features (not a square); "
                         f"augmentation needs image data")
    return (s, s)


def for_images(n_features, seed=None):
    """``Augment`` with the ``--augment`` defaults for square images of ``n_features`` pixels:
    ``DIGITS_DEFAULTS`` up to 8x8, else ``IMAGE_DEFAULTS``."""
    shape = image_shape(n_features)
    return Augment(shape=shape, seed=seed, **(DIGITS_DEFAULTS if shape[0] <= 8 else IMAGE_DEFAULTS))


_CHUNK = 2048      # images per map_coordinates call (bounds the coordinate arrays' memory)


def _warp(img, d, a, s):
    """Bilinear warp of img (m, H, W) by the per-image shift d, angle a, scale s; 0 outside.
    The images sit in one zero-padded 2-D canvas; coordinates outside an image point at its pad."""
    from scipy.ndimage import map_coordinates
    m, h, w = img.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    py, px = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                         indexing="ij")
    # q = R(-a) (p - c - d) / s + c
    ry = py[None] - cy - d[:, 0, None, None]
    rx = px[None] - cx - d[:, 1, None, None]
    cos, sin = (np.cos(a) / s)[:, None, None], (np.sin(a) / s)[:, None, None]
    qy = cos * ry + sin * rx + cy
    qx = -sin * ry + cos * rx + cx
    outside = (qy < 0) | (qy > h - 1) | (qx < 0) | (qx > w - 1)
    canvas = np.zeros((m, h + 2, w + 2), img.dtype)
    canvas[:, 1:h + 1, 1:w + 1] = img
    base = (h + 2) * np.arange(m, dtype=np.float64)[:, None, None]
    qy = np.where(outside, base, qy + (base + 1.0))      # outside: the pad corner, exactly 0
    qx = np.where(outside, 0.0, qx + 1.0)
    out = np.empty_like(img)
    map_coordinates(canvas.reshape(m * (h + 2), w + 2), np.stack([qy, qx]), output=out,
                    order=1, mode="nearest")
    return out


class Augment:
    """Random image augmentation (see the module docstring for the formulas).

    ``shape``: (H, W) of the images when x is flattened (N, H*W); None for x of shape (N, H, W).
    ``shift`` (pixels, >= 0), ``rotate`` (degrees, 0..180), ``scale`` (relative, 0..1),
    ``noise`` (std, >= 0): 0 turns that transform off. ``clip``: (lo, hi) or None.
    ``seed``: the generator (int, or None for fresh entropy, recorded in ``self.seed``)."""

    def __init__(self, shape=None, shift=0.0, rotate=0.0, scale=0.0, noise=0.0, clip=None,
                 seed=None):
        if shape is not None:
            if not isinstance(shape, (tuple, list)) or len(shape) != 2:
                raise ValueError(f"shape must be (H, W), got {shape!r}")
            shape = (positive_int("shape[0]", shape[0]), positive_int("shape[1]", shape[1]))
        self.shape = shape
        self.shift = real("shift", shift, 0.0)
        self.rotate = real("rotate", rotate, 0.0, 180.0)
        self.scale = real("scale", scale, 0.0, 1.0, hi_open=True)
        self.noise = real("noise", noise, 0.0)
        if clip is not None:
            if not isinstance(clip, (tuple, list)) or len(clip) != 2:
                raise ValueError(f"clip must be (lo, hi) or None, got {clip!r}")
            lo, hi = real("clip[0]", clip[0]), real("clip[1]", clip[1])
            if not lo < hi:
                raise ValueError(f"clip must have lo < hi, got {clip!r}")
            clip = (lo, hi)
        self.clip = clip
        self.seed = seed_value(seed)
        self.rng = make_rng(self.seed)

    def _images(self, x):
        if not isinstance(x, np.ndarray) or x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"x must be a float32/float64 array, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim == 4 and x.shape[1] == 1:         # one-channel images (N, 1, H, W)
            x = x.reshape(x.shape[0], *x.shape[2:])
        if x.ndim == 3:
            if self.shape is not None and x.shape[1:] != self.shape:
                raise ValueError(f"x has images of shape {x.shape[1:]} but shape={self.shape}")
            return x
        if x.ndim == 2:
            if self.shape is None:
                raise ValueError(f"x of shape {x.shape} has no image shape: give shape=(H, W) "
                                 f"with H*W == {x.shape[1]}, or x of shape (N, H, W)")
            if self.shape[0] * self.shape[1] != x.shape[1]:
                raise ValueError(f"shape={self.shape} has {self.shape[0] * self.shape[1]} pixels "
                                 f"but x has {x.shape[1]} features")
            return x.reshape(x.shape[0], *self.shape)
        raise ValueError(f"x must be (N, H, W) or (N, 1, H, W) images, or (N, H*W) with shape=, "
                         f"got shape {x.shape}")

    def __call__(self, x):
        """A new augmented copy of x ((N, H, W), (N, 1, H, W), or (N, H*W) with ``shape``), same
        shape and dtype."""
        img = self._images(x)
        if not np.all(np.isfinite(img)):
            raise ValueError("x must be finite (found NaN or inf)")
        n, h, w = img.shape
        rng = self.rng
        geometric = self.shift > 0 or self.rotate > 0 or self.scale > 0
        if geometric and n:
            d = rng.uniform(-self.shift, self.shift, (n, 2)) if self.shift > 0 else np.zeros((n, 2))
            a = np.deg2rad(rng.uniform(-self.rotate, self.rotate, n)) if self.rotate > 0 else np.zeros(n)
            s = rng.uniform(1 - self.scale, 1 + self.scale, n) if self.scale > 0 else np.ones(n)
            out = np.empty_like(img)
            for lo in range(0, n, _CHUNK):
                hi = min(n, lo + _CHUNK)
                out[lo:hi] = _warp(img[lo:hi], d[lo:hi], a[lo:hi], s[lo:hi])
        else:
            out = img.copy()
        if self.noise > 0:
            z = rng.standard_normal(out.shape, dtype=out.dtype)
            z *= out.dtype.type(self.noise)
            out += z
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out.reshape(x.shape)

    def __repr__(self):
        return (f"Augment(shape={self.shape}, shift={self.shift}, rotate={self.rotate}, "
                f"scale={self.scale}, noise={self.noise}, clip={self.clip}, seed={self.seed})")
