"""Checkpoints (dlfast.checkpoint): atomic writes, bit-identical resume (epoch boundary and
mid-epoch, both backends), clear errors for truncated/foreign/mismatched files."""
import os

import numpy as np
import pytest

import dlfast
from dlfast import checkpoint as ck
from dlfast.augment import Augment
from dlfast.checkpoint import Checkpoint, CheckpointError
from dlfast.net import MLP
from dlfast.optim import SGD, Adam
from dlfast.schedules import ReduceOnPlateau, StepDecay
from dlfast.train import EarlyStopping, Trainer

N, F, C = 90, 12, 3


def _data(dtype=np.float32):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, F)).astype(dtype)
    t = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    return x, t


def _trainer(dtype=np.float32, epochs=6, checkpoint=None, schedule="step", transform=False,
             patience=3):
    model = MLP(F, [16, 16], C, batchnorm=True, dropout=0.2, seed=3, dtype=dtype)
    opt = Adam(lr=0.01)
    sched = StepDecay(0.01, 2, 0.5) if schedule == "step" else ReduceOnPlateau(0.01, patience=1)
    return Trainer(model, opt, epochs=epochs, batch_size=16, schedule=sched,
                   early_stopping=EarlyStopping(patience, min_delta=0.0), val_split=0.2,
                   progress=False, seed=11, checkpoint=checkpoint,
                   transform=Augment(shape=(3, 4), noise=0.05, seed=5) if transform else None)


def _params(trainer):
    return {k: v.copy() for k, v in trainer.model.state_dict().items()}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


class _Crash:
    """Callback raising after ``at`` global steps (simulates a crash; checkpoint kept on disk)."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, trainer, step, logs):
        if step == self.at:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("per,every,crash_at", [("epoch", 1, 17), ("step", 3, 13)])
def test_resume_bit_identical(backend, tmp_path, per, every, crash_at):
    x, t = _data()
    ref = _trainer()
    ref.fit(x, t)
    path = tmp_path / "run.ckpt"
    tr = _trainer(checkpoint=Checkpoint(path, every=every, per=per))
    tr.callbacks.append(_Crash(crash_at))
    with pytest.raises(RuntimeError, match="simulated crash"):
        tr.fit(x, t)
    assert path.exists()
    fresh = _trainer(checkpoint=Checkpoint(path, every=every, per=per))
    fresh.fit(x, t, resume=path)
    _same(_params(ref), _params(fresh))
    assert fresh.epoch == ref.epoch and fresh.step == ref.step
    assert ref.history.loss == fresh.history.loss and ref.history.lr == fresh.history.lr
    assert fresh.early_stopping.best_epoch == ref.early_stopping.best_epoch
    assert fresh.optimizer.steps == ref.optimizer.steps


def test_resume_plateau_augment_float64(tmp_path):
    x, t = _data(np.float64)
    ref = _trainer(np.float64, epochs=5, schedule="plateau", transform=True)
    ref.fit(x, t)
    path = tmp_path / "c.ckpt"
    tr = _trainer(np.float64, epochs=5, schedule="plateau", transform=True,
                  checkpoint=Checkpoint(path, every=2, per="step"))
    tr.callbacks.append(_Crash(10))          # 5 steps per epoch: last checkpoint at step 8
    with pytest.raises(RuntimeError):
        tr.fit(x, t)
    st = ck.read_checkpoint(path)[2]
    assert st["mid_epoch"] is not None and st["mid_epoch"]["k"] == 3
    fresh = _trainer(np.float64, epochs=5, schedule="plateau", transform=True)
    fresh.resume(path)
    fresh.fit(x, t)
    _same(_params(ref), _params(fresh))
    assert fresh.schedule.state_dict() == ref.schedule.state_dict()


def test_resume_after_early_stop(tmp_path):
    """A checkpoint written at the epoch where early stopping fired resumes to the same stop."""
    x, t = _data()
    ref = _trainer(epochs=40, patience=1)
    ref.fit(x, t)
    assert ref.early_stopping.stopped_epoch > 0
    path = tmp_path / "es.ckpt"
    tr = _trainer(epochs=40, patience=1, checkpoint=Checkpoint(path))
    tr.fit(x, t)
    fresh = _trainer(epochs=40, patience=1)
    fresh.fit(x, t, resume=path)
    assert fresh.epoch == ref.epoch
    _same(_params(ref), _params(fresh))


def _fail_midway(f, arrays):
    f.write(b"PK\x03\x04 partial checkpoint bytes")
    raise OSError("disk full (simulated)")


def test_crash_during_write_keeps_old(tmp_path, monkeypatch):
    x, t = _data()
    path = tmp_path / "keep.ckpt"
    tr = _trainer(epochs=2, checkpoint=Checkpoint(path))
    tr.fit(x, t)
    before = path.read_bytes()
    monkeypatch.setattr(ck, "_write_arrays", _fail_midway)
    tr2 = _trainer(epochs=1, checkpoint=Checkpoint(path))
    with pytest.raises(OSError, match="disk full"):
        tr2.fit(x, t)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.ckpt"]      # no temporary file left
    model = ck.load_checkpoint_model(path)
    _same(_params(tr), {k: v.copy() for k, v in model.state_dict().items()})


def test_foreign_and_truncated_files(tmp_path):
    x, t = _data()
    path = tmp_path / "good.ckpt"
    _trainer(epochs=1, checkpoint=Checkpoint(path)).fit(x, t)
    data = path.read_bytes()
    trunc = tmp_path / "trunc.ckpt"
    trunc.write_bytes(data[: len(data) // 2])
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    model_file = tmp_path / "model.npz"
    dlfast.io.save_model(_trainer().model, model_file)
    for bad, what in [(trunc, "truncated or damaged"), (junk, "truncated or damaged|not a dlfast"),
                      (model_file, "a dlfast model file"), (tmp_path / "none.ckpt", "does not exist")]:
        with pytest.raises(CheckpointError, match=what) as exc:
            _trainer().resume(bad)
        assert str(bad) in str(exc.value)
    assert issubclass(CheckpointError, ValueError)
    # a different architecture / optimiser / schedule
    other = Trainer(MLP(F, [8], C, seed=3), Adam(), progress=False, seed=11,
                    early_stopping=EarlyStopping(3), schedule=StepDecay(0.01, 2, 0.5))
    with pytest.raises(CheckpointError, match="different architecture"):
        other.resume(path)
    tr = _trainer()
    tr.optimizer = SGD(lr=0.1)
    with pytest.raises(CheckpointError, match="optimizer 'Adam'"):
        tr.resume(path)
    tr = _trainer(schedule="plateau")
    with pytest.raises(CheckpointError, match="schedule 'StepDecay'"):
        tr.resume(path)


def test_checkpoint_arguments(tmp_path):
    with pytest.raises(ValueError, match="per must be"):
        Checkpoint(tmp_path / "a", per="batch")
    with pytest.raises(ValueError, match="every"):
        Checkpoint(tmp_path / "a", every=0)
    with pytest.raises(TypeError, match="checkpoint must be"):
        _trainer(checkpoint="path.ckpt")
    x, t = _data()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _trainer(epochs=1, checkpoint=Checkpoint(tmp_path / "no" / "dir.ckpt")).fit(x, t)


def test_keep_rotates_previous_checkpoints(tmp_path):
    x, t = _data()
    path = tmp_path / "r.ckpt"
    tr = _trainer(epochs=4, patience=10, checkpoint=Checkpoint(path, keep=3))
    tr.fit(x, t)
    assert sorted(os.listdir(tmp_path)) == ["r.ckpt", "r.ckpt.1", "r.ckpt.2"]
    for name, epoch in [("r.ckpt", 4), ("r.ckpt.1", 3), ("r.ckpt.2", 2)]:
        assert ck.read_checkpoint(tmp_path / name)[2]["epoch"] == epoch
    with pytest.raises(ValueError, match="keep"):
        Checkpoint(path, keep=0)
