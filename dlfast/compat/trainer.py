"""The book's ``common/trainer.py``: ``Trainer`` (with the names the book's module also
provides: its star import gives them too)."""
from __future__ import annotations

import os  # noqa: F401  (the book's module provides them)
import sys  # noqa: F401

import numpy as np

from .optimizer import *  # noqa: F401,F403
from .optimizer import AdaGrad, Adam, Momentum, Nesterov, RMSprop, SGD
from .optimizer import __all__ as _optimizer_all

__all__ = ["sys", "os", "Trainer", *_optimizer_all]

_OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad,
               "rmsprop": RMSprop, "rmsprpo": RMSprop, "adam": Adam}


class Trainer:
    """The book's trainer. ``train_step``: a batch of ``mini_batch_size`` rows drawn with
    ``np.random.choice`` (with replacement), ``network.gradient``, ``optimizer.update``, then
    ``network.loss`` of the batch appended to ``train_loss_list``; every ``iter_per_epoch =
    max(train_size / mini_batch_size, 1)`` steps (from step 0) the train and test accuracies (of
    the first ``evaluate_sample_num_per_epoch`` rows when given) are appended to
    ``train_acc_list`` / ``test_acc_list``. ``train()`` runs ``int(epochs * iter_per_epoch)``
    steps and returns the final test accuracy. ``optimizer``: a name ('SGD', 'Momentum',
    'Nesterov', 'AdaGrad', 'RMSprop', 'Adam', any case) built with ``optimizer_param``, or an
    object with ``update(params, grads)``."""

    def __init__(self, network, x_train, t_train, x_test, t_test, epochs=20, mini_batch_size=100,
                 optimizer="SGD", optimizer_param={"lr": 0.01},      # noqa: B006 (the book's API)
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
        """One step (see the class docstring)."""
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
        """``max_iter`` steps, then the test accuracy (printed when ``verbose``)."""
        for _ in range(self.max_iter):
            self.train_step()
        test_acc = self.network.accuracy(self.x_test, self.t_test)
        if self.verbose:
            print("=============== Final Test Accuracy ===============")
            print("test acc:" + str(test_acc))
        return test_acc
