"""Save a model to one ``.npz`` file and load it back.

File layout (``numpy.savez``, no pickles)::

    __format__   "dlfast-model"            format tag
    __version__  FORMAT_VERSION (int)      bumped on incompatible changes
    __class__    "MLP" | "Sequential" | "MultiTaskNet"
    __config__   JSON of model.config()    rebuilds the architecture: cls(**config)
    __meta__     JSON of user metadata     (optional extras: history, command line ...)
    __dlfast__   dlfast version that wrote the file
    state.NAME   each entry of model.state_dict() (params, BN running statistics, RNG state)

Writes are atomic: a temporary file in the target folder, flushed and fsynced, then ``os.replace``.
``load_model`` refuses a file whose floating-point arrays hold NaN or inf (``NonFiniteWeightsError``
names the array) unless ``allow_nonfinite=True``.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

__all__ = ["save_model", "load_model", "read_metadata", "ModelFileError", "NonFiniteWeightsError",
           "FORMAT", "FORMAT_VERSION", "save", "load"]

FORMAT = "dlfast-model"
FORMAT_VERSION = 1
_PREFIX = "state."


class ModelFileError(ValueError):
    """A model file that is missing, truncated, foreign, of another format version, or damaged."""


class NonFiniteWeightsError(ModelFileError):
    """A model or checkpoint file with NaN or inf in a floating-point array (a net with such
    weights predicts NaN); ``allow_nonfinite=True`` loads it on purpose."""


def check_finite(arrays, path, noun, error=NonFiniteWeightsError):
    """Raise ``error`` naming the first floating-point array of ``arrays`` (an iterable of
    ``(name, array)``) that holds NaN or inf."""
    for name, a in arrays:
        a = np.asarray(a)
        if a.dtype.kind not in "fc" or a.size == 0:
            continue
        bad = ~np.isfinite(a)
        if bad.any():
            n_nan = int(np.count_nonzero(np.isnan(a)))
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise error(f"{noun} {path!r}: array {name!r} holds {n_nan} NaN and "
                        f"{int(np.count_nonzero(bad)) - n_nan} inf of its {a.size} values (first "
                        f"at index {first}); a net with such weights predicts NaN. Pass "
                        f"allow_nonfinite=True to load it anyway")


def _classes():
    from . import net
    return {"MLP": net.MLP, "Sequential": net.Sequential, "MultiTaskNet": net.MultiTaskNet}


def _json(name, obj):
    try:
        return json.dumps(obj, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} is not JSON-serialisable ({exc}); a model with a custom callable "
                        f"(e.g. weight_init) cannot be saved by configuration") from None


def save_model(model, path, metadata=None):
    """Write ``model`` (architecture, state) to ``path`` atomically; returns the path.
    ``metadata``: an optional JSON-serialisable dict stored alongside (read back by
    ``read_metadata``)."""
    for attr in ("config", "state_dict", "load_state_dict"):
        if not callable(getattr(model, attr, None)):
            raise TypeError(f"model must provide {attr}() (a dlfast net), got {type(model).__name__}")
    path = os.fspath(path)
    cls = type(model).__name__
    if cls not in _classes():
        raise TypeError(f"model class {cls} cannot be saved; supported: {sorted(_classes())}")
    from . import __version__
    arrays = {"__format__": np.array(FORMAT), "__version__": np.array(FORMAT_VERSION),
              "__class__": np.array(cls), "__config__": np.array(_json("model.config()", model.config())),
              "__meta__": np.array(_json("metadata", {} if metadata is None else dict(metadata))),
              "__dlfast__": np.array(__version__)}
    for name, value in model.state_dict().items():
        arrays[_PREFIX + name] = np.asarray(value)
    atomic_savez(path, arrays, "save the model to")
    return path


def atomic_savez(path, arrays, action, prefix=".tmp-", write=None):
    """``numpy.savez(path, **arrays)`` atomically: a temporary file in the target folder, flushed
    and fsynced, ``os.replace``, then an fsync of the folder; the temporary file is removed on
    failure. ``action`` completes "cannot {action} {path}" when the folder is missing; ``write(f,
    arrays)`` replaces ``numpy.savez`` (checkpoints patch it in their crash tests)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot {action} {path!r}: folder {folder!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            (write or _savez)(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:                                       # make the rename itself durable (POSIX)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _savez(f, arrays):
    np.savez(f, **arrays)


def read_npz(path, error, noun, not_npz):
    """Every array of the ``.npz`` file ``path`` as a dict (no pickles). ``error`` (an exception
    class) is raised if it is missing ("{noun} ... does not exist"), a bare ``.npy`` (``not_npz``)
    or truncated/damaged."""
    if not os.path.isfile(path):
        raise error(f"{noun} {path!r} does not exist")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise error(not_npz)
        with z:
            return {k: z[k] for k in z.files}
    except error:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise error(f"{noun} {path!r} is truncated or damaged "
                    f"({type(exc).__name__}: {exc})") from None


def check_version(data, path, error, noun, version):
    """``error`` unless ``data["__version__"]`` is the integer ``version``."""
    try:
        found = int(data["__version__"])
    except (KeyError, TypeError, ValueError):
        raise error(f"{noun} {path!r} has no valid format version") from None
    if found != version:
        raise error(f"{noun} {path!r} has format version {found}; this dlfast reads "
                    f"version {version}")


def _read(path):
    """All arrays of the file as a dict, after checking tag and version."""
    path = os.fspath(path)
    data = read_npz(path, ModelFileError, "model file",
                    f"{path!r} is not a dlfast model file (a bare .npy array, not .npz)")
    fmt = data.get("__format__")
    if fmt is None or fmt.shape != () or str(fmt) != FORMAT:
        raise ModelFileError(f"{path!r} is not a dlfast model file (no {FORMAT!r} format tag)")
    check_version(data, path, ModelFileError, "model file", FORMAT_VERSION)
    for key in ("__class__", "__config__"):
        if key not in data:
            raise ModelFileError(f"model file {path!r} lacks {key} (damaged file)")
    return path, data


def _loads(path, data, key):
    try:
        return json.loads(str(data[key])) if key in data else {}
    except ValueError as exc:
        raise ModelFileError(f"model file {path!r}: {key} is not valid JSON ({exc})") from None


def load_model(path, allow_nonfinite=False):
    """Rebuild the model saved by ``save_model`` (same class, config, dtype and state).
    ``NonFiniteWeightsError`` if an array of its state holds NaN or inf, unless
    ``allow_nonfinite``."""
    if not isinstance(allow_nonfinite, bool):
        raise TypeError(f"allow_nonfinite must be True or False, got {allow_nonfinite!r}")
    path, data = _read(path)
    cls_name = str(data["__class__"])
    classes = _classes()
    if cls_name not in classes:
        raise ModelFileError(f"model file {path!r} holds an unknown model class {cls_name!r}; "
                             f"known: {sorted(classes)}")
    config = _loads(path, data, "__config__")
    if not isinstance(config, dict):
        raise ModelFileError(f"model file {path!r}: the config must be a JSON object")
    try:
        model = classes[cls_name](**config)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"model file {path!r}: cannot rebuild {cls_name} from its config "
                             f"({type(exc).__name__}: {exc})") from None
    state = {k[len(_PREFIX):]: v for k, v in data.items() if k.startswith(_PREFIX)}
    if not allow_nonfinite:
        check_finite(state.items(), path, "model file")
    try:
        model.load_state_dict(state)
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"model file {path!r}: its state does not fit the {cls_name} "
                             f"({type(exc).__name__}: {exc})") from None
    return model


def read_metadata(path):
    """The ``metadata`` dict stored by ``save_model`` (``{}`` when none)."""
    path, data = _read(path)
    meta = _loads(path, data, "__meta__")
    return meta


# Short aliases.
save = save_model
load = load_model
