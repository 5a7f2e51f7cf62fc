"""Textbook compatibility: code written against "Deep Learning from Scratch" (``common/*.py``)
runs unchanged on dlfast with ``from dlfast.compat import *``.

Names: ``MultiLayerNet``, ``MultiLayerNetExtend``, ``SGD``, ``Momentum``, ``Nesterov``, ``AdaGrad``,
``RMSprop``, ``Adam``, ``Trainer``, ``numerical_gradient``, ``softmax``, ``sigmoid``, ``relu``,
``step_function``, ``identity_function``, ``sigmoid_grad``, ``relu_grad``, ``mean_squared_error``,
``cross_entropy_error``, ``softmax_loss``.

The textbook's numerical forms are kept (``/work/shared/CONVENTIONS.md`` "options"):

* weights ``W = weight_init_std * np.random.randn(fan_in, fan_out)`` from the *global*
  ``np.random`` (``np.random.seed(s)`` reproduces a run); 'relu'/'he' -> std sqrt(2/fan_in),
  'sigmoid'/'xavier' -> std sqrt(1/fan_in) (the textbook's "Xavier"); a number -> that std;
  biases 0. Dropout streams are seeded from ``np.random`` after the weights are drawn.
* loss = mean cross-entropy + 0.5*lambda*sum(W^2) over every W; ``gradient`` adds lambda*W.
* dropout (``dropout_ration`` r): train ``x * mask`` with mask = (u > r) (keep prob. 1-r),
  eval ``x * (1 - r)``.
* batch norm: y = gamma*(x-mu)/sqrt(var+1e-6)+beta with the biased batch var;
  running = 0.9*running + 0.1*batch (biased var); running mean and var start at 0.
* optimisers apply no weight decay (the net adds it): SGD; Momentum; AdaGrad and RMSprop with
  eps 1e-7 outside the sqrt; Adam with lr_t = lr*sqrt(1-b2^t)/(1-b1^t),
  w -= lr_t*m/(sqrt(v)+1e-7); Nesterov in the textbook's form (see ``Nesterov``).

Differences: arrays are float32 unless ``dtype=np.float64`` is given (inputs of another real dtype
are converted to the net's dtype, as the textbook's float64 arithmetic accepted any real input);
the nets' loss is the exact cross-entropy (logsumexp form; the textbook adds 1e-7 inside the
log, a difference of about 1e-7/p); batch norm in training mode needs batches of at least 2 rows; NaN/inf inputs or gradients raise.
Every net here also works with ``dlfast.train.Trainer`` and ``dlfast.gradcheck``.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from . import gradcheck as _gc
from . import kernels
from . import optim as _optim
from .net import MLP
from ._validation import FLOAT_DTYPES, resolve_dtype

__all__ = ["MultiLayerNet", "MultiLayerNetExtend", "SGD", "Momentum", "Nesterov", "AdaGrad",
           "RMSprop", "Adam", "Trainer", "numerical_gradient", "softmax", "sigmoid", "relu",
           "step_function", "identity_function", "sigmoid_grad", "relu_grad",
           "mean_squared_error", "cross_entropy_error", "softmax_loss"]

_TEXTBOOK_EPS = 1e-7          # AdaGrad / RMSprop / Adam (the textbook writes 1e-7)
_TEXTBOOK_BN_EPS = 1e-6       # the textbook writes 10e-7
_TEXTBOOK_H = 1e-4            # numerical_gradient step


# ============================================================================ functions
def _as_float(x):
    """x as a float ndarray (float32/float64 kept; anything else becomes float64)."""
    x = np.asarray(x)
    if x.dtype not in FLOAT_DTYPES:
        x = x.astype(np.float64)
    return x


def identity_function(x):
    """``x``."""
    return x


def step_function(x):
    """``1 if x > 0 else 0`` (int array)."""
    return np.array(np.asarray(x) > 0, dtype=int)


def _act(x, code):
    x = _as_float(x)
    out = np.empty_like(x)
    kernels.activation_forward(x, out, code)
    return out


def sigmoid(x):
    """``1 / (1 + exp(-x))`` (``kernels.activation_forward``)."""
    return _act(x, "sigmoid")


def sigmoid_grad(x):
    """``(1 - sigmoid(x)) * sigmoid(x)``."""
    y = sigmoid(x)
    return (1.0 - y) * y


def relu(x):
    """``max(x, 0)`` (``kernels.activation_forward``)."""
    return _act(x, "relu")


def relu_grad(x):
    """``1 if x >= 0 else 0`` (the textbook's choice at 0)."""
    x = np.asarray(x)
    return (x >= 0).astype(_as_float(x).dtype)


def softmax(x):
    """Row-wise ``exp(x - max) / sum exp(x - max)`` for a vector or a batch of rows
    (``kernels.softmax_forward``)."""
    x = _as_float(x)
    if x.ndim not in (1, 2):
        raise ValueError(f"x must be 1-D or 2-D, got shape {x.shape}")
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    out = np.empty(x2.shape, x.dtype)
    kernels.softmax_forward(x2, out)
    return out.reshape(x.shape)


def mean_squared_error(y, t):
    """``0.5 * sum (y - t)^2``."""
    return 0.5 * np.sum((np.asarray(y) - np.asarray(t)) ** 2)


def cross_entropy_error(y, t):
    """``-sum_n log(y[n, t_n] + 1e-7) / N`` for probabilities y; t indices or one-hot rows
    (a single vector y is a batch of one)."""
    y = np.asarray(y)
    t = np.asarray(t)
    if y.ndim == 1:
        t = t.reshape(1, t.size)
        y = y.reshape(1, y.size)
    if t.size == y.size:                      # one-hot -> indices
        t = t.argmax(axis=1)
    t = t.reshape(-1)
    n = y.shape[0]
    if t.shape[0] != n:
        raise ValueError(f"t must have {n} labels (or one-hot rows) to match y {y.shape}, got {t.shape}")
    return -np.sum(np.log(y[np.arange(n), t.astype(np.int64)] + 1e-7)) / n


def softmax_loss(X, t):
    """``cross_entropy_error(softmax(X), t)``."""
    return cross_entropy_error(softmax(X), t)


def numerical_gradient(f, x):
    """The textbook's central difference with h = 1e-4: ``(f(x + h e_i) - f(x - h e_i)) / 2h``
    per element; ``f(x)`` is called with x perturbed in place (restored afterwards)
    (``dlfast.gradcheck.numerical_gradient``, whose divisor is the step actually taken)."""
    if isinstance(x, np.ndarray) and x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be a float32 or float64 array (it is perturbed by h=1e-4), "
                        f"got {x.dtype.name}")
    return _gc.numerical_gradient(f, x, eps=_TEXTBOOK_H)


# ============================================================================ nets
def _textbook_std(weight_init_std, fan_in):
    if isinstance(weight_init_std, str):
        key = weight_init_std.lower()
        if key in ("relu", "he"):
            return math.sqrt(2.0 / fan_in)
        if key in ("sigmoid", "xavier"):
            return math.sqrt(1.0 / fan_in)
        raise ValueError(f"weight_init_std must be 'relu'/'he', 'sigmoid'/'xavier' or a number, "
                         f"got {weight_init_std!r}")
    if isinstance(weight_init_std, (bool, np.bool_)) or not isinstance(weight_init_std, (int, float, np.number)):
        raise TypeError(f"weight_init_std must be 'relu'/'he', 'sigmoid'/'xavier' or a number, "
                        f"got {type(weight_init_std).__name__}")
    std = float(weight_init_std)
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"weight_init_std must be a finite number >= 0, got {std}")
    return std


class MultiLayerNet:
    """The textbook's fully connected net (``common/multi_layer_net.py``):
    Affine -> activation per hidden size, a last Affine, softmax with loss.

    ``predict(x, train_flg=False)``, ``loss(x, t, train_flg=False)`` (with the L2 term),
    ``accuracy(x, t)``, ``gradient(x, t)``, ``numerical_gradient(x, t)``; ``params``
    (W1, b1, ...), ``layers`` (OrderedDict 'Affine1', ...), ``last_layer``. ``net`` is the
    underlying ``dlfast.net.MLP`` (the activation is fused into the Affine layer when there is
    no batch norm, so ``layers`` then has no separate 'Activation_function' entries).
    """

    def __init__(self, input_size, hidden_size_list, output_size, activation="relu",
                 weight_init_std="relu", weight_decay_lambda=0, *, dtype=np.float32):
        self._build(input_size, hidden_size_list, output_size, activation, weight_init_std,
                    weight_decay_lambda, False, 0.5, False, dtype)

    def _build(self, input_size, hidden_size_list, output_size, activation, weight_init_std,
               weight_decay_lambda, use_dropout, dropout_ration, use_batchnorm, dtype):
        self.input_size = input_size
        self.output_size = output_size
        self.hidden_size_list = list(hidden_size_list)
        self.hidden_layer_num = len(self.hidden_size_list)
        self.weight_decay_lambda = weight_decay_lambda
        self.weight_init_std = weight_init_std
        self.activation = activation
        self.use_dropout = bool(use_dropout)
        self.dropout_ration = dropout_ration
        self.use_batchnorm = bool(use_batchnorm)
        _textbook_std(weight_init_std, 1)            # validate before drawing anything

        def init(shape, rng=None, dtype=np.float32):
            # the textbook: weight_init_std * np.random.randn(fan_in, fan_out), global stream
            return (_textbook_std(weight_init_std, shape[0]) * np.random.randn(*shape)).astype(dtype)

        self.net = MLP(input_size, self.hidden_size_list, output_size, activation=activation,
                       weight_init=init, batchnorm=self.use_batchnorm,
                       dropout=dropout_ration if self.use_dropout else 0.0,
                       weight_decay=weight_decay_lambda, seed=0, dtype=resolve_dtype(dtype),
                       bn_momentum=0.9, bn_eps=_TEXTBOOK_BN_EPS, bn_momentum_convention="textbook",
                       bn_unbiased=False, bn_running_var_init=0.0, dropout_inverted=False)
        if self.use_dropout:
            # dropout masks follow np.random.seed too: the stream seed is drawn from it
            self.net.set_seed(int(np.random.randint(0, 2 ** 31 - 1)))
        self.layers = OrderedDict(
            (name.replace("Activation", "Activation_function"), layer)
            for name, layer in zip(self.net.layer_names, self.net.layers))
        self.last_layer = self.net.loss_layer

    # ---------------------------------------------------------------- dlfast net interface
    @property
    def params(self):
        """name -> the layer's own array (W1, b1, gamma1, beta1, ...)."""
        return self.net.params

    @property
    def grads(self):
        return self.net.grads

    @property
    def dtype(self):
        return self.net.dtype

    @property
    def loss_layer(self):
        return self.net.loss_layer

    def _x(self, x):
        x = np.asarray(x)
        return x if x.dtype == self.net.dtype else x.astype(self.net.dtype)

    def forward(self, x, train=True):
        """Scores of the last Affine layer (a layer buffer, not copied)."""
        return self.net.forward(self._x(x), train)

    def loss_and_gradient(self, x, t):
        """``(loss, grads)`` of one train-mode pass (grads are the layers' buffers)."""
        return self.net.loss_and_gradient(self._x(x), t)

    def penalty(self):
        return self.net.penalty()

    def apply_constraints(self):
        self.net.apply_constraints()

    def state_dict(self):
        return self.net.state_dict()

    def load_state_dict(self, d, strict=True):
        self.net.load_state_dict(d, strict)

    # ---------------------------------------------------------------- textbook interface
    def predict(self, x, train_flg=False):
        """Scores (before the softmax), a new array."""
        return self.net.predict(self._x(x), train_flg)

    def loss(self, x, t, train_flg=False):
        """Mean cross-entropy + 0.5 * lambda * sum over every W of sum(W^2)."""
        return self.net.loss(self._x(x), t, train_flg)

    def accuracy(self, x, t):
        """Fraction of rows whose argmax score equals t (indices or one-hot rows)."""
        t = np.asarray(t)
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        y = self.net.forward(self._x(x), False)
        return float(np.sum(np.argmax(y, axis=1) == t)) / float(self._x(x).shape[0])

    def gradient(self, x, t):
        """Gradients (new arrays) of ``loss(x, t, train_flg=True)``, weight decay lambda*W included."""
        return self.net.gradient(self._x(x), t)

    def numerical_gradient(self, x, t):
        """Central differences (h = 1e-4) of ``loss(x, t, train_flg=True)`` for every param;
        dropout masks are held fixed and BN running statistics restored afterwards."""
        x = self._x(x)
        state = self.net.state_dict()
        try:
            with _gc.hold_rng(self.net):
                def loss_W(_):
                    return self.net.loss(x, t, True)
                return {k: numerical_gradient(loss_W, p) for k, p in self.net.params.items()}
        finally:
            self.net.load_state_dict(state)

    def __repr__(self):
        return (f"{type(self).__name__}(input_size={self.input_size}, hidden_size_list="
                f"{self.hidden_size_list}, output_size={self.output_size}, "
                f"activation={self.activation!r}, weight_init_std={self.weight_init_std!r})")


class MultiLayerNetExtend(MultiLayerNet):
    """``MultiLayerNet`` with the textbook's batch norm (``use_batchnorm``) and dropout
    (``use_dropout``, ``dropout_ration``): Affine -> [BatchNorm] -> Activation_function ->
    [Dropout] per hidden layer; params add ``gamma{k}``, ``beta{k}``."""

    def __init__(self, input_size, hidden_size_list, output_size, activation="relu",
                 weight_init_std="relu", weight_decay_lambda=0, use_dropout=False,
                 dropout_ration=0.5, use_batchnorm=False, *, dtype=np.float32):
        self._build(input_size, hidden_size_list, output_size, activation, weight_init_std,
                    weight_decay_lambda, use_dropout, dropout_ration, use_batchnorm, dtype)


# ============================================================================ optimisers
class SGD(_optim.SGD):
    """``w -= lr * g``."""

    def __init__(self, lr=0.01):
        super().__init__(lr)


class Momentum(_optim.Momentum):
    """``v = momentum*v - lr*g; w += v``."""

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr, momentum)


class Nesterov(_optim.Optimizer):
    """The textbook's Nesterov: ``v = mu*v - lr*g; w += mu^2*v - (1+mu)*lr*g`` (v after its
    update). Done with two kernels on the scaled state ``u = mu*v``:
    ``nesterov_update(w, g, u, lr=mu*lr, mu=mu)`` (``u = mu*u - mu*lr*g; w += mu*u - mu*lr*g``)
    then ``sgd_update(w, g, lr=lr)`` — the same arithmetic up to rounding. ``v`` returns mu-scaled
    back (``u / mu``; 0 when mu = 0)."""

    STATE = ("u",)
    _HYPER = ("momentum",)

    def __init__(self, lr=0.01, momentum=0.9):
        super().__init__(lr)
        self.momentum = _optim._unit_closed("momentum", momentum)

    def _set_own(self, h):
        self.momentum = _optim._unit_closed("momentum", h["momentum"])

    def _step(self, w, g, st, wd, gs, cv):
        mu = self.momentum
        kernels.nesterov_update(w, g, st["u"], lr=mu * self.lr, mu=mu, wd=wd, grad_scale=gs,
                                clip_value=cv)
        kernels.sgd_update(w, g, lr=self.lr, wd=wd, grad_scale=gs, clip_value=cv)

    @property
    def v(self):
        """The textbook's velocity per parameter (computed from u = mu*v)."""
        mu = self.momentum
        return {k: (st["u"] / mu if mu else np.zeros_like(st["u"])) for k, st in self.state.items()}


class AdaGrad(_optim.AdaGrad):
    """``h += g^2; w -= lr * g / (sqrt(h) + 1e-7)``."""

    def __init__(self, lr=0.01):
        super().__init__(lr, eps=_TEXTBOOK_EPS)


class RMSprop(_optim.RMSProp):
    """``h = decay_rate*h + (1-decay_rate)*g^2; w -= lr * g / (sqrt(h) + 1e-7)``."""

    def __init__(self, lr=0.01, decay_rate=0.99):
        super().__init__(lr, decay_rate=decay_rate, eps=_TEXTBOOK_EPS)


class Adam(_optim.Adam):
    """``m += (1-b1)(g-m); v += (1-b2)(g^2-v); w -= lr_t*m/(sqrt(v)+1e-7)``,
    ``lr_t = lr*sqrt(1-b2^t)/(1-b1^t)`` (the folded "eps-hat" form)."""

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        super().__init__(lr, beta1, beta2, eps=_TEXTBOOK_EPS, eps_hat=True)


_OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad,
               "rmsprop": RMSprop, "rmsprpo": RMSprop, "adam": Adam}


# ============================================================================ trainer
class Trainer:
    """The textbook's trainer (``common/trainer.py``). ``train_step``: a batch of
    ``mini_batch_size`` rows drawn with ``np.random.choice`` (with replacement), ``gradient``,
    ``optimizer.update``, then ``loss`` of the batch (eval mode) appended to ``train_loss_list``;
    every ``iter_per_epoch = max(train_size / mini_batch_size, 1)`` steps the train and test
    accuracies (of the first ``evaluate_sample_num_per_epoch`` rows when given) are appended to
    ``train_acc_list`` / ``test_acc_list``. ``train()`` runs ``int(epochs * iter_per_epoch)`` steps.
    ``optimizer``: a name ('SGD', 'Momentum', 'Nesterov', 'AdaGrad', 'RMSprop', 'Adam') built with
    ``optimizer_param``, or an optimiser instance."""

    def __init__(self, network, x_train, t_train, x_test, t_test, epochs=20, mini_batch_size=100,
                 optimizer="SGD", optimizer_param={"lr": 0.01},      # noqa: B006 (textbook API)
                 evaluate_sample_num_per_epoch=None, verbose=True):
        self.network = network
        self.verbose = verbose
        self.x_train, self.t_train = x_train, t_train
        self.x_test, self.t_test = x_test, t_test
        self.epochs = epochs
        self.batch_size = mini_batch_size
        self.evaluate_sample_num_per_epoch = evaluate_sample_num_per_epoch
        if isinstance(optimizer, str):
            cls = _OPTIMIZERS.get(optimizer.lower())
            if cls is None:
                raise ValueError(f"unknown optimizer {optimizer!r}; choose one of "
                                 f"SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam")
            self.optimizer = cls(**dict(optimizer_param or {}))
        elif callable(getattr(optimizer, "update", None)):
            self.optimizer = optimizer
        else:
            raise TypeError(f"optimizer must be a name or have update(params, grads), "
                            f"got {type(optimizer).__name__}")
        self.train_size = x_train.shape[0]
        self.iter_per_epoch = max(self.train_size / mini_batch_size, 1)
        self.max_iter = int(epochs * self.iter_per_epoch)
        self.current_iter = 0
        self.current_epoch = 0
        self.train_loss_list = []
        self.train_acc_list = []
        self.test_acc_list = []

    def train_step(self):
        batch_mask = np.random.choice(self.train_size, self.batch_size)
        x_batch = self.x_train[batch_mask]
        t_batch = self.t_train[batch_mask]
        grads = self.network.gradient(x_batch, t_batch)
        self.optimizer.update(self.network.params, grads)
        loss = self.network.loss(x_batch, t_batch)
        self.train_loss_list.append(loss)
        if self.verbose:
            print("train loss:" + str(loss))
        if self.current_iter % self.iter_per_epoch == 0:
            self.current_epoch += 1
            x_tr, t_tr, x_te, t_te = self.x_train, self.t_train, self.x_test, self.t_test
            if self.evaluate_sample_num_per_epoch is not None:
                k = self.evaluate_sample_num_per_epoch
                x_tr, t_tr, x_te, t_te = x_tr[:k], t_tr[:k], x_te[:k], t_te[:k]
            train_acc = self.network.accuracy(x_tr, t_tr)
            test_acc = self.network.accuracy(x_te, t_te)
            self.train_acc_list.append(train_acc)
            self.test_acc_list.append(test_acc)
            if self.verbose:
                print(f"=== epoch:{self.current_epoch}, train acc:{train_acc}, "
                      f"test acc:{test_acc} ===")
        self.current_iter += 1

    def train(self):
        for _ in range(self.max_iter):
            self.train_step()
        test_acc = self.network.accuracy(self.x_test, self.t_test)
        if self.verbose:
            print("=============== Final Test Accuracy ===============")
            print("test acc:" + str(test_acc))
        return test_acc
