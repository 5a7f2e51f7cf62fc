"""Data sets by name: downloads from a local ``http.server`` (127.0.0.1, started here) serving
small IDX files written here, with their checksums given to the loader. One test per failure mode:
truncated transfer, wrong checksum, 404, a server that never answers, no server at all (offline),
a cache folder that cannot be written. No test touches the real network (``_local_only``)."""
import gzip
import hashlib
import http.server
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import types
import urllib.parse
import urllib.request

import numpy as np
import pytest

from dlfast import cli
from dlfast import datasets as D
from dlfast import experiments as E

from test_datasets import idx_bytes

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TIMEOUT = 0.4            # the loader's timeout in the timeout tests (seconds)


def _idx_files(seed=0, n_train=60, n_test=20, side=5):
    """The four gzipped IDX files of a tiny MNIST-format set; (bytes by name, arrays by kind)."""
    rng = np.random.default_rng(seed)
    files, arrays = {}, {}
    for kind, n in (("train", n_train), ("t10k", n_test)):
        lab = (np.arange(n) % 10).astype(np.uint8)
        img = rng.integers(0, 40, (n, side, side), dtype=np.uint8)
        img[np.arange(n), lab // side, lab % side] = 255             # a learnable bright pixel
        files[f"{kind}-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(img), mtime=0)
        files[f"{kind}-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(lab), mtime=0)
        arrays[kind] = (img, lab)
    return files, arrays


def md5s(files):
    return {name: hashlib.md5(data).hexdigest() for name, data in files.items()}


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` under ``/data/``; ``server.mode`` (or ``server.modes[file]``):
    "ok", "truncate" (half the bytes, full Content-Length), "404", "503", "hang" (no answer
    until the test ends), "stall" (headers and half the bytes, then nothing)."""

    def do_GET(self):
        srv = self.server
        name = urllib.parse.urlsplit(self.path).path
        srv.hits.append(name)
        file = name[len("/data/"):] if name.startswith("/data/") else None
        queue = srv.modes.get(file)
        mode = queue.pop(0) if queue else srv.mode
        if mode == "hang":
            srv.release.wait(30)
            return
        if file not in srv.files or mode == "404":
            self.send_error(404)
            return
        if mode == "503":
            self.send_error(503)
            return
        data = srv.files[file]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode in ("truncate", "stall"):
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            if mode == "stall":
                srv.release.wait(30)
            return                                       # HTTP/1.0: the connection closes
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    files, arrays = _idx_files()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.arrays, srv.mode, srv.modes, srv.hits = files, arrays, "ok", {}, []
    srv.release = threading.Event()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/data/"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(10)


@pytest.fixture(autouse=True)
def _local_only(monkeypatch):
    """Every URL the loader opens must be on 127.0.0.1; no default mirror from the environment."""
    real = urllib.request.urlopen

    def guarded(req, *args, **kwargs):
        url = req.full_url if isinstance(req, urllib.request.Request) else req
        host = urllib.parse.urlsplit(url).hostname
        assert host == "127.0.0.1", f"a test tried to reach {url}"
        return real(req, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)
    for var in ("DLFAST_DATA", "DLFAST_MNIST_MIRRORS", "DLFAST_FASHION_MNIST_MIRRORS"):
        monkeypatch.delenv(var, raising=False)


def _closed_port_url():
    """A base URL on 127.0.0.1 where nothing listens (connections are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/data/"


def _load(server, folder, kind="train", **kw):
    kw.setdefault("mirrors", [server.url])
    kw.setdefault("checksums", md5s(server.files))
    kw.setdefault("retry_delay", 0.01)
    kw.setdefault("progress", False)
    return D.load_mnist(folder, kind, download=True, **kw)


def _listing(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# ============================================================================ success
def test_download_then_cache_hit(server, tmp_path, capsys):
    cache = tmp_path / "cache" / "mnist"
    x, t = _load(server, cache, progress=True)
    img, lab = server.arrays["train"]
    np.testing.assert_allclose(x, img.reshape(len(img), -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(t, lab)
    assert sorted(server.hits) == ["/data/train-images-idx3-ubyte.gz",
                                   "/data/train-labels-idx1-ubyte.gz"]      # only what was asked
    assert _listing(cache) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    for name in _listing(cache):                                          # the served bytes
        assert (cache / name).read_bytes() == server.files[name]
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err        # the tqdm bar
    # cache hit: the same call reads the folder and contacts no server
    server.mode = "404"
    x2, t2 = _load(server, cache)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(t2, t)
    assert len(server.hits) == 2
    server.mode = "ok"
    _, tt = _load(server, cache, kind="t10k")
    np.testing.assert_array_equal(tt, server.arrays["t10k"][1])
    assert len(_listing(cache)) == 4


def test_download_into_DLFAST_DATA_from_mirror_variable(server, tmp_path, monkeypatch):
    monkeypatch.setenv("DLFAST_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("DLFAST_FASHION_MNIST_MIRRORS", f" {server.url[:-1]} ,")  # no slash, blanks
    assert D.data_home() == str(tmp_path / "data")
    assert D.dataset_folder("fashion-mnist") == str(tmp_path / "data" / "fashion-mnist")
    x, t = D.load_fashion_mnist(kind="t10k", download=True, checksums=md5s(server.files),
                                progress=False)
    np.testing.assert_array_equal(t, server.arrays["t10k"][1])
    assert _listing(tmp_path / "data" / "fashion-mnist") == ["t10k-images-idx3-ubyte.gz",
                                                             "t10k-labels-idx1-ubyte.gz"]
    # fetch: all four files, the two present are not downloaded again
    assert D.fetch("fashion-mnist", checksums=md5s(server.files), progress=False) \
        == str(tmp_path / "data" / "fashion-mnist")
    assert len(server.hits) == 4 and len(set(server.hits)) == 4


def test_next_mirror_after_a_404(server, tmp_path):
    x, t = _load(server, tmp_path, mirrors=[server.url + "missing/", server.url])
    np.testing.assert_array_equal(t, server.arrays["train"][1])
    assert server.hits[:2] == ["/data/missing/train-images-idx3-ubyte.gz",
                               "/data/train-images-idx3-ubyte.gz"]


def test_retry_with_exponential_backoff_after_server_errors(server, tmp_path, monkeypatch):
    delays = []
    monkeypatch.setattr(D, "time", types.SimpleNamespace(sleep=delays.append))
    server.modes["train-images-idx3-ubyte.gz"] = ["503", "503"]
    x, t = _load(server, tmp_path, retries=2, retry_delay=0.5)
    assert delays == [0.5, 1.0]                       # retry_delay * 2**k
    assert server.hits.count("/data/train-images-idx3-ubyte.gz") == 3
    np.testing.assert_array_equal(t, server.arrays["train"][1])


def test_sha256_checksums_are_accepted(server, tmp_path):
    sums = {k: hashlib.sha256(v).hexdigest() for k, v in server.files.items()}
    _, t = _load(server, tmp_path, checksums=sums)
    np.testing.assert_array_equal(t, server.arrays["train"][1])


# ============================================================================ failure modes
def test_truncated_transfer_leaves_no_partial_file(server, tmp_path):
    server.mode = "truncate"
    with pytest.raises(D.DownloadError) as ei:
        _load(server, tmp_path, retries=1)
    msg = str(ei.value)
    url = server.url + "train-images-idx3-ubyte.gz"
    assert url in msg and "truncated transfer" in msg and "(2 attempts)" in msg
    assert str(tmp_path) in msg
    assert server.hits.count("/data/train-images-idx3-ubyte.gz") == 2      # retried
    assert _listing(tmp_path) == []                                       # no .part left


def test_wrong_checksum_leaves_no_file(server, tmp_path):
    sums = md5s(server.files)
    sums["train-images-idx3-ubyte.gz"] = "0" * 32
    with pytest.raises(D.DownloadError) as ei:
        _load(server, tmp_path, checksums=sums)
    msg = str(ei.value)
    assert server.url + "train-images-idx3-ubyte.gz" in msg
    assert "checksum mismatch" in msg and "expected " + "0" * 32 in msg
    assert hashlib.md5(server.files["train-images-idx3-ubyte.gz"]).hexdigest() in msg
    assert server.hits == ["/data/train-images-idx3-ubyte.gz"]            # not retried
    assert _listing(tmp_path) == []


def test_404_names_every_url_and_the_folder(server, tmp_path):
    mirrors = [server.url + "a/", server.url + "b/"]
    with pytest.raises(D.DownloadError) as ei:
        _load(server, tmp_path / "mnist", mirrors=mirrors)
    msg = str(ei.value)
    for m in mirrors:
        assert m + "train-images-idx3-ubyte.gz: HTTP 404" in msg
    assert str(tmp_path / "mnist") in msg and "by hand" in msg and "DLFAST_MNIST_MIRRORS" in msg
    assert len(server.hits) == 2                                          # a 404 is not retried
    assert _listing(tmp_path / "mnist") == []


@pytest.mark.parametrize("mode", ["hang", "stall"])
def test_server_that_never_answers_times_out(server, tmp_path, mode):
    server.mode = mode
    t0 = time.monotonic()
    with pytest.raises(D.DownloadError) as ei:
        _load(server, tmp_path, timeout=TIMEOUT, retries=1)
    elapsed = time.monotonic() - t0
    msg = str(ei.value)
    assert server.url + "train-images-idx3-ubyte.gz" in msg and "(2 attempts)" in msg
    assert f"no answer within the timeout of {TIMEOUT:g} s" in msg
    if mode == "stall":
        assert "the transfer broke after" in msg
    assert elapsed < 2 * TIMEOUT + 5                  # two timed-out attempts, not 30 s each
    assert _listing(tmp_path) == []


def test_offline_error_names_the_url_and_the_folder(tmp_path):
    url = _closed_port_url()
    with pytest.raises(D.DownloadError) as ei:
        D.load_mnist(tmp_path / "m", download=True, mirrors=[url], retries=1, retry_delay=0.01,
                     progress=False)
    msg = str(ei.value)
    assert url + "train-images-idx3-ubyte.gz" in msg and "Connection" in msg
    assert str(tmp_path / "m") in msg and "by hand" in msg
    assert isinstance(ei.value, OSError)


def test_cache_folder_that_cannot_be_written(server, tmp_path):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)                            # 0o500
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: a 0o500 folder is writable "
                        "(test_cache_folder_under_a_regular_file covers this case)")
        with pytest.raises(D.DownloadError, match="cannot write to the data folder") as ei:
            _load(server, folder / "mnist")
        assert str(folder / "mnist") in str(ei.value) or str(folder) in str(ei.value)
        assert server.hits == []                                          # checked first
    finally:
        folder.chmod(0o700)


def test_cache_folder_under_a_regular_file(server, tmp_path, monkeypatch):
    """The same failure for any user, root included: the folder's parent is a file."""
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("DLFAST_DATA", str(tmp_path / "file" / "cache"))
    with pytest.raises(D.DownloadError) as ei:
        D.load_mnist(download=True, mirrors=[server.url], checksums=md5s(server.files),
                     progress=False)
    msg = str(ei.value)
    assert "cannot write to the data folder" in msg
    assert str(tmp_path / "file" / "cache" / "mnist") in msg and "DLFAST_DATA" in msg
    assert server.hits == []


# ============================================================================ folders, arguments
def test_missing_files_without_download_say_how(tmp_path, monkeypatch):
    monkeypatch.setenv("DLFAST_DATA", str(tmp_path))
    with pytest.raises(D.IDXFileNotFoundError, match="does not exist; download=True"):
        D.load_mnist()
    (tmp_path / "fashion-mnist").mkdir()
    with pytest.raises(D.IDXFileNotFoundError, match="no Fashion-MNIST file .*download=True"):
        D.load_fashion_mnist()


def test_data_home_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("DLFAST_DATA", "  ")                           # blank = unset
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert D.data_home() == str(tmp_path / "xdg" / "dlfast")
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert D.data_home() == os.path.join(os.path.expanduser("~"), ".cache", "dlfast")
    assert D.dataset_folder("mnist") == os.path.join(D.data_home(), "mnist")


def test_default_mirrors_and_published_checksums():
    assert D._mirrors("mnist", None)[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert D._mirrors("fashion-mnist", None) == (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    for name in D.IDX_DATASETS:
        sums = D._checksums(name, None)
        assert sorted(sums) == sorted(FILES)
        assert all(len(v) == 32 and int(v, 16) >= 0 for v in sums.values())


@pytest.mark.parametrize("kw,err,match", [
    (dict(mirrors="http://127.0.0.1/"), TypeError, "mirrors must be a list"),
    (dict(mirrors=["ftp://127.0.0.1/"]), ValueError, "mirrors must hold http"),
    (dict(mirrors=[]), ValueError, "mirrors holds no URL"),
    (dict(checksums=["abc"]), TypeError, "checksums must be a dict"),
    (dict(checksums={"other.gz": "0" * 32}), ValueError, "unknown file 'other.gz'"),
    (dict(checksums={"train-images-idx3-ubyte.gz": "xyz"}), ValueError, "MD5 .* or SHA-256"),
    (dict(timeout=0), ValueError, "timeout"),
    (dict(timeout="5"), TypeError, "timeout"),
    (dict(retries=-1), ValueError, "retries"),
    (dict(retry_delay=-1.0), ValueError, "retry_delay"),
    (dict(progress="yes"), TypeError, "progress"),
    (dict(download="yes"), TypeError, "download"),
    (dict(kind="test"), ValueError, "kind"),
])
def test_bad_arguments_name_the_argument(tmp_path, kw, err, match):
    kw = {"download": True, **kw}
    with pytest.raises(err, match=match):
        D.load_mnist(tmp_path, **kw)


def test_bad_names_and_mirror_variable(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="data set name must be one of 'mnist', 'fashion-mnist'"):
        D.fetch("cifar10", tmp_path)
    with pytest.raises(ValueError, match="kinds"):
        D.fetch("mnist", tmp_path, kinds="train")
    monkeypatch.setenv("DLFAST_MNIST_MIRRORS", "127.0.0.1/mnist")
    with pytest.raises(ValueError, match=r"\$DLFAST_MNIST_MIRRORS must hold http"):
        D.fetch("mnist", tmp_path)


def test_importing_datasets_does_not_import_tqdm():
    code = "import sys, dlfast.datasets; print('tqdm' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False"]


# ============================================================================ command line
def _cli(tmp_path, *args):
    return cli.main(["train", "--hidden", "8", "--epochs", "1", "--batch-size", "10",
                     "--no-progress", "--backend", "numpy", "--out", str(tmp_path / "o"), *args])


def test_cli_dataset_mnist_downloads_once_then_uses_the_cache(server, tmp_path, monkeypatch,
                                                              capsys):
    monkeypatch.setenv("DLFAST_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("DLFAST_MNIST_MIRRORS", server.url)
    monkeypatch.setattr(D, "_SOURCES", {**D._SOURCES, "mnist": D._SOURCES["mnist"][:3]
                                        + (md5s(server.files),)})    # the test files' sums
    assert _cli(tmp_path, "--dataset", "mnist") == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "on MNIST" in out and "60 training rows" in out and "20 test rows" in out
    assert len(server.hits) == 4
    assert _listing(tmp_path / "data" / "mnist") == sorted(FILES)
    server.mode = "404"
    assert _cli(tmp_path, "--dataset", "mnist") == 0                   # cache hit
    assert len(server.hits) == 4


def test_cli_dataset_offline_is_a_clean_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DLFAST_DATA", str(tmp_path / "data"))
    url = _closed_port_url()
    monkeypatch.setenv("DLFAST_FASHION_MNIST_MIRRORS", url)
    monkeypatch.setattr(D, "time", types.SimpleNamespace(sleep=lambda s: None))
    assert _cli(tmp_path, "--dataset", "fashion-mnist") == 1
    err = capsys.readouterr().err
    assert err.startswith("dlfast train: error: could not download the Fashion-MNIST file")
    assert url + "train-images-idx3-ubyte.gz" in err
    assert str(tmp_path / "data" / "fashion-mnist") in err


def test_cli_data_dir_reads_a_user_folder_without_downloading(server, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, data in server.files.items():
        (folder / name).write_bytes(data)
    assert _cli(tmp_path, "--dataset", "fashion-mnist", "--data-dir", str(folder)) == 0
    assert f"on Fashion-MNIST ({folder})" in capsys.readouterr().out
    assert _cli(tmp_path, "--data-dir", str(tmp_path / "empty")) == 1     # no download there
    err = capsys.readouterr().err
    assert "does not exist" in err and server.hits == []
    assert _cli(tmp_path, "--dataset", "digits", "--data-dir", str(folder)) == 1
    assert "--data-dir does not apply to --dataset digits" in capsys.readouterr().err


def test_cli_dataset_choices(capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main(["train", "--dataset", "cifar10"])
    assert ei.value.code == 2 and "invalid choice" in capsys.readouterr().err


def _place(folder, files):
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def test_experiment_on_mnist_from_the_data_folder(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DLFAST_DATA", str(tmp_path / "data"))
    _place(tmp_path / "data" / "mnist", server.files)               # a cache hit: no download
    r = E.run("batchnorm", tmp_path / "o", quick=True, verbose=False, dataset="mnist")
    assert r["dataset"] == "mnist" and "MNIST images" in r["title"]
    assert server.hits == []
    assert cli.main(["experiment", "multitask", "--quick", "--dataset", "mnist",
                     "--out", str(tmp_path / "o2")]) == 0
    assert "multi-task learning on MNIST" in capsys.readouterr().out


def test_experiment_dataset_errors(tmp_path, capsys):
    assert E.uses_data("overfit") and not E.uses_data("optimizers-path")
    with pytest.raises(ValueError, match="dataset must be one of digits, mnist, fashion-mnist"):
        E.run("overfit", tmp_path, quick=True, verbose=False, dataset="cifar10")
    with pytest.raises(ValueError, match="'init-histograms' uses no data set"):
        E.run("init-histograms", tmp_path, quick=True, verbose=False, dataset="mnist")
    assert cli.main(["experiment", "optimizers-path", "--dataset", "mnist",
                     "--out", str(tmp_path)]) == 1
    assert "--dataset does not apply to experiment 'optimizers-path'" in capsys.readouterr().err


def test_compat_mnist_download_and_init_write_the_books_pickle(server, tmp_path, monkeypatch):
    """The book's ``dataset.mnist``: download_mnist() into dataset_dir (which follows
    $DLFAST_DATA), init_mnist() writes the book's dict of uint8 arrays to save_file."""
    import pickle

    from dlfast.compat.dataset import mnist as M
    monkeypatch.setenv("DLFAST_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("DLFAST_MNIST_MIRRORS", server.url)
    title, var, mirrors, _ = D._SOURCES["mnist"]
    monkeypatch.setitem(D._SOURCES, "mnist", (title, var, mirrors, md5s(server.files)))
    folder = tmp_path / "data" / "mnist"
    assert M.dataset_dir == str(folder) and M.save_file == str(folder / "mnist.pkl")
    assert sorted(M.key_file.values()) == sorted(FILES)
    M.download_mnist()
    assert _listing(folder) == sorted(FILES) and sorted(server.hits) == sorted(
        "/data/" + f for f in FILES)
    for name in FILES:
        assert (folder / name).read_bytes() == server.files[name]
    M.init_mnist()                                   # files present: nothing downloaded again
    assert len(server.hits) == 4
    assert _listing(folder) == sorted(FILES + ("mnist.pkl",))
    with open(M.save_file, "rb") as f:
        data = pickle.load(f)
    assert sorted(data) == ["test_img", "test_label", "train_img", "train_label"]
    for key, kind in (("train", "train"), ("test", "t10k")):
        img, lab = server.arrays[kind]
        assert data[key + "_img"].dtype == np.uint8 and data[key + "_label"].dtype == np.uint8
        np.testing.assert_array_equal(data[key + "_img"], img.reshape(len(img), -1))
        np.testing.assert_array_equal(data[key + "_label"], lab)
    (xtr, ttr), _ = M.load_mnist(normalize=False)    # the same arrays through load_mnist
    np.testing.assert_array_equal(xtr, data["train_img"])
    np.testing.assert_array_equal(ttr, data["train_label"])


def test_compat_mnist_download_offline_names_the_url(tmp_path, monkeypatch):
    from dlfast.compat.dataset import mnist as M
    monkeypatch.setenv("DLFAST_DATA", str(tmp_path / "data"))
    url = _closed_port_url()
    monkeypatch.setenv("DLFAST_MNIST_MIRRORS", url)
    monkeypatch.setattr(D, "fetch", lambda name, folder, _f=D.fetch: _f(
        name, folder, retries=0, progress=False))
    with pytest.raises(D.DownloadError, match=url + "train-images-idx3-ubyte.gz"):
        M.init_mnist()
    assert not os.path.exists(M.save_file)
