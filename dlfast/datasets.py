"""Data sets and splitting helpers.

* ``load_digits()`` — the UCI handwritten digits embedded in the package (1,797 8x8 images,
  64 features in 0..16, 10 classes; see ``dlfast/data/README.md`` for source and licence).
* ``load_idx(path)`` — one IDX file (raw or gzip).
* ``load_mnist(folder=None, kind)`` / ``load_fashion_mnist(...)`` — MNIST-format IDX files from a
  folder; ``download=True`` first downloads the missing ones into it (default folder:
  ``dataset_folder(name)`` under ``data_home()``), see ``fetch``.
* ``shuffle``, ``train_val_split``, ``train_test_split`` (optionally stratified),
  ``to_one_hot``, ``from_one_hot``.

Labels are int64 class indices unless ``one_hot=True``. Features default to float32.

Environment (read only by ``_env``): ``DLFAST_DATA`` (the data folder, else the per-user cache
folder + ``dlfast``: ``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS,
``%LOCALAPPDATA%`` on Windows), ``DLFAST_MNIST_MIRRORS`` and ``DLFAST_FASHION_MNIST_MIRRORS``
(comma-separated base URLs replacing the default mirrors).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io as _io
import math
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Mapping
from importlib import resources

import numpy as np

from ._validation import make_rng, nonneg_int, positive_int, real, resolve_dtype

__all__ = ["load_digits", "load_idx", "load_mnist", "load_fashion_mnist", "load_idx_dataset",
           "fetch", "data_home", "dataset_folder", "shuffle", "train_val_split",
           "train_test_split", "split_indices", "to_one_hot", "from_one_hot", "IDXFileNotFoundError",
           "DownloadError", "DATASETS", "IDX_DATASETS", "DIGITS_SHAPE", "IDX_DTYPES"]

DIGITS_SHAPE = (1797, 64)

# IDX type codes -> big-endian numpy dtypes.
IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class IDXFileNotFoundError(FileNotFoundError, ValueError):
    """A data file that does not exist (both a FileNotFoundError and a ValueError)."""


class DownloadError(OSError):
    """A data file that could not be downloaded and verified, or a data folder that cannot be
    written. The message names every URL tried and the folder for placing the files by hand."""


# ============================================================================ digits
@functools.lru_cache(maxsize=1)
def _digits_raw():
    data = resources.files("dlfast").joinpath("data").joinpath("digits.csv.gz").read_bytes()
    arr = np.loadtxt(_io.BytesIO(gzip.decompress(data)), delimiter=",", dtype=np.int64)
    if arr.shape != (DIGITS_SHAPE[0], DIGITS_SHAPE[1] + 1):
        raise ValueError(f"the embedded digits file has shape {arr.shape}, expected "
                         f"({DIGITS_SHAPE[0]}, {DIGITS_SHAPE[1] + 1}); the installation is damaged")
    arr.setflags(write=False)
    return arr


def load_digits(dtype=np.float32, normalize=True, one_hot=False):
    """The UCI digits: ``(x, t)`` with x (1797, 64) of ``dtype`` (pixel / 16 in [0, 1] when
    ``normalize``, else the raw counts 0..16) and t int64 labels 0..9 (or (1797, 10) one-hot rows of
    ``dtype`` when ``one_hot``). Image k is ``x[k].reshape(8, 8)``."""
    dt = resolve_dtype(dtype)
    raw = _digits_raw()
    x = raw[:, :-1].astype(dt)
    if normalize:
        x /= dt.type(16)
    t = raw[:, -1].copy()
    return x, (to_one_hot(t, 10, dtype=dt) if one_hot else t)


# ============================================================================ IDX / MNIST
def _read_bytes(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise IDXFileNotFoundError(f"IDX file {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"IDX file {path!r} is a directory, expected a file")
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":                    # gzip magic, whatever the file is called
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise ValueError(f"IDX file {path!r} is a damaged or truncated gzip file: {exc}") from None
    elif path.endswith(".gz"):
        raise ValueError(f"IDX file {path!r} is named .gz but is not gzip-compressed "
                         f"(first bytes {data[:2]!r}, expected b'\\x1f\\x8b')")
    return path, data


def load_idx(path):
    """Read an IDX file (raw or gzip): magic ``0x00 0x00 <type> <ndim>``, then ndim big-endian uint32
    sizes, then the big-endian data. Returns an ndarray of that shape in native byte order
    (uint8, int8, int16, int32, float32 or float64). Bad files raise ``ValueError`` naming the file."""
    path, data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"IDX file {path!r} is truncated: {len(data)} bytes, shorter than the "
                         f"4-byte magic number")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"IDX file {path!r} has a bad magic number {data[:4].hex()}: the first two "
                         f"bytes must be 0 (not an IDX file)")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise ValueError(f"IDX file {path!r} has an unknown data type code 0x{code:02X}; expected one "
                         f"of {', '.join(f'0x{c:02X}' for c in IDX_DTYPES)}")
    if ndim == 0:
        raise ValueError(f"IDX file {path!r} declares 0 dimensions")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise ValueError(f"IDX file {path!r} is truncated: the header of {ndim} dimensions needs "
                         f"{head} bytes, the file has {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dt = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    got = len(data) - head
    if got < expected:
        raise ValueError(f"IDX file {path!r} is truncated: shape {shape} of {dt.name} needs "
                         f"{expected} data bytes, found {got}")
    if got > expected:
        raise ValueError(f"IDX file {path!r} has {got - expected} bytes after the data of shape "
                         f"{shape} (size mismatch; corrupt file?)")
    arr = np.frombuffer(data, dt, offset=head).reshape(shape)
    return arr.astype(dt.newbyteorder("="))


# ============================================================================ data sets by name
IDX_DATASETS = ("mnist", "fashion-mnist")
DATASETS = ("digits",) + IDX_DATASETS
_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

# name -> title, mirrors variable, default mirrors (base URLs), published MD5 of each .gz file.
_SOURCES = {
    # MD5 sums as listed in pytorch/vision, torchvision/datasets/mnist.py (MNIST.resources); the
    # mirrors are the two that file names (the ossci-datasets S3 copy first: HTTPS, and up).
    "mnist": ("MNIST", "DLFAST_MNIST_MIRRORS",
              ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
              {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
               "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
               "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
               "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    # Official URL and MD5 sums: zalandoresearch/fashion-mnist, README.md ("Get the Data"); the
    # same sums in pytorch/vision, torchvision/datasets/mnist.py (FashionMNIST.resources).
    "fashion-mnist": ("Fashion-MNIST", "DLFAST_FASHION_MNIST_MIRRORS",
                      ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
                      {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                       "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                       "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                       "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
}


def _env(name):
    """The environment variable ``name`` (stripped), or None when unset or empty. The only place
    this module reads the environment; the variables are listed in the module docstring."""
    value = os.environ.get(name, "").strip()
    return value or None


def data_home():
    """The folder for downloaded data sets: ``$DLFAST_DATA``, else the per-user cache folder +
    ``dlfast`` (``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS,
    ``%LOCALAPPDATA%`` on Windows)."""
    root = _env("DLFAST_DATA")
    if root:
        return os.path.abspath(os.path.expanduser(root))
    home = os.path.expanduser("~")
    if sys.platform == "win32":
        base = _env("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
    elif sys.platform == "darwin":
        base = os.path.join(home, "Library", "Caches")
    else:
        base = _env("XDG_CACHE_HOME")
        if not base or not os.path.isabs(base):      # the XDG spec ignores relative paths
            base = os.path.join(home, ".cache")
    return os.path.join(base, "dlfast")


def _source(name):
    if name not in _SOURCES:
        raise ValueError(f"data set name must be one of {', '.join(map(repr, IDX_DATASETS))}, "
                         f"got {name!r}")
    return _SOURCES[name]


def dataset_folder(name):
    """Where ``load_*(download=True)`` keeps data set ``name`` by default: ``data_home()/name``."""
    _source(name)
    return os.path.join(data_home(), name)


def _mirrors(name, mirrors):
    """The base URLs to try, in order: ``mirrors``, else ``$DLFAST_..._MIRRORS``, else the
    defaults."""
    _, var, default, _ = _source(name)
    what = "mirrors"
    if mirrors is None:
        env = _env(var)
        if env is None:
            return default
        mirrors, what = env.split(","), f"${var}"
    elif isinstance(mirrors, (str, bytes)) or not hasattr(mirrors, "__iter__"):
        raise TypeError(f"mirrors must be a list of base URLs, got {type(mirrors).__name__}")
    from urllib.parse import urlsplit
    out = []
    for m in mirrors:
        if isinstance(m, str) and not m.strip() and what != "mirrors":
            continue                                 # "a,,b" or a trailing comma
        parts = urlsplit(m.strip()) if isinstance(m, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{what} must hold http(s) base URLs such as "
                             f"'https://example.org/mnist/', got {m!r}")
        m = m.strip()
        out.append(m if m.endswith("/") else m + "/")
    if not out:
        raise ValueError(f"{what} holds no URL")
    return tuple(out)


def _checksums(name, checksums):
    """File name -> expected hex digest (MD5: 32 digits, SHA-256: 64): the published sums,
    updated by ``checksums``."""
    sums = dict(_source(name)[3])
    if checksums is None:
        return sums
    if not isinstance(checksums, Mapping):
        raise TypeError(f"checksums must be a dict of file name -> hex digest, got "
                        f"{type(checksums).__name__}")
    for file, digest in checksums.items():
        if file not in sums:
            raise ValueError(f"checksums names an unknown file {file!r}; the files are "
                             f"{', '.join(sorted(sums))}")
        if (not isinstance(digest, str) or len(digest) not in (32, 64)
                or any(c not in "0123456789abcdefABCDEF" for c in digest)):
            raise ValueError(f"checksums[{file!r}] must be an MD5 (32 hex digits) or SHA-256 "
                             f"(64 hex digits) digest, got {digest!r}")
        sums[file] = digest.lower()
    return sums


def _locate(folder, stem):
    """The path of ``stem`` in ``folder`` (also ``.gz`` and the dotted ``.idx`` spelling) or None."""
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            p = os.path.join(folder, name + suffix)
            if os.path.isfile(p):
                return p
    return None


def _find(folder, stem, title="MNIST", hint=""):
    path = _locate(folder, stem)
    if path is None:
        raise IDXFileNotFoundError(f"no {title} file {stem!r} (or {stem}.gz, or "
                                   f"{stem.replace('-idx', '.idx')}[.gz]) in {folder!r}{hint}")
    return path


class _Retry(Exception):
    """A failed transfer worth trying again (timeout, refused or broken connection, 5xx ...)."""


class _NextMirror(Exception):
    """A failure that repeating will not mend (404, wrong checksum): try the next mirror."""


def _writable(folder):
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DownloadError(f"cannot write to the data folder {folder!r} ({type(exc).__name__}: "
                            f"{exc.strerror or exc}); set DLFAST_DATA or pass folder= to use a "
                            f"writable folder") from None


def _why(exc, timeout):
    import urllib.error
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"no answer within the timeout of {timeout:g} s"
    return f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)


def _transfer(url, target, digest, timeout, progress):
    """Download ``url`` to a temporary file beside ``target``, check its length and digest, then
    rename it to ``target``. Raises ``_Retry`` / ``_NextMirror``; leaves no partial file."""
    import http.client
    import urllib.error
    import urllib.request
    from . import __version__
    request = urllib.request.Request(url, headers={"User-Agent": f"dlfast/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
        raise (_NextMirror if permanent else _Retry)(f"HTTP {exc.code} {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Retry(_why(exc, timeout)) from None
    folder, file = os.path.split(target)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{file}-", suffix=".part", dir=folder)
    try:
        with response, os.fdopen(fd, "wb") as f:
            header = response.headers.get("Content-Length", "")
            length = int(header) if header.isdigit() else None
            h = hashlib.md5() if len(digest) == 32 else hashlib.sha256()
            got = 0
            from tqdm.auto import tqdm
            with tqdm(total=length, unit="B", unit_scale=True, unit_divisor=1024, desc=file,
                      file=sys.stderr, disable=not progress, leave=False) as bar:
                while True:
                    try:
                        chunk = response.read(1 << 16)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _Retry(f"the transfer broke after {got} bytes "
                                     f"({_why(exc, timeout)})") from None
                    if not chunk:
                        break
                    try:
                        f.write(chunk)
                    except OSError as exc:
                        raise DownloadError(f"cannot write {url} to {tmp!r}: {exc}") from None
                    h.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            if length is not None and got != length:
                raise _Retry(f"truncated transfer: {got} of {length} bytes")
            if h.hexdigest() != digest:
                raise _NextMirror(f"checksum mismatch: {h.name} {h.hexdigest()}, expected {digest}"
                                  f" ({got} bytes)")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _download(title, var, file, urls, folder, digest, timeout, retries, retry_delay, progress):
    target = os.path.join(folder, file)
    failures = []
    for url in urls:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(retry_delay * 2 ** (attempt - 1))
            try:
                _transfer(url, target, digest, timeout, progress)
                return target
            except _NextMirror as exc:
                failures.append(f"  {url}: {exc}")
                break
            except _Retry as exc:
                last = exc
        else:
            failures.append(f"  {url}: {last} ({retries + 1} attempt{'s' if retries else ''})")
    raise DownloadError(f"could not download the {title} file {file}:\n" + "\n".join(failures)
                        + f"\nDownload it by hand from one of these URLs into {folder!r} (the "
                        f"set's other files likewise), or name a working mirror with mirrors=[...] "
                        f"or ${var}.")


def fetch(name, folder=None, kinds=("train", "t10k"), *, mirrors=None, checksums=None,
          timeout=30.0, retries=2, retry_delay=1.0, progress=True):
    """Download the IDX ``.gz`` files of data set ``name`` ("mnist", "fashion-mnist") for
    ``kinds`` that ``folder`` (default ``dataset_folder(name)``) lacks; returns the folder.

    Each file is tried from each mirror in turn (``mirrors``, else ``$DLFAST_MNIST_MIRRORS`` /
    ``$DLFAST_FASHION_MNIST_MIRRORS``, comma-separated, else the defaults), up to ``1 + retries``
    times per mirror after a timeout (``timeout`` seconds per connection or read), a broken or
    short transfer or a server error, waiting ``retry_delay * 2**k`` seconds before retry k + 1.
    It is written to a temporary file in ``folder``, checked against its published MD5 (or
    ``checksums[file]``: an MD5 or SHA-256 hex digest) and only then renamed, so a file in the
    folder is always whole. ``progress``: a tqdm bar on stderr. Files already in the folder are
    used as they are. ``DownloadError`` names every URL tried and the folder."""
    title, var, _, _ = _source(name)
    if not isinstance(kinds, (list, tuple)) or not kinds or not all(k in _STEMS for k in kinds):
        raise ValueError(f"kinds must be a non-empty list of 'train' and/or 't10k', got {kinds!r}")
    urls_base = _mirrors(name, mirrors)
    sums = _checksums(name, checksums)
    timeout = real("timeout", timeout, 0.0, math.inf, lo_open=True, hi_open=True)
    retries = nonneg_int("retries", retries)
    retry_delay = real("retry_delay", retry_delay, 0.0, math.inf, hi_open=True)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    folder = dataset_folder(name) if folder is None else os.path.abspath(os.fspath(folder))
    missing = [stem for k in kinds for stem in _STEMS[k]
               if not (os.path.isdir(folder) and _locate(folder, stem))]
    if missing:
        _writable(folder)
    for stem in missing:
        file = stem + ".gz"
        _download(title, var, file, [u + file for u in urls_base], folder, sums[file], timeout,
                  retries, retry_delay, progress)
    return folder


def load_idx_dataset(name, folder=None, kind="train", normalize=True, flatten=True,
                     one_hot=False, dtype=np.float32, *, download=False, mirrors=None,
                     checksums=None, timeout=30.0, retries=2, retry_delay=1.0, progress=True):
    """Data set ``name`` ("mnist" or "fashion-mnist") from ``folder`` (default
    ``dataset_folder(name)``) holding ``{kind}-images-idx3-ubyte[.gz]`` and
    ``{kind}-labels-idx1-ubyte[.gz]``, kind "train" or "t10k". ``download``: first ``fetch`` the
    missing files (``mirrors`` ... ``progress`` go to ``fetch``). Returns ``(x, t)``: x
    (N, rows*cols) (``flatten``) or (N, rows, cols) of ``dtype``, pixel / 255 when
    ``normalize``; t int64 (N,), or (N, 10) one-hot rows when ``one_hot``."""
    title = _source(name)[0]
    if kind not in _STEMS:
        raise ValueError(f"kind must be 'train' or 't10k', got {kind!r}")
    dt = resolve_dtype(dtype)
    if not isinstance(download, bool):
        raise TypeError(f"download must be True or False, got {download!r}")
    if mirrors is not None:
        _mirrors(name, mirrors)                       # bad arguments fail even without download
    _checksums(name, checksums)
    if download:
        folder = fetch(name, folder, (kind,), mirrors=mirrors, checksums=checksums,
                       timeout=timeout, retries=retries, retry_delay=retry_delay, progress=progress)
    folder = dataset_folder(name) if folder is None else os.fspath(folder)
    hint = "" if download else _DOWNLOAD_HINT
    if not os.path.isdir(folder):
        raise IDXFileNotFoundError(f"{title} folder {folder!r} does not exist{hint}")
    ipath = _find(folder, _STEMS[kind][0], title, hint)
    lpath = _find(folder, _STEMS[kind][1], title, hint)
    images, labels = load_idx(ipath), load_idx(lpath)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{title} image file {ipath!r} must hold uint8 data of shape (N, rows, "
                         f"cols), got {images.dtype.name} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{title} label file {lpath!r} must hold uint8 data of shape (N,), got "
                         f"{labels.dtype.name} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{title} files disagree: {ipath!r} has {images.shape[0]} images but "
                         f"{lpath!r} has {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{title} label file {lpath!r} holds label {int(labels.max())}, expected "
                         f"0..9")
    x = images.reshape(images.shape[0], -1) if flatten else images
    x = x.astype(dt)
    if normalize:
        x /= dt.type(255)
    t = labels.astype(np.int64)
    return x, (to_one_hot(t, 10, dtype=dt) if one_hot else t)


def load_mnist(folder=None, kind="train", normalize=True, flatten=True, one_hot=False,
               dtype=np.float32, *, download=False, mirrors=None, checksums=None, timeout=30.0,
               retries=2, retry_delay=1.0, progress=True):
    """MNIST (or any MNIST-format set) from ``folder``: ``load_idx_dataset("mnist", ...)``.
    ``load_mnist(download=True)`` downloads it once into ``dataset_folder("mnist")``."""
    return load_idx_dataset("mnist", folder, kind, normalize, flatten, one_hot, dtype,
                            download=download, mirrors=mirrors, checksums=checksums,
                            timeout=timeout, retries=retries, retry_delay=retry_delay,
                            progress=progress)


def load_fashion_mnist(folder=None, kind="train", normalize=True, flatten=True, one_hot=False,
                       dtype=np.float32, *, download=False, mirrors=None, checksums=None,
                       timeout=30.0, retries=2, retry_delay=1.0, progress=True):
    """Fashion-MNIST (labels 0..9: T-shirt/top, trouser, pullover, dress, coat, sandal, shirt,
    sneaker, bag, ankle boot): ``load_idx_dataset("fashion-mnist", ...)``."""
    return load_idx_dataset("fashion-mnist", folder, kind, normalize, flatten, one_hot, dtype,
                            download=download, mirrors=mirrors, checksums=checksums,
                            timeout=timeout, retries=retries, retry_delay=retry_delay,
                            progress=progress)


# ============================================================================ labels
def to_one_hot(t, num_classes=None, dtype=np.float32):
    """``y[n, t[n]] = 1``, zeros elsewhere; t integer class indices (N,), num_classes default
    ``max(t) + 1``."""
    t = np.asarray(t)
    if t.ndim != 1 or t.dtype.kind not in "iu":
        raise TypeError(f"t must be a 1-D integer array of class indices, got {t.dtype.name} "
                        f"of shape {t.shape}")
    if num_classes is None:
        num_classes = int(t.max()) + 1 if t.size else 0
        if num_classes == 0:
            raise ValueError("num_classes is required when t is empty")
    num_classes = positive_int("num_classes", num_classes)
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"t must lie in [0, {num_classes}), got values in [{t.min()}, {t.max()}]")
    y = np.zeros((t.shape[0], num_classes), dtype=np.dtype(dtype))
    y[np.arange(t.shape[0]), t] = 1
    return y


def from_one_hot(y):
    """Class indices (int64) from one-hot rows y (N, C): ``t[n] = argmax y[n]``. Rows must be
    exactly one 1 and zeros."""
    y = np.asarray(y)
    if y.ndim != 2 or y.dtype.kind not in "iufb":
        raise ValueError(f"y must be a 2-D array of one-hot rows, got {y.dtype.name} of shape {y.shape}")
    ones = y == 1
    if not (np.all(ones | (y == 0)) and np.all(ones.sum(axis=1) == 1)):
        raise ValueError("y rows must be exact one-hot rows (one 1, the rest 0)")
    return np.argmax(ones, axis=1).astype(np.int64)


# ============================================================================ splitting
def _pair(x, t):
    if not isinstance(x, np.ndarray) or x.ndim < 1:
        raise TypeError(f"x must be a numpy.ndarray with a sample axis, got {type(x).__name__}")
    if not isinstance(t, np.ndarray) or t.ndim < 1:
        raise TypeError(f"t must be a numpy.ndarray with a sample axis, got {type(t).__name__}")
    if x.shape[0] != t.shape[0]:
        raise ValueError(f"x and t must have the same number of samples, got {x.shape[0]} and "
                         f"{t.shape[0]}")
    return x, t


def shuffle(x, t, seed=None):
    """``(x[p], t[p])`` for a random permutation p (``seed``: int, Generator or None)."""
    x, t = _pair(x, t)
    p = make_rng(seed).permutation(x.shape[0])
    return x[p], t[p]


_DOWNLOAD_HINT = "; download=True downloads the files"


def _class_ids(t):
    return from_one_hot(t) if t.ndim == 2 else t


def split_indices(n, fraction, seed=None, labels=None, name="val_fraction"):
    """``(keep, held)`` index arrays (sorted) holding out ``round(fraction * n)`` samples, chosen at
    random; with ``labels`` (stratified) each class c holds out ``round(fraction * n_c)``, or, when
    that leaves a side empty (every class too small), ``floor(fraction * n_c)`` plus one for the
    classes of largest remainder (ties at random) up to ``round(fraction * n)`` in all (at least
    1, at most n - 1)."""
    fraction = real(name, fraction, 0.0, 1.0, lo_open=True, hi_open=True)
    rng = make_rng(seed)
    if labels is None:
        k = int(round(fraction * n))
        held = rng.permutation(n)[:k]
    else:
        labels = np.asarray(labels)
        held = []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            k = int(round(fraction * idx.size))
            held.append(rng.permutation(idx)[:k])
        held = np.concatenate(held) if held else np.zeros(0, np.int64)
        if (held.size == 0 or held.size == n) and n >= 2:
            held = _largest_remainder(labels, fraction, rng)
    if held.size == 0 or held.size == n:
        raise ValueError(f"{name}={fraction} of {n} samples leaves an empty split; use a fraction "
                         f"that keeps at least one sample on each side")
    mask = np.zeros(n, bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _largest_remainder(labels, fraction, rng):
    """Stratified held-out indices, round(fraction * n) of them in [1, n - 1]: floor(fraction *
    n_c) per class, one more for the classes of largest remainder."""
    classes, counts = np.unique(labels, return_counts=True)
    n = labels.size
    k = min(max(int(round(fraction * n)), 1), n - 1)
    exact = fraction * counts
    take = np.floor(exact).astype(np.int64)
    order = rng.permutation(classes.size)
    order = order[np.argsort(take[order] - exact[order], kind="stable")]   # largest remainder
    take[order[:max(k - int(take.sum()), 0)]] += 1
    return np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:m]
                           for c, m in zip(classes, take)])


def train_val_split(x, t, val_fraction, seed=None, stratify=False):
    """``(x_train, t_train, x_val, t_val)``: a random ``val_fraction`` of the samples held out
    (per class when ``stratify``); sample order is kept within each part."""
    x, t = _pair(x, t)
    keep, held = split_indices(x.shape[0], val_fraction, seed,
                               _class_ids(t) if stratify else None, "val_fraction")
    return x[keep], t[keep], x[held], t[held]


def train_test_split(x, t, test_fraction=0.2, seed=None, stratify=False):
    """``(x_train, t_train, x_test, t_test)``: like ``train_val_split`` for a test set."""
    x, t = _pair(x, t)
    keep, held = split_indices(x.shape[0], test_fraction, seed,
                               _class_ids(t) if stratify else None, "test_fraction")
    return x[keep], t[keep], x[held], t[held]
