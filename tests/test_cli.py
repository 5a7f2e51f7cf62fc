"""The dlfast command: `dlfast train` with a small budget, Ctrl-C, `dlfast info`, argument errors."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dlfast import cli, io
from dlfast.datasets import load_digits

from test_datasets import idx_bytes, write

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
SMALL = ["--hidden", "32", "--epochs", "2", "--no-progress"]


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "dlfast", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


# ============================================================================ train
def test_train_subprocess_writes_model_and_png(tmp_path):
    out = tmp_path / "run"
    r = run("train", *SMALL, "--out", str(out), "--seed", "3")
    assert r.returncode == 0, r.stderr
    for name in ("model.npz", "history.png", "history.json"):
        assert (out / name).is_file(), name
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test" in r.stdout and "validation" in r.stdout and "s per epoch" in r.stdout
    model = io.load_model(out / "model.npz")
    assert model.config()["hidden_sizes"] == [32]
    meta = io.read_metadata(out / "model.npz")
    assert meta["epochs_done"] == 2 and meta["interrupted"] is False
    # the reported test accuracy is the saved model's accuracy on the held-out digits
    x, t = load_digits()
    _, _, x_te, t_te = cli.split_data(x, t, 0.2, 3)
    assert model.accuracy(x_te, t_te) == pytest.approx(meta["final"]["test"]["accuracy"])
    assert meta["final"]["test"]["accuracy"] > 0.4               # two epochs already learn (chance: 0.1)
    hist = json.loads((out / "history.json").read_text())["history"]
    assert hist["epoch"] == [1, 2] and len(hist["val_accuracy"]) == 2


def test_console_script_info():
    exe = shutil.which("dlfast")
    if exe is None:
        pytest.skip("the dlfast console script is not on PATH")
    r = subprocess.run([exe, "info", "--json"], capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    for key in ("backend", "available_backends", "threads", "openmp", "blas", "default_dtype"):
        assert key in info
    assert info["backend"] in info["available_backends"]
    assert info["default_dtype"] == "float32"


def test_python_m_info_text():
    r = run("info")
    assert r.returncode == 0, r.stderr
    for word in ("backend", "available backends", "threads", "OpenMP", "BLAS", "default dtype"):
        assert word in r.stdout


def test_info_in_process_reports_selected_backend(capsys):
    import dlfast
    before = dlfast.get_backend()
    assert cli.main(["info", "--backend", "numpy", "--threads", "1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "numpy" and info["threads"] == 1
    import dlfast                              # --backend / --threads applied to that call only
    assert dlfast.get_backend() == before and dlfast._config._threads[0] == 0


# `python -m dlfast ARGS...` with Python's own SIGINT handler: a process started with SIGINT
# ignored (a shell's background job, `cmd &`, and so this test under one) passes that on to its
# children, and then Python and `dlfast train` rightly leave Ctrl-C alone.
RUN_WITH_SIGINT = ("import runpy, signal, sys; signal.signal(signal.SIGINT, "
                   "signal.default_int_handler); sys.argv = ['dlfast'] + sys.argv[1:]; "
                   "runpy.run_module('dlfast', run_name='__main__', alter_sys=True)")


def test_ctrl_c_saves_the_model(tmp_path):
    out = tmp_path / "int"
    p = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c", RUN_WITH_SIGINT, "train",
                          "--epochs", "100000", "--no-progress", "--out", str(out), "--hidden",
                          "16"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = ""
        deadline = time.time() + 60
        while "optimizer" not in line and time.time() < deadline:   # header printed: training
            line = p.stdout.readline()
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        try:
            stdout, stderr = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            code = p.poll()
            p.send_signal(signal.SIGABRT)          # faulthandler prints every thread's stack
            try:
                stdout, stderr = p.communicate(timeout=30)
            except subprocess.TimeoutExpired as e:
                stdout, stderr = str(e.stdout), str(e.stderr)
            pytest.fail(f"dlfast train: no exit within 60 s of SIGINT (exit code then: {code}):"
                        f"\n{stderr[-8000:]}")
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, stderr
    assert "interrupted" in stderr and "model saved to" in stderr
    assert str(out / "model.npz") in stderr
    model = io.load_model(out / "model.npz")
    meta = io.read_metadata(out / "model.npz")
    assert meta["interrupted"] is True and meta["steps_done"] > 0
    x, t = load_digits()
    assert model.accuracy(x, t) > 0.5                                 # it had trained a bit


def test_train_in_process_on_mnist_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "mnist"
    data.mkdir()
    for kind, n in (("train", 60), ("t10k", 20)):
        lab = (np.arange(n) % 10).astype(np.uint8)
        img = rng.integers(0, 40, (n, 5, 5), dtype=np.uint8)
        img[np.arange(n), lab // 5, lab % 5] = 255                  # a learnable bright pixel
        write(data / f"{kind}-images-idx3-ubyte.gz", idx_bytes(img), gz=True)
        write(data / f"{kind}-labels-idx1-ubyte.gz", idx_bytes(lab), gz=True)
    rc = cli.main(["train", "--data-dir", str(data), "--epochs", "3", "--hidden", "8",
                   "--no-progress", "--out", str(tmp_path / "o"), "--dtype", "float64",
                   "--batch-size", "10", "--backend", "numpy"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "MNIST" in out.out and "20 test rows" in out.out
    assert io.load_model(tmp_path / "o" / "model.npz").dtype == np.float64


def test_corrupt_mnist_file_is_a_clean_error(tmp_path, capsys):
    write(tmp_path / "train-images-idx3-ubyte", b"\x00\x00\x08\x03\x00")
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(2, np.uint8)))
    rc = cli.main(["train", "--data-dir", str(tmp_path), "--no-progress", "--out",
                   str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "truncated" in err and "train-images-idx3-ubyte" in err


def test_missing_data_dir_and_too_deep_freeze_name_their_options(tmp_path, capsys):
    common = ["train", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "o")]
    assert cli.main(common + ["--data-dir", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "--data-dir: MNIST folder" in err and "download=True" not in err
    assert "without --data-dir, dlfast downloads mnist itself" in err
    assert cli.main(common + ["--freeze", "5"]) == 1
    assert "--freeze 5 exceeds the number of layers with parameters (3)" in \
        capsys.readouterr().err


# ============================================================================ arguments
@pytest.mark.parametrize("args", [["--dropout", "1.5"], ["--epochs", "0"], ["--val-split", "1"],
                                  ["--activation", "swish"], ["--hidden"], ["--lr", "-1"],
                                  ["--optimizer", "lbfgs"], ["--init", "bogus"], ["--init", "-1"],
                                  ["--init", "nan"]])
def test_bad_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main(["train", *args])
    assert ei.value.code == 2
    assert "error" in capsys.readouterr().err


def test_init_takes_a_name_or_a_float_std(tmp_path, capsys):
    from dlfast.io import load_model
    rc = cli.main(["train", "--init", "0.05", "--epochs", "1", "--hidden", "8", "--no-progress",
                   "--out", str(tmp_path)])
    assert rc == 0
    w = load_model(tmp_path / "model.npz").params["W1"]
    assert 0.03 < float(w.std()) < 0.07


def test_flag_for_another_optimizer_is_an_error(tmp_path, capsys):
    rc = cli.main(["train", "--optimizer", "adam", "--momentum", "0.9", "--out", str(tmp_path)])
    assert rc == 1
    assert "--momentum does not apply to --optimizer adam" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "train" in capsys.readouterr().out


def test_register_adds_a_subcommand(capsys):
    def run_hello(args):
        print(f"hello {args.name}")
        return 3

    cli.register("hello-test", run_hello, "say hello",
                 lambda p: p.add_argument("name"))
    try:
        assert cli.main(["hello-test", "world"]) == 3
        assert capsys.readouterr().out == "hello world\n"
        with pytest.raises(ValueError, match="already registered"):
            cli.register("hello-test", run_hello, "again")
    finally:
        del cli.COMMANDS["hello-test"]


def test_split_data_is_a_stratified_partition():
    x, t = load_digits()
    ids = np.arange(len(x), dtype=np.float32)[:, None]            # row ids ride along
    x_tr, t_tr, x_te, t_te = cli.split_data(np.hstack([ids, x]), t, 0.2, 0)
    tr_ids, te_ids = x_tr[:, 0].astype(int), x_te[:, 0].astype(int)
    np.testing.assert_array_equal(np.sort(np.concatenate([tr_ids, te_ids])), np.arange(len(x)))
    np.testing.assert_array_equal(t_te, t[te_ids])
    assert np.all(np.abs(np.bincount(t_te) - 0.2 * np.bincount(t)) <= 0.5)
    again = cli.split_data(np.hstack([ids, x]), t, 0.2, 0)
    np.testing.assert_array_equal(again[2], x_te)


# ============================================================================ train --arch
def test_parse_arch():
    assert cli.parse_arch("conv:30x5,pool:2,dense:100") == [
        ("conv", (30, 5, 1, 0)), ("pool", (2, 2)), ("dense", (100,))]
    assert cli.parse_arch("conv:16x3s2p1, avgpool:3s2") == [("conv", (16, 3, 2, 1)),
                                                           ("avgpool", (3, 2))]
    for bad, msg in [("conv:30", "is not one of"), ("conv:0x3", "positive"),
                     ("dense:10,pool:2", "come before the dense"), ("lstm:4", "is not one of"),
                     ("", "is not one of")]:
        with pytest.raises(ValueError, match=msg):
            cli.parse_arch(bad)


def test_train_a_convnet_on_the_digits(tmp_path, capsys):
    out = tmp_path / "conv"
    rc = cli.main(["train", "--arch", "conv:6x3p1,pool:2,dense:32", "--batchnorm", "--dropout",
                   "0.1", "--epochs", "3", "--no-progress", "--out", str(out), "--augment"])
    text = capsys.readouterr().out
    assert rc == 0 and "ConvNet 1x8x8,conv:6x3p1,pool:2,dense:32,10" in text
    model = io.load_model(out / "model.npz")
    assert [type(l).__name__ for l in model.layers] == [
        "Conv2D", "BatchNorm", "Activation", "MaxPool2D", "Flatten", "Dense", "BatchNorm",
        "Activation", "Dropout", "Dense"]
    meta = io.read_metadata(out / "model.npz")
    x, t = load_digits()
    _, _, x_te, t_te = cli.split_data(x, t, 0.2, 0)
    acc = model.accuracy(x_te.reshape(-1, 1, 8, 8), t_te)
    assert acc == pytest.approx(meta["final"]["test"]["accuracy"]) and acc > 0.5


@pytest.mark.parametrize("args, msg", [
    (["--arch", "conv:4x9"], r"--arch item 'conv:4x9' on inputs \(C, H, W\) = \(1, 8, 8\): the "
                             r"kernel \(9, 9\) is larger than the padded input"),
    (["--arch", "conv:4x3,pool:7"], r"--arch item 'pool:7' .*\(4, 6, 6\).*window \(7, 7\) is "
                                    r"larger"),
    (["--arch", "conv:4x3", "--activation", "maxout"], "does not apply to --arch"),
    (["--arch", "conv:4x3", "--hidden", "5"], "--hidden does not apply with --arch"),
    (["--arch", "conv:4x3", "--pretrain", "rbm"], "--pretrain rbm does not apply to --arch"),
])
def test_bad_arch_options_are_clean_errors(tmp_path, capsys, args, msg):
    rc = cli.main(["train", *args, "--epochs", "1", "--no-progress", "--out", str(tmp_path)])
    assert rc == 1
    assert re.search(msg, capsys.readouterr().err)


def test_arch_is_documented_in_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--arch ITEMS" in text and "conv:FxK[sS][pP]" in text and "pool:K[sS]" in text
