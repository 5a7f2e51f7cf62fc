"""Training checkpoints: the whole state of a ``Trainer`` in one file, written atomically.

``Trainer(..., checkpoint=Checkpoint(path, every=N, per="step"|"epoch"))`` writes after every N-th
optimiser step (``per="step"``) or epoch (``per="epoch"``), after every other callback (so the
early-stopping decision of that epoch is included). ``trainer.fit(x, t, resume=path)`` (or
``trainer.resume(path)`` then ``fit``) continues; the final parameters are bit-identical to an
uninterrupted run with the same seed and backend, also from a mid-epoch checkpoint.

A checkpoint holds: the model (``io`` class + config, every ``state_dict`` entry: parameters, BN
running statistics, dropout/RReLU seed and counter), ``optimizer.state_dict()``, the schedule's
``state_dict()`` (if it has one), the ``EarlyStopping`` state (best value/epoch, wait, best weights),
the counters ``epoch``/``step``, the fit's target epoch, ``stop_training``, the history, the
Trainer's seed and shuffle-generator state, the transform's generator state (``transform.rng``) and,
mid-epoch, the epoch's batch order, steps done and running loss sum.

File layout (``numpy.savez``, no pickles): ``__format__`` = "dlfast-checkpoint", ``__version__``,
``__class__``/``__config__`` (as ``dlfast.io``), ``__json__`` (everything that is not an array; an
array is a reference ``{"__array__": "aN"}``) and the arrays ``aN``.

Loading (``restore_checkpoint``, ``load_checkpoint_model``) refuses a checkpoint whose model state,
optimiser state or early-stopping weights hold NaN or inf (``NonFiniteCheckpointError`` names the
array) unless ``allow_nonfinite=True``.

Atomic write: temporary file in the target folder -> flush -> ``os.fsync`` -> ``os.replace`` ->
fsync of the folder. A crash at any point leaves the previous checkpoint intact and no temporary
file behind (removed on failure; a SIGKILL may leave a ``.tmp-ckpt-*`` file, never a damaged
checkpoint).
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from . import kernels
from ._validation import positive_int
from .callbacks import NonFiniteError
from .io import NonFiniteWeightsError, atomic_savez, check_finite, check_version, read_npz

__all__ = ["Checkpoint", "CheckpointError", "NonFiniteCheckpointError", "save_checkpoint",
           "read_checkpoint", "restore_checkpoint", "load_checkpoint_model", "FORMAT",
           "FORMAT_VERSION"]

FORMAT = "dlfast-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, foreign, damaged, or does not fit the
    Trainer (other architecture, optimiser, schedule ...). The message names the file."""


class NonFiniteCheckpointError(CheckpointError, NonFiniteWeightsError):
    """A checkpoint whose weights or optimiser state hold NaN or inf (``allow_nonfinite=True``
    loads it on purpose)."""


# ============================================================================ (de)serialisation
def _pack(obj, arrays):
    """JSON-able copy of obj; ndarrays / numpy scalars go to ``arrays`` as references."""
    if isinstance(obj, (np.ndarray, np.generic)):
        key = f"a{len(arrays)}"
        arrays[key] = np.array(obj)                # copy (0-d for scalars, dtype kept)
        return {"__array__": key, "scalar": isinstance(obj, np.generic)}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"checkpoint state keys must be strings, got {k!r}")
        return {"__dict__": {k: _pack(v, arrays) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__" if isinstance(obj, tuple) else "__list__": [_pack(v, arrays) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _unpack(obj, arrays):
    if isinstance(obj, dict):
        if "__array__" in obj:
            a = arrays[obj["__array__"]]
            return a[()] if obj.get("scalar") else a
        if "__dict__" in obj:
            return {k: _unpack(v, arrays) for k, v in obj["__dict__"].items()}
        if "__tuple__" in obj:
            return tuple(_unpack(v, arrays) for v in obj["__tuple__"])
        if "__list__" in obj:
            return [_unpack(v, arrays) for v in obj["__list__"]]
        raise KeyError(f"unknown entry {sorted(obj)}")
    return obj


def _write_arrays(f, arrays):
    """Serialise ``arrays`` into the open binary file ``f`` (patched in the crash tests)."""
    np.savez(f, **arrays)


def _atomic_write(path, arrays):
    atomic_savez(path, arrays, "write checkpoint", prefix=".tmp-ckpt-",
                 write=lambda f, a: _write_arrays(f, a))    # looked up per call: patchable


# ============================================================================ save
def save_checkpoint(trainer, path):
    """Write the trainer's complete state to ``path`` atomically; returns the path."""
    from .io import _classes, _json
    path = os.fspath(path)
    model = trainer.model
    cls = type(model).__name__
    if cls not in _classes():
        raise TypeError(f"model class {cls} cannot be checkpointed; supported: {sorted(_classes())}")
    from . import __version__
    arrays = {}
    meta = _pack(trainer.state_dict(), arrays)
    arrays.update({"__format__": np.array(FORMAT), "__version__": np.array(FORMAT_VERSION),
                   "__class__": np.array(cls),
                   "__config__": np.array(_json("model.config()", model.config())),
                   "__json__": np.array(json.dumps(meta, allow_nan=True)),
                   "__dlfast__": np.array(__version__)})
    _atomic_write(path, arrays)
    return path


# ============================================================================ load
def read_checkpoint(path):
    """``(class name, config dict, state dict)`` of a checkpoint file; ``CheckpointError`` if the
    file is missing, truncated, foreign or damaged."""
    path = os.fspath(path)
    data = read_npz(path, CheckpointError, "checkpoint file",
                    f"{path!r} is not a dlfast checkpoint (a bare .npy array)")
    fmt = data.get("__format__")
    if fmt is None or fmt.shape != () or str(fmt) != FORMAT:
        what = "a dlfast model file" if fmt is not None and str(fmt) == "dlfast-model" else "foreign"
        raise CheckpointError(f"{path!r} is not a dlfast checkpoint ({what}: no {FORMAT!r} "
                              f"format tag)")
    check_version(data, path, CheckpointError, "checkpoint file", FORMAT_VERSION)
    try:
        cls = str(data["__class__"])
        config = json.loads(str(data["__config__"]))
        state = _unpack(json.loads(str(data["__json__"])), data)
        if not isinstance(state, dict) or not isinstance(config, dict):
            raise ValueError("state and config must be JSON objects")
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint file {path!r} is damaged ({type(exc).__name__}: "
                              f"{exc})") from None
    return cls, config, state


def _arrays(obj, name):
    """``(dotted name, array)`` for every ndarray / numpy scalar nested in ``obj``."""
    if isinstance(obj, (np.ndarray, np.generic)):
        yield name, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _arrays(v, f"{name}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _arrays(v, f"{name}.{i}")


def _flag(allow_nonfinite):
    if not isinstance(allow_nonfinite, bool):
        raise TypeError(f"allow_nonfinite must be True or False, got {allow_nonfinite!r}")


def _check_finite(path, state, allow_nonfinite, parts=("model", "optimizer", "early_stopping")):
    if not allow_nonfinite:
        for part in parts:
            check_finite(_arrays(state.get(part), part), os.fspath(path), "checkpoint file",
                         NonFiniteCheckpointError)


def load_checkpoint_model(path, allow_nonfinite=False):
    """The model stored in a checkpoint, rebuilt (class, config, state) on its own;
    ``NonFiniteCheckpointError`` if its state holds NaN or inf, unless ``allow_nonfinite``."""
    from .io import _classes
    _flag(allow_nonfinite)
    cls, config, state = read_checkpoint(path)
    _check_finite(path, state, allow_nonfinite, ("model",))
    classes = _classes()
    if cls not in classes:
        raise CheckpointError(f"checkpoint file {path!r} holds an unknown model class {cls!r}")
    try:
        model = classes[cls](**config)
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint file {path!r}: cannot rebuild its {cls} "
                              f"({type(exc).__name__}: {exc})") from None
    return model


def restore_checkpoint(trainer, path, allow_nonfinite=False):
    """Load ``path`` into ``trainer`` (``Trainer.load_state_dict``: model, optimiser, schedule,
    counters, history, generators). ``CheckpointError`` names what does not fit, a
    ``NonFiniteCheckpointError`` the array holding NaN or inf (unless ``allow_nonfinite``)."""
    _flag(allow_nonfinite)
    path = os.fspath(path)
    cls, config, st = read_checkpoint(path)
    _check_finite(path, st, allow_nonfinite)
    model = trainer.model
    if cls != type(model).__name__ or config != json.loads(json.dumps(model.config(),
                                                                       sort_keys=True)):
        raise CheckpointError(f"checkpoint file {path!r} is for a different architecture: {cls} "
                              f"{config} (the trainer's model is {type(model).__name__} "
                              f"{model.config()})")
    try:
        trainer.load_state_dict(st)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint file {path!r}: {exc}") from None
    return trainer


# ============================================================================ callback
class Checkpoint:
    """Write ``save_checkpoint(trainer, path)`` after every ``every``-th step (``per="step"``) or
    epoch (``per="epoch"``); pass it as ``Trainer(checkpoint=...)`` so it runs after every other
    callback. ``keep``: how many checkpoints to keep; older ones are ``path.1`` (previous) ...
    ``path.{keep-1}``. ``last_saved``: (epoch, global step) of the last write (None before)."""

    def __init__(self, path, every=1, per="epoch", keep=1):
        self.path = os.fspath(path)
        if isinstance(every, bool):
            raise TypeError("every must be an integer, got bool")
        self.every = positive_int("every", every)
        if per not in ("step", "epoch"):
            raise ValueError(f"per must be 'step' or 'epoch', got {per!r}")
        self.per = per
        if isinstance(keep, bool):
            raise TypeError("keep must be an integer, got bool")
        self.keep = positive_int("keep", keep)
        self.last_saved = None

    def _rotate(self):
        """path.{i} -> path.{i+1} (dropping the oldest), then path.1 = a hard link (or copy) of
        path; path itself is untouched until the new checkpoint replaces it atomically."""
        if self.keep < 2 or not os.path.exists(self.path):
            return
        for i in range(self.keep - 2, 0, -1):
            if os.path.exists(f"{self.path}.{i}"):
                os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
        folder = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-ckpt-", dir=folder)
        os.close(fd)
        try:
            os.unlink(tmp)
            try:
                os.link(self.path, tmp)
            except OSError:
                import shutil
                shutil.copyfile(self.path, tmp)
            os.replace(tmp, f"{self.path}.1")
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def save(self, trainer, epoch=None, k=None):
        """Write the checkpoint; a non-finite parameter raises ``NonFiniteError`` (naming the
        epoch, step in the epoch and parameter) instead, keeping the last good checkpoint."""
        for name, p in trainer.model.params.items():
            if p.size and not kernels.all_finite(p):
                kept = (f"the last good checkpoint {self.path!r} (epoch {self.last_saved[0]}, "
                        f"global step {self.last_saved[1]}) is kept" if self.last_saved else
                        "no checkpoint was written")
                raise NonFiniteError(f"parameter {name!r} became non-finite at epoch {epoch}, step "
                                     f"{k} (global step {trainer.step}); {kept}",
                                     epoch, k, trainer.step, name, "parameter")
        self._rotate()
        save_checkpoint(trainer, self.path)
        self.last_saved = (trainer.epoch, trainer.step)

    def on_step_end(self, trainer, step, logs):
        if self.per == "step" and step % self.every == 0:
            self.save(trainer, logs.get("epoch"), logs.get("batch"))

    def on_epoch_end(self, trainer, epoch, logs):
        if self.per == "epoch" and epoch % self.every == 0:
            self.save(trainer, epoch, logs.get("steps"))

    def __repr__(self):
        return f"Checkpoint({self.path!r}, every={self.every}, per={self.per!r}, keep={self.keep})"
