"""``dlfast train`` with per-step checkpoints is SIGKILLed mid-run (after a checkpoint exists),
resumed with ``--resume``, and its final model compared bit for bit with an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import dlfast
from dlfast import checkpoint as ck

ARGS = ["train", "--epochs", "6", "--batch-size", "16", "--hidden", "32", "--batchnorm",
        "--dropout", "0.2", "--schedule", "step", "--step-size", "2", "--early-stopping", "3",
        "--threads", "1", "--no-progress", "--seed", "3"]


def _run(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "dlfast", *ARGS, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _state(out):
    with np.load(os.path.join(out, "model.npz")) as z:
        return {k: z[k] for k in z.files if k.startswith("state.")}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("bk", ["numpy", "cython"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, bk):
    if bk not in dlfast.available_backends():
        pytest.skip(f"backend {bk} not built")
    ref_out, out, ckpt = str(tmp_path / "ref"), str(tmp_path / "run"), str(tmp_path / "run.ckpt")
    ref = _run(["--backend", bk, "--out", ref_out])
    killed = _run(["--backend", bk, "--out", out, "--checkpoint", ckpt, "--checkpoint-per", "step",
                   "--checkpoint-every", "20"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and killed.poll() is None:
        if os.path.exists(ckpt) and ck.read_checkpoint(ckpt)[2]["step"] >= 20:
            break                   # early: ~75 steps per epoch, 6 epochs (a step takes ~0.1 ms)
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    log = killed.communicate()[0]
    assert killed.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{log}"
    assert not os.path.exists(os.path.join(out, "model.npz"))
    st = ck.read_checkpoint(ckpt)[2]
    assert 0 < st["step"] and st["epoch"] < 6           # the checkpoint is mid-run
    assert ref.wait(timeout=120) == 0, ref.communicate()[0]
    resumed = _run(["--backend", bk, "--out", out, "--checkpoint", ckpt, "--checkpoint-per", "step",
                    "--checkpoint-every", "20", "--resume", ckpt])
    log = resumed.communicate(timeout=120)[0]
    assert resumed.returncode == 0, log
    a, b = _state(ref_out), _state(out)
    assert a.keys() == b.keys() and len(a) > 4
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    with open(os.path.join(ref_out, "history.json")) as f:
        ha = json.load(f)["history"]
    with open(os.path.join(out, "history.json")) as f:
        hb = json.load(f)["history"]
    for key in ("epoch", "loss", "val_loss", "batch_loss", "lr", "steps"):
        assert ha[key] == hb[key], key


def test_cli_resume_errors(tmp_path, capsys):
    from dlfast.cli import main
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00not a checkpoint" * 50)
    common = ["train", "--epochs", "1", "--hidden", "8", "--no-progress", "--out", str(tmp_path / "o")]
    assert main([*common, "--resume", str(junk)]) == 1
    err = capsys.readouterr().err
    assert "checkpoint" in err and str(junk) in err
    assert main([*common, "--checkpoint-every", "3"]) == 1
    assert "--checkpoint-every needs --checkpoint" in capsys.readouterr().err
    ck_path = tmp_path / "a.ckpt"                   # a checkpoint of another architecture
    assert main([*common, "--checkpoint", str(ck_path)]) == 0
    capsys.readouterr()
    assert main(["train", "--epochs", "1", "--hidden", "9", "--no-progress", "--out",
                 str(tmp_path / "o"), "--resume", str(ck_path)]) == 1
    assert "different architecture" in capsys.readouterr().err
