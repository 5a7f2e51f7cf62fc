"""The NumPy backend: plain, readable NumPy. It is the test oracle for the compiled backend.

Arguments arrive validated by ``dlfast.kernels`` (dtypes agree, shapes fit, outputs are
C-contiguous, writeable and do not overlap inputs). See ``dlfast.kernels`` for the formulas.
"""
import bisect
import math
import threading
from time import perf_counter as _clock

import numpy as np

NAME = "numpy"

# ----------------------------------------------------------------------------- random numbers
_M64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64_int(z):
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform01(seed, counter, n):
    """u_i = (mix64(mix64(seed) + (counter + i + 1) * 0x9E3779B97F4A7C15) >> 11) * 2^-53, float64."""
    key = np.uint64(_mix64_int(seed))
    i = np.arange(n, dtype=np.uint64) + np.uint64((counter + 1) & _M64)
    return (_mix64(key + i * _GOLDEN) >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def _hash32(h, k0, k1):
    """hash32 of uint32 h with key K = k1 * 2^32 + k0 (``_random.pyx``'s dlf_h32), uint32."""
    u = np.uint32
    h = h + u(k0)
    h ^= h >> u(17)
    h *= u(0xED5AD4BB)
    h ^= u(k1)
    h ^= h >> u(11)
    h *= u(0xAC4C1B51)
    h ^= h >> u(15)
    h *= u(0x31848BAB)
    return h ^ (h >> u(14))


def bits32(seed, counter, n):
    """v_i = hash32(j mod 2^32, mix64(mix64(seed) + (j >> 32) * 0x9E3779B97F4A7C15)),
    j = counter + i + 1 (mod 2^64): the dropout stream, uint32."""
    key, j0 = _mix64_int(seed), (counter + 1) & _M64
    out = np.empty(n, np.uint32)
    i = 0
    while i < n:                      # runs of fixed j >> 32
        j = (j0 + i) & _M64
        lo = j & 0xFFFFFFFF
        run = min(n - i, (1 << 32) - lo)
        k = _mix64_int(key + (j >> 32) * 0x9E3779B97F4A7C15)
        ls = (np.arange(run, dtype=np.uint64) + np.uint64(lo)).astype(np.uint32)
        out[i:i + run] = _hash32(ls, k & 0xFFFFFFFF, k >> 32)
        i += run
    return out


def dropout_mask(mask, p, seed, counter):
    thr = math.ceil(p * 2.0 ** 32)
    if thr >= 1 << 32:
        mask[...] = 0
    else:
        mask.reshape(-1)[...] = bits32(seed, counter, mask.size) >= np.uint32(thr)


def dropout_apply(x, mask, scale, out):
    if mask is None:
        np.multiply(x, out.dtype.type(scale), out=out)
    else:
        np.multiply(x, mask, out=out)
        out *= out.dtype.type(scale)


def random_uniform(out, low, high, seed, counter):
    u = uniform01(seed, counter, out.size)
    out.reshape(-1)[...] = (low + (high - low) * u).astype(out.dtype)


def bernoulli_sample(probs, out, seed, counter):
    u = uniform01(seed, counter, out.size)
    out.reshape(-1)[...] = u < probs.reshape(-1).astype(np.float64)


# ----------------------------------------------------------------------------- RBM
def rbm_cd_update(v0, h0, vk, hk, W, bv, bh, lr, wd):
    n = v0.shape[0]
    v0d, h0d, vkd, hkd = (a.astype(np.float64) for a in (v0, h0, vk, hk))
    dW = (v0d.T @ h0d - vkd.T @ hkd) / n
    W64 = W.astype(np.float64)
    W[...] = W64 + lr * (dW - wd * W64)
    d = v0d - vkd
    bv[...] = bv.astype(np.float64) + lr * (d.sum(axis=0) / n)
    bh[...] = bh.astype(np.float64) + lr * ((h0d - hkd).sum(axis=0) / n)
    return float(np.sum(d * d))


# ----------------------------------------------------------------------------- activations
def _act(z, out, activation, alpha):
    """out = act(z); out may be z."""
    if activation == "identity":
        if out is not z:
            out[...] = z
    elif activation == "relu":
        np.maximum(z, 0, out=out)
    elif activation == "leaky_relu":
        np.multiply(z, np.where(z > 0, 1, alpha).astype(z.dtype), out=out)
    elif activation == "elu":
        out[...] = np.where(z > 0, z, z.dtype.type(alpha) * np.expm1(np.minimum(z, 0)))
    elif activation == "sigmoid":
        e = np.exp(-np.abs(z))
        out[...] = np.where(z >= 0, 1 / (1 + e), e / (1 + e))
    elif activation == "tanh":
        np.tanh(z, out=out)
    else:  # validated upstream
        raise ValueError(activation)


def _act_grad(dout, out, dz, activation, alpha):
    """dz = dout * act'(z), written from the activation's output y = act(z)."""
    if activation == "identity":
        dz[...] = dout
    elif activation == "relu":
        np.multiply(dout, out > 0, out=dz)
    elif activation == "leaky_relu":
        np.multiply(dout, np.where(out > 0, 1, alpha).astype(out.dtype), out=dz)
    elif activation == "elu":
        np.multiply(dout, np.where(out > 0, 1, out + out.dtype.type(alpha)), out=dz)
    elif activation == "sigmoid":
        np.multiply(dout, out * (1 - out), out=dz)
    elif activation == "tanh":
        np.multiply(dout, 1 - out * out, out=dz)
    else:
        raise ValueError(activation)


def activation_forward(x, out, activation, alpha):
    _act(x, out, activation, alpha)


def activation_backward(dout, out, dx, activation, alpha):
    _act_grad(dout, out, dx, activation, alpha)


# ----------------------------------------------------------------------------- dense layer
def dense_forward(x, W, b, out, activation, alpha):
    np.matmul(x, W, out=out)
    if b is not None:
        out += b
    _act(out, out, activation, alpha)


def dense_backward(dout, x, W, out, dz, dx, dW, db, activation, alpha):
    _act_grad(dout, out, dz, activation, alpha)
    if dW is not None:
        np.matmul(x.T, dz, out=dW)
    if db is not None:
        np.sum(dz, axis=0, out=db)
    if dx is not None:
        np.matmul(dz, W.T, out=dx)


# ----------------------------------------------------------------------------- PReLU, Maxout
def prelu_forward(x, slope, out):
    out[...] = np.where(x > 0, x, slope * x)


def prelu_backward(dout, x, slope, dx, dslope):
    if dx is not None:
        dx[...] = np.where(x > 0, dout, slope * dout)
    if dslope is not None:
        contrib = np.where(x > 0, 0, dout * x)
        if dslope.shape == x.shape:
            dslope[...] = contrib
        elif dslope.size == 1:
            dslope[...] = contrib.sum(dtype=np.float64)
        else:
            dslope[...] = contrib.sum(axis=0, dtype=np.float64)


def maxout_forward(z, out, argmax):
    n, o = out.shape
    zz = z.reshape(n, o, z.shape[1] // o)     # (not -1: ambiguous for an empty batch)
    argmax[...] = np.argmax(zz, axis=2)
    out[...] = np.take_along_axis(zz, argmax[..., None], axis=2)[..., 0]


def maxout_backward(dout, argmax, dz):
    n, o = dout.shape
    dzz = dz.reshape(n, o, dz.shape[1] // o)
    dzz[...] = 0
    np.put_along_axis(dzz, argmax[..., None], dout[..., None], axis=2)


# ----------------------------------------------------------------------------- softmax
def softmax_forward(x, out):
    m = x.max(axis=1, keepdims=True)
    np.subtract(x, m, out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)


def softmax_backward(dout, y, dx):
    s = np.sum(dout * y, axis=1, keepdims=True)
    np.multiply(y, dout - s, out=dx)


def _check_labels(labels, c):
    """ValueError unless every label lies in [0, c) (as the compiled kernels check)."""
    bad = np.flatnonzero((labels < 0) | (labels >= c))
    if bad.size:
        r = int(bad[0])
        raise ValueError(f"labels must lie in [0, {c}), got {labels[r]} in row {r}")


def softmax_xent_forward(logits, labels, probs, w=None):
    n = logits.shape[0]
    _check_labels(labels, logits.shape[1])
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    probs[...] = e / s
    rows = np.arange(n)
    terms = np.log(s[:, 0]) + m[:, 0] - x[rows, labels]
    if w is None:
        return float(np.mean(terms))
    return float(np.sum(w * terms) / np.sum(w))


def softmax_xent_backward(probs, labels, dlogits, scale, w=None):
    n = probs.shape[0]
    _check_labels(labels, probs.shape[1])
    dlogits[...] = probs
    dlogits[np.arange(n), labels] -= 1
    if w is None:
        dlogits *= dlogits.dtype.type(scale / n)
    else:
        dlogits *= (scale * w / np.sum(w)).astype(dlogits.dtype)[:, None]


# ----------------------------------------------------------------------------- value losses
# dlfast.kernels documents the formulas: per-row losses l_n in float64, L = sum w l / D.
def _check_values(kind, t):
    bad = np.flatnonzero(~np.isfinite(t).all(axis=1))
    if bad.size:
        raise ValueError(f"t must be finite, got {t[bad[0]].tolist()} in row {bad[0]}")
    if kind == "sigmoid_bce":
        bad = np.flatnonzero(~((t >= 0) & (t <= 1)).all(axis=1))
        if bad.size:
            raise ValueError(f"t (sigmoid_bce targets) must lie in [0, 1], got "
                             f"{t[bad[0]].tolist()} in row {bad[0]}")


def _value_forward(kind, y, t, w, rows, delta=1.0, half=False, reduction="mean"):
    _check_values(kind, t)
    n, m = y.shape
    yd, td = y.astype(np.float64), t.astype(np.float64)
    if kind == "sigmoid_bce":
        e = np.maximum(yd, 0.0) - yd * td + np.log1p(np.exp(-np.abs(yd)))
    else:
        d = yd - td
        if kind == "mse":
            e = d * d
        elif kind == "mae":
            e = np.abs(d)
        else:
            a = np.abs(d)
            e = np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))
    s = e.sum(axis=1)
    l = 0.5 * s if half else s / m
    if rows is not None:
        rows[...] = l
    total = float(np.sum(l if w is None else w * l))
    if reduction == "sum":
        return total
    return total / (n if w is None else float(np.sum(w)))


def _value_backward(kind, y, t, w, dy, scale, delta=1.0, half=False, reduction="mean"):
    _check_values(kind, t)
    n, m = y.shape
    yd, td = y.astype(np.float64), t.astype(np.float64)
    if kind == "sigmoid_bce":
        e = np.exp(-np.abs(yd))
        q = e / (1.0 + e)
        g = np.where(yd >= 0, (1.0 - td) - q, q - td)
    else:
        d = yd - td
        g = {"mse": d, "mae": np.sign(d)}.get(kind)
        if g is None:
            g = np.clip(d, -delta, delta)
    c = 1.0 if half else (2.0 / m if kind == "mse" else 1.0 / m)
    den = 1.0 if reduction == "sum" else (n if w is None else float(np.sum(w)))
    k = (scale / den if w is None else scale * w / den) * c
    dy[...] = (np.reshape(k, (-1, 1)) * g).astype(dy.dtype)


def mse_forward(y, t, w, rows, half, reduction):
    return _value_forward("mse", y, t, w, rows, half=half, reduction=reduction)


def mse_backward(y, t, w, dy, scale, half, reduction):
    _value_backward("mse", y, t, w, dy, scale, half=half, reduction=reduction)


def mae_forward(y, t, w, rows, reduction):
    return _value_forward("mae", y, t, w, rows, reduction=reduction)


def mae_backward(y, t, w, dy, scale, reduction):
    _value_backward("mae", y, t, w, dy, scale, reduction=reduction)


def huber_forward(y, t, w, rows, delta, reduction):
    return _value_forward("huber", y, t, w, rows, delta=delta, reduction=reduction)


def huber_backward(y, t, w, dy, scale, delta, reduction):
    _value_backward("huber", y, t, w, dy, scale, delta=delta, reduction=reduction)


def sigmoid_bce_forward(z, t, w, rows, reduction):
    return _value_forward("sigmoid_bce", z, t, w, rows, reduction=reduction)


def sigmoid_bce_backward(z, t, w, dz, scale, reduction):
    _value_backward("sigmoid_bce", z, t, w, dz, scale, reduction=reduction)


# ----------------------------------------------------------------------------- batch norm
# x (N, F), or (N, C, *S) viewed as (N, C, S): the statistics of channel j over axes 0 and 2.
def _bn_view(a):
    """(a viewed as (N, C, S), the reduction axes) for an array of ndim > 2, else (a, 0)."""
    if a is None or a.ndim == 2:
        return a, 0
    return a.reshape(a.shape[0], a.shape[1], math.prod(a.shape[2:])), (0, 2)


def _bn_vec(v, axes):
    """A per-feature vector broadcast against the (N, C, S) view when axes == (0, 2)."""
    return v if axes == 0 else v[:, None]


def batchnorm_stats(x, mean, var):
    x, axes = _bn_view(x)
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=axes)
    mean[...] = mu
    var[...] = ((x64 - _bn_vec(mu, axes)) ** 2).mean(axis=axes)


def batchnorm_forward_train(x, gamma, beta, out, xhat, mean, invstd, running_mean, running_var,
                            momentum, eps, unbiased):
    (x, axes), (out, _), (xhat, _) = _bn_view(x), _bn_view(out), _bn_view(xhat)
    m = x.shape[0] * (x.shape[2] if axes else 1)
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=axes)
    var = ((x64 - _bn_vec(mu, axes)) ** 2).mean(axis=axes)
    inv = 1.0 / np.sqrt(var + eps)
    mean[...] = mu
    invstd[...] = inv
    xhat[...] = (x64 - _bn_vec(mu, axes)) * _bn_vec(inv, axes)
    np.multiply(_bn_vec(gamma, axes), xhat, out=out)
    out += _bn_vec(beta, axes)
    if running_mean is not None:
        running_mean[...] = (1 - momentum) * running_mean + momentum * mu
    if running_var is not None:
        v = var * (m / (m - 1)) if unbiased else var
        running_var[...] = (1 - momentum) * running_var + momentum * v


def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, out, xhat, invstd):
    (x, axes), (out, _), (xhat, _) = _bn_view(x), _bn_view(out), _bn_view(xhat)
    inv = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    invstd[...] = inv
    xhat[...] = (x.astype(np.float64) - _bn_vec(running_mean, axes)) * _bn_vec(inv, axes)
    np.multiply(_bn_vec(gamma, axes), xhat, out=out)
    out += _bn_vec(beta, axes)


def batchnorm_backward(dout, xhat, gamma, invstd, dx, dgamma, dbeta, batch_stats):
    (dout, axes), (xhat, _), (dx, _) = _bn_view(dout), _bn_view(xhat), _bn_view(dx)
    d64 = dout.astype(np.float64)
    sb = d64.sum(axis=axes)
    sg = (d64 * xhat).sum(axis=axes)
    if dbeta is not None:
        dbeta[...] = sb
    if dgamma is not None:
        dgamma[...] = sg
    if dx is not None:
        m = dout.shape[0] * (dout.shape[2] if axes else 1)
        k = _bn_vec(gamma.astype(np.float64) * invstd, axes)
        if batch_stats:
            dx[...] = k / m * (m * d64 - _bn_vec(sb, axes) - xhat * _bn_vec(sg, axes))
        else:
            dx[...] = k * d64


# ----------------------------------------------------------------------------- regularisation
def sumsq(x):
    x64 = x.astype(np.float64).ravel()
    with np.errstate(over="ignore"):        # an overflow to inf is the answer (callers check it)
        return float(np.dot(x64, x64))


def all_finite(x):
    return bool(np.isfinite(x).all())


def penalty(w, l1, l2):
    w64 = w.astype(np.float64).ravel()
    return float(0.5 * l2 * np.dot(w64, w64) + l1 * np.abs(w64).sum())


def penalty_grad(w, g, l1, l2):
    if l2:
        g += g.dtype.type(l2) * w
    if l1:
        g += g.dtype.type(l1) * np.sign(w)


def max_norm(W, c):
    norms = np.sqrt(np.sum(W.astype(np.float64) ** 2, axis=0))
    over = norms > c
    if over.any():
        W[:, over] *= (c / norms[over]).astype(W.dtype)


# ----------------------------------------------------------------------------- optimisers
def _effective_grad(w, g, wd, grad_scale, clip_value):
    """g' = clip(grad_scale * g, -clip_value, clip_value) + wd * w (a new array)."""
    t = w.dtype.type
    ge = g.astype(w.dtype, copy=True)         # an array even for 0-d g (g * s would be a scalar)
    if grad_scale != 1.0:
        ge *= t(grad_scale)
    if clip_value != np.inf:
        np.clip(ge, t(-clip_value), t(clip_value), out=ge)
    if wd:
        ge += t(wd) * w
    return ge


def sgd_update(w, g, lr, wd, grad_scale, clip_value):
    ge = _effective_grad(w, g, wd, grad_scale, clip_value)
    w -= w.dtype.type(lr) * ge


def momentum_update(w, g, v, lr, mu, wd, grad_scale, clip_value):
    t = w.dtype.type
    ge = _effective_grad(w, g, wd, grad_scale, clip_value)
    v *= t(mu)
    v -= t(lr) * ge
    w += v


def nesterov_update(w, g, v, lr, mu, wd, grad_scale, clip_value):
    t = w.dtype.type
    ge = _effective_grad(w, g, wd, grad_scale, clip_value)
    v *= t(mu)
    v -= t(lr) * ge
    w += t(mu) * v - t(lr) * ge


def adagrad_update(w, g, h, lr, eps, eps_inside, wd, grad_scale, clip_value):
    t = w.dtype.type
    ge = _effective_grad(w, g, wd, grad_scale, clip_value)
    h += ge * ge
    denom = np.sqrt(h + t(eps)) if eps_inside else np.sqrt(h) + t(eps)
    w -= t(lr) * ge / denom


def rmsprop_update(w, g, h, lr, rho, eps, eps_inside, wd, grad_scale, clip_value):
    t = w.dtype.type
    ge = _effective_grad(w, g, wd, grad_scale, clip_value)
    h *= t(rho)
    h += t(1 - rho) * ge * ge
    denom = np.sqrt(h + t(eps)) if eps_inside else np.sqrt(h) + t(eps)
    w -= t(lr) * ge / denom


def adam_update(w, g, m, v, lr, beta1, beta2, eps, step, eps_hat, wd, decoupled_wd, grad_scale,
                clip_value):
    t = w.dtype.type
    if decoupled_wd:
        ge = _effective_grad(w, g, 0.0, grad_scale, clip_value)
        w *= t(1 - lr * wd)
    else:
        ge = _effective_grad(w, g, wd, grad_scale, clip_value)
    m *= t(beta1)
    m += t(1 - beta1) * ge
    v *= t(beta2)
    v += t(1 - beta2) * ge * ge
    bc1 = 1 - beta1 ** step
    bc2 = 1 - beta2 ** step
    if eps_hat:
        w -= t(lr * np.sqrt(bc2) / bc1) * m / (np.sqrt(v) + t(eps))
    else:
        w -= t(lr / bc1) * m / (np.sqrt(v) / t(np.sqrt(bc2)) + t(eps))


def set_num_threads(n):
    """The NumPy backend has no threads of its own (BLAS threads are set by dlfast._config)."""


def max_threads():
    return 1


# ----------------------------------------------------------------------------- bound multi-tensor update
_RULE_STATES = {"sgd": (), "momentum": ("v",), "nesterov": ("v",), "adagrad": ("h",),
                "rmsprop": ("h",), "adam": ("m", "v")}        # dlfast.kernels.RULES


class BoundUpdate:
    """``dlfast.kernels.bind_update`` on this backend: the single-tensor kernels, tensor by tensor."""

    def __init__(self, rule, ws, gs, states, wds, hyper):
        self.rule, self.arrays = rule, (tuple(ws), tuple(gs), tuple(tuple(s) for s in states))
        self.wds, self.hyper = tuple(wds), hyper
        held = [a for a in (*ws, *(a for st in states for a in st)) if a.size]
        spans = sorted((a.__array_interface__["data"][0], a.nbytes) for a in held)
        self._starts = [s for s, _ in spans]
        self._ends = [s + n for s, n in spans]
        self._held = held

    def step(self, names, params, grads, state, sts, lr, norm, clip_norm, clip_eps, clip_value,
             counter):
        if not (isinstance(params, dict) and type(grads) is dict and type(state) is dict):
            return -1.0
        ws, _, states = self.arrays
        if len(grads) != len(ws) or len(names) != len(ws) or len(sts) != len(ws):
            return -1.0
        gs, t = [], None
        snames = _RULE_STATES[self.rule]
        for name, w, st, held in zip(names, ws, sts, states):
            g = grads.get(name)
            if (g is None or params.get(name) is not w or state.get(name) is not st
                    or type(st) is not dict
                    or any(st.get(s) is not a for s, a in zip(snames, held))):
                return -1.0
            if counter is not None:
                c = st.get(counter)
                if type(c) is not int or (t is not None and c != t):
                    return -1.0
                t = c
            gs.append(g)
        if t is not None and not 0 <= t < 2 ** 52:
            return -1.0
        if self.take(gs) >= 0:
            return -1.0
        step = 1 if t is None else t + 1
        n, scale = 0.0, 1.0
        if norm:
            total = self.sumsq()
            if not math.isfinite(total):
                return math.nan
            n = math.sqrt(total)
            if 0.0 < clip_norm < n:
                scale = clip_norm / (n + clip_eps)
        self.update(lr, scale, clip_value, step)
        if t is not None:
            for st in sts:
                st[counter] = step
        return n

    def take(self, gs):
        ws, _, states = self.arrays
        if len(gs) != len(ws) or not all(a.flags.writeable for a in self._held):
            return 0
        for k, (g, w) in enumerate(zip(gs, ws)):
            if not (type(g) is np.ndarray and g.dtype == w.dtype and g.shape == w.shape
                    and g.flags.c_contiguous):
                return k
            if g.size:
                lo = g.__array_interface__["data"][0]
                i = bisect.bisect_left(self._starts, lo + g.nbytes) - 1
                if i >= 0 and self._ends[i] > lo:
                    return k
        self.arrays = (ws, tuple(gs), states)
        return -1

    def set_hyper(self, hyper):
        self.hyper = hyper

    def sumsq(self):
        total = 0.0
        for g in self.arrays[1]:
            total += sumsq(g)
        return total

    def update(self, lr, grad_scale, clip_value, step):
        h1, h2, eps, flag, decoupled = self.hyper
        rule = self.rule
        for w, g, st, wd in zip(*self.arrays, self.wds):
            if rule == "sgd":
                sgd_update(w, g, lr, wd, grad_scale, clip_value)
            elif rule in ("momentum", "nesterov"):
                (momentum_update if rule == "momentum" else nesterov_update)(
                    w, g, st[0], lr, h1, wd, grad_scale, clip_value)
            elif rule == "adagrad":
                adagrad_update(w, g, st[0], lr, eps, flag, wd, grad_scale, clip_value)
            elif rule == "rmsprop":
                rmsprop_update(w, g, st[0], lr, h1, eps, flag, wd, grad_scale, clip_value)
            else:
                adam_update(w, g, st[0], st[1], lr, h1, h2, eps, step, flag, wd, decoupled,
                            grad_scale, clip_value)


def bind_update(rule, ws, gs, states, wds, hyper):
    return BoundUpdate(rule, ws, gs, states, wds, hyper)


# ----------------------------------------------------------------------------- ops and programs
# dlfast.kernels.OPS documents each op; the engine (dlfast._engine) validates their arrays once
# and runs them every step through a Program.
from ..kernels import OP_GRADS as _OP_GRADS, OPS as _OPS  # noqa: E402


class _Op:
    """The arrays and settings of one op (names: ``dlfast.kernels.OPS[kind]``)."""
    kind = None
    counter = 0

    def __init__(self, *args):
        names = _OPS[self.kind][0] + _OPS[self.kind][1]
        for name, a in zip(names, args, strict=True):
            setattr(self, name, a)

    def set_counter(self, counter):
        self.counter = counter

    def slot(self, name):
        """The attribute of the gradient output ``name`` (PROGRAM_DOC: ``step``'s ``fresh``)."""
        if name not in _OP_GRADS or not hasattr(self, name):
            raise KeyError(name)
        return self, name


class DenseOp(_Op):
    kind = "dense"

    def forward(self, x):
        dense_forward(x, self.W, self.b, self.out, self.activation, self.alpha)

    def backward(self, x, dout):
        dense_backward(dout, x, self.W, self.out, self.dz, self.dx, self.dW, self.db,
                       self.activation, self.alpha)


class ActivationOp(_Op):
    kind = "activation"

    def forward(self, x):
        activation_forward(x, self.out, self.activation, self.alpha)

    def backward(self, x, dout):
        if self.dx is not None:
            activation_backward(dout, self.out, self.dx, self.activation, self.alpha)


class PReLUOp(_Op):
    kind = "prelu"

    def forward(self, x):
        prelu_forward(x, self.slope, self.out)

    def backward(self, x, dout):
        prelu_backward(dout, x, self.slope, self.dx, self.dslope)


class RReLUOp(_Op):
    kind = "rrelu"

    def forward(self, x):
        random_uniform(self.slopes, self.lower, self.upper, self.seed, self.counter)
        prelu_forward(x, self.slopes, self.out)

    def backward(self, x, dout):
        if self.dx is not None:
            prelu_backward(dout, x, self.slopes, self.dx, None)


class MaxoutOp(_Op):
    kind = "maxout"

    def forward(self, x):
        dense_forward(x, self.W, self.b, self.z, "identity", 0.0)
        maxout_forward(self.z, self.out, self.argmax)

    def backward(self, x, dout):
        maxout_backward(dout, self.argmax, self.dz)
        dense_backward(self.dz, x, self.W, self.z, self.dz2, self.dx, self.dW, self.db,
                       "identity", 0.0)


class SoftmaxOp(_Op):
    kind = "softmax"

    def forward(self, x):
        softmax_forward(x, self.out)

    def backward(self, x, dout):
        if self.dx is not None:
            softmax_backward(dout, self.out, self.dx)


class BatchNormOp(_Op):
    """With ``activation`` (``kernels.BATCHNORM_FUSED``) not "identity": the batch norm, then
    that activation op's forward into y; its backward into a scratch dz, then the batch norm's
    backward of dz."""
    kind = "batchnorm"

    def forward(self, x):
        batchnorm_forward_train(x, self.gamma, self.beta, self.out, self.xhat, self.mean,
                                self.invstd, self.running_mean, self.running_var, self.momentum,
                                self.eps, self.unbiased)
        if self.activation != "identity":
            activation_forward(self.out, self.y, self.activation, self.alpha)

    def backward(self, x, dout):
        if self.activation != "identity":
            dz = self.__dict__.get("_dz")
            if dz is None:
                dz = self._dz = np.empty_like(self.out)
            activation_backward(dout, self.y, dz, self.activation, self.alpha)
            dout = dz
        batchnorm_backward(dout, self.xhat, self.gamma, self.invstd, self.dx, self.dgamma,
                           self.dbeta, True)


class DropoutOp(_Op):
    kind = "dropout"

    def forward(self, x):
        dropout_mask(self.mask, self.p, self.seed, self.counter)
        dropout_apply(x, self.mask, self.scale, self.out)

    def backward(self, x, dout):
        if self.dx is not None:
            dropout_apply(dout, self.mask, self.scale, self.dx)


class _LossOp(_Op):
    """A loss op: ``forward(y) -> L``, ``backward(y)`` writes dlogits; the program fills its
    target buffer (``labels`` or ``targets``) and ``sw`` and sets ``weighted`` before a step."""
    weighted = False

    def _w(self):
        return self.sw if self.weighted else None


class SoftmaxXentOp(_LossOp):
    kind = "softmax_xent"

    def forward(self, logits):
        return softmax_xent_forward(logits, self.labels, self.probs, self._w())

    def backward(self, logits):
        softmax_xent_backward(self.probs, self.labels, self.dlogits, self.weight, self._w())


class MSEOp(_LossOp):
    kind = "mse"

    def forward(self, y):
        return mse_forward(y, self.targets, self._w(), None, self.half, self.reduction)

    def backward(self, y):
        mse_backward(y, self.targets, self._w(), self.dlogits, self.weight, self.half,
                     self.reduction)


class MAEOp(_LossOp):
    kind = "mae"

    def forward(self, y):
        return mae_forward(y, self.targets, self._w(), None, self.reduction)

    def backward(self, y):
        mae_backward(y, self.targets, self._w(), self.dlogits, self.weight, self.reduction)


class HuberOp(_LossOp):
    kind = "huber"

    def forward(self, y):
        return huber_forward(y, self.targets, self._w(), None, self.delta, self.reduction)

    def backward(self, y):
        huber_backward(y, self.targets, self._w(), self.dlogits, self.weight, self.delta,
                       self.reduction)


class SigmoidBCEOp(_LossOp):
    kind = "sigmoid_bce"

    def forward(self, z):
        return sigmoid_bce_forward(z, self.targets, self._w(), None, self.reduction)

    def backward(self, z):
        sigmoid_bce_backward(z, self.targets, self._w(), self.dlogits, self.weight,
                             self.reduction)


class Conv2DOp(_Op):
    """With ``activation`` (``kernels.CONV_FUSED``) not "identity": the convolution, then that
    activation op's forward in place on out; the backward first writes dz = that activation
    op's backward of dout (from out) and takes it as dout, unless dz is None (dout is then dL/dz
    already: a max-pool after the activation applied its derivative)."""
    kind = "conv2d"

    def forward(self, x):
        conv2d_forward(x, self.W, self.b, self.out, self.col, self.stride, self.pad)
        if self.activation != "identity":
            activation_forward(self.out, self.out, self.activation, self.alpha)

    def backward(self, x, dout):
        if self.dz is not None:
            activation_backward(dout, self.out, self.dz, self.activation, self.alpha)
            dout = self.dz
        conv2d_backward(dout, x, self.W, self.col, self.dcol, self.dx, self.dW, self.db,
                        self.stride, self.pad)


class MaxPool2DOp(_Op):
    """With ``activation`` (``kernels.MAXPOOL_FUSED``, the activation before the pool; x its
    output) not "identity": the pool's backward into a scratch dy, then that activation op's
    backward of dy into dx."""
    kind = "maxpool2d"

    def forward(self, x):
        maxpool2d_forward(x, self.out, self.argmax, self.kernel, self.stride, self.pad)

    def backward(self, x, dout):
        if self.dx is None:
            return
        if self.activation == "identity":
            maxpool2d_backward(dout, self.argmax, self.dx, self.kernel, self.stride, self.pad)
            return
        dy = self.__dict__.get("_dy")
        if dy is None:
            dy = self._dy = np.empty_like(self.dx)
        maxpool2d_backward(dout, self.argmax, dy, self.kernel, self.stride, self.pad)
        activation_backward(dy, x, self.dx, self.activation, self.alpha)


class AvgPool2DOp(_Op):
    kind = "avgpool2d"

    def forward(self, x):
        avgpool2d_forward(x, self.out, self.kernel, self.stride, self.pad,
                          self.count_include_pad)

    def backward(self, x, dout):
        if self.dx is not None:
            avgpool2d_backward(dout, self.dx, self.kernel, self.stride, self.pad,
                               self.count_include_pad)


class FlattenOp(_Op):
    kind = "flatten"

    def forward(self, x):
        self.out[...] = x.reshape(self.out.shape)

    def backward(self, x, dout):
        if self.dx is not None:
            self.dx[...] = dout.reshape(self.dx.shape)


class LayerOp:
    """A layer without a kernel pair: its own (checked) ``forward``/``backward``, results copied
    into the op's ``out`` and ``dx``."""

    def __init__(self, layer, out, dx):
        self.layer, self.out, self.dx = layer, out, dx

    def forward(self, x):
        np.copyto(self.out, self.layer.forward(x, True))

    def backward(self, x, dout):
        d = self.layer.backward(dout, self.dx is not None)
        if self.dx is not None:
            np.copyto(self.dx, d)


OPS = {c.kind: c for c in (DenseOp, ActivationOp, PReLUOp, RReLUOp, MaxoutOp, SoftmaxOp,
                           BatchNormOp, DropoutOp, SoftmaxXentOp, MSEOp, MAEOp, HuberOp,
                           SigmoidBCEOp, Conv2DOp, MaxPool2DOp, AvgPool2DOp, FlattenOp)}
OPS["layer"] = LayerOp


class Program:
    """``dlfast.kernels.Program`` on this backend: the same steps, one Python call each."""

    def __init__(self, steps, losses, x_shape, dtype, written, hooks=None):
        self.steps, self.losses = tuple(steps), tuple(losses)
        self.x_shape, self.written = tuple(x_shape), tuple(written)
        self.dtype, self.hooks = np.dtype(dtype), hooks
        self.values = np.zeros(len(self.losses))
        self._lock = threading.Lock()

    def step(self, x, targets, weights=None, fresh=None, finite=False):
        if not (type(x) is np.ndarray and x.dtype == self.dtype and x.shape == self.x_shape
                and x.flags.c_contiguous and (finite or all_finite(x))):
            return None
        if not self.accepts(x):
            raise ValueError("x shares memory with an array the training step writes (a layer's "
                             "output or gradient buffer); pass a copy")
        names, drops, recs, xrecs, loss_recs, convert, convert_w, gslots = self.hooks
        ts = list(targets)
        if len(ts) != len(self.losses):
            raise ValueError(f"expected {len(self.losses)} target arrays, got {len(ts)}")
        for j, t in enumerate(ts):
            if not self._fits(j, t):
                ts[j] = convert(j, t)
        ws = None
        if weights is not None:
            ws = list(weights)
            if len(ws) != len(self.losses):
                raise ValueError(f"expected {len(self.losses)} sample-weight entries, got "
                                 f"{len(ws)}")
            for j, w in enumerate(ws):
                if w is not None and not self._fits_w(j, w):
                    ws[j] = convert_w(j, w)
        with self._lock:
            k = self.readonly()
            if k >= 0:
                raise ValueError(f"{names[k]} is not writeable; a training step writes it")
            try:
                self.load_targets(ts, ws)
            except ValueError:
                for j, t in enumerate(targets):     # the messages naming t and sample_weight
                    convert(j, t)
                    if ws is not None and weights[j] is not None:
                        convert_w(j, weights[j])
                raise
            for layer, op, size in drops:
                op.set_counter(layer._take_counter(size))
            if fresh is None:
                total = self.run(x)
            else:
                saved = [getattr(op, k) for op, k in gslots]
                for (op, k), a in zip(gslots, fresh, strict=True):
                    setattr(op, k, a)
                try:
                    total = self.run(x)
                finally:
                    for (op, k), a in zip(gslots, saved):
                        setattr(op, k, a)
            for d, rec in recs:
                d["_fwd"] = rec
            for rec in xrecs:
                rec["x"] = x
            for (d, rec, sw), v, lop in zip(loss_recs, self.values, self.losses):
                rec["sw"] = sw if lop.weighted else None
                d["_fwd"] = rec
                d["loss"] = float(v)
        return total

    def _fits(self, j, t):
        lop = self.losses[j]
        if type(t) is not np.ndarray or t.ndim < 1 or t.shape[0] != self.x_shape[0]:
            return False
        if lop.kind == "softmax_xent":
            return t.dtype == np.int64 and t.ndim == 1
        m = lop.targets.shape[1]
        return t.dtype == self.dtype and (t.shape[1:] == (m,) or (t.ndim == 1 and m == 1))

    def _fits_w(self, j, w):
        return type(w) is np.ndarray and w.dtype == np.float64 and w.shape == (self.x_shape[0],)

    def readonly(self):
        """Index of the first written array that is not writeable, or -1."""
        return next((i for i, a in enumerate(self.written) if not a.flags.writeable), -1)

    def accepts(self, x):
        return not any(np.may_share_memory(x, a) for a in self.written)

    def load_targets(self, targets, weights=None):
        targets = list(targets)
        if len(targets) != len(self.losses):
            raise ValueError(f"expected {len(self.losses)} target arrays, got {len(targets)}")
        weights = [None] * len(self.losses) if weights is None else list(weights)
        if len(weights) != len(self.losses):
            raise ValueError(f"expected {len(self.losses)} sample-weight entries, got "
                             f"{len(weights)}")
        for j, (lop, t, w) in enumerate(zip(self.losses, targets, weights)):
            if not self._fits(j, t):
                raise TypeError(f"targets[{j}] has the wrong form for a {lop.kind} loss")
            if w is not None and not self._fits_w(j, w):
                raise TypeError(f"weights[{j}] must be None or float64 of shape "
                                f"({self.x_shape[0]},)")
            if lop.kind == "softmax_xent":
                _check_labels(t, lop.probs.shape[1])
            else:
                t2 = t.reshape(lop.targets.shape)
                bad = np.flatnonzero(~((t2 >= 0) & (t2 <= 1) if lop.kind == "sigmoid_bce"
                                       else np.isfinite(t2)).all(axis=1))
                if bad.size:
                    raise ValueError(f"targets must be "
                                     f"{'in [0, 1]' if lop.kind == 'sigmoid_bce' else 'finite'}, "
                                     f"got {t2[bad[0]].tolist()} in row {bad[0]}")
            if w is not None:
                bad = np.flatnonzero(~((w >= 0) & np.isfinite(w)))
                if bad.size:
                    raise ValueError(f"sample weights must be finite and >= 0, got {w[bad[0]]} "
                                     f"in row {bad[0]}")
                with np.errstate(over="ignore"):
                    finite = np.isfinite(np.sum(w))
                if not (w.any() and finite):
                    raise ValueError("sample weights must not all be zero and must have a "
                                     "finite sum")
        for lop, t, w in zip(self.losses, targets, weights):
            if lop.kind == "softmax_xent":
                lop.labels[...] = t
            else:
                lop.targets[...] = t.reshape(lop.targets.shape)
            if w is not None:
                lop.sw[...] = w
            lop.weighted = w is not None

    def run(self, x, times=None):
        total = 0.0
        for k, (code, op, src, dsrc, w) in enumerate(self.steps):
            if times is not None:
                t0 = _clock()
            if code == 0:                                   # FWD
                op.forward(x if src is None else src)
            elif code == 1:                                 # BWD
                op.backward(x if src is None else src, dsrc)
            elif code == 2:                                 # LOSS
                v = op.forward(src)
                self.values[w] = v
                total += op.weight * v
            elif code == 3:                                 # LOSS_BWD
                op.backward(x if src is None else src)
            elif code == 4:                                 # COPY: op <- src
                np.copyto(op, src)
            else:                                           # ADD: op += src
                np.add(op, src, out=op)
            if times is not None:
                times[k] += _clock() - t0
        return total


# ----------------------------------------------------------------------------- convolution, pooling
# NCHW; kernel, stride, pad arrive as (h, w) pairs. A "tap" (i, j) of a window is its cell
# (i, j); _tap is the view of every window's tap: a[..., i + oh*sh, j + ow*sw] over (OH, OW).
def _pad(x, pad):
    ph, pw = pad
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    return xp


def _tap(a, i, j, ohw, stride):
    (oh, ow), (sh, sw) = ohw, stride
    return a[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]


def _im2col(x, col, kernel, ohw, stride, pad):
    n, c = x.shape[:2]
    xp = _pad(x, pad)
    col6 = col.reshape(n, c, *kernel, *ohw)           # col[n, (c, i, j), (oh, ow)]
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            col6[:, :, i, j] = _tap(xp, i, j, ohw, stride)


def conv2d_forward(x, W, b, out, col, stride, pad):
    n, c, _, _ = x.shape
    f, _, kh, kw = W.shape
    ohw = out.shape[2:]
    _im2col(x, col, (kh, kw), ohw, stride, pad)
    np.matmul(W.reshape(f, c * kh * kw), col, out=out.reshape(n, f, ohw[0] * ohw[1]))
    if b is not None:
        out += b[:, None, None]


def conv2d_backward(dout, x, W, col, dcol, dx, dW, db, stride, pad):
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    ohw = dout.shape[2:]
    d2 = dout.reshape(n, f, ohw[0] * ohw[1])
    if db is not None:
        db[...] = dout.sum(axis=(0, 2, 3), dtype=np.float64)
    if dW is not None:                                # sum_n dout_n @ col_n.T
        _im2col(x, col, (kh, kw), ohw, stride, pad)
        dW.reshape(f, c * kh * kw)[...] = np.tensordot(d2, col, axes=([0, 2], [0, 2]))
    if dx is not None:
        np.matmul(W.reshape(f, c * kh * kw).T, d2, out=dcol)
        ph, pw = pad
        dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dx.dtype)
        dc6 = dcol.reshape(n, c, kh, kw, *ohw)
        for i in range(kh):                           # col2im: the taps in (i, j) order
            for j in range(kw):
                t = _tap(dxp, i, j, ohw, stride)
                t += dc6[:, :, i, j]
        dx[...] = dxp[:, :, ph:ph + h, pw:pw + w]


def _taps_inside(hw, ohw, kernel, stride, pad):
    """(OH, OW, KH*KW) arrays over the taps in row-major order: inside x?, and h*W + w."""
    (h, w), (oh, ow), (kh, kw), (sh, sw), (ph, pw) = hw, ohw, kernel, stride, pad
    r = np.arange(oh)[:, None, None] * sh - ph + np.repeat(np.arange(kh), kw)[None, None, :]
    s = np.arange(ow)[None, :, None] * sw - pw + np.tile(np.arange(kw), kh)[None, None, :]
    return (r >= 0) & (r < h) & (s >= 0) & (s < w), r * w + s


def maxpool2d_forward(x, out, argmax, kernel, stride, pad):
    ohw = out.shape[2:]
    xp = _pad(x, pad)
    vals = np.stack([_tap(xp, i, j, ohw, stride) for i in range(kernel[0])
                     for j in range(kernel[1])], axis=-1)            # (N, C, OH, OW, taps)
    inside, plane = _taps_inside(x.shape[2:], ohw, kernel, stride, pad)
    nan = np.isnan(vals) & inside
    top = np.where(inside, vals, -np.inf).max(axis=-1, keepdims=True)
    # the first NaN inside x if any, else the first inside cell equal to the maximum
    hit = np.where(nan.any(axis=-1, keepdims=True), nan, inside & (vals == top))
    t = np.argmax(hit, axis=-1)[..., None]
    out[...] = np.take_along_axis(vals, t, axis=-1)[..., 0]
    argmax[...] = np.take_along_axis(np.broadcast_to(plane, hit.shape), t, axis=-1)[..., 0]


def maxpool2d_backward(dout, argmax, dx, kernel, stride, pad):
    n, c, h, w = dx.shape
    planes, m = n * c, dout.shape[2] * dout.shape[3]
    dx[...] = 0
    idx = argmax.reshape(planes, m) + (np.arange(planes) * (h * w))[:, None]
    np.add.at(dx.reshape(-1), idx.reshape(-1), dout.reshape(-1))   # in output order


def _avg_divisor(hw, ohw, kernel, stride, pad, count_include_pad):
    """d(i, j) of every window (OH, OW), float64."""
    if count_include_pad:
        return np.full(ohw, float(kernel[0] * kernel[1]))
    inside, _ = _taps_inside(hw, ohw, kernel, stride, pad)
    return inside.sum(axis=-1).astype(np.float64)


def avgpool2d_forward(x, out, kernel, stride, pad, count_include_pad):
    ohw = out.shape[2:]
    xp = _pad(x, pad)
    s = np.zeros(out.shape, np.float64)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            s += _tap(xp, i, j, ohw, stride)
    out[...] = s / _avg_divisor(x.shape[2:], ohw, kernel, stride, pad, count_include_pad)


def avgpool2d_backward(dout, dx, kernel, stride, pad, count_include_pad):
    n, c, h, w = dx.shape
    ph, pw = pad
    ohw = dout.shape[2:]
    d = _avg_divisor((h, w), ohw, kernel, stride, pad, count_include_pad).astype(dout.dtype)
    g = dout / d
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dx.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            t = _tap(dxp, i, j, ohw, stride)
            t += g
    dx[...] = dxp[:, :, ph:ph + h, pw:pw + w]
