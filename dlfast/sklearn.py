"""scikit-learn estimators on dlfast: ``MLPClassifier`` and ``MLPRegressor``.

Needs scikit-learn (``pip install dlfast[sklearn]``); ``import dlfast`` does not import it.

Each estimator trains a ``dlfast.net.MLP`` with ``dlfast.train.Trainer``: ``max_iter`` epochs of
shuffled mini-batches of ``batch_size`` rows ("auto": min(200, n)), stopped early when the
training loss has not improved by ``tol`` for ``n_iter_no_change`` epochs, or with
``early_stopping`` when the score (accuracy, R^2) of a ``validation_fraction`` held out of the
training data has not improved by ``tol`` (the best epoch's weights are restored). Targets:

* ``MLPClassifier``: binary (one output, sigmoid binary cross-entropy; ``predict_proba`` gives
  (N, 2) as scikit-learn's), multiclass (softmax cross-entropy over the classes), multi-label
  (an indicator matrix (N, K): K sigmoid outputs, ``predict`` gives the indicator matrix);
* ``MLPRegressor``: one or several outputs, ``loss`` "squared_error"/"mse", "mae" or "huber".

Hyperparameters (both): ``hidden_layer_sizes``, ``activation`` (relu, tanh, logistic/sigmoid,
identity, leaky_relu, elu, prelu, rrelu, maxout), ``weight_init`` (a ``dlfast.init`` name),
``solver`` (sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw) with
``learning_rate_init``, ``momentum``, ``beta_1``, ``beta_2``, ``epsilon``; ``alpha`` (L2 of the
weights, biases and batch-norm parameters excluded: the gradient of ``(alpha/2) sum W^2`` added
to the mean loss's, applied by the optimiser as coupled weight decay ``g += alpha W``, fused into
its update; with adamw the decoupled decay ``W *= 1 - lr alpha``; scikit-learn divides its alpha
by the batch size, so its alpha a is ``a / batch_size`` here), ``l1`` (``l1 sum |W|``: with
alpha, elastic net), ``max_norm``; ``batchnorm``, ``dropout``; ``schedule`` (None, "step", "exp", "inverse",
"plateau") with ``schedule_params`` (a dict: step_size and gamma, k, or factor and patience);
``clip_norm``, ``clip_value``; ``batch_size``, ``max_iter``, ``shuffle``, ``random_state``,
``warm_start``; ``backend`` ("numpy", "cython"; None: the active one), ``n_threads`` (None:
the current setting), ``dtype`` ("float32" or "float64"); ``verbose`` (a progress bar).

Fitted attributes: ``model_`` (the MLP), ``classes_``, ``n_features_in_``, ``feature_names_in_``
(DataFrames with string column names), ``n_outputs_``, ``loss_curve_`` (mean training
mini-batch loss per epoch, with the L1 penalty; the L2 term of alpha, applied as weight decay,
is not added), ``best_loss_``, ``validation_scores_`` and
``best_validation_score_`` (with ``early_stopping``, else None), ``n_iter_`` (epochs), ``t_``
(optimiser steps), ``coefs_``/``intercepts_`` (copies of the Dense weights and biases).
"""
from __future__ import annotations

import contextlib
import numbers
import warnings
import weakref

import numpy as np

try:
    import sklearn
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import type_of_target
    from sklearn.utils.validation import check_is_fitted
except ImportError as _exc:                                     # pragma: no cover
    raise ImportError("dlfast.sklearn needs scikit-learn: pip install dlfast[sklearn] "
                      f"(or pip install scikit-learn) ({_exc})") from _exc

try:                                                            # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _sk_validate
except ImportError:                                             # pragma: no cover
    _sk_validate = None

__all__ = ["MLPClassifier", "MLPRegressor"]

_TWINS = weakref.WeakKeyDictionary()        # float32 model -> its float64 twin (predictions)
_ACTIVATIONS = {"logistic": "sigmoid"}
_SCHEDULES = (None, "step", "exp", "inverse", "plateau")
_SOLVERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")

# Checks of scikit-learn's estimator_checks that cannot apply, with the reason (declared in the
# tags: ``_more_tags()["_xfail_checks"]`` for scikit-learn < 1.6, and ``EXPECTED_FAILED_CHECKS``
# for ``check_estimator(..., expected_failed_checks=...)`` on newer versions).
EXPECTED_FAILED_CHECKS = {
    "check_sample_weight_equivalence_on_dense_data":
        "mini-batch training: a weight of 2 scales a row's gradient inside its batch, while a "
        "repeated row changes the batches (their number, composition and order), so the two "
        "fits follow different optimisation paths (with one batch of every row they agree only "
        "to float32 rounding, which the check's rtol of 1e-7 need not absorb)",
    "check_sample_weights_invariance":
        "mini-batch training: removing the rows of weight 0 changes the batches, so the fit "
        "follows another optimisation path",
}


def _in_range(name, a, dt):
    """``a`` as a C-contiguous array of dtype ``dt``; ValueError when a finite value overflows
    it (float64 data beyond float32's range)."""
    out = np.ascontiguousarray(a, dtype=dt)
    if out.dtype != np.asarray(a).dtype and out.size:
        from . import kernels
        if not kernels.all_finite(out.reshape(-1)):
            raise ValueError(f"{name} has values beyond {np.dtype(dt).name}'s range (largest "
                             f"magnitude {float(np.max(np.abs(a))):.3g}, limit "
                             f"{float(np.finfo(dt).max):.3g}); scale it, or use dtype='float64'")
    return out


def _validate(est, X, y="no_validation", reset=True, **kw):
    """scikit-learn's ``validate_data`` (``_validate_data`` before 1.6)."""
    if _sk_validate is not None:
        return _sk_validate(est, X, y, reset=reset, **kw)
    return est._validate_data(X, y, reset=reset, **kw)          # pragma: no cover


@contextlib.contextmanager
def _runtime(backend, n_threads):
    """The backend and thread count of one call, restored afterwards."""
    from . import _config
    saved = _config._default[0], _config._threads[0]
    try:
        if backend is not None:
            _config.set_backend(backend)
        if n_threads is not None:
            _config.set_num_threads(n_threads)
        yield
    finally:
        _config._default[0] = saved[0]
        if _config._threads[0] != saved[1]:
            _config.set_num_threads(saved[1])


def _seed(rs):
    return int(rs.randint(np.iinfo(np.int32).max))


class _BaseMLP(BaseEstimator):
    """Shared by ``MLPClassifier`` and ``MLPRegressor`` (see the module docstring)."""

    _TASK = None

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, weight_init="he",
                 solver="adam", learning_rate_init=0.001, momentum=0.9, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, alpha=0.0001, l1=0.0, max_norm=None,
                 batchnorm=False, dropout=0.0, schedule=None, schedule_params=None,
                 clip_norm=None, clip_value=None, batch_size="auto", max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, warm_start=False, backend=None, n_threads=None,
                 dtype="float32", verbose=False):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.weight_init = weight_init
        self.solver = solver
        self.learning_rate_init = learning_rate_init
        self.momentum = momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.alpha = alpha
        self.l1 = l1
        self.max_norm = max_norm
        self.batchnorm = batchnorm
        self.dropout = dropout
        self.schedule = schedule
        self.schedule_params = schedule_params
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.warm_start = warm_start
        self.backend = backend
        self.n_threads = n_threads
        self.dtype = dtype
        self.verbose = verbose

    # ---------------------------------------------------------------- checks of the settings
    def _check_params(self):
        from ._validation import positive_int, real, resolve_dtype
        hidden = self.hidden_layer_sizes
        if isinstance(hidden, numbers.Integral):
            hidden = (hidden,)
        hidden = tuple(hidden)
        for i, h in enumerate(hidden):
            positive_int(f"hidden_layer_sizes[{i}]", h)
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {_SOLVERS}, got {self.solver!r}")
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {self.schedule!r}")
        if self.schedule_params is not None and not isinstance(self.schedule_params, dict):
            raise TypeError(f"schedule_params must be a dict or None, got "
                            f"{type(self.schedule_params).__name__}")
        positive_int("max_iter", self.max_iter)
        positive_int("n_iter_no_change", self.n_iter_no_change)
        if self.batch_size != "auto":
            positive_int("batch_size", self.batch_size)
        real("learning_rate_init", self.learning_rate_init, 0.0, lo_open=True)
        real("alpha", self.alpha, 0.0)
        real("l1", self.l1, 0.0)
        real("tol", self.tol, 0.0)
        real("validation_fraction", self.validation_fraction, 0.0, 1.0, lo_open=True,
             hi_open=True)
        if self.backend not in (None, "numpy", "cython"):
            raise ValueError(f"backend must be None, 'numpy' or 'cython', got {self.backend!r}")
        if self.n_threads is not None:
            from ._validation import nonneg_int
            nonneg_int("n_threads", self.n_threads)
        return hidden, resolve_dtype(self.dtype)

    def _activation(self):
        a = self.activation
        if isinstance(a, str) and a not in _ACTIVATIONS:
            from .net import MLP
            try:
                MLP(1, [1], 1, activation=a)
            except ValueError as exc:
                raise ValueError(f"activation: {exc} (or {', '.join(map(repr, _ACTIVATIONS))}, "
                                 f"scikit-learn's name)") from None
        return _ACTIVATIONS.get(a, a) if isinstance(a, str) else a

    # ---------------------------------------------------------------- the parts of a fit
    def _make_model(self, n_in, n_out, loss, hidden, dt, seed):
        from . import regularizers as R
        from .net import MLP
        reg = R.L1(self.l1) if self.l1 else None       # alpha: the optimiser's weight decay
        return MLP(n_in, list(hidden), n_out, activation=self._activation(),
                   weight_init=self.weight_init, batchnorm=bool(self.batchnorm),
                   dropout=self.dropout, seed=seed, dtype=dt, regularizer=reg,
                   max_norm=self.max_norm, loss=loss)

    def _make_optimizer(self):
        from . import optim
        kw = {"lr": self.learning_rate_init, "clip_norm": self.clip_norm,
              "clip_value": self.clip_value, "weight_decay": self.alpha}
        if self.solver in ("momentum", "nesterov"):
            kw["momentum"] = self.momentum
        elif self.solver in ("adam", "adamw"):
            kw.update(beta1=self.beta_1, beta2=self.beta_2, eps=self.epsilon)
        elif self.solver in ("adagrad", "rmsprop"):
            kw["eps"] = self.epsilon
        return optim.get(self.solver, **kw)

    def _make_schedule(self):
        from . import schedules as S
        if self.schedule is None:
            return None
        p = dict(self.schedule_params or {})
        lr0 = self.learning_rate_init
        try:
            if self.schedule == "step":
                return S.StepDecay(lr0, p.pop("step_size", 10), p.pop("gamma", 0.5), **p)
            if self.schedule == "exp":
                return S.ExponentialDecay(lr0, p.pop("k", 0.05), **p)
            if self.schedule == "inverse":
                return S.InverseTimeDecay(lr0, p.pop("k", 0.05), **p)
            return S.ReduceOnPlateau(lr0, **{"factor": 0.5, "patience": 5, **p})
        except TypeError as exc:
            raise TypeError(f"schedule_params for schedule {self.schedule!r}: {exc}") from None

    def _batch(self, n):
        return min(200, n) if self.batch_size == "auto" else min(int(self.batch_size), n)

    def _first_fit(self, incremental):
        return not hasattr(self, "model_") or (not self.warm_start and not incremental)

    def _fit(self, X, y, sample_weight, incremental, classes=None):
        hidden, dt = self._check_params()
        first = self._first_fit(incremental)
        if first:
            for a in ("model_", "_optimizer", "_schedule"):
                self.__dict__.pop(a, None)
        self._dtype = dt
        X, y = _validate(self, X, y, reset=first, dtype=(np.float64, np.float32),
                         multi_output=True, y_numeric=self._TASK == "regress")
        if not first and self.model_.dtype != dt:
            raise ValueError(f"dtype={np.dtype(dt).name!r} differs from the fitted model's "
                             f"{self.model_.dtype.name}; warm_start and partial_fit continue that "
                             f"model: set dtype back, or fit anew (warm_start=False)")
        X = _in_range("X", X, dt)
        n = X.shape[0]
        sw = None
        if sample_weight is not None:
            from ._validation import sample_weights
            sw = sample_weights(np.asarray(sample_weight) if not isinstance(sample_weight,
                                np.ndarray) else sample_weight, n)
        t, n_out, loss = self._targets(y, first, incremental, classes, sw)
        rs = check_random_state(self.random_state)
        model_seed, train_seed = _seed(rs), _seed(rs)
        from .train import EarlyStopping, Trainer
        with _runtime(self.backend, self.n_threads):
            if first:
                self.model_ = self._make_model(X.shape[1], n_out, loss, hidden, dt, model_seed)
                self._optimizer = self._make_optimizer()
                self._schedule = self._make_schedule()
                self.loss_curve_, self.n_iter_, self.t_ = [], 0, 0
                self.best_loss_ = np.inf
                self.validation_scores_ = self.best_validation_score_ = None
            self.n_outputs_ = n_out
            early = self.early_stopping and not incremental
            if early and n < 2:
                raise ValueError(f"early_stopping needs at least 2 samples to hold out a "
                                 f"validation set, got {n}")
            monitor = ("val_accuracy" if self._TASK == "classify" else "val_r2") if early \
                else "batch_loss"
            es = None if incremental else EarlyStopping(
                self.n_iter_no_change, min_delta=self.tol, restore_best=bool(early),
                monitor=monitor)
            val_split = self.validation_fraction if early else None
            if early:
                val_split = max(val_split, 1.0 / n)
                val_split = min(val_split, (n - 1.0) / n)
            trainer = Trainer(self.model_, self._optimizer, epochs=1 if incremental else
                              self.max_iter, batch_size=self._batch(n), schedule=self._schedule,
                              early_stopping=es, val_split=val_split,
                              stratify=self._TASK == "classify", progress=bool(self.verbose),
                              seed=train_seed, shuffle=bool(self.shuffle), eval_train=False,
                              handle_interrupt=False)
            trainer.epoch, trainer.step = self.n_iter_, self.t_     # schedules continue
            hist = trainer.fit(X, t, sample_weight=sw)
        _TWINS.pop(self.model_, None)                   # its weights changed
        self._record(hist, trainer, es, early, incremental)
        return self

    def _record(self, hist, trainer, es, early, incremental):
        curve = [float(v) for v in hist.batch_loss]
        self.loss_curve_ = list(self.loss_curve_) + curve
        self.n_iter_, self.t_ = trainer.epoch, trainer.step
        if curve:
            self.best_loss_ = min(self.best_loss_, min(curve))
        if early:
            scores = hist.val_accuracy if self._TASK == "classify" else hist.val_r2
            self.validation_scores_ = list(self.validation_scores_ or []) + list(scores)
            self.best_validation_score_ = float(max(self.validation_scores_))
        if not incremental and (es is None or not es.stopped_epoch):
            warnings.warn(f"{type(self).__name__}: the maximum of {self.max_iter} epochs "
                          f"(max_iter) was reached and the optimisation has not converged yet",
                          ConvergenceWarning)

    def _outputs(self, X):
        """The net's outputs (N, n_outputs), computed in float64 (a float32 model's weights in
        a float64 twin of it): a row's prediction does not depend on the other rows of X beyond
        float64 rounding (float32 GEMMs round a row differently by its place in the batch)."""
        check_is_fitted(self, "model_")
        X = _validate(self, X, reset=False, dtype=(np.float64, np.float32))
        X = np.ascontiguousarray(X, dtype=np.float64)
        out = np.empty((X.shape[0], self.n_outputs_))
        with _runtime(self.backend, self.n_threads):
            model = self._model64()
            for s in range(0, X.shape[0], 4096):
                out[s:s + 4096] = model.forward(X[s:s + 4096], False)
        return out

    def _model64(self):
        """The model, or its float64 twin (made once per fit, kept outside ``__dict__``: a
        prediction leaves the estimator unchanged)."""
        if self.model_.dtype == np.float64:
            return self.model_
        twin = _TWINS.get(self.model_)
        if twin is None:
            from .net import MLP
            twin = MLP(**{**self.model_.config(), "dtype": "float64"})
            twin.load_state_dict(self.model_.state_dict())
            _TWINS[self.model_] = twin
        return twin

    @property
    def coefs_(self):
        """Copies of the weight matrices W (in, out) of the Dense layers, input first."""
        check_is_fitted(self, "model_")
        return [l.params["W"].copy() for l in self.model_.layers if "W" in l.params]

    @property
    def intercepts_(self):
        """Copies of the biases of the Dense layers, input first."""
        check_is_fitted(self, "model_")
        return [l.params["b"].copy() for l in self.model_.layers if "b" in l.params]

    # ---------------------------------------------------------------- scikit-learn tags
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def _more_tags(self):                                       # scikit-learn < 1.6
        return {"multioutput": True, "_xfail_checks": dict(EXPECTED_FAILED_CHECKS)}


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier on dlfast (see the module docstring): binary,
    multiclass and multi-label targets."""

    _TASK = "classify"

    def _targets(self, y, first, incremental, classes, sw):
        if y.ndim == 2 and y.shape[1] == 1 and type_of_target(y) != "multilabel-indicator":
            warnings.warn("A column-vector y was passed when a 1d array was expected; it is "
                          "flattened (ravel)", DataConversionWarning, stacklevel=3)
            y = y.ravel()
        kind = type_of_target(y)
        if kind not in ("binary", "multiclass", "multilabel-indicator"):
            raise ValueError(f"Unknown label type: {kind!r}; MLPClassifier takes binary, "
                             f"multiclass or multi-label indicator targets (use MLPRegressor "
                             f"for continuous ones)")
        multilabel = kind == "multilabel-indicator"
        if first:
            if incremental and classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            if multilabel:
                got = np.arange(y.shape[1])
            else:
                got = np.unique(y if classes is None else np.asarray(classes))
            if not multilabel and got.size < 2:
                raise ValueError(f"MLPClassifier needs samples of at least 2 classes; got one "
                                 f"class only ({got[0]!r})")
            self.classes_ = got
            self._multilabel = multilabel
        else:
            if multilabel != self._multilabel or (multilabel and
                                                  y.shape[1] != self.classes_.size):
                raise ValueError("y has another kind of target (multi-label or not, or another "
                                 "number of labels) than the fitted model")
            if incremental and classes is not None and not np.array_equal(
                    np.unique(np.asarray(classes)), self.classes_):
                raise ValueError(f"classes={classes!r} differs from the classes of the first "
                                 f"call to partial_fit, {self.classes_.tolist()}")
        if multilabel:
            return y.astype(self._dtype), self.classes_.size, "sigmoid_bce"
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            what = "classes" if incremental else "the classes of the first fit (warm_start)"
            raise ValueError(f"y holds labels {unknown.tolist()} outside {what}: "
                             f"{self.classes_.tolist()}")
        idx = np.searchsorted(self.classes_, y)
        if sw is not None and np.unique(idx[sw > 0]).size < 2 and first and not incremental:
            raise ValueError(f"MLPClassifier needs samples of at least 2 classes with positive "
                             f"sample_weight; got one class only "
                             f"({self.classes_[idx[sw > 0][0]]!r})")
        if self.classes_.size == 2:
            return idx.astype(self._dtype), 1, "sigmoid_bce"
        return idx.astype(np.int64), self.classes_.size, "softmax_xent"

    def fit(self, X, y, sample_weight=None):
        """Train on X (N, F) and labels y (N,) (or an indicator matrix (N, K): multi-label);
        ``sample_weight`` (N,): per-row weights of the loss. Returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights and optimiser state;
        ``classes`` (every label y may ever hold) is required on the first call."""
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities: (N, 2) for binary, (N, K) softmax for multiclass, (N, K) of
        independent sigmoids for multi-label."""
        z = self._outputs(X)
        if self._multilabel:
            return _sigmoid(z)
        if self.classes_.size == 2:
            p = _sigmoid(z[:, 0])
            return np.column_stack([1.0 - p, p])
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        """log of ``predict_proba`` (computed stably from the logits)."""
        z = self._outputs(X)
        if self._multilabel:
            return _log_sigmoid(z)
        if self.classes_.size == 2:
            return np.column_stack([_log_sigmoid(-z[:, 0]), _log_sigmoid(z[:, 0])])
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def predict(self, X):
        """Labels (N,) (multi-label: the indicator matrix (N, K) of the labels with p > 1/2)."""
        z = self._outputs(X)
        if self._multilabel:
            return (z > 0).astype(int)
        if self.classes_.size == 2:
            return self.classes_[(z[:, 0] > 0).astype(int)]
        return self.classes_[np.argmax(z, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _more_tags(self):                                       # scikit-learn < 1.6
        return {**super()._more_tags(), "multilabel": True}


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor on dlfast (see the module docstring); ``loss``:
    "squared_error" (= "mse", the mean over outputs of (y - t)^2), "mae" or "huber"
    (``huber_delta``)."""

    _TASK = "regress"

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, loss="squared_error",
                 huber_delta=1.0, weight_init="he", solver="adam", learning_rate_init=0.001,
                 momentum=0.9, beta_1=0.9, beta_2=0.999, epsilon=1e-8, alpha=0.0001, l1=0.0,
                 max_norm=None, batchnorm=False, dropout=0.0, schedule=None,
                 schedule_params=None, clip_norm=None, clip_value=None, batch_size="auto",
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, warm_start=False, backend=None,
                 n_threads=None, dtype="float32", verbose=False):
        super().__init__(
            hidden_layer_sizes, activation, weight_init=weight_init, solver=solver,
            learning_rate_init=learning_rate_init, momentum=momentum, beta_1=beta_1,
            beta_2=beta_2, epsilon=epsilon, alpha=alpha, l1=l1, max_norm=max_norm,
            batchnorm=batchnorm, dropout=dropout, schedule=schedule,
            schedule_params=schedule_params, clip_norm=clip_norm, clip_value=clip_value,
            batch_size=batch_size, max_iter=max_iter, shuffle=shuffle,
            random_state=random_state, tol=tol, early_stopping=early_stopping,
            validation_fraction=validation_fraction, n_iter_no_change=n_iter_no_change,
            warm_start=warm_start, backend=backend, n_threads=n_threads, dtype=dtype,
            verbose=verbose)
        self.loss = loss
        self.huber_delta = huber_delta

    def _loss_layer(self):
        from .layers import HuberLoss, MAELoss, MSELoss
        if self.loss in ("squared_error", "mse"):
            return MSELoss()
        if self.loss == "mae":
            return MAELoss()
        if self.loss == "huber":
            return HuberLoss(self.huber_delta)
        raise ValueError(f"loss must be 'squared_error' (or 'mse'), 'mae' or 'huber', got "
                         f"{self.loss!r}")

    def _targets(self, y, first, incremental, classes, sw):
        loss = self._loss_layer()
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()
        m = 1 if y.ndim == 1 else y.shape[1]
        if first:
            self._y_ndim = y.ndim
        elif m != self.n_outputs_:
            raise ValueError(f"y has {m} outputs but the fitted model has {self.n_outputs_}")
        return _in_range("y", y, self._dtype).reshape(len(y), m), m, loss

    def fit(self, X, y, sample_weight=None):
        """Train on X (N, F) and targets y (N,) or (N, M); ``sample_weight`` (N,): per-row
        weights of the loss. Returns self."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights and optimiser state."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        """Predictions (N,) for one output, else (N, M)."""
        y = self._outputs(X)
        return y[:, 0].copy() if self.n_outputs_ == 1 else y


def _sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _log_sigmoid(z):
    return -(np.maximum(-z, 0.0) + np.log1p(np.exp(-np.abs(z))))
