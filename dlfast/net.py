"""Networks built from ``dlfast.layers``: ``Sequential``, ``MLP`` and ``MultiTaskNet``.

A net runs a batch down its layers once and the gradient up once; it does no arithmetic of its own
(MultiTaskNet adds its heads' gradients at the trunk output). Common interface:

* ``params`` (name -> the layer's own array; optimisers update it in place), ``grads``
  (name -> gradient buffer of the trainable params), ``layers``.
* ``predict(x, train=False)`` (a copy of the output), ``loss(x, t, train=False,
  sample_weight=None)`` (data loss + penalty), ``accuracy(x, t)`` (classification losses),
  ``r2(x, t)`` (regression losses), ``score(x, t)`` (whichever applies), ``gradient(x, t,
  sample_weight=None)`` (train-mode forward + backward; a new dict of copies, penalty gradient
  included) and ``loss_and_gradient(x, t, sample_weight=None) -> (loss, grads)`` (the same
  without copies: the arrays are the layers' buffers, overwritten by the next call).
* ``apply_constraints()`` (max-norm, call after each update), ``freeze(upto=k)``/``unfreeze()``,
  ``state_dict()``/``load_state_dict(d)`` (params, BN running statistics, dropout/RReLU seeds and
  counters), ``config()`` (constructor kwargs: ``type(net)(**net.config())`` rebuilds it),
  ``set_seed(seed)`` (re-derives every dropout/RReLU seed).

Targets ``t`` are those of the net's loss (``dlfast.layers.loss``): for softmax cross-entropy class
indices (any int dtype) or exact one-hot rows; for the value losses (mse, mae, huber, sigmoid_bce)
numbers of the output's shape. ``sample_weight``: per-row weights (N,) (the loss becomes
``sum_n w_n l_n / sum_n w_n``). Inputs must have the net's dtype (float32 by default) and be
finite (``check_finite = False`` skips the NaN/inf scan of x).
"""
from __future__ import annotations

import numpy as np

from . import _config, _engine
from .layers._base import STATE as _STATE
from . import init as _init
from . import layers as L
from . import regularizers as R
from ._validation import (derive_seed, finite_array, float_array, make_rng, nonneg_int,
                          positive_int, real, resolve_dtype, sample_weights, seed_value)

__all__ = ["Sequential", "MLP", "MultiTaskNet", "reuse", "r2_score"]


# ============================================================================ helpers
def _as_layers(layers, what):
    if isinstance(layers, Sequential):
        return list(layers.layers)
    if isinstance(layers, (L.Layer, dict)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"{what} must be a list of layers, got {type(layers).__name__}")
    out = [L.from_config(l) if isinstance(l, dict) else l for l in layers]
    seen = {}
    for i, l in enumerate(out):
        if not isinstance(l, L.Layer) or isinstance(l, L.Loss):
            raise TypeError(f"{what}[{i}] must be a dlfast layer (not a loss), got {type(l).__name__}")
        if id(l) in seen:
            raise ValueError(f"{what}[{i}] is {what}[{seen[id(l)]}]: a layer appears twice (it "
                             f"keeps one forward's state); use a copy")
        seen[id(l)] = i
    return out


_RESET = -1          # _io's out width of a layer whose output width is not known (Flatten)
_NDIM = {2: "2-D (N, features)", 4: "4-D (N, C, H, W)"}


def _io(layer):
    """``(in ndims, in width, out ndim, out width)`` a layer fixes: the input ndims it accepts
    (a tuple; None: any), the width of axis 1 it expects (features of 2-D, channels of 4-D) and
    those of its output; None: any / unchanged (``_RESET``: unknown)."""
    if isinstance(layer, (L.Dense, L.Maxout)):
        return (2,), layer.in_features, 2, layer.out_features
    if isinstance(layer, L.Conv2D):
        return (4,), layer.in_channels, 4, layer.out_channels
    if isinstance(layer, (L.MaxPool2D, L.AvgPool2D)):
        return (4,), None, 4, None
    if isinstance(layer, L.Flatten):
        return (2, 3, 4), None, 2, _RESET
    if isinstance(layer, L.BatchNorm):
        return (2, 4), layer.num_features, None, layer.num_features
    if isinstance(layer, L.PReLU):
        n = layer.num_parameters if layer.num_parameters > 1 else None
        return (2,), n, 2, n
    if isinstance(layer, (L.RReLU, L.Softmax)):
        return (2,), None, 2, None
    return None, None, None, None


def _io_features(layer):
    """``(in, out)`` feature counts a layer fixes (None where any width fits)."""
    _, fin, _, fout = _io(layer)
    return fin, (None if fout == _RESET else fout)


def _check_chain(layers, what):
    """ValueError naming both layers when a layer's input differs from what the layers below it
    output, where that is known: 2-D vs 4-D, the feature or channel count, and a Dense after a
    Flatten of C channels (its width must be a multiple of C)."""
    nd = width = flat = None            # (index, layer, value) of the nearest layer fixing it
    for i, l in enumerate(layers):
        ind, fin, fout_nd, fout = _io(l)
        if ind is not None and nd is not None and nd[2] not in ind:
            j, pl, d = nd
            fix = ("put a Flatten() between them" if d == 4 else
                   "layers on images (N, C, H, W) come before the Flatten")
            raise ValueError(f"{what}: layer {j} ({pl!r}) outputs {_NDIM[d]} but layer {i} "
                             f"({l!r}) takes {' or '.join(_NDIM.get(k, f'{k}-D') for k in ind)} "
                             f"input; {fix}")
        if fin is not None and width is not None and width[2] != fin:
            j, pl, pout = width
            unit = ("channels", "channels") if nd is not None and nd[2] == 4 else \
                   ("features", "inputs")
            raise ValueError(f"{what}: layer {j} ({pl!r}) outputs {pout} {unit[0]} but layer {i} "
                             f"({l!r}) expects {fin} {unit[1]}")
        if fin is not None and flat is not None and fin % flat[2]:
            j, pl, c = flat
            raise ValueError(f"{what}: layer {j} ({pl!r}) flattens {c} channels into C*H*W "
                             f"features (a multiple of {c}) but layer {i} ({l!r}) expects {fin} "
                             f"inputs")
        if fout_nd is not None:
            if isinstance(l, L.Flatten):
                flat = (i, l, width[2]) if width is not None and nd is not None and nd[2] == 4 \
                    else None
            else:
                flat = None
            nd = (i, l, fout_nd)
        if fout == _RESET:
            width = None
        elif fout is not None:
            width = (i, l, fout)
            flat = None


_NDIMS = {}           # layer class -> (in ndims, out ndim) of _io (they depend on the class only)


def _input_ndims(paths):
    """The ndims a net's input may have: those every path's layers accept up to the first layer
    that fixes its output ndim (2-D when no layer constrains it)."""
    allowed = None
    for layers in paths:
        for l in layers:
            e = _NDIMS.get(type(l))
            if e is None:
                e = _NDIMS[type(l)] = _io(l)[::2]
            ind, out_nd = e
            if ind is not None:
                allowed = ind if allowed is None else tuple(d for d in allowed if d in ind)
            if out_nd is not None:
                break
    return allowed or (2,)


def _unify_dtype(layers, dtype):
    """The common dtype; parameter-free layers built without dtype= adopt it."""
    if dtype is not None:
        dt = resolve_dtype(dtype)
    else:
        fixed = {l.dtype for l in layers if l.params or l._dtype_given}
        if len(fixed) > 1:
            which = ", ".join(f"layer {i} ({type(l).__name__}) {l.dtype.name}"
                              for i, l in enumerate(layers) if l.params or l._dtype_given)
            raise TypeError(f"layers have mixed dtypes: {which}; build them all with one dtype=")
        dt = fixed.pop() if fixed else np.dtype(np.float32)
    for i, l in enumerate(layers):
        if l.dtype != dt:
            if l.params or l._dtype_given:
                raise TypeError(f"layer {i} ({type(l).__name__}) is {l.dtype.name} but the net is "
                                f"{dt.name} (mixed dtypes)")
            l._set_dtype(dt)
    return dt


def _forward(layers, x, train):
    for layer in layers:
        x = layer.forward(x, train)
    return x


def _first_trained(layers):
    """Index of the first trainable parametrised layer (None: none): backward passes stop there
    when the input gradient is not needed."""
    return next((i for i, l in enumerate(layers) if l.trainable and l.params), None)


def _backprop(layers, dout, need_dx):
    """Backward through ``layers``; returns dL/d(input) when ``need_dx``. Layers below the first
    trainable parametrised layer are skipped when their input gradient is not needed."""
    stop = 0 if need_dx else _first_trained(layers)
    if stop is None:
        return None
    for i in range(len(layers) - 1, stop - 1, -1):
        dout = layers[i].backward(dout, compute_dx=need_dx or i > stop)
    return dout if need_dx else None


def _regularizer(regularizer, weight_decay):
    weight_decay = real("weight_decay", weight_decay, 0.0)
    reg = R.get(regularizer)
    if weight_decay and reg is not None:
        raise ValueError("give weight_decay or regularizer, not both")
    return R.L2(weight_decay) if weight_decay else reg


def _loss(loss, what, dtype=None):
    """A loss layer from a Loss, a name or a config dict (``dlfast.layers.loss.get``)."""
    try:
        return L.loss.get(loss, dtype)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{what}: {exc}") from None


def r2_score(y, t, sample_weight=None):
    """Coefficient of determination of predictions y against targets t (both (N, M), in
    float64): per output j ``1 - sum_n w_n (t - y)^2 / sum_n w_n (t - tbar_j)^2`` with tbar_j the
    weighted mean; an output whose targets are constant scores 1 when predicted exactly, else 0
    (scikit-learn's ``r2_score``, ``force_finite=True``); the mean over the outputs."""
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    t = np.asarray(t, np.float64).reshape(len(t), -1)
    w = np.ones(len(t)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    w = w[:, None]
    tbar = np.sum(w * t, axis=0) / np.sum(w)
    ss_res = np.sum(w * (t - y) ** 2, axis=0)
    ss_tot = np.sum(w * (t - tbar) ** 2, axis=0)
    ok = ss_tot > 0
    per = np.where(ok, 1.0 - ss_res / np.where(ok, ss_tot, 1.0), np.where(ss_res == 0, 1.0, 0.0))
    return float(np.mean(per))


def _accuracy(loss, y, t, sample_weight=None, name="t"):
    if loss.TASK != "classify":
        raise TypeError(f"accuracy applies to classification losses; this net's loss is "
                        f"{type(loss).__name__} (regression): use r2")
    n = y.shape[0]
    right = loss.correct(y, t, name)
    w = sample_weights(sample_weight, n)
    if n == 0:
        return 0.0
    return float(np.mean(right)) if w is None else float(np.sum(w * right) / np.sum(w))


def _r2(loss, y, t, sample_weight=None, name="t"):
    if loss.TASK != "regress":
        raise TypeError(f"r2 applies to regression losses; this net's loss is "
                        f"{type(loss).__name__} (classification): use accuracy")
    tv = loss.targets(t, y.shape[0], y.shape[1], name)
    return r2_score(y, tv, sample_weights(sample_weight, y.shape[0]))


def _max_norm(c):
    if c is None or isinstance(c, R.MaxNorm):
        return c
    return R.MaxNorm(c)


class NetParams(dict):
    """``net.params``: parameter name -> the layer's own array, current as of the last change
    of any layer. Setting an entry replaces the layer's array (``layer.params[key] = value``: a
    new plan at the next step); names cannot be added or removed."""

    def __init__(self, entries):
        super().__init__((n, layer.params[k]) for n, layer, k in entries)
        self._owner = {n: (layer, k) for n, layer, k in entries}
        self._state = _STATE[0]

    def __setitem__(self, name, value):
        if name not in self._owner:
            raise KeyError(f"{name!r} is not a parameter of the net (its parameters: "
                           f"{', '.join(self._owner)})")
        layer, k = self._owner[name]
        layer.params[k] = value
        super().__setitem__(name, layer.params[k])
        self._state = _STATE[0]

    def _fixed(self, *_, **__):
        raise TypeError("net.params has one entry per parameter of the net: entries can be "
                        "replaced (net.params[name] = array), not added or removed")

    __delitem__ = pop = popitem = clear = setdefault = _fixed

    def update(self, *args, **kw):
        for name, value in dict(*args, **kw).items():
            self[name] = value

    def __reduce__(self):
        return dict, (dict(self),)


class _Net:
    """Shared machinery: params/grads naming, state, freezing, constraints, seeds, and the
    training step (``loss_and_gradient``: a plan of the training engine, ``dlfast._engine``)."""

    check_finite = True

    def __getstate__(self):
        """Copies and pickles drop the plans (they hold this net's arrays)."""
        state = self.__dict__.copy()
        state.pop("_plans", None)
        state.pop("_plan", None)
        state.pop("_params", None)
        return state

    @property
    def params(self):
        """name -> the layer's own array (a ``NetParams``: setting an entry replaces the
        layer's array)."""
        p = self.__dict__.get("_params")
        if p is None or p._state != _STATE[0]:
            p = self.__dict__["_params"] = NetParams(
                [(n, l, k) for n, l, k in self._entries if k in l.params])
        return p

    def _graph(self):
        """``(trunk layers, ((head layers, loss layer, weight), ...))`` of the training step."""
        raise NotImplementedError

    def _targets_of(self, t):
        """The step's targets, one per head of ``_graph()``."""
        return (t,)

    def _weights_of(self, sample_weight):
        """The step's sample weights: None, or one entry per head of ``_graph()``."""
        return None if sample_weight is None else (sample_weight,)

    def loss_and_gradient(self, x, t, sample_weight=None):
        """One train-mode forward and one backward: ``(loss, grads)`` (grads are the layers'
        buffers, overwritten by the next step). The step runs the net's plan for x's shape
        (``dlfast._engine``), made at the first step and whenever a setting changes.
        ``sample_weight``: None or per-row weights (N,)."""
        loss, grads = self._step(self._graph(), x, self._targets_of(t),
                                 None if sample_weight is None else
                                 self._weights_of(sample_weight))
        if self.regularizer is None:
            return loss, grads
        return loss + self.penalty(), self._finish_grads(grads)

    def _step(self, graph, x, targets, weights=None, fresh=False, x_finite=False):
        """The training engine's step of ``graph``: (data loss, gradient dict). The last plan runs
        x as it is when it fits (``Program.step`` checks it; ``x_finite``: the caller has just
        checked x for NaN and inf, not scanned again); otherwise x is checked (``_check_x``) and
        the plan for its shape is found or made. ``fresh``: the gradients are new arrays (written
        there by the step when the plan can, else copies)."""
        d = self.__dict__
        plan = d.get("_plan")
        out = loss = None
        if plan is not None and plan.fits(graph, x):
            if fresh and plan.fresh:
                out = [np.empty_like(a) for _, a in plan.grads]
            loss = plan.program.step(x, targets, weights, out, x_finite)
        if loss is None:
            x = self._check_x(x, graph)
            plans = d.get("_plans")
            if plans is None:
                plans = d["_plans"] = _engine.Plans()
            plan = d["_plan"] = plans.get(graph, x, tuple(self.grads.items()))
            if fresh and plan.fresh and out is None:
                out = [np.empty_like(a) for _, a in plan.grads]
            loss = plan.run(x, targets, weights, out)
        self._after_step(plan)
        if not fresh:
            return loss, plan.grad_dict.copy()
        if out is None:
            return loss, {k: a.copy() for k, a in plan.grads}
        return loss, {k: a for (k, _), a in zip(plan.grads, out)}

    def _after_step(self, plan):
        pass

    def _setup(self, all_layers, entries, regularizer, max_norm, dtype):
        self.dtype = dtype
        self._all = all_layers
        self._entries = entries                 # (name, layer, key) for params and buffers
        self.regularizer = regularizer
        self.max_norm = max_norm
        names = [n for n, _, _ in entries]
        if len(set(names)) != len(names):
            raise ValueError("duplicate parameter names in the net")
        self._param_entries = [(n, layer, k) for n, layer, k in entries if k in layer.params]
        for layer in all_layers:
            layer.check_finite = False          # the net checks its input once

    # ---------------------------------------------------------------- inputs
    def _check_x(self, x, graph=None):
        """x as the input of the net (or of ``graph``, default ``_graph()``): the net's dtype,
        C-contiguous, finite, 2-D (N, features) or 4-D (N, C, H, W) as its first layers take."""
        trunk, heads = self._graph() if graph is None else graph
        nd = _input_ndims(tuple(trunk) + tuple(h) for h, _, _ in heads)
        if not (type(x) is np.ndarray and x.dtype == self.dtype and x.ndim in nd
                and x.flags.c_contiguous):
            x = float_array("x", x, self.dtype, ndim=nd)        # (raises, or makes it so)
        if self.check_finite and x.size and not _config.active().all_finite(x):
            finite_array("x", x)                                # raises
        return x

    @property
    def grads(self):
        """name -> gradient buffer, for the params of trainable layers."""
        return {n: layer.grads[k] for n, layer, k in self._param_entries if layer.trainable}

    def penalty(self):
        """Regularisation penalty of the current weights (0.0 without a regulariser)."""
        return self.regularizer.penalty(self.params) if self.regularizer is not None else 0.0

    def _finish_grads(self, grads=None):
        """``grads`` (default: the ``grads`` dict) plus the regulariser's gradient."""
        if grads is None:
            grads = self.grads
        if self.regularizer is not None:
            self.regularizer.add_grads(self.params, grads)
        return grads

    def gradient(self, x, t, sample_weight=None):
        """Gradients of ``loss(x, t, train=True, sample_weight)`` (new arrays), keyed like
        ``params``. When every gradient comes from a kernel pair, the step writes them straight
        into the new arrays and the layers' own gradient buffers keep the last
        ``loss_and_gradient``'s; else they are copies of those buffers."""
        _, grads = self._step(self._graph(), x, self._targets_of(t),
                              self._weights_of(sample_weight), fresh=True)
        return self._finish_grads(grads)

    def apply_constraints(self):
        """Max-norm on the trainable weight matrices (no-op without ``max_norm``)."""
        if self.max_norm is not None:
            self.max_norm.apply_all({n: layer.params[k] for n, layer, k in self._param_entries
                                     if layer.trainable})

    # ---------------------------------------------------------------- freezing
    def _parametrised(self):
        return [l for l in self._all if l.params]

    def freeze(self, upto=None):
        """Make the first ``upto`` parametrised layers non-trainable (all when None)."""
        layers = self._parametrised()
        k = len(layers) if upto is None else nonneg_int("upto", upto)
        if k > len(layers):
            raise ValueError(f"upto={k} exceeds the number of parametrised layers ({len(layers)})")
        for i, l in enumerate(layers):
            l.trainable = i >= k

    def unfreeze(self):
        """Make every layer trainable."""
        for l in self._all:
            l.trainable = True

    # ---------------------------------------------------------------- state
    def state_dict(self):
        """name -> copy: params, BN running statistics, dropout/RReLU seed and counter."""
        per_layer = {}
        for _, layer, _ in self._entries:
            if id(layer) not in per_layer:
                per_layer[id(layer)] = layer.state_dict()
        return {n: per_layer[id(layer)][k] for n, layer, k in self._entries}

    def load_state_dict(self, d, strict=True):
        """Copy a ``state_dict`` into the net in place (shapes checked; unknown keys are an error
        when ``strict``). Everything is checked before anything is written."""
        if not isinstance(d, dict):
            raise TypeError(f"state must be a dict, got {type(d).__name__}")
        names = {n for n, _, _ in self._entries}
        missing = sorted(names - set(d))
        if missing:
            raise KeyError(f"state is missing {missing}")
        extra = sorted(set(d) - names)
        if strict and extra:
            raise KeyError(f"state has unknown keys {extra}")
        per_layer = {}
        for n, layer, k in self._entries:
            own = layer.params[k] if k in layer.params else layer._buffers()[k]
            src = np.asarray(d[n])
            if src.shape != np.shape(own):
                raise ValueError(f"state {n!r} must have shape {np.shape(own)}, got {src.shape}")
            want = "f" if np.asarray(own).dtype.kind == "f" else "iu"
            if src.dtype.kind not in want:
                raise TypeError(f"state {n!r} must have a "
                                f"{'float' if want == 'f' else 'integer'} dtype, got {src.dtype.name}")
            per_layer.setdefault(id(layer), (layer, {}))[1][k] = src
        for layer, sub in per_layer.values():
            try:
                layer.load_state_dict(sub)
            except (KeyError, ValueError, TypeError) as exc:
                raise type(exc)(f"{type(layer).__name__} layer: {exc}") from None

    def set_seed(self, seed):
        """Give every dropout/RReLU layer a seed derived from ``seed`` (counters restart at 0)."""
        seed = seed_value(seed)
        for i, l in enumerate(self._all):
            if l.stochastic:
                l.seed = derive_seed(seed, i, 1)
                l.counter = 0
        self.seed = seed

    def _stochastic_seeds(self, seed):
        if seed is not None:
            self.set_seed(seed)


# ============================================================================ Sequential
class Sequential(_Net):
    """Layers in a row and a loss (default ``SoftmaxCrossEntropy``). Params "{i}.{name}".

    ``loss``: a ``dlfast.layers.Loss``, its name (softmax_xent, mse, mae, huber, sigmoid_bce) or
    its ``config()``."""

    def __init__(self, layers, loss=None, regularizer=None, max_norm=None, dtype=None, seed=None):
        self.layers = _as_layers(layers, "layers")
        _check_chain(self.layers, "layers")
        loss = _loss(loss, "loss")
        self.loss_layer = loss
        loss.check_finite = False
        dt = _unify_dtype(self.layers + [loss], dtype)
        self.seed = seed
        self._setup(self.layers, self._make_entries(), R.get(regularizer), _max_norm(max_norm), dt)
        self._stochastic_seeds(seed)

    def _make_entries(self):
        return [(f"{i}.{k}", l, k) for i, l in enumerate(self.layers)
                for k in [*l.params, *l._buffers()]]

    # ---------------------------------------------------------------- passes
    def forward(self, x, train=True):
        """Output of the last layer (a layer buffer, not copied)."""
        return _forward(self.layers, self._check_x(x), train)

    def backward(self, dout, compute_dx=False):
        """Backpropagate ``dout`` (dL/d output) through the layers; dL/dx when ``compute_dx``."""
        return _backprop(self.layers, dout, compute_dx)

    def predict(self, x, train=False):
        """Network output (before the softmax or sigmoid) for x, as a new array."""
        return self.forward(x, train).copy()

    def _data_loss(self, x, t, train, sample_weight=None):
        return self.loss_layer.forward(self.forward(x, train), t, sample_weight)

    def loss(self, x, t, train=False, sample_weight=None):
        """The loss of the batch (``loss_layer``: mean or weighted mean over the rows) +
        penalty."""
        return self._data_loss(x, t, train, sample_weight) + self.penalty()

    def _graph(self):
        return tuple(self.layers), (((), self.loss_layer, 1.0),)

    def accuracy(self, x, t, sample_weight=None):
        """Classification losses: the (weighted) fraction of rows predicted right (softmax:
        argmax output == label; sigmoid BCE: every label's ``output > 0`` == ``t > 1/2``)."""
        return _accuracy(self.loss_layer, self.forward(x, False), t, sample_weight)

    def r2(self, x, t, sample_weight=None):
        """Regression losses: the coefficient of determination R^2 (``r2_score``)."""
        return _r2(self.loss_layer, self.forward(x, False), t, sample_weight)

    def score(self, x, t, sample_weight=None):
        """``accuracy`` for a classification loss, ``r2`` for a regression loss."""
        if self.loss_layer.TASK == "classify":
            return self.accuracy(x, t, sample_weight)
        return self.r2(x, t, sample_weight)

    def config(self):
        return {"layers": [l.config() for l in self.layers], "loss": self.loss_layer.config(),
                "regularizer": None if self.regularizer is None else self.regularizer.config(),
                "max_norm": None if self.max_norm is None else self.max_norm.c,
                "dtype": self.dtype.name, "seed": self.seed}


# ============================================================================ MLP
_FUSED = ("relu", "sigmoid", "tanh", "leaky_relu", "leakyrelu", "elu", "identity", "linear")
_LAYER_ACTS = ("prelu", "rrelu", "maxout")


class MLP(Sequential):
    """Fully connected net. Per hidden layer k: ``Dense`` (activation fused when no batch norm)
    -> [``BatchNorm`` -> activation layer] -> [``Dropout``]; then an affine output layer and the
    loss (``loss``: softmax_xent (default), mse, mae, huber, sigmoid_bce, a ``Loss`` or its
    ``config()``). Params ``W1, b1, gamma1, beta1, ..., W{L}, b{L}`` (BN running
    statistics ``running_mean{k}``, ``running_var{k}``; PReLU ``slope{k}``).

    ``activation``: relu, sigmoid, tanh, leaky_relu, elu (``alpha``), identity, or the layer
    activations "prelu" (``prelu_per_feature``), "rrelu", "maxout" (Maxout replaces Dense,
    ``maxout_pieces``). ``weight_init``: a ``dlfast.init`` name, a float std or a callable.
    ``weight_decay=lam`` is ``regularizer=L2(lam)``; ``max_norm=c`` adds a max-norm constraint.
    ``seed`` fixes the weights and every dropout/RReLU stream (None: fresh entropy, recorded in
    ``config()``). BN options: ``bn_momentum``, ``bn_eps``, ``bn_momentum_convention``
    ("pytorch"/"textbook"), ``bn_unbiased``, ``bn_running_var_init``. ``dropout_inverted=False``: textbook dropout.
    """

    def __init__(self, input_size, hidden_sizes, output_size, activation="relu",
                 weight_init="he", batchnorm=False, dropout=0.0, weight_decay=0.0, seed=None,
                 dtype=np.float32, regularizer=None, max_norm=None, alpha=None,
                 bn_momentum=None, bn_eps=1e-5, bn_momentum_convention="pytorch",
                 bn_unbiased=None, bn_running_var_init=1.0, dropout_inverted=True,
                 maxout_pieces=2, prelu_per_feature=False, loss="softmax_xent"):
        dt = resolve_dtype(dtype)
        loss_layer = _loss(loss, "loss", dt)
        self.input_size = positive_int("input_size", input_size)
        self.output_size = positive_int("output_size", output_size)
        if isinstance(hidden_sizes, (int, np.integer)):
            hidden_sizes = [hidden_sizes]
        self.hidden_sizes = [positive_int(f"hidden_sizes[{i}]", h) for i, h in enumerate(hidden_sizes)]
        act = activation.lower().replace("-", "_") if isinstance(activation, str) else activation
        if act not in _LAYER_ACTS:
            L.activation_code(act, alpha, also=_LAYER_ACTS)     # validates the name and alpha
        self.activation = act
        init_fn = _init.get(weight_init)
        self.dropout = real("dropout", dropout, 0.0, 1.0, hi_open=True)
        seed = seed_value(seed)
        self._kwargs = dict(
            input_size=self.input_size, hidden_sizes=list(self.hidden_sizes),
            output_size=self.output_size, activation=act, weight_init=L._init_spec(weight_init),
            batchnorm=bool(batchnorm), dropout=self.dropout,
            weight_decay=real("weight_decay", weight_decay, 0.0), seed=seed, dtype=dt.name,
            regularizer=regularizer.config() if isinstance(regularizer, R.Regularizer)
            else regularizer,
            max_norm=max_norm.c if isinstance(max_norm, R.MaxNorm) else max_norm, alpha=alpha, bn_momentum=bn_momentum,
            bn_eps=bn_eps, bn_momentum_convention=bn_momentum_convention, bn_unbiased=bn_unbiased,
            bn_running_var_init=bn_running_var_init,
            dropout_inverted=bool(dropout_inverted), maxout_pieces=maxout_pieces,
            prelu_per_feature=bool(prelu_per_feature),
            loss=loss if isinstance(loss, str) else loss_layer.config())
        rng = make_rng(seed)
        layers, entries, names, streams = [], [], [], {}

        def add(layer, name, pnames=None):
            layers.append(layer)
            names.append(name)
            for k in [*layer.params, *layer._buffers()]:
                entries.append(((pnames or {}).get(k, f"{name.lower()}.{k}"), layer, k))

        fan = self.input_size
        for k, h in enumerate(self.hidden_sizes, 1):
            own = lambda layer: {key: f"{key}{k}" for key in [*layer.params, *layer._buffers()]}
            if act == "maxout":
                d = L.Maxout(fan, h, maxout_pieces, weight_init=init_fn, dtype=dt, rng=rng)
            else:
                fused = act if act not in _LAYER_ACTS and not batchnorm else None
                d = L.Dense(fan, h, fused, weight_init=init_fn, dtype=dt, rng=rng,
                            alpha=alpha if fused else None)
            add(d, f"Affine{k}", own(d))
            if batchnorm:
                bn = L.BatchNorm(h, momentum=bn_momentum, eps=bn_eps,
                                 momentum_convention=bn_momentum_convention,
                                 unbiased=bn_unbiased, running_var_init=bn_running_var_init,
                                 dtype=dt)
                add(bn, f"BatchNorm{k}", own(bn))
            if act == "prelu":
                pr = L.PReLU(h if prelu_per_feature else 1, dtype=dt)
                add(pr, f"Activation{k}", own(pr))
            elif act == "rrelu":
                rr = L.RReLU(seed=0, dtype=dt)
                streams[rr] = (k, 2)
                add(rr, f"RReLU{k}")
            elif batchnorm and act != "maxout":
                add(L.Activation(act, alpha, dtype=dt), f"Activation{k}")
            if self.dropout > 0:
                dr = L.Dropout(self.dropout, inverted=dropout_inverted, seed=0, dtype=dt)
                streams[dr] = (k, 1)
                add(dr, f"Dropout{k}")
            fan = h
        n_out = len(self.hidden_sizes) + 1
        out = L.Dense(fan, self.output_size, None, weight_init=init_fn, dtype=dt, rng=rng)
        add(out, f"Affine{n_out}", {"W": f"W{n_out}", "b": f"b{n_out}"})
        self.layers = layers
        self.layer_names = names
        self.loss_layer = loss_layer
        self.loss_layer.check_finite = False
        _unify_dtype([loss_layer], dt)
        self._stream_ids = streams
        self._setup(layers, entries, _regularizer(regularizer, weight_decay), _max_norm(max_norm), dt)
        self.set_seed(seed)

    def set_seed(self, seed):
        """Derive the dropout/RReLU seeds from ``seed``: layer k's stream is
        ``derive_seed(seed, k, kind)``, kind 1 = dropout, 2 = RReLU (counters restart at 0)."""
        seed = seed_value(seed)
        for l, (k, kind) in self._stream_ids.items():
            l.seed = derive_seed(seed, k, kind)
            l.counter = 0
        self.seed = seed

    def config(self):
        return dict(self._kwargs)


# ============================================================================ multi-task
class MultiTaskNet(_Net):
    """A shared trunk and several heads, each with its loss (default softmax cross-entropy):
    ``loss = sum_h w_h * L_h(head_h(trunk(x)), t_h) + penalty``; the trunk's gradient is the
    sum of the heads' gradients at its output. Params "trunk.{i}.{name}" and "{head}.{i}.{name}".

    ``trunk``: list of layers or a Sequential (its loss is unused); ``heads``: dict name -> list
    of layers or Sequential; ``loss_weights``: dict name -> w_h (default 1); ``losses``: dict
    name -> a loss (a ``Loss``, its name or config; default softmax_xent), so heads may mix
    classification and regression. Targets are dicts name -> targets; sample weights an (N,)
    array (every head) or a dict name -> (N,) (a head left out is unweighted); ``predict``,
    ``accuracy`` (classification heads), ``r2`` (regression heads) and ``score`` return dicts
    keyed by head.
    """

    def __init__(self, trunk, heads, loss_weights=None, regularizer=None, max_norm=None,
                 dtype=None, seed=None, losses=None):
        self.trunk = _as_layers(trunk, "trunk")
        if not isinstance(heads, dict) or not heads:
            raise TypeError("heads must be a non-empty dict name -> list of layers")
        self.heads = {}
        for name, hl in heads.items():
            if not isinstance(name, str) or not name or "." in name or name == "trunk":
                raise ValueError(f"head names must be non-empty strings without '.', other than "
                                 f"'trunk'; got {name!r}")
            self.heads[name] = _as_layers(hl, f"heads[{name!r}]")
            if not self.heads[name]:
                raise ValueError(f"head {name!r} has no layers")
        _check_chain(self.trunk, "trunk")
        for name, hl in self.heads.items():
            _check_chain(self.trunk + hl, f"trunk + head {name!r} (head layer i is layer "
                                          f"{len(self.trunk)} + i)")
        lw = {} if loss_weights is None else dict(loss_weights)
        unknown = sorted(set(lw) - set(self.heads))
        if unknown:
            raise KeyError(f"loss_weights has unknown heads {unknown}; heads are {sorted(self.heads)}")
        self.loss_weights = {h: real(f"loss_weights[{h!r}]", lw.get(h, 1.0), 0.0) for h in self.heads}
        lo = {} if losses is None else dict(losses)
        unknown = sorted(set(lo) - set(self.heads))
        if unknown:
            raise KeyError(f"losses has unknown heads {unknown}; heads are {sorted(self.heads)}")
        self.loss_layers = {h: _loss(lo.get(h), f"losses[{h!r}]") for h in self.heads}
        for lossl in self.loss_layers.values():
            lossl.check_finite = False
        all_layers = self.trunk + [l for hl in self.heads.values() for l in hl]
        dt = _unify_dtype(all_layers + list(self.loss_layers.values()), dtype)
        entries = [(f"trunk.{i}.{k}", l, k) for i, l in enumerate(self.trunk)
                   for k in [*l.params, *l._buffers()]]
        for h, hl in self.heads.items():
            entries += [(f"{h}.{i}.{k}", l, k) for i, l in enumerate(hl)
                        for k in [*l.params, *l._buffers()]]
        self.layers = all_layers
        self.seed = seed
        self.losses = {}
        self._setup(all_layers, entries, R.get(regularizer), _max_norm(max_norm), dt)
        self._stochastic_seeds(seed)

    def _targets(self, t):
        if not isinstance(t, dict):
            raise TypeError(f"targets must be a dict head -> labels, got {type(t).__name__}")
        missing = sorted(set(self.heads) - set(t))
        extra = sorted(set(t) - set(self.heads))
        if missing or extra:
            raise KeyError(f"targets must have exactly the heads {sorted(self.heads)}; "
                           f"missing {missing}, unknown {extra}")
        return t

    def _forward_all(self, x, train):
        h = _forward(self.trunk, self._check_x(x), train)
        return {name: _forward(hl, h, train) for name, hl in self.heads.items()}

    def predict(self, x, train=False):
        """dict head -> output (new arrays)."""
        return {h: y.copy() for h, y in self._forward_all(x, train).items()}

    def _head_weights(self, sample_weight):
        """dict head -> sample weights or None."""
        if isinstance(sample_weight, dict):
            unknown = sorted(set(sample_weight) - set(self.heads))
            if unknown:
                raise KeyError(f"sample_weight has unknown heads {unknown}; heads are "
                               f"{sorted(self.heads)}")
            return {h: sample_weight.get(h) for h in self.heads}
        return {h: sample_weight for h in self.heads}

    def _data_loss(self, x, t, train, sample_weight=None):
        t = self._targets(t)
        sw = self._head_weights(sample_weight)
        outs = self._forward_all(x, train)
        self.losses = {h: self.loss_layers[h].forward(y, t[h], sw[h]) for h, y in outs.items()}
        return sum(self.loss_weights[h] * v for h, v in self.losses.items())

    def loss(self, x, t, train=False, sample_weight=None):
        """``sum_h w_h * L_h + penalty``; the per-head losses are left in ``self.losses``."""
        return self._data_loss(x, t, train, sample_weight) + self.penalty()

    def _graph(self):
        return tuple(self.trunk), tuple((tuple(hl), self.loss_layers[h], self.loss_weights[h])
                                        for h, hl in self.heads.items())

    def _targets_of(self, t):
        t = self._targets(t)
        return [t[h] for h in self.heads]

    def _weights_of(self, sample_weight):
        if sample_weight is None:
            return None
        sw = self._head_weights(sample_weight)
        return [sw[h] for h in self.heads]

    def _after_step(self, plan):
        self.losses = dict(zip(self.heads, plan.values.tolist()))

    def _metric(self, x, t, sample_weight, task):
        t = self._targets(t)
        sw = self._head_weights(sample_weight)
        out = {}
        for h, y in self._forward_all(x, False).items():
            loss = self.loss_layers[h]
            if task == "classify" and loss.TASK == "classify":
                out[h] = _accuracy(loss, y, t[h], sw[h], f"t[{h!r}]")
            elif task == "regress" and loss.TASK == "regress":
                out[h] = _r2(loss, y, t[h], sw[h], f"t[{h!r}]")
            elif task is None:
                out[h] = (_accuracy if loss.TASK == "classify" else _r2)(loss, y, t[h], sw[h],
                                                                         f"t[{h!r}]")
        return out

    def accuracy(self, x, t, sample_weight=None):
        """dict head -> accuracy, for the heads with a classification loss."""
        return self._metric(x, t, sample_weight, "classify")

    def r2(self, x, t, sample_weight=None):
        """dict head -> R^2, for the heads with a regression loss."""
        return self._metric(x, t, sample_weight, "regress")

    def score(self, x, t, sample_weight=None):
        """dict head -> accuracy (classification heads) or R^2 (regression heads)."""
        return self._metric(x, t, sample_weight, None)

    def config(self):
        return {"trunk": [l.config() for l in self.trunk],
                "heads": {h: [l.config() for l in hl] for h, hl in self.heads.items()},
                "loss_weights": dict(self.loss_weights),
                "losses": {h: l.config() for h, l in self.loss_layers.items()},
                "regularizer": None if self.regularizer is None else self.regularizer.config(),
                "max_norm": None if self.max_norm is None else self.max_norm.c,
                "dtype": self.dtype.name, "seed": self.seed}


# ============================================================================ reuse
def reuse(model, k, frozen=True):
    """Copies of the lower layers of ``model`` up to its ``k``-th parametrised layer, plus the
    parameter-free layers (activation, dropout) that directly follow it; ``frozen``: the copies
    are non-trainable. Build a new net with ``Sequential(reuse(old, k) + [new upper layers])``.
    ``k`` counts parametrised layers like ``freeze(upto=k)`` (1 <= k <= their number)."""
    import copy
    if not isinstance(model, _Net):
        raise TypeError(f"model must be a dlfast net, got {type(model).__name__}")
    layers = list(model.trunk) if isinstance(model, MultiTaskNet) else list(model.layers)
    pidx = [i for i, l in enumerate(layers) if l.params]
    k = positive_int("k", k)
    if k > len(pidx):
        raise ValueError(f"k={k} exceeds the number of parametrised layers ({len(pidx)})"
                         + (" in the trunk" if isinstance(model, MultiTaskNet) else ""))
    end = pidx[k] if k < len(pidx) else len(layers)
    out = []
    for l in layers[:end]:
        c = copy.deepcopy(l)
        c._ws, c._fwd = {}, None
        c.trainable = not frozen
        out.append(c)
    return out
