"""Weight penalties and the max-norm constraint (through ``kernels.penalty``, ``penalty_grad``,
``max_norm``).

==================  =====================================  ==========================
L2(lam)             loss += (lam/2) * sum w^2               grad += lam * w
L1(lam)             loss += lam * sum |w|                   grad += lam * sign(w)
ElasticNet(l1, l2)  both                                    both
MaxNorm(c)          after each update, every column of W (a unit's incoming weights) with
                    norm > c is rescaled to norm c
==================  =====================================  ==========================

Penalties and constraints apply to weight matrices only: params whose name (the part after the
last ".") starts with "W" — not biases, BatchNorm gamma/beta or PReLU slopes.
Keras' ``l2(k)`` (no 1/2) equals ``L2(2 * k)`` here.
"""
from __future__ import annotations

from . import kernels
from ._validation import real

__all__ = ["Regularizer", "L2", "L1", "ElasticNet", "MaxNorm", "is_weight", "get", "from_config"]


def is_weight(name):
    """True for weight-matrix parameter names ("W", "W1", "0.W", "trunk.2.W")."""
    return str(name).rsplit(".", 1)[-1].startswith("W")


class Regularizer:
    """Elastic-net penalty ``(l2/2) sum w^2 + l1 sum |w|`` on the weight matrices of a model."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = real("l1", l1, 0.0)
        self.l2 = real("l2", l2, 0.0)

    def loss(self, w):
        """The penalty of one array (float)."""
        return kernels.penalty(w, self.l1, self.l2)

    def grad(self, w, g):
        """In place: ``g += l2 * w + l1 * sign(w)``."""
        kernels.penalty_grad(w, g, self.l1, self.l2)

    def penalty(self, params):
        """Sum of the penalty over the weight matrices of ``params`` (dict name -> array)."""
        return sum(self.loss(w) for k, w in params.items() if is_weight(k))

    def add_grads(self, params, grads):
        """Add the penalty gradient to ``grads[name]`` for every weight matrix in ``grads``."""
        for k, g in grads.items():
            if is_weight(k):
                self.grad(params[k], g)

    def config(self):
        return {"type": "ElasticNet", "l1": self.l1, "l2": self.l2}

    def __repr__(self):
        return f"{type(self).__name__}(l1={self.l1}, l2={self.l2})"


class L2(Regularizer):
    """``(lam/2) sum w^2``, gradient ``lam * w`` (coupled weight decay)."""

    def __init__(self, lam):
        super().__init__(0.0, real("lam", lam, 0.0))
        self.lam = self.l2

    def config(self):
        return {"type": "L2", "lam": self.lam}

    def __repr__(self):
        return f"L2({self.lam})"


class L1(Regularizer):
    """``lam * sum |w|``, gradient ``lam * sign(w)``."""

    def __init__(self, lam):
        super().__init__(real("lam", lam, 0.0), 0.0)
        self.lam = self.l1

    def config(self):
        return {"type": "L1", "lam": self.lam}

    def __repr__(self):
        return f"L1({self.lam})"


class ElasticNet(Regularizer):
    """``l1 * sum |w| + (l2/2) sum w^2``."""


class MaxNorm:
    """Constraint: each column of W (in, out) is rescaled to norm <= c after an update."""

    def __init__(self, c):
        self.c = real("c", c, 0.0, lo_open=True)

    def apply(self, W):
        """In place on one weight matrix."""
        kernels.max_norm(W, self.c)

    def apply_all(self, params):
        """In place on every 2-D weight matrix of ``params``."""
        for k, w in params.items():
            if is_weight(k) and w.ndim == 2:
                kernels.max_norm(w, self.c)

    def config(self):
        return {"type": "MaxNorm", "c": self.c}

    def __repr__(self):
        return f"MaxNorm({self.c})"


def from_config(cfg):
    """Rebuild a regulariser or MaxNorm from its ``config()`` dict (None stays None)."""
    if cfg is None:
        return None
    kinds = {"L2": L2, "L1": L1, "ElasticNet": ElasticNet, "MaxNorm": MaxNorm}
    if not isinstance(cfg, dict) or cfg.get("type") not in kinds:
        raise ValueError(f"regulariser config must be a dict with 'type' in {sorted(kinds)}, "
                         f"got {cfg!r}")
    return kinds[cfg["type"]](**{k: v for k, v in cfg.items() if k != "type"})


def get(spec):
    """A regulariser from an instance, a config dict, or None."""
    if spec is None or isinstance(spec, Regularizer):
        return spec
    if isinstance(spec, dict):
        r = from_config(spec)
        if not isinstance(r, Regularizer):
            raise TypeError(f"regularizer must be L2, L1 or ElasticNet, got {type(r).__name__}")
        return r
    raise TypeError(f"regularizer must be an L2, L1 or ElasticNet instance, a config dict or None, "
                    f"got {type(spec).__name__}")
